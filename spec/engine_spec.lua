-- The playbook engine, driven through the real binary in a throwaway project:
-- run, undo, retries, timeouts, plan mode, journal and resume, locks, output, secrets.
package.path = "spec/support/?.lua;" .. package.path
local project = require("project")

local function events_of(events, kind)
  local out = {}
  for _, e in ipairs(events or {}) do if e.event == kind then out[#out + 1] = e end end
  return out
end

-- A playbook whose steps append their name to trace.txt, and whose undos append undo:NAME.
local TRACE = project.TRACE

local function read_trace(p)
  return p:trace()
end

describe("tug run", function()
  local p
  before_each(function() p = project.new() end)
  after_each(function() p:remove() end)

  it("runs the steps in order, journals them and exits 0", function()
    p:write("playbooks/deploy_app.lua", TRACE .. [[
return playbook {
  description = "deploy the app",
  params = { version = { type = "string", required = true } },
  steps = {
    step "one" { run = function(ctx) trace("one"); ctx.state.version = ctx.params.version end },
    step "two" { run = function(ctx) trace("two " .. ctx.state.version) end },
  },
}]])
    local r = p:tug({ "run", "deploy-app", "version=v1.0.0" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.same({ "one", "two v1.0.0" }, read_trace(p))
    local events = p:journal()
    assert.are.equal("run_start", events[1].event)
    assert.are.same({ version = "v1.0.0" }, events[1].params)
    assert.are.equal("local", events[1].env)
    local ends = events_of(events, "step_end")
    assert.are.equal(2, #ends)
    -- the journal records what each step changed in ctx.state (spec/journal_spec.lua)
    assert.are.same({ { op = "add", path = "/version", value = "v1.0.0" } }, ends[1].state_patch)
    assert.is_nil(ends[2].state_patch)
    assert.are.equal("succeeded", events_of(events, "run_end")[1].status)
    assert.matches("deploy%-app: succeeded", r.stdout)
  end)

  it("undoes the completed steps in reverse when a step fails, exit 1", function()
    p:write("playbooks/pb.lua", TRACE .. [[
return playbook { steps = {
  step "a" { run = function() trace("a") end, undo = function() trace("undo:a") end },
  step "b" { run = function() trace("b") end },
  step "c" { run = function() trace("c") end, undo = function() trace("undo:c") end },
  step "d" { run = function() error("health check failed") end, undo = function() trace("undo:d") end },
  step "e" { run = function() trace("e") end },
} }]])
    local r = p:tug({ "run", "pb" })
    assert.are.equal(1, r.code)
    assert.are.same({ "a", "b", "c", "undo:c", "undo:a" }, read_trace(p))
    local run_end = events_of(p:journal(), "run_end")[1]
    assert.are.equal("rolled-back", run_end.status)
    assert.matches("step \"d\" failed: .*health check failed", run_end.reason)
  end)

  it("ends failed when there is nothing to undo, and --no-undo undoes nothing", function()
    p:write("playbooks/pb.lua", TRACE .. [[
return playbook { steps = {
  step "a" { run = function() trace("a") end, undo = function() trace("undo:a") end },
  step "b" { run = function() error("nope") end },
} }]])
    local r = p:tug({ "run", "pb", "--no-undo" })
    assert.are.equal(1, r.code)
    assert.are.same({ "a" }, read_trace(p))
    assert.are.equal("failed", events_of(p:journal(), "run_end")[1].status)
  end)

  it("says loudly when an undo fails, exit 5", function()
    p:write("playbooks/pb.lua", TRACE .. [[
return playbook { steps = {
  step "a" { run = function() end, undo = function() trace("undo:a") end },
  step "b" { run = function() end, undo = function() error("cannot scale back") end },
  step "c" { run = function() error("broken") end },
} }]])
    local r = p:tug({ "run", "pb" })
    assert.are.equal(5, r.code)
    assert.are.same({ "undo:a" }, read_trace(p)) -- the other undos still ran
    assert.matches("rollback%-failed", r.stdout)
    assert.matches("a human must look", r.stdout)
    assert.matches("cannot scale back", r.stdout)
  end)

  it("retries a failing step with backoff", function()
    p:write("playbooks/pb.lua", [[
local tries = 0
return playbook { steps = {
  step "flaky" { retries = 3, retry_delay = "50ms", backoff = 2, run = function(ctx)
    tries = tries + 1
    ctx.state.tries = tries
    if tries < 3 then error("not ready") end
  end },
} }]])
    local r = p:tug({ "run", "pb" })
    assert.are.equal(0, r.code, r.stdout)
    local events = p:journal()
    local retries = events_of(events, "step_retry")
    assert.are.equal(2, #retries)
    assert.are.equal(0.05, retries[1].delay)
    assert.are.equal(0.1, retries[2].delay)
    local step_end = events_of(events, "step_end")[1]
    assert.are.equal(3, step_end.attempts)
    assert.are.same({ { op = "add", path = "/tries", value = 3 } }, step_end.state_patch)
  end)

  it("fails a step that runs past its timeout, and rolls back", function()
    p:write("playbooks/pb.lua", TRACE .. [[
return playbook { steps = {
  step "a" { run = function() end, undo = function() trace("undo:a") end },
  step "slow" { timeout = "100ms", run = function() task.sleep(30) end },
} }]])
    local r = p:tug({ "run", "pb" })
    assert.are.equal(1, r.code)
    assert.is_true(r.duration < 10)
    assert.matches("timed out", events_of(p:journal(), "step_end")[2].error)
    assert.are.same({ "undo:a" }, read_trace(p))
  end)

  it("skips a step whose when() is false, and honours --from and --tags", function()
    p:write("playbooks/pb.lua", TRACE .. [[
return playbook { params = { colour = { type = "enum", values = { "blue", "green" }, default = "blue" } },
steps = {
  step "one" { run = function() trace("one") end },
  step "only green" { when = function(ctx) return ctx.params.colour == "green" end, run = function() trace("green") end },
  step "three" { tags = { "traffic" }, run = function() trace("three") end },
  step "four" { run = function() trace("four") end },
} }]])
    assert.are.equal(0, p:tug({ "run", "pb" }).code)
    assert.are.same({ "one", "three", "four" }, read_trace(p))
    os.remove(p.dir .. "/trace.txt")
    assert.are.equal(0, p:tug({ "run", "pb", "--from", "three" }).code)
    assert.are.same({ "three", "four" }, read_trace(p))
    os.remove(p.dir .. "/trace.txt")
    assert.are.equal(0, p:tug({ "run", "pb", "--tags", "traffic", "colour=green" }).code)
    assert.are.same({ "three" }, read_trace(p))
    local r = p:tug({ "run", "pb", "--from", "nine" })
    assert.are.equal(2, r.code)
    assert.matches("has no step \"nine\"", r.stderr)
  end)

  it("validates params with messages that name the param, exit 2, running nothing", function()
    p:write("playbooks/pb.lua", TRACE .. [[
return playbook {
  params = {
    version = { type = "string", required = true, pattern = "^v%d+%.%d+%.%d+$", help = "image tag" },
    replicas = { type = "integer", default = 4, min = 1 },
    strategy = { type = "enum", values = { "fast", "safe" }, default = "safe" },
    window = { type = "duration", default = "10m" },
  },
  steps = { step "go" { run = function(ctx) trace(ctx.params.window .. " " .. ctx.params.replicas) end } },
}]])
    local r = p:tug({ "run", "pb", "version=2.0", "replicas=0", "strategy=yolo", "colour=red" })
    assert.are.equal(2, r.code)
    assert.matches("param 'version': '2.0' does not match", r.stderr)
    assert.matches("param 'replicas': 0 is below the minimum 1", r.stderr)
    assert.matches("param 'strategy': 'yolo' is not one of fast, safe", r.stderr)
    assert.matches("unknown param 'colour'", r.stderr)
    assert.is_nil(p:read("trace.txt"))
    r = p:tug({ "run", "pb" })
    assert.matches("param 'version' is required: image tag", r.stderr)
    assert.are.equal(0, p:tug({ "run", "pb", "version=v1.2.3" }).code)
    assert.are.same({ "600 4" }, read_trace(p))
  end)

  it("plans without leaving a trace: commands and writes are recorded, not done", function()
    p:write("playbooks/pb.lua", [[
return playbook { lock = "deploy", steps = {
  step "read" { run = function(ctx) ctx.state.listing = exec.run({ "ls", "/" }, { read_only = true }).stdout end },
  step "touch" { run = function() exec.run({ "touch", "touched" }) end },
  step "say" { run = function(ctx) ctx:would("scale blue down to 0") end },
} }]])
    local r = p:tug({ "plan", "pb" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.matches("would exec: touch touched", r.stdout)
    assert.matches("would step: scale blue down to 0", r.stdout)
    assert.matches("planned", r.stdout)
    assert.is_false(p:exists("touched"))
    assert.is_false(p:exists(".tug")) -- no journal, no lock
  end)

  it("refuses Lua's own writers in plan mode with a message that points the way", function()
    p:write("playbooks/pb.lua", [[
return playbook { steps = {
  step "write" { run = function() local f = io.open("written", "w"); f:write("x"); f:close() end },
} }]])
    local r = p:tug({ "plan", "pb" })
    assert.are.equal(1, r.code)
    assert.matches("cannot run under `tug plan`", r.stdout)
    assert.is_false(p:exists("written"))
  end)

  it("keeps a ${secret:env:...} value out of every output, the journal and JSON events", function()
    p:write("environments/local.yaml", "name: local\napi_token: ${secret:env:API_TOKEN}\n")
    p:write("playbooks/pb.lua", [[
return playbook { steps = {
  step "use" { run = function(ctx)
    print("token is " .. ctx.env.api_token)
    ctx.log.info("calling with " .. ctx.env.api_token)
    log.warn("global log " .. ctx.env.api_token)
    ctx.state.token = ctx.env.api_token
  end },
  step "fail" { run = function(ctx) error("rejected " .. ctx.env.api_token) end },
} }]])
    local secret = "tok-9f8e7d6c5b4a"
    local r = p:tug({ "run", "pb", "--output", "json" }, { env = { API_TOKEN = secret } })
    assert.are.equal(1, r.code)
    local everything = r.stdout .. r.stderr .. (p:read(".tug/runs/" .. select(2, p:journal()) .. ".jsonl") or "")
    assert.is_nil(everything:find(secret, 1, true))
    assert.matches("rejected %*%*%*", r.stdout)
    for line in r.stdout:gmatch("[^\n]+") do
      if line:sub(1, 1) == "{" then assert.is_table(json.decode(line)) end
    end
  end)

  it("reads ${secret:file:PATH} and ${env:VAR:-default} in environments", function()
    p:write("token.txt", "file-secret-123\n")
    p:write("environments/local.yaml", "name: local\ntoken: ${secret:file:token.txt}\nregion: ${env:NO_SUCH_REGION_X:-eu-west-1}\n")
    p:write("playbooks/pb.lua", [[
return playbook { steps = { step "show" { run = function(ctx)
  print("token=" .. ctx.env.token .. " region=" .. ctx.env.region)
end } } }]])
    local r = p:tug({ "run", "pb" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.matches("token=%*%*%* region=eu%-west%-1", r.stdout)
  end)

  it("names the missing variable, key and file when an environment cannot resolve", function()
    p:write("environments/local.yaml", "name: local\ndatabase:\n  url: ${env:NO_SUCH_VARIABLE_X}\n")
    p:write("playbooks/pb.lua", "return playbook { steps = { step 'a' { run = function() end } } }")
    local r = p:tug({ "run", "pb" })
    assert.are.equal(2, r.code)
    assert.matches("environments/local.yaml: database.url: environment variable NO_SUCH_VARIABLE_X is not set", r.stderr)
  end)

  it("writes JSON events, a JUnit report and GitHub Actions annotations", function()
    p:write("playbooks/pb.lua", [[
return playbook { steps = {
  step "ok step" { run = function() end },
  step "bad step" { run = function() error("bad <thing>") end },
} }]])
    local r = p:tug({ "run", "pb", "--junit", "report.xml" }, { env = { GITHUB_ACTIONS = "true",
      GITHUB_STEP_SUMMARY = p.dir .. "/summary.md" } })
    assert.are.equal(1, r.code)
    assert.matches("::group::ok step", r.stdout)
    assert.matches("::error title=bad step failed::", r.stdout)
    local xml = p:read("report.xml")
    assert.matches('<testsuite name="pb" tests="2" failures="1"', xml)
    assert.matches('<testcase classname="pb" name="bad step"', xml)
    assert.matches("bad &lt;thing&gt;", xml)
    assert.matches("| bad step | ❌ failed |", p:read("summary.md"))
    r = p:tug({ "run", "pb", "--output", "json" })
    local kinds = {}
    for line in r.stdout:gmatch("[^\n]+") do kinds[#kinds + 1] = json.decode(line).event end
    assert.are.same({ "run_start", "step_start", "step_end", "step_start", "step_end", "run_end" }, kinds)
  end)

  it("refuses a protected environment without --env, and without --yes when nobody can answer", function()
    p:write("environments/production.yaml", "name: production\nprotected: true\n")
    p:write("environments/local.yaml", "name: local\nprotected: true\n")
    p:write("playbooks/pb.lua", TRACE .. [[
return playbook { steps = {
  step "look" { read_only = true, run = function() trace("look") end },
  step "change" { run = function() trace("change") end },
} }]])
    local r = p:tug({ "run", "pb" })
    assert.are.equal(2, r.code)
    assert.matches("protected: name it explicitly with %-%-env local", r.stderr)
    -- refused up front: nothing ran, no lock or journal was taken
    r = p:tug({ "run", "pb", "--env", "production" })
    assert.are.equal(2, r.code)
    assert.matches("production is protected: step \"change\" changes it and there is no terminal to ask " ..
      "%(run with %-%-yes to go ahead%)", r.stderr)
    assert.are.same({}, read_trace(p))
    assert.is_false(p:exists(".tug/runs"))
    r = p:tug({ "run", "pb", "--env", "production", "--yes" })
    assert.are.equal(0, r.code)
  end)

  it("runs a step_by_step runbook only on a terminal, or straight through with --no-step", function()
    p:write("playbooks/rb.lua", TRACE .. [[
return playbook { step_by_step = true, steps = {
  step "assess" { run = function(ctx) trace("sev=" .. ctx:ask("Severity?", { default = "sev2" })) end },
  step "page" { run = function(ctx) trace("yes=" .. tostring(ctx.yes)) end },
} }]])
    local r = p:tug({ "run", "rb" })
    assert.are.equal(2, r.code, r.stdout .. r.stderr)
    assert.matches("rb runs step by step and needs a terminal to ask on %(%-%-no%-step runs it straight through%)", r.stdout .. r.stderr)
    assert.are.same({}, read_trace(p))
    r = p:tug({ "run", "rb", "--no-step" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("needs an answer, and there is no terminal to ask: \"Severity%?\"", r.stdout .. r.stderr)
    r = p:tug({ "run", "rb", "--no-step", "--yes" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.same({ "sev=sev2", "yes=true" }, read_trace(p))
    assert.matches("runs step by step", p:tug({ "describe", "rb" }).stdout)
  end)

  it("needs --yes for a confirm prompt when there is no terminal", function()
    p:write("playbooks/pb.lua", TRACE .. [[
return playbook { steps = {
  step "switch" { confirm = "Switch {env} traffic to {params.colour}?", run = function() trace("switched") end },
}, params = { colour = { default = "green" } } }]])
    local r = p:tug({ "run", "pb" })
    assert.are.equal(1, r.code)
    assert.matches("Switch local traffic to green%?", r.stdout)
    assert.matches("%-%-yes", r.stdout)
    assert.is_nil(p:read("trace.txt"))
    assert.are.equal(0, p:tug({ "run", "pb", "--yes" }).code)
    assert.are.same({ "switched" }, read_trace(p))
  end)
end)

describe("locks", function()
  local p
  before_each(function() p = project.new() end)
  after_each(function() p:remove() end)

  local SLOW = [[
return playbook { lock = "deploy", steps = {
  step "hold" { run = function() local f = io.open("started", "w"); f:close(); task.sleep(tonumber(os.getenv("HOLD") or "0")) end },
} }]]

  it("refuses a second run on the same lock with exit 3, naming the holder", function()
    p:write("playbooks/pb.lua", SLOW)
    local first = p:spawn({ "run", "pb" }, { env = { HOLD = "5" } })
    assert.is_true(project.wait_for(function() return p:exists("started") end))
    local r = p:tug({ "run", "pb" })
    assert.are.equal(3, r.code)
    assert.matches("lock 'deploy' on local is held by run %S+ of pb %(pid " .. first.pid, r.stderr)
    first:kill("TERM")
    first:wait()
  end)

  it("detects a holder that died and takes the lock with --break-lock", function()
    p:write("playbooks/pb.lua", SLOW)
    local first = p:spawn({ "run", "pb" }, { env = { HOLD = "30" } })
    assert.is_true(project.wait_for(function() return p:exists("started") end))
    first:kill("KILL")
    first:wait()
    local r = p:tug({ "run", "pb" })
    assert.are.equal(3, r.code)
    assert.matches("that process is gone: rerun with %-%-break%-lock", r.stderr)
    assert.are.equal(0, p:tug({ "run", "pb", "--break-lock" }).code)
  end)
end)

describe("interrupts and resume", function()
  local p
  before_each(function() p = project.new() end)
  after_each(function() p:remove() end)

  it("rolls back on Ctrl-C, cancelling the running step, exit 4", function()
    p:write("playbooks/pb.lua", TRACE .. [[
return playbook { steps = {
  step "a" { run = function() trace("a") end, undo = function() trace("undo:a") end },
  step "wait" { run = function() trace("waiting"); exec.run({ "sleep", "30" }) end },
} }]])
    local proc = p:spawn({ "run", "pb" })
    assert.is_true(project.wait_for(function() return (p:read("trace.txt") or ""):find("waiting") end))
    proc:kill("INT")
    local r = proc:wait()
    assert.are.equal(4, r.code, r.stdout .. r.stderr)
    assert.is_true(r.duration < 10)
    assert.are.same({ "a", "waiting", "undo:a" }, read_trace(p))
    local run_end = events_of(p:journal(), "run_end")[1]
    assert.are.equal("rolled-back", run_end.status)
    assert.is_true(run_end.interrupted)
  end)

  it("stops at once on a second Ctrl-C during the rollback and records where, exit 4", function()
    p:write("playbooks/pb.lua", TRACE .. [[
return playbook { steps = {
  step "a" { run = function() trace("a") end, undo = function() trace("undo:a") end },
  step "b" { run = function() trace("b") end, undo = function() trace("undoing:b"); exec.run({ "sleep", "30" }) end },
  step "wait" { run = function() trace("waiting"); exec.run({ "sleep", "30" }) end },
} }]])
    local proc = p:spawn({ "run", "pb" })
    assert.is_true(project.wait_for(function() return (p:read("trace.txt") or ""):find("waiting") end))
    proc:kill("INT")
    assert.is_true(project.wait_for(function() return (p:read("trace.txt") or ""):find("undoing:b") end))
    proc:kill("INT")
    local r = proc:wait()
    assert.are.equal(4, r.code, r.stdout .. r.stderr)
    assert.is_true(r.duration < 10)
    -- a's undo never ran: the operator stopped the rollback in b's undo
    assert.are.same({ "a", "b", "waiting", "undoing:b" }, read_trace(p))
    local events = p:journal()
    local run_end = events_of(events, "run_end")[1]
    assert.are.equal("aborted", run_end.status)
    assert.matches("stopped during the undo of \"b\"", run_end.reason)
    assert.are.equal("stopped", events_of(events, "undo_end")[1].status)
  end)

  it("resumes a run killed with -9 from the first unfinished step, with its saved state", function()
    p:write("playbooks/pb.lua", TRACE .. [[
return playbook { steps = {
  step "count" { run = function(ctx) trace("count"); ctx.state.answer = 42 end },
  step "long" { run = function(ctx)
    trace("long")
    if not os.getenv("FAST") then task.sleep(30) end
  end },
  step "use" { run = function(ctx) trace("use " .. ctx.state.answer) end },
} }]])
    local proc = p:spawn({ "run", "pb" })
    assert.is_true(project.wait_for(function() return (p:read("trace.txt") or ""):find("long") end))
    proc:kill("KILL")
    proc:wait()
    local _, run_id = p:journal()
    local listing = p:tug({ "runs" })
    assert.matches(run_id:gsub("%p", "%%%0") .. "%s+pb%s+local%s+died", listing.stdout)
    assert.matches("tug resume " .. run_id:gsub("%p", "%%%0"), listing.stdout)
    local r = p:tug({ "resume", run_id }, { env = { FAST = "1" } })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.same({ "count", "long", "long", "use 42" }, read_trace(p))
    assert.matches("succeeded", p:tug({ "show", run_id }).stdout)
    r = p:tug({ "resume", run_id })
    assert.are.equal(2, r.code)
    assert.matches("already ended: succeeded", r.stderr)
  end)
end)

describe("list, describe and check", function()
  local p
  before_each(function() p = project.new() end)
  after_each(function() p:remove() end)

  it("lists playbooks in subfolders with their descriptions", function()
    p:write("playbooks/blue_green.lua", 'return playbook { description = "switch colours", steps = { step "a" { run = function() end } } }')
    p:write("playbooks/runbooks/api_outage.lua", 'return playbook { description = "when the API is down", steps = { step "a" { run = function() end } } }')
    local r = p:tug({ "list" })
    assert.are.equal(0, r.code)
    assert.matches("api%-outage%s+when the API is down%s+playbooks/runbooks/api_outage.lua", r.stdout)
    assert.matches("blue%-green%s+switch colours", r.stdout)
    -- a runbook answers to its name with or without its folder, and only its own folder
    assert.matches("when the API is down", p:tug({ "describe", "runbooks/api-outage" }).stdout)
    assert.matches("when the API is down", p:tug({ "describe", "api-outage" }).stdout)
    r = p:tug({ "describe", "playbooks/api-outage" })
    assert.are.equal(2, r.code)
    assert.matches("no playbook named 'playbooks/api%-outage'", r.stderr)
  end)

  it("suggests the closest name for a mistyped playbook, option, param, field or environment", function()
    p:write("playbooks/blue_green.lua", [[return playbook { params = { version = { type = "string" } },
      steps = { step "a" { run = function() end } } }]])
    local r = p:tug({ "run", "blue-gren" })
    assert.are.equal(2, r.code)
    assert.matches("no playbook named 'blue%-gren' in playbooks; did you mean 'blue%-green'%?", r.stderr)
    r = p:tug({ "run", "blue-green", "--yse" })
    assert.are.equal(2, r.code)
    assert.matches("'tug run' has no option %-%-yse; did you mean %-%-yes%?", r.stderr)
    assert.matches("run 'tug help run' for usage", r.stderr)
    r = p:tug({ "run", "blue-green", "verison=v2" })
    assert.are.equal(2, r.code)
    assert.matches("unknown param 'verison'; did you mean 'version'%?", r.stderr)
    r = p:tug({ "run", "blue-green", "--env", "lcoal" })
    assert.are.equal(2, r.code)
    assert.matches("no environment 'lcoal': .- does not exist; did you mean 'local'%?", r.stderr)
    p:write("playbooks/typo.lua", [[return playbook { steps = { step "a" { run = function() end, retires = 2 } } }]])
    r = p:tug({ "describe", "typo" })
    assert.are.equal(2, r.code)
    assert.matches("unknown field 'retires'; did you mean 'retries'%?", r.stderr)
    -- nothing close: no guess
    r = p:tug({ "run", "zzzzzz" })
    assert.matches("no playbook named 'zzzzzz' in playbooks %(playbooks: blue%-green%)", r.stderr)
  end)

  it("names the broken file of the playbook asked for, and keeps other broken files out of the way", function()
    p:write("playbooks/good.lua", [[return playbook { steps = { step "a" { run = function() end } } }]])
    p:write("playbooks/broken.lua", "return playbook { steps = {\n  step 'a' { run = function() end }\n")
    -- asking for the broken one gives its own error, not "no playbook named"
    local r = p:tug({ "run", "broken" })
    assert.are.equal(2, r.code)
    assert.matches("cannot load playbook 'broken': playbooks/broken%.lua:%d+:", r.stderr)
    assert.is_nil(r.stderr:find("no playbook named", 1, true))
    -- a good playbook runs without a word about the broken one
    r = p:tug({ "run", "good" })
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal("", r.stderr)
    -- a name nobody declares lists the files that did not load, since one may be it
    r = p:tug({ "run", "missing" })
    assert.matches("no playbook named 'missing'.*\n1 playbook file did not load:\n  playbooks/broken%.lua:%d+:", r.stderr)
    -- a run id that is not there points to the list of runs
    r = p:tug({ "resume", "20990101T000000-0000" })
    assert.are.equal(2, r.code)
    assert.matches("no run '20990101T000000%-0000' in %.tug/runs %('tug runs' lists them%)", r.stderr)
  end)

  it("describes params and steps, marking those with undo", function()
    p:write("playbooks/pb.lua", [[return playbook { params = { version = { type = "string", required = true, help = "tag" } },
      steps = { step "deploy" { run = function() end, undo = function() end, timeout = "5m" } } }]])
    local r = p:tug({ "describe", "pb" })
    assert.matches("version%s+string%s+required%s+tag", r.stdout)
    assert.matches("1%. deploy%s+%[undo%] %[timeout 5m%]", r.stdout)
  end)

  it("reports every problem with file:line and exits 2", function()
    p:write("playbooks/typo.lua", 'return playbook { steps = {\n  step "a" { run = function() end, tiemout = "5m" },\n} }')
    p:write("playbooks/syntax.lua", "return playbook {\n  steps = \n")
    p:write("playbooks/nothing.lua", "local x = 1\n")
    p:write("environments/staging.yaml", "name: staging\nurl: [unclosed\n")
    p:write("environments/bad_ref.yaml", "token: ${secret:vault:x}\n")
    local r = p:tug({ "check" })
    assert.are.equal(2, r.code)
    assert.matches("playbooks/typo.lua:2: step \"a\" has an unknown field 'tiemout'", r.stderr)
    assert.matches("playbooks/syntax.lua:3:", r.stderr)
    assert.matches("playbooks/nothing.lua: the file must end with `return playbook", r.stderr)
    assert.matches("environments/staging.yaml:%d+:%d+:", r.stderr)
    assert.matches("bad_ref.yaml: token: unknown secret provider 'vault'", r.stderr)
    assert.matches("5 problems", r.stdout)
  end)

  it("finds the project's own playbooks and environments clean", function()
    local r = exec.run({ require("child").tug, "check" }, { env = { CI = "true" } })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
  end)
end)

describe("on a terminal", function()
  -- a tmux server of this process's own, so that parallel runs of the specs never share one
  local TMUX_SOCKET = "tug-spec-" .. tug.sys.pid()
  local p
  before_each(function() p = project.new() end)
  after_each(function()
    exec.run({ "tmux", "-L", TMUX_SOCKET, "kill-server" })
    p:remove()
  end)

  -- Runs tug in a real terminal (tmux); returns a function that types keys and one that
  -- reads the screen.
  local function terminal(args)
    local command = require("child").tug .. " " .. table.concat(args, " ") .. "; echo EXIT=$?; sleep 60"
    exec.run({ "tmux", "-L", TMUX_SOCKET, "new-session", "-d", "-x", "150", "-y", "40", "-c", p.dir,
      "-e", "CI=", "-e", "GITHUB_ACTIONS=", command }, { check = true })
    local function keys(...)
      exec.run({ "tmux", "-L", TMUX_SOCKET, "send-keys", ... }, { check = true })
    end
    local function screen()
      return exec.run({ "tmux", "-L", TMUX_SOCKET, "capture-pane", "-p", "-J" }).stdout
    end
    return keys, screen
  end

  it("asks before every step with --step: run, skip, and Ctrl-C at a prompt rolls back", function()
    p:write("playbooks/pb.lua", TRACE .. [[
return playbook { steps = {
  step "one" { run = function() trace("one") end, undo = function() trace("undo:one") end },
  step "two" { run = function() trace("two") end },
  step "three" { run = function() trace("three") end },
} }]])
    local keys, screen = terminal({ "run", "pb", "--step", "--output", "plain" })
    local function prompt(name)
      return project.wait_for(function() return screen():find("Next: " .. name, 1, true) end)
    end
    assert.is_true(prompt("one"), screen())
    keys("r", "Enter")
    assert.is_true(prompt("two"), screen())
    keys("s", "Enter")
    assert.is_true(prompt("three"), screen())
    keys("C-c")
    assert.is_true(project.wait_for(function() return screen():find("EXIT=", 1, true) end, 3), screen())
    local text = screen()
    assert.matches("EXIT=4", text)
    assert.matches("interrupted at the prompt before step \"three\"", text)
    assert.are.same({ "one", "undo:one" }, read_trace(p))
    local decisions = events_of(p:journal(), "decision")
    assert.are.equal("run", decisions[1].answer)
    assert.are.equal("skip", decisions[2].answer)
  end)

  it("asks a runbook's questions, records the answers, and runs a step_by_step playbook step by step", function()
    p:write("playbooks/rb.lua", TRACE .. [[
return playbook { step_by_step = true, steps = {
  step "assess" { run = function(ctx)
    trace("severity=" .. ctx:ask("Severity?", { choices = { "sev1", "sev2", "sev3" } }))
    trace("summary=" .. ctx:ask("Summary?", { default = "api down" }))
  end },
} }]])
    local keys, screen = terminal({ "run", "rb", "--output", "plain" })
    assert.is_true(project.wait_for(function() return screen():find("Next: assess", 1, true) end), screen())
    keys("r", "Enter")
    assert.is_true(project.wait_for(function() return screen():find("Severity? [sev1/sev2/sev3]", 1, true) end), screen())
    keys("sev9", "Enter")
    assert.is_true(project.wait_for(function() return screen():find("answer one of: sev1, sev2, sev3", 1, true) end), screen())
    keys("sev2", "Enter")
    assert.is_true(project.wait_for(function() return screen():find("Summary? (default api down)", 1, true) end), screen())
    keys("Enter")
    assert.is_true(project.wait_for(function() return screen():find("EXIT=", 1, true) end), screen())
    assert.matches("EXIT=0", screen())
    assert.are.same({ "severity=sev2", "summary=api down" }, read_trace(p))
    local decisions = events_of(p:journal(), "decision")
    assert.are.equal("Severity?", decisions[2].question)
    assert.are.equal("sev2", decisions[2].answer)
    assert.are.equal("api down", decisions[3].answer)
  end)

  it("shows a live view with every step and its result", function()
    p:write("playbooks/pb.lua", [[
return playbook { steps = {
  step "deploy idle colour" { run = function() task.sleep(0.3) end },
  step "switch traffic" { run = function() error("selector refused") end, undo = function() end },
} }]])
    local _, screen = terminal({ "run", "pb" })
    assert.is_true(project.wait_for(function() return screen():find("EXIT=", 1, true) end), screen())
    local text = screen()
    assert.matches("✓%s+1%. deploy idle colour%s+%d+ms", text)
    assert.matches("✗%s+2%. switch traffic", text)
    assert.matches("failed: step \"switch traffic\" failed: .*selector refused", text)
    assert.matches("EXIT=1", text)
  end)

  -- The live view (no --output): a question stays on the screen, below the steps, for as
  -- long as it waits (the 100 ms redraw must not erase it), and goes to the history above
  -- the steps with its answer.
  local function stays(screen, text)
    if not project.wait_for(function() return screen():find(text, 1, true) end) then return false end
    task.sleep(0.5) -- five redraws of the live view
    return screen():find(text, 1, true) ~= nil
  end

  it("keeps every kind of question on the screen in the live view until it is answered", function()
    p:write("environments/production.yaml", "name: production\nprotected: true\n")
    p:write("playbooks/pb.lua", TRACE .. [[
return playbook { steps = {
  step "look around" { read_only = true, run = function(ctx)
    trace("severity=" .. ctx:ask("Severity?", { choices = { "sev1", "sev2" } }))
  end },
  step "change it" { confirm = "Really change {env}?", run = function() trace("change") end },
  step "after" { read_only = true, run = function() task.sleep(0.2) trace("after") end },
} }]])
    local keys, screen = terminal({ "run", "pb", "--env", "production", "--step" })
    assert.is_true(stays(screen, "Next: look around. [r]un, [s]kip or [a]bort?"), screen())
    assert.matches("1%. look around", screen()) -- the steps are drawn above the question
    keys("r", "Enter")
    assert.is_true(stays(screen, "Severity? [sev1/sev2]"), screen())
    keys("sev9", "Enter")
    assert.is_true(stays(screen, "answer one of: sev1, sev2"), screen())
    keys("sev2", "Enter")
    assert.is_true(stays(screen, "Next: change it. [r]un, [s]kip or [a]bort?"), screen())
    keys("r", "Enter")
    assert.is_true(stays(screen, "Really change production? [y/N]"), screen())
    keys("y", "Enter")
    assert.is_true(stays(screen, "Next: after. [r]un, [s]kip or [a]bort?"), screen())
    keys("r", "Enter")
    assert.is_true(project.wait_for(function() return screen():find("EXIT=", 1, true) end), screen())
    local text = screen()
    assert.matches("EXIT=0", text)
    -- each question and its answer stay in the history, and the view is whole at the end
    assert.matches("Severity%? %[sev1/sev2%] sev9\n%s+answer one of: sev1, sev2\n%s+Severity%? %[sev1/sev2%] sev2", text)
    assert.matches("Really change production%? %[y/N%] y", text)
    assert.matches("✓%s+1%. look around", text)
    assert.matches("✓%s+2%. change it", text)
    assert.matches("✓%s+3%. after", text)
    assert.matches("succeeded", text)
    assert.are.same({ "severity=sev2", "change", "after" }, read_trace(p))
  end)

  it("takes Ctrl-C at a question for an interruption, not a no, and keeps the live view whole", function()
    p:write("playbooks/pb.lua", TRACE .. [[
return playbook { steps = {
  step "first" { run = function() trace("first") end, undo = function() trace("undo:first") end },
  step "second" { confirm = "Go on with the second step?", run = function() trace("second") end },
} }]])
    local keys, screen = terminal({ "run", "pb" })
    assert.is_true(stays(screen, "Go on with the second step? [y/N]"), screen())
    keys("C-c")
    assert.is_true(project.wait_for(function() return screen():find("EXIT=", 1, true) end), screen())
    local text = screen()
    assert.matches("EXIT=4", text)
    assert.matches("^run pb on local  %(run [%w%-]+%)\n", text) -- the header was not overwritten
    assert.matches("interrupted at the prompt \"Go on with the second step%?\"", text)
    assert.are.same({ "first", "undo:first" }, read_trace(p))
    assert.are.same({}, events_of(p:journal(), "decision")) -- nobody said no
  end)

  it("asks on a protected environment in the live view, and rolls back when declined", function()
    p:write("environments/production.yaml", "name: production\nprotected: true\n")
    p:write("playbooks/pb.lua", TRACE .. [[
return playbook { steps = {
  step "first" { run = function() trace("first") end, undo = function() trace("undo:first") end },
  step "second" { confirm = "Go on with the second step?", run = function() trace("second") end },
} }]])
    local keys, screen = terminal({ "run", "pb", "--env", "production" })
    assert.is_true(stays(screen, "production is protected. Run \"first\"? [y/N]"), screen())
    keys("y", "Enter")
    assert.is_true(stays(screen, "production is protected. Run \"second\"? [y/N]"), screen())
    keys("y", "Enter")
    assert.is_true(stays(screen, "Go on with the second step? [y/N]"), screen())
    keys("n", "Enter")
    assert.is_true(project.wait_for(function() return screen():find("EXIT=", 1, true) end), screen())
    local text = screen()
    assert.matches("EXIT=4", text)
    assert.matches("Go on with the second step%? %[y/N%] n", text)
    assert.are.same({ "first", "undo:first" }, read_trace(p))
  end)

  it("keeps the results in one column whatever the length of the step names", function()
    p:write("playbooks/pb.lua", [[
return playbook { steps = {
  step "a" { run = function() end },
  step "wait until every pod of the new colour reports ready in every zone" { run = function() end },
  step "vérifier la santé" { run = function() end },
  step "]] .. string.rep("x", 200) .. [[" { run = function() end },
} }]])
    local _, screen = terminal({ "run", "pb" })
    assert.is_true(project.wait_for(function() return screen():find("EXIT=", 1, true) end), screen())
    local columns = {}
    for line in screen():gmatch("[^\n]+") do
      local before = line:match("^( ✓.-%s)%S+$") -- up to the duration, the last word
      if before then columns[#columns + 1] = utf8.len(before) end
    end
    assert.are.equal(4, #columns, screen())
    for i = 2, 4 do assert.are.equal(columns[1], columns[i], screen()) end
    assert.matches("xxx%.%.%.", screen()) -- the name too long for the terminal is cut
    assert.is_nil(screen():find(string.rep("x", 200), 1, true))
  end)

  it("asks before each changing step on a protected environment", function()
    p:write("environments/production.yaml", "name: production\nprotected: true\n")
    p:write("playbooks/pb.lua", TRACE .. [[
return playbook { steps = {
  step "look" { read_only = true, run = function() trace("look") end },
  step "change" { run = function() trace("change") end },
} }]])
    local keys, screen = terminal({ "run", "pb", "--env", "production", "--output", "plain" })
    assert.is_true(project.wait_for(function() return screen():find("Run \"change\"?", 1, true) end), screen())
    keys("y", "Enter")
    assert.is_true(project.wait_for(function() return screen():find("EXIT=", 1, true) end), screen())
    assert.matches("EXIT=0", screen())
    assert.are.same({ "look", "change" }, read_trace(p))
  end)
end)
