-- The tug command line: what a user sees and the exit codes scripts rely on.
package.path = "spec/support/?.lua;" .. package.path
local child = require("child")

local function write_file(text)
  local path = os.tmpname() .. ".lua"
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  return path
end

describe("tug command line", function()
  it("prints its version", function()
    local r = child.run({ "--version" })
    assert.are.equal(0, r.code)
    assert.matches("^tug %d+%.%d+%.%d+ %(Lua 5%.4", r.stdout)
  end)

  it("lists commands, modules and every exit code in help", function()
    local r = child.run({ "help" })
    assert.are.equal(0, r.code)
    for _, want in ipairs({ "lua SCRIPT", "test", "run NAME", "resume RUN_ID", "exit codes:",
      "  0 ", "  1 ", "  2 ", "  3 ", "  4 ", "  5 ", "  130 " }) do
      assert.is_truthy(r.stdout:find(want, 1, true), want)
    end
  end)

  it("exits 2 on an unknown command or a missing argument", function()
    local r = child.run({ "deploy-everything" })
    assert.are.equal(2, r.code)
    assert.matches("unknown command 'deploy%-everything'", r.stderr)
    assert.are.equal(2, child.run({}).code)
    r = child.run({ "lua" })
    assert.are.equal(2, r.code)
    assert.matches("needs a SCRIPT", r.stderr)
  end)

  it("runs a script with arg and ... set as lua does", function()
    local path = write_file([[print(arg[0], arg[1], arg[2], select("#", ...), ...)]])
    local r = child.run({ "lua", path, "one", "two words" })
    os.remove(path)
    assert.are.equal(0, r.code)
    assert.are.equal(path .. "\tone\ttwo words\t2\tone\ttwo words\n", r.stdout)
  end)

  it("runs Lua from standard input", function()
    local r = child.run({ "lua", "-" }, { stdin = "print(1 + 1)" })
    assert.are.equal("2\n", r.stdout)
  end)

  it("reports a syntax error with file and line, exit 1", function()
    local path = write_file("local x = \nprint(")
    local r = child.run({ "lua", path })
    os.remove(path)
    assert.are.equal(1, r.code)
    assert.matches(path:gsub("%p", "%%%0") .. ":2:", r.stderr)
  end)

  it("reports a runtime error with a traceback naming file:line, exit 1", function()
    local path = write_file("local function deploy()\n  error('image not found')\nend\ndeploy()\n")
    local r = child.run({ "lua", path })
    os.remove(path)
    assert.are.equal(1, r.code)
    local escaped = path:gsub("%p", "%%%0")
    assert.matches(escaped .. ":2: image not found", r.stderr)
    assert.matches("stack traceback:", r.stderr)
    assert.matches(escaped .. ":4: in main chunk", r.stderr)
  end)

  it("runs the loop until every spawned task is done", function()
    local r = child.lua([[task.spawn(function() task.sleep(0.05); print("late") end); print("main done")]])
    assert.are.equal(0, r.code)
    assert.are.equal("main done\nlate\n", r.stdout)
  end)

  it("fails with exit 1 when a task fails and nobody waits for it", function()
    local r = child.lua([[task.spawn(function() error("background job broke") end); task.sleep(0.02); print("main done")]])
    assert.are.equal(1, r.code)
    assert.matches("main done", r.stdout)
    assert.matches("background job broke", r.stderr)
  end)

  it("does not count a failure that someone handled", function()
    local r = child.lua([[local h = task.spawn(function() error("handled") end); task.sleep(0.02); print(pcall(h.wait, h))]])
    assert.are.equal(0, r.code, r.stderr)
  end)

  it("cancels the other tasks when the main chunk fails", function()
    local r = child.lua([[task.spawn(function() task.sleep(5); print("should not run") end); task.sleep(0.01); error("main broke")]])
    assert.are.equal(1, r.code)
    assert.are.equal("", r.stdout)
    assert.is_true(r.duration < 3)
  end)

  it("says so when the main task can never finish", function()
    local r = child.lua([[local a; a = task.spawn(function() task.current():wait() end); a:wait()]])
    assert.are.equal(1, r.code)
  end)

  it("on Ctrl-C cancels every task, kills their children and exits 130", function()
    local marker = os.tmpname()
    local p = exec.spawn({ child.tug, "lua", "-e", ([[
      local proc = exec.spawn({ "sleep", "30" })
      local f = io.open(%q, "w"); f:write(proc.pid); f:close()
      proc:wait()
    ]]):format(marker) })
    local pid
    for _ = 1, 200 do
      local f = io.open(marker)
      local text = f and f:read("a")
      if f then f:close() end
      if text and text ~= "" then pid = tonumber(text) break end
      task.sleep(0.01)
    end
    os.remove(marker)
    assert.is_not_nil(pid, "the child never started its sleep")
    p:kill("INT")
    local r = p:wait()
    assert.are.equal(130, r.code)
    assert.matches("interrupted", r.stderr)
    -- the grandchild `sleep 30` is gone
    assert.is_nil(io.open("/proc/" .. pid .. "/stat"))
  end)
end)

