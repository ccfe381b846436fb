-- tug init and the packages: a new project that runs at once, and the .deb that
-- `make deb` builds.
package.path = "spec/support/?.lua;" .. package.path
local child = require("child")

local function tmpdir()
  return exec.run({ "mktemp", "-d", "/tmp/tug-init-spec.XXXXXX" }, { check = true }).stdout:gsub("%s+$", "")
end

local function in_dir(dir, args)
  local argv = { child.tug }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return exec.run(argv, { cwd = dir, timeout = 120,
    env = { CI = "true", TUG_PATH = false, TUG_ENVIRONMENTS = false, TUG_HOME = false, GITHUB_ACTIONS = false } })
end

describe("tug init", function()
  local dir
  before_each(function() dir = tmpdir() end)
  after_each(function() exec.run({ "rm", "-rf", dir }) end)

  it("starts a project whose first playbook plans, runs, undoes on failure and passes its spec", function()
    local r = in_dir(dir, { "init", "app" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    for _, file in ipairs({ "playbooks/hello.lua", "environments/local.yaml", "environments/local-cluster.yaml",
      "spec/hello_spec.lua", ".github/workflows/playbooks.yml", ".luarc.json", ".gitignore" }) do
      assert.matches("created " .. file:gsub("%p", "%%%0"), r.stdout)
    end
    local app = dir .. "/app"
    r = in_dir(app, { "check" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    r = in_dir(app, { "plan", "hello", "replicas=5" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.matches("would", r.stdout)
    r = in_dir(app, { "run", "hello", "replicas=5", "--yes", "--output", "plain" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.matches("web runs 2 pods of nginx:1%.27", r.stdout)
    assert.matches("hello: succeeded", r.stdout)
    -- the editor's config is JSON and names where the definitions are, when tug has them
    local luarc = json.decode(assert(io.open(app .. "/.luarc.json")):read("a"))
    assert.are.equal("Lua 5.4", luarc["runtime.version"])
    assert.are.equal("table", type(luarc["workspace.library"]))
    -- its own spec passes under tug test
    r = in_dir(app, { "test", "spec" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.matches("\n2 passed, 0 failed", r.stdout)
  end)

  it("keeps the files that exist and says so", function()
    assert.are.equal(0, in_dir(dir, { "init" }).code)
    local f = assert(io.open(dir .. "/playbooks/hello.lua", "w"))
    f:write("-- mine\nreturn playbook { steps = { step 'a' { run = function() end } } }\n")
    f:close()
    local r = in_dir(dir, { "init" })
    assert.are.equal(0, r.code)
    assert.matches("kept    playbooks/hello%.lua %(it exists%)", r.stdout)
    assert.matches("^%-%- mine", assert(io.open(dir .. "/playbooks/hello.lua")):read("a"))
  end)

  it("fails with the path it could not write, and takes one directory", function()
    local f = assert(io.open(dir .. "/blocker", "w"))
    f:close()
    local r = in_dir(dir, { "init", "blocker" })
    assert.are.equal(1, r.code)
    assert.matches("cannot create blocker/playbooks: mkdir blocker/playbooks: Not a directory", r.stderr)
    r = in_dir(dir, { "init", "a", "b" })
    assert.are.equal(2, r.code)
    assert.matches("'tug init' takes one directory, not 'b'", r.stderr)
  end)
end)

describe("make deb", function()
  it("packages the binary, its man page and completions, depending on the libraries it links", function()
    local r = exec.run({ "packaging/deb.sh" }, { timeout = 300 })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local deb = r.stdout:match("(build/tug_[^\n]+%.deb)")
    assert.truthy(deb, r.stdout)
    local info = exec.run({ "dpkg-deb", "-f", deb, "Package", "Depends" }, { check = true }).stdout
    assert.matches("Package: tug", info)
    for _, lib in ipairs({ "liblua5.4%-0", "libuv1", "libcurl4", "libyaml%-0%-2", "libwebsockets%-evlib%-uv" }) do
      assert.matches(lib, info)
    end
    local root = tmpdir()
    exec.run({ "dpkg-deb", "-x", deb, root }, { check = true })
    -- tug init there finds the definitions installed beside the binary
    local app = root .. "/app"
    local init = exec.run({ root .. "/usr/bin/tug", "init", app }, { timeout = 30 })
    assert.are.equal(0, init.code, init.stderr)
    assert.are.equal("", init.stderr)
    local luarc = json.decode(assert(io.open(app .. "/.luarc.json")):read("a"))
    assert.are.same({ root .. "/usr/share/tug/meta" }, luarc["workspace.library"])
    for _, path in ipairs({ "/usr/bin/tug", "/usr/share/man/man1/tug.1", "/usr/share/bash-completion/completions/tug",
      "/usr/share/tug/meta/playbook.lua", "/usr/share/tug/meta/k8s.lua",
      "/usr/share/zsh/vendor-completions/_tug", "/usr/share/fish/vendor_completions.d/tug.fish" }) do
      assert.truthy(io.open(root .. path), path)
    end
    local v = exec.run({ root .. "/usr/bin/tug", "--version" })
    exec.run({ "rm", "-rf", root })
    assert.are.equal(0, v.code)
    assert.matches("^tug %d", v.stdout)
  end)
end)
