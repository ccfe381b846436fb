-- Help and completion as a user meets them: `tug help COMMAND`, `tug COMMAND --help`, the
-- man page, and the completion scripts run by the real bash, zsh and fish.
package.path = "spec/support/?.lua;" .. package.path
local child = require("child")
local project = require("project")

describe("help", function()
  it("shows one command's usage and options for tug help COMMAND and tug COMMAND --help", function()
    for _, args in ipairs({ { "help", "run" }, { "run", "--help" }, { "run", "-h" }, { "run", "canary", "--help" } }) do
      local r = child.run(args)
      assert.are.equal(0, r.code, table.concat(args, " ") .. ": " .. r.stderr)
      assert.matches("^usage: tug run NAME %[key=value%.%.%.%]\n", r.stdout)
      assert.matches("\n  %-%-break%-lock%s+take the lock from a holder that died on this host\n", r.stdout)
      assert.are.equal("", r.stderr)
    end
    for _, name in ipairs({ "list", "describe", "check", "plan", "runs", "show", "resume", "sim", "lua", "test", "completion" }) do
      local r = child.run({ name, "--help" })
      assert.are.equal(0, r.code, name .. ": " .. r.stderr)
      assert.matches("^usage: tug " .. name, r.stdout)
    end
  end)

  it("refuses help for a command that does not exist, and names the command's help after a usage error", function()
    local r = child.run({ "help", "deploy" })
    assert.are.equal(2, r.code)
    assert.matches("no command 'deploy'", r.stderr)
    r = child.run({ "completion", "powershell" })
    assert.are.equal(2, r.code)
    assert.matches("'tug completion' needs a shell: bash, zsh or fish", r.stderr)
    r = child.run({ "run", "--stpe" })
    assert.are.equal(2, r.code)
    assert.matches("run 'tug help run' for usage", r.stderr)
  end)

  it("writes the same text as a man page that man renders", function()
    local r = child.run({ "help", "--man" })
    assert.are.equal(0, r.code)
    assert.matches("^%.TH TUG 1", r.stdout)
    if not exec.run({ "sh", "-c", "command -v man" }).stdout:find("man") then
      require("tug.test_summary").skip("man is not installed: the page was not rendered")
    end
    local page = exec.run({ "man", "-l", "-" }, { stdin = r.stdout, env = { MANWIDTH = "100", PATH = os.getenv("PATH") } })
    assert.matches("tug run NAME %[key=value%.%.%.%]", page.stdout)
    assert.matches("take the lock from a holder that died", page.stdout)
  end)
end)

describe("completion", function()
  local p
  setup(function()
    p = project.new()
    p:write("environments/staging.yaml", "name: staging\n")
    p:write("playbooks/deploy_api.lua", [[
return playbook {
  params = { version = { type = "string" }, colour = { type = "enum", values = { "blue", "green" } } },
  steps = { step "roll out" { run = function() end } },
}]])
    p:write("playbooks/restart.lua", [[return playbook { steps = { step "restart" { run = function() end } } }]])
  end)
  teardown(function() p:remove() end)

  -- What SHELL completes for the words of a command line (the last one being typed).
  local function complete(shell, words)
    local bin = child.tug:gsub("/[^/]*$", "")
    local env = { PATH = bin .. ":" .. os.getenv("PATH"), HOME = p.dir, TUG_PATH = false, TUG_HOME = false,
      TUG_ENVIRONMENTS = false }
    local quoted = {}
    for i, w in ipairs(words) do quoted[i] = "'" .. w .. "'" end
    local script
    if shell == "bash" then
      script = "source <(tug completion bash); COMP_WORDS=(tug " .. table.concat(quoted, " ") .. "); COMP_CWORD=" ..
        #words .. "; _tug; printf '%s\\n' \"${COMPREPLY[@]}\""
    elseif shell == "fish" then
      script = "source (tug completion fish | psub); complete -C \"tug " .. table.concat(words, " ") .. "\""
    else
      script = "compdef() { :; }; source <(tug completion zsh); compadd() { while (( $# )); do " ..
        "[[ $1 == -a ]] && { shift; print -l -- \"${(@P)1}\"; }; shift; done; }; _files() { :; }; " ..
        "words=(tug " .. table.concat(quoted, " ") .. "); CURRENT=" .. (#words + 1) .. "; _tug"
    end
    local r = exec.run({ shell, "-c", script }, { cwd = p.dir, env = env, timeout = 20 })
    assert.are.equal(0, r.code, shell .. ": " .. r.stderr)
    local out = {}
    for line in r.stdout:gmatch("[^\n]+") do out[#out + 1] = line:gsub("\t.*", "") end
    table.sort(out)
    -- zsh filters by the typed prefix itself: do the same for its raw candidates
    if shell == "zsh" then
      local prefix, kept = words[#words], {}
      for _, c in ipairs(out) do if c:sub(1, #prefix) == prefix then kept[#kept + 1] = c end end
      out = kept
    end
    return out
  end

  for _, shell in ipairs({ "bash", "zsh", "fish" }) do
    it("completes commands, playbooks, params, enum values and environments in " .. shell, function()
      if not exec.run({ "sh", "-c", "command -v " .. shell }).stdout:find(shell) then
        require("tug.test_summary").skip(shell .. " is not installed (vendor/install.sh test installs it)")
      end
      assert.are.same({ "resume", "run", "runs" }, complete(shell, { "r" }))
      assert.are.same({ "deploy-api" }, complete(shell, { "run", "dep" }))
      assert.are.same({ "colour=", "version=" }, complete(shell, { "run", "deploy-api", "" }))
      assert.are.same({ "colour=blue", "colour=green" }, complete(shell, { "run", "deploy-api", "colour=" }))
      assert.are.same({ "staging" }, complete(shell, { "plan", "deploy-api", "--env", "st" }))
      assert.are.same({ "--break-lock" }, complete(shell, { "run", "restart", "--bre" }))
    end)
  end

  it("completes the run ids that can be resumed", function()
    p:write("playbooks/stuck.lua", [[return playbook { steps = { step "hang" { run = function() os.exit(9) end } } }]])
    local r = p:tug({ "run", "stuck" })
    assert.are.equal(9, r.code)
    local id = r.stdout:match("run (%d+T%d+%-%x+)")
    assert.truthy(id, r.stdout)
    local got = p:tug({ "__complete", "resume", "" })
    assert.matches(id, got.stdout, 1, true)
  end)
end)