describe("--context and --namespace", function()
  local project = require("project")
  local simtest = dofile("spec/support/sim.lua")
  local cluster, p
  setup(function() cluster = simtest.start({ port = 0 }) end)
  teardown(function() cluster:close() end)
  before_each(function()
    p = project.new()
    -- two contexts: the environment names one where nothing listens
    p:write("kubeconfig", ([[
apiVersion: v1
kind: Config
clusters:
  - { name: nowhere, cluster: { server: "http://127.0.0.1:1" } }
  - { name: sim, cluster: { server: "%s" } }
users: [{ name: me, user: {} }]
contexts:
  - { name: broken, context: { cluster: nowhere, user: me, namespace: default } }
  - { name: simulated, context: { cluster: sim, user: me, namespace: default } }
current-context: broken
]]):format(cluster.url))
    p:write("environments/staging.yaml", ("name: staging\nkubernetes: { kubeconfig: %s/kubeconfig, context: broken, namespace: default }\n")
      :format(p.dir))
    p:write("playbooks/look.lua", [[
return playbook { steps = {
  step "read the live deployment" { read_only = true, run = function(ctx)
    local d = k8s.connect(ctx.env.kubernetes):get("deployment", "api-blue")
    ctx.log.info("found " .. d.metadata.namespace .. "/" .. d.metadata.name)
  end },
} }]])
  end)
  after_each(function() p:remove() end)

  it("runs against the context and namespace given instead of the environment's, and records them", function()
    local r = p:tug({ "run", "look", "--env", "staging", "--output", "plain" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr) -- the environment's context: nothing there
    r = p:tug({ "run", "look", "--env", "staging", "--context", "simulated", "--namespace", "multiship", "--output", "plain" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.matches("found multiship/api%-blue", r.stdout)
    local start = p:journal()[1]
    assert.are.same({ context = "simulated", namespace = "multiship" }, start.kubernetes)
    r = p:tug({ "plan", "look", "--env", "staging", "--context", "simulated", "--namespace", "multiship" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
  end)

  it("keeps a run's context and namespace when it is resumed", function()
    p:write("playbooks/die.lua", [[
return playbook { steps = {
  step "first" { run = function() end },
  step "read after a crash" { run = function(ctx)
    if not io.open("crashed") then io.open("crashed", "w"):close() os.exit(9) end
    local d = k8s.connect(ctx.env.kubernetes):get("deployment", "api-blue")
    ctx.log.info("found " .. d.metadata.namespace .. "/" .. d.metadata.name)
  end },
} }]])
    local r = p:tug({ "run", "die", "--env", "staging", "--context", "simulated", "--namespace", "multiship" })
    assert.are.equal(9, r.code, r.stdout .. r.stderr)
    local _, id = p:journal()
    r = p:tug({ "resume", id, "--output", "plain" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.matches("found multiship/api%-blue", r.stdout)
  end)

  it("refuses a context for an environment that does not use a kubeconfig, and a name that is not one", function()
    p:write("environments/local.yaml", "name: local\nkubernetes: { simulate: true, namespace: multiship }\n")
    local r = p:tug({ "run", "look", "--context", "prod" })
    assert.are.equal(2, r.code)
    assert.matches("%-%-context: environment 'local' reaches its cluster through the simulator", r.stderr)
    r = p:tug({ "run", "look", "--env", "staging", "--namespace", "a b" })
    assert.are.equal(2, r.code)
    assert.matches("%-%-namespace: 'a b' is not a namespace name", r.stderr)
  end)
end)
