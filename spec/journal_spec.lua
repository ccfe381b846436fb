-- The journal (.tug/runs/ID.jsonl): step_end and undo_end record what changed in ctx.state
-- (a JSON Patch), `tug show` and `tug resume` rebuild the state from it, journals written
-- before patches still resume, a torn last line is survived and damage is named.
package.path = "spec/support/?.lua;" .. package.path
local project = require("project")

local TRACE = project.TRACE

local function lines_of(text)
  local out = {}
  for line in (text or ""):gmatch("[^\n]+") do out[#out + 1] = line end
  return out
end

-- The --output json events named `kind` in a run's stdout.
local function output_events(stdout, kind)
  local out = {}
  for _, line in ipairs(lines_of(stdout)) do
    local e = json.decode(line)
    if e.event == kind then out[#out + 1] = e end
  end
  return out
end

local function shown_state(p, run_id)
  local r = p:tug({ "show", run_id })
  assert.are.equal(0, r.code, r.stderr)
  return r.stdout:match("\nstate: ([^\n]*)"), r
end

describe("the journal's state", function()
  local p
  before_each(function() p = project.new() end)
  after_each(function() p:remove() end)

  it("grows by a line a step when each step adds a key, not by the whole state", function()
    local steps = {}
    for i = 1, 400 do
      steps[i] = string.format('  step "add %d" { run = function(ctx) ctx.state.key_%03d = %d end },', i, i, i)
    end
    p:write("playbooks/grow.lua", "return playbook { steps = {\n" .. table.concat(steps, "\n") .. "\n} }")
    local r = p:tug({ "run", "grow", "--output", "json" })
    assert.are.equal(0, r.code, r.stderr)
    local _, run_id = p:journal()
    local ends = {}
    for _, line in ipairs(lines_of(p:read(".tug/runs/" .. run_id .. ".jsonl"))) do
      if line:find('"event":"step_end"', 1, true) then ends[#ends + 1] = line end
    end
    assert.are.equal(400, #ends)
    -- the 400th step's line is as long as the 10th's (it held the whole state: 400 keys)
    assert.is_true(#ends[400] - #ends[10] < 16, #ends[10] .. " bytes, then " .. #ends[400])
    assert.are.same({ { op = "add", path = "/key_400", value = 400 } }, json.decode(ends[400]).state_patch)
    -- --output json still shows the whole state; `tug show` rebuilds the same
    local last = output_events(r.stdout, "step_end")[400]
    assert.are.equal(400, last.state.key_400)
    assert.are.equal(json.encode(last.state), (shown_state(p, run_id)))
  end)

  it("rebuilds exactly the state the steps left, through nested changes, a kill -9 and a resume", function()
    p:write("playbooks/pb.lua", TRACE .. [[
return playbook { steps = {
  step "start" { run = function(ctx)
    local s = ctx.state
    s.version, s.list, s.nested, s.empty, s.flags = "v1", { 1, 2, 3 }, { a = { b = { c = 1 } } }, {}, { x = true, y = false }
    s["we/ird~key"], s.zero = 1, 0.0
  end },
  step "change" { run = function(ctx)
    local s = ctx.state
    s.list[#s.list + 1] = { item = 4 }
    s.nested.a.b.c, s.nested.a.b.d = 1.0, "new"   -- an integer that becomes a float
    s.flags.x = nil
    s.empty = json.array({ "now", "an", "array" })
    s["we/ird~key"], s.zero = 2, -0.0
  end },
  step "long" { run = function(ctx)
    ctx.state.long = (ctx.state.long or 0) + 1   -- lost with the run: the step did not finish
    trace("long")
    if not os.getenv("FAST") then task.sleep(30) end
  end },
  step "shrink" { run = function(ctx)
    local s = ctx.state
    table.remove(s.list, 1)
    s.nested.a, s.version, s.deep, s.words = nil, "v2", { { {} } }, { "x" }
    s.flags = "replaced by a string"
  end },
  step "finish" { run = function(ctx)
    ctx.state.words = nil
    ctx.state.list[3].item = 5
    trace("finish")
  end },
} }]])
    local proc = p:spawn({ "run", "pb", "--output", "json" })
    assert.is_true(project.wait_for(function() return (p:read("trace.txt") or ""):find("long") end))
    proc:kill("KILL")
    local killed = proc:wait()
    local before = output_events(killed.stdout, "step_end")
    assert.are.equal(2, #before)
    local _, run_id = p:journal()
    assert.are.equal(json.encode(before[2].state), (shown_state(p, run_id)))

    local r = p:tug({ "resume", run_id, "--output", "json" }, { env = { FAST = "1" } })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local resumed = output_events(r.stdout, "run_resume")[1]
    assert.are.equal(json.encode(before[2].state), json.encode(resumed.state))
    local after = output_events(r.stdout, "step_end")
    local final = after[#after].state
    assert.are.equal(1, final.long)
    assert.are.equal(json.encode({
      deep = { { json.object() } }, empty = { "now", "an", "array" }, flags = "replaced by a string",
      list = { 2, 3, { item = 5 } }, long = 1, nested = json.object(), version = "v2", ["we/ird~key"] = 2, zero = -0.0,
    }), json.encode(final))
    assert.are.equal(json.encode(final), (shown_state(p, run_id)))
  end)

  it("shows and resumes with the state the steps left when undos changed it afterwards", function()
    p:write("playbooks/pb.lua", [[
return playbook { steps = {
  step "a" { run = function(ctx) ctx.state.deployed = "v2" end, undo = function(ctx) ctx.state.deployed = nil; ctx.state.undone = true end },
  step "b" { run = function(ctx) ctx.state.checked = true; error("health check failed") end },
} }]])
    local r = p:tug({ "run", "pb", "--output", "json" })
    assert.are.equal(1, r.code, r.stderr)
    local undo = output_events(r.stdout, "undo_end")[1]
    assert.are.same({ undone = true, checked = true }, undo.state)
    local events, run_id = p:journal()
    for _, e in ipairs(events) do
      if e.event == "undo_end" then
        assert.are.same({ { op = "add", path = "/undone", value = true }, { op = "remove", path = "/deployed" } },
          e.state_patch)
      end
    end
    -- as before patches: `tug show` has the state of the last step_end
    assert.are.equal('{"checked":true,"deployed":"v2"}', (shown_state(p, run_id)))
  end)

  it("fails a step or an undo that leaves something other than plain data in ctx.state, and stays readable", function()
    p:write("playbooks/pb.lua", [[
return playbook { steps = {
  step "a" { run = function(ctx) ctx.state.version = "v2" end,
    undo = function(ctx) ctx.state.conn = nil; ctx.state.callback = function() end end },
  step "b" { run = function(ctx) ctx.state.conn = io.stdout end },
} }]])
    local r = p:tug({ "run", "pb", "--output", "json" })
    assert.are.equal(5, r.code, r.stderr) -- b failed, and a's undo failed too
    local b = output_events(r.stdout, "step_end")[2]
    assert.are.equal("failed", b.status)
    assert.matches("ctx.state must hold plain data %(it is saved to the journal%): cannot encode a userdata at state.conn",
      b.error)
    assert.are.same({ version = "v2" }, b.state) -- as last recorded
    local undo = output_events(r.stdout, "undo_end")[1]
    assert.are.equal("failed", undo.status)
    assert.matches("cannot encode a function at state.callback", undo.error)
    local run_end = output_events(r.stdout, "run_end")[1]
    assert.are.equal("rollback-failed", run_end.status)
    local _, run_id = p:journal()
    assert.are.equal('{"version":"v2"}', (shown_state(p, run_id)))
  end)

  it("reads and resumes a journal written before patches, with the whole state on each step_end", function()
    p:write("playbooks/pb.lua", TRACE .. [[
return playbook { steps = {
  step "one" { run = function(ctx) trace("one") end },
  step "two" { run = function(ctx) trace("two") end },
  step "three" { run = function(ctx) trace("three " .. ctx.state.version .. " " .. ctx.state.hosts[2]) end },
} }]])
    local id = "20261101T000000-abcd"
    p:write(".tug/runs/" .. id .. ".jsonl", table.concat({
      '{"env":"local","event":"run_start","params":{},"path":"playbooks/pb.lua","playbook":"pb","run_id":"' .. id ..
        '","steps":["one","two","three"],"time":"2026-11-01T00:00:00.000Z"}',
      '{"event":"step_start","index":1,"name":"one","time":"2026-11-01T00:00:00.001Z"}',
      '{"attempts":1,"duration":0.1,"event":"step_end","index":1,"name":"one","state":{"version":"v1"},"status":"ok","time":"2026-11-01T00:00:00.002Z"}',
      '{"event":"step_start","index":2,"name":"two","time":"2026-11-01T00:00:00.003Z"}',
      '{"attempts":1,"duration":0.1,"event":"step_end","index":2,"name":"two","state":{"hosts":["a","b"],"version":"v1"},"status":"ok","time":"2026-11-01T00:00:00.004Z"}',
      "" }, "\n"))
    assert.are.equal('{"hosts":["a","b"],"version":"v1"}', (shown_state(p, id)))
    local r = p:tug({ "resume", id })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.same({ "three v1 b" }, p:trace())
    local text = shown_state(p, id)
    assert.are.equal('{"hosts":["a","b"],"version":"v1"}', text)
  end)

  it("resumes after a torn last line, and refuses a journal whose middle was damaged, naming the line", function()
    p:write("playbooks/pb.lua", TRACE .. [[
return playbook { steps = {
  step "one" { run = function(ctx) ctx.state.n = 1 end },
  step "two" { run = function(ctx) ctx.state.n = ctx.state.n + 1; trace("two " .. ctx.state.n) end },
} }]])
    local function head(id)
      return '{"env":"local","event":"run_start","params":{},"path":"playbooks/pb.lua","playbook":"pb","run_id":"' ..
        id .. '","steps":["one","two"],"time":"2026-11-01T00:00:00.000Z"}\n' ..
        '{"attempts":1,"duration":0.1,"event":"step_end","index":1,"name":"one","state_patch":' ..
        '[{"op":"add","path":"/n","value":1}],"status":"ok","time":"2026-11-01T00:00:00.002Z"}'
    end
    local id = "20261101T000000-beef"
    -- the run died while writing step two's end: half a line, no newline
    p:write(".tug/runs/" .. id .. ".jsonl", head(id) ..
      '\n{"attempts":1,"duration":0.1,"event":"step_end","index":2,"name":"two","state_pa')
    local r = p:tug({ "resume", id })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.same({ "two 2" }, p:trace())
    assert.are.equal('{"n":2}', (shown_state(p, id)))
    local journal_lines = lines_of(p:read(".tug/runs/" .. id .. ".jsonl"))
    assert.matches('"state_pa$', journal_lines[3])  -- the torn line ended where it was torn
    assert.matches('^{.*"event":"run_resume"', journal_lines[4])

    -- a line lost in the middle: the patches after it cannot be applied
    local damaged = "20261101T000000-dead"
    local first, second = head(damaged):match("^([^\n]*)\n(.*)$")
    p:write(".tug/runs/" .. damaged .. ".jsonl", first .. "\nnot json at all\n" .. second .. "\n")
    r = p:tug({ "resume", damaged })
    assert.are.equal(2, r.code)
    local quoted = damaged:gsub("%p", "%%%0")
    assert.matches("cannot resume run " .. quoted .. ": its saved state cannot be rebuilt from " ..
      "%.tug/runs/" .. quoted .. "%.jsonl: line 2 of the journal is not JSON", r.stderr)
    local state, shown = shown_state(p, damaged)
    assert.is_nil(state:match("^{"))
    assert.matches("state: cannot be rebuilt from .*line 2 of the journal is not JSON", shown.stdout)
  end)
end)

describe("journal.diff and journal.apply_patch", function()
  local journal = require("tug.journal")

  -- A random plain value, a few levels deep.
  local function random_value(depth)
    local kind = math.random(depth > 2 and 5 or 8)
    if kind == 1 then return math.random(-3, 3) end
    if kind == 2 then return math.random(-3, 3) + 0.5 end
    if kind == 3 then return ({ "a", "b/c", "d~e", "" })[math.random(4)] end
    if kind == 4 then return math.random(2) == 1 end
    if kind == 5 then return json.null end
    local t = {}
    if kind == 6 then
      for i = 1, math.random(0, 4) do t[i] = random_value(depth + 1) end
    else
      for _ = 1, math.random(0, 4) do t[({ "x", "y", "z", "w/v", "~" })[math.random(5)]] = random_value(depth + 1) end
    end
    return t
  end

  -- Changes one place in t at random: sets, removes, appends, shifts an array.
  local function mutate(t, depth)
    local keys = {}
    for k in pairs(t) do keys[#keys + 1] = k end
    local array = #t > 0
    local k = keys[math.random(math.max(#keys, 1))]
    local action = math.random(6)
    if k ~= nil and type(t[k]) == "table" and action <= 3 and depth < 4 then return mutate(t[k], depth + 1) end
    if array then
      if action == 4 then table.remove(t, math.random(#t)) elseif action == 5 then t[#t + 1] = random_value(depth)
      else t[math.random(#t)] = random_value(depth) end
    elseif action == 4 and k ~= nil then
      t[k] = nil
    else
      t[({ "x", "y", "z", "w/v", "~", "n" })[math.random(6)]] = random_value(depth)
    end
  end

  it("rebuild exactly what encoding the live state gives, over thousands of random changes", function()
    math.randomseed(7)
    local live = { root = random_value(0), list = { 1, 2, 3 } }
    local recorded = json.decode(json.encode(live))
    for round = 1, 3000 do
      for _ = 1, math.random(3) do mutate(live, 0) end
      if round % 500 == 0 then live.root = random_value(0) end
      local text = json.encode(journal.diff(recorded, live))
      recorded = journal.apply_patch(recorded, json.decode(text))
      assert.are.equal(json.encode(live), json.encode(recorded), "round " .. round .. ": " .. text)
    end
  end)

  it("names an op that does not fit the state", function()
    local ok, err = pcall(journal.apply_patch, json.decode('{"a":1}'), { { op = "replace", path = "/b/c", value = 1 } })
    assert.is_false(ok)
    assert.matches("no /b/c in the state", err)
    ok, err = pcall(journal.apply_patch, json.decode('{"a":[1]}'), { { op = "add", path = "/a/x", value = 1 } })
    assert.is_false(ok)
    assert.matches("'x' is not an array index", err)
  end)
end)

describe("pruning journals", function()
  local p
  before_each(function() p = project.new() end)
  after_each(function() p:remove() end)

  -- A journal of a run of pb that started at `time` and ended with `status` (nil: it died).
  local function old_run(id, time, status, extra)
    local lines = {
      json.encode({ event = "run_start", run_id = id, playbook = "pb", path = "playbooks/pb.lua", env = "local",
        params = json.object(), steps = { "a" }, time = time, pid = extra and extra.pid, host = extra and extra.host }),
    }
    if status then
      lines[2] = json.encode({ event = "run_end", run_id = id, playbook = "pb", status = status, time = time })
    end
    p:write(".tug/runs/" .. id .. ".jsonl", table.concat(lines, "\n") .. "\n")
  end

  local function ids(p_)
    local out = {}
    for _, e in ipairs(tug.sys.listdir(p_.dir .. "/.tug/runs") or {}) do out[#out + 1] = e.name:match("^(.+)%.jsonl$") end
    table.sort(out)
    return out
  end

  it("keeps the newest N and the unfinished, says what it removed, and removes nothing with --dry-run", function()
    old_run("20260101T000000-0001", "2026-01-01T00:00:00.000Z", "succeeded")
    old_run("20260102T000000-0002", "2026-01-02T00:00:00.000Z", "rolled-back")
    old_run("20260103T000000-0003", "2026-01-03T00:00:00.000Z", nil) -- died: resumable
    old_run("20260104T000000-0004", "2026-01-04T00:00:00.000Z", "failed")
    old_run("20260105T000000-0005", "2026-01-05T00:00:00.000Z", "succeeded")
    local r = p:tug({ "runs", "--prune", "--keep", "2", "--dry-run" })
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("would remove  20260102T000000%-0002%s+pb%s+local%s+rolled%-back", r.stdout)
    assert.matches("would remove  20260101T000000%-0001", r.stdout)
    assert.matches("kept  20260103T000000%-0003 .*%(unfinished: resume it, or prune it with %-%-unfinished%)", r.stdout)
    assert.matches("would remove 2 runs of 5 in %.tug/runs", r.stdout)
    assert.are.equal(5, #ids(p))

    r = p:tug({ "runs", "--prune", "--keep", "2" })
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("removed  20260101T000000%-0001", r.stdout)
    assert.matches("removed 2 runs of 5", r.stdout)
    assert.are.same({ "20260103T000000-0003", "20260104T000000-0004", "20260105T000000-0005" }, ids(p))

    -- asked to, it removes an unfinished run whose process is gone
    r = p:tug({ "runs", "--prune", "--keep", "2", "--unfinished" })
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("removed  20260103T000000%-0003%s+pb%s+local%s+running", r.stdout)
    assert.are.same({ "20260104T000000-0004", "20260105T000000-0005" }, ids(p))
  end)

  it("removes runs older than a duration, never one whose process is still running", function()
    local recent = time.format(time.now() - 3600, "%Y-%m-%dT%H:%M:%S") .. ".000Z"
    old_run("20250101T000000-0001", "2025-01-01T00:00:00.000Z", "succeeded")
    old_run("20250102T000000-0002", "2025-01-02T00:00:00.000Z", nil,
      { pid = tug.sys.pid(), host = tug.sys.hostname() }) -- this very process: alive
    old_run("20990101T000000-0003", recent, "succeeded")
    local r = p:tug({ "runs", "--prune", "--older-than", "30d", "--unfinished" })
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("removed 1 run of 3", r.stdout)
    assert.matches("kept  20250102T000000%-0002", r.stdout)
    assert.are.same({ "20250102T000000-0002", "20990101T000000-0003" }, ids(p))
    -- both rules: a run goes when it is past the newest N and older than the age
    old_run("20250103T000000-0004", "2025-01-03T00:00:00.000Z", "succeeded")
    r = p:tug({ "runs", "--prune", "--older-than", "30d", "--keep", "3" })
    assert.matches("removed 0 runs of 3", r.stdout)
  end)

  it("applies TUG_RETAIN_RUNS and TUG_RETAIN_AGE after each run, and refuses bad settings before running", function()
    p:write("playbooks/pb.lua", 'return playbook { steps = { step "a" { run = function() end } } }')
    old_run("20250101T000000-0001", "2025-01-01T00:00:00.000Z", "succeeded")
    old_run("20250102T000000-0002", "2025-01-02T00:00:00.000Z", nil)
    local r = p:tug({ "run", "pb" }, { env = { TUG_RETAIN_RUNS = "0" } })
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("removed 1 run past the retention", r.stderr)
    local left = ids(p)
    assert.are.equal(2, #left) -- the run that just ended, and the unfinished one
    assert.are.equal("20250102T000000-0002", left[1])

    r = p:tug({ "run", "pb" }, { env = { TUG_RETAIN_AGE = "forever" } })
    assert.are.equal(2, r.code)
    assert.matches("TUG_RETAIN_AGE: 'forever' is not a duration", r.stderr)
    assert.are.equal(2, #ids(p)) -- nothing ran
    r = p:tug({ "runs", "--prune" }, { env = { TUG_RETAIN_RUNS = "-3" } })
    assert.are.equal(2, r.code)
    assert.matches("TUG_RETAIN_RUNS must be a whole number of runs to keep, not '%-3'", r.stderr)
    old_run("20250103T000000-0003", "2025-01-03T00:00:00.000Z", "succeeded")
    r = p:tug({ "runs", "--prune" }, { env = { TUG_RETAIN_AGE = "1h" } })
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("removed  20250103T000000%-0003", r.stdout)
    assert.matches("removed 1 run of 3", r.stdout) -- the old unfinished run and the new one stay
  end)

  it("is in tug help", function()
    local r = p:tug({ "help", "runs" })
    for _, want in ipairs({ "--prune", "--keep N", "--older-than D", "--unfinished", "--dry-run", "TUG_RETAIN_RUNS" }) do
      assert.is_truthy(r.stdout:find(want, 1, true), want)
    end
  end)

  it("says how to ask when --prune has no rule, or a prune option comes without --prune", function()
    local r = p:tug({ "runs", "--prune" })
    assert.are.equal(2, r.code)
    assert.matches("needs %-%-keep N or %-%-older%-than DURATION %(or the retention settings TUG_RETAIN_RUNS", r.stderr)
    r = p:tug({ "runs", "--keep", "3" })
    assert.are.equal(2, r.code)
    assert.matches("%-%-keep goes with %-%-prune", r.stderr)
    r = p:tug({ "runs", "--prune", "--keep", "many" })
    assert.are.equal(2, r.code)
    assert.matches("%-%-keep must be a whole number of runs, not 'many'", r.stderr)
    r = p:tug({ "runs", "--prune", "--older-than", "99999999999999999999h" })
    assert.are.equal(2, r.code)
    assert.matches("%-%-older%-than: '99999999999999999999h' is longer than the longest duration", r.stderr)
  end)
end)

describe("the journal over kill -9", function()
  local p
  before_each(function() p = project.new() end)
  after_each(function() p:remove() end)

  it("ends every run killed at random points, once resumed, with the state of a run never killed", function()
    local steps = {}
    for i = 1, 100 do
      steps[i] = string.format([[  step "s%d" { run = function(ctx)
    local s = ctx.state
    s.n = (s.n or 0) + 1
    s.items = s.items or {}
    s.items[#s.items + 1] = %d
    s.map = s.map or {}
    s.map["k%d"] = { i = %d, half = %d / 2 }
    if %d %% 10 == 0 then s.map["k%d"] = nil; table.remove(s.items, 1) end
    task.sleep(0.002)
  end },]], i, i, i, i, i, i, i - 5)
    end
    p:write("playbooks/pb.lua", "return playbook { steps = {\n" .. table.concat(steps, "\n") .. "\n} }")
    local clean = p:tug({ "run", "pb" })
    assert.are.equal(0, clean.code, clean.stderr)
    local _, clean_id = p:journal()
    local want = shown_state(p, clean_id)
    exec.run({ "rm", "-rf", p.dir .. "/.tug" })

    math.randomseed(os.time())
    local proc = p:spawn({ "run", "pb" })
    assert.is_true(project.wait_for(function() -- a step ended: the run has a journal to resume
      local runs = tug.sys.listdir(p.dir .. "/.tug/runs") or {}
      return runs[1] and (p:read(".tug/runs/" .. runs[1].name) or ""):find('"event":"step_end"', 1, true)
    end))
    task.sleep(math.random() * 0.1)
    proc:kill("KILL")
    proc:wait()
    local _, run_id = p:journal()
    local kills, status = 1, "running"
    local path = ".tug/runs/" .. run_id .. ".jsonl"
    while status == "running" do
      local size = #p:read(path)
      proc = p:spawn({ "resume", run_id })
      -- kill it once it has done something (a step, or the end), at a random point after
      assert.is_true(project.wait_for(function()
        local text = p:read(path)
        return text:find('"event":"step_end"', size + 1, true) or text:find('"event":"run_end"', size + 1, true)
      end, 60))
      task.sleep(math.random() * 0.1)
      proc:kill("KILL")
      local r = proc:wait()
      -- killed, or it finished first
      assert.is_true(r.signal == "KILL" or r.code == 0, "resume " .. kills .. ": " .. tostring(r.code) .. " " .. r.stderr)
      kills = kills + 1
      local shown = p:tug({ "show", run_id })
      assert.are.equal(0, shown.code, shown.stderr)
      assert.is_nil(shown.stdout:find("cannot be rebuilt", 1, true), shown.stdout)
      status = shown.stdout:match("^run %S+: pb on local: (%S+)")
      assert.is_true(kills < 100, "never finished")
    end
    assert.are.equal("succeeded", status)
    assert.is_true(kills > 1, "the run was never resumed")
    assert.are.equal(want, (shown_state(p, run_id)))
  end)
end)
