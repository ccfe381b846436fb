-- every_spec.lua: `tug run NAME --every DURATION [--metrics-listen ADDR:PORT]`, the real
-- binary in a throwaway project: repeated runs with their own journals, /metrics scraped
-- with the http client and by a real Prometheus, SIGTERM between and during runs, a
-- failed rollback ending the loop, a held lock, and bad flags.
package.path = "spec/support/?.lua;" .. package.path
local project = require("project")
local fixture = require("fixture")
local prometheus = require("prometheus")

-- Playbook code: count() returns how many runs came before this one (0 for the first),
-- kept in count.txt in the project.
local COUNTER = [[
local function count()
  local f = io.open("count.txt")
  local n = f and tonumber(f:read("a")) or 0
  if f then f:close() end
  f = io.open("count.txt", "w")
  f:write(tostring(n + 1))
  f:close()
  return n
end
]]

-- A counter file makes every other run fail; the step name needs escaping in labels.
local ALTERNATING = COUNTER .. [[
return playbook { steps = {
  step "count" {
    run = function(ctx) ctx.state.n = count() end,
    undo = function() end,
  },
  step 'say "hi" \\ there' { run = function(ctx)
    if ctx.state.n % 2 == 1 then error("an odd run fails") end
  end },
} }
]]

local function trace_code(p)
  return string.format([[
local function trace(line)
  local f = io.open(%q, "a")
  f:write(line, "\n")
  f:close()
end
]], p.dir .. "/trace.txt")
end

-- Parses the text exposition format: { ['name{labels}'] = value }, plus the HELP and
-- TYPE lines by metric name.
local function parse(text)
  local samples, help, types = {}, {}, {}
  for line in text:gmatch("[^\n]+") do
    local name, doc = line:match("^# HELP (%S+) (.*)$")
    if name then help[name] = doc end
    local tname, kind = line:match("^# TYPE (%S+) (%S+)$")
    if tname then types[tname] = kind end
    if not line:match("^#") then
      local series, value = line:match("^(.-) (%S+)$")
      samples[series] = tonumber(value)
    end
  end
  return samples, help, types
end

local function scrape(port)
  local r = http.get("http://127.0.0.1:" .. port .. "/metrics", { timeout = 2 })
  if r.status ~= 200 then return nil end
  return parse(r.body)
end

local function runs_total(samples, status, playbook)
  return samples and samples[string.format('tug_runs_total{playbook="%s",env="local",status="%s"}',
    playbook or "alt", status)]
end

-- The journals' file names, in the order the runs started.
local function journals(p)
  local list, started = {}, {}
  for _, e in ipairs(tug.sys.listdir(p.dir .. "/.tug/runs") or {}) do
    if e.name:match("%.jsonl$") then
      for line in io.lines(p.dir .. "/.tug/runs/" .. e.name) do
        local ok, event = pcall(json.decode, line)
        started[e.name] = ok and event.time or nil
        break
      end
      -- a journal that is being created has no whole line yet
      if started[e.name] then list[#list + 1] = e.name end
    end
  end
  table.sort(list, function(a, b) return started[a] < started[b] end)
  return list
end

local function run_end_of(p, name)
  for line in io.lines(p.dir .. "/.tug/runs/" .. name) do
    local e = json.decode(line)
    if e.event == "run_end" then return e end
  end
end

describe("tug run --every", function()
  local p, proc

  before_each(function()
    p = project.new()
    p:write("playbooks/alt.lua", ALTERNATING)
  end)

  after_each(function()
    if proc then
      proc:kill("KILL")
      pcall(proc.wait, proc)
      proc:close()
      proc = nil
    end
    p:remove()
  end)

  it("repeats a run that alternates success and failure, each with its own journal, and /metrics follows", function()
    local port = fixture.free()
    proc = p:spawn({ "run", "alt", "--every", "300ms", "--metrics-listen", "127.0.0.1:" .. port, "--output", "json" })
    local seen_success = {}
    local samples, help, types, last
    assert.is_true(project.wait_for(function()
      local s, h, t = scrape(port)
      if s then
        samples, help, types = s, h, t
        local v = s['tug_run_success{playbook="alt",env="local"}']
        if v then seen_success[v] = true end
      end
      return (runs_total(samples, "succeeded") or 0) >= 2 and (runs_total(samples, "rolled-back") or 0) >= 2
        and seen_success[0] and seen_success[1]
    end, 15), "the counters did not move: " .. json.encode(samples or {}))
    -- every family is announced with HELP and TYPE
    for name, kind in pairs({ tug_run_in_progress = "gauge", tug_run_success = "gauge", tug_run_status = "gauge",
      tug_run_duration_seconds = "gauge", tug_run_last_end_timestamp_seconds = "gauge", tug_runs_total = "counter",
      tug_step_success = "gauge", tug_step_duration_seconds = "gauge" }) do
      assert.are.equal(kind, types[name], name)
      assert.is_truthy(help[name], name)
    end
    -- statuses that never happened are counted from zero, so rate() works from the start
    assert.are.equal(0, runs_total(samples, "rollback-failed"))
    -- the step's name is escaped as a label value
    local step = 'tug_step_duration_seconds{playbook="alt",env="local",step="say \\"hi\\" \\\\ there"}'
    assert.is_truthy(samples[step], "no " .. step .. " in " .. json.encode(samples))
    local ended = samples['tug_run_last_end_timestamp_seconds{playbook="alt",env="local"}']
    assert.is_true(math.abs(ended - time.now()) < 5)
    last = http.get("http://127.0.0.1:" .. port .. "/nothing")
    assert.are.equal(404, last.status)

    proc:kill("TERM")
    local r = proc:wait()
    proc:close()
    proc = nil
    -- stopped between runs (130) or during one (4, rolled back): see the dedicated tests
    assert.is_true(r.code == 130 or r.code == 4, tostring(r.code) .. r.stderr)
    local names = journals(p)
    assert.is_true(#names >= 4)
    local statuses = {}
    for _, name in ipairs(names) do statuses[#statuses + 1] = (run_end_of(p, name) or {}).status end
    assert.are.equal("succeeded", statuses[1])
    assert.are.equal("rolled-back", statuses[2])
    assert.are.equal("succeeded", statuses[3])
    assert.are.equal("rolled-back", statuses[4])
    -- one run_end per run on stdout, each with its own run id
    local ids = {}
    for line in r.stdout:gmatch("[^\n]+") do
      local e = json.decode(line)
      if e.event == "run_end" then
        assert.is_nil(ids[e.run_id])
        ids[e.run_id] = true
      end
    end
  end)

  it("tells the environment's notify channels of the first run and then only of changes", function()
    local posts = {}
    local srv = http.server({ port = 0, handler = function(req)
      posts[#posts + 1] = json.decode(req.body)
      return { status = 200, body = "ok" }
    end })
    -- runs 1-2 succeed, 3-4 fail, 5 onwards succeed
    p:write("playbooks/flaky.lua", COUNTER .. [[
return playbook { steps = {
  step "count" { run = function()
    local n = count()
    if n == 2 or n == 3 then error("run " .. (n + 1) .. " fails") end
  end },
} }
]])
    p:write("environments/local.yaml", string.format(
      "name: local\nnotify:\n  audit:\n    type: webhook\n    url: http://127.0.0.1:%d/hook\n", srv.port))
    proc = p:spawn({ "run", "flaky", "--every", "200ms", "--output", "json" })
    assert.is_true(project.wait_for(function()
      local f = io.open(p.dir .. "/count.txt")
      local n = f and tonumber(f:read("a")) or 0
      if f then f:close() end
      return n >= 7
    end, 15))
    proc:kill("TERM")
    proc:wait()
    proc:close()
    proc = nil
    srv:close()
    local seen = {}
    for _, post in ipairs(posts) do seen[#seen + 1] = post.event end
    assert.are.same({ "started", "succeeded", "failed", "succeeded" }, seen)
  end)

  it("stops at once with exit 130 on SIGTERM between runs", function()
    local port = fixture.free()
    proc = p:spawn({ "run", "alt", "--every", "1h", "--metrics-listen", "127.0.0.1:" .. port })
    assert.is_true(project.wait_for(function()
      local s = scrape(port)
      return runs_total(s, "succeeded") == 1 and s['tug_run_in_progress{playbook="alt",env="local"}'] == 0
    end, 10))
    local t0 = time.monotonic()
    proc:kill("TERM")
    local r = proc:wait()
    proc:close()
    proc = nil
    assert.are.equal(130, r.code, r.stderr)
    assert.matches("tug: the loop stopped after 1 run (1 succeeded)", r.stderr, 1, true)
    assert.is_true(time.monotonic() - t0 < 3)
    assert.are.equal(1, #journals(p))
    assert.is_nil(http.get("http://127.0.0.1:" .. port .. "/metrics", { timeout = 1 }).status)
  end)

  it("rolls back the run that SIGTERM interrupts, then stops with exit 4", function()
    p:write("playbooks/slow.lua", trace_code(p) .. [[
return playbook { steps = {
  step "prepare" { run = function() trace("prepared") end, undo = function() trace("undone") end },
  step "wait" { run = function() trace("waiting") task.sleep(30) end },
} }
]])
    proc = p:spawn({ "run", "slow", "--every", "1s" })
    assert.is_true(project.wait_for(function() return (p:read("trace.txt") or ""):find("waiting") end))
    proc:kill("TERM")
    local r = proc:wait()
    proc:close()
    proc = nil
    assert.are.equal(4, r.code, r.stdout .. r.stderr)
    assert.matches("tug: the loop stopped after 1 run (1 rolled-back)", r.stderr, 1, true)
    assert.are.equal("prepared\nwaiting\nundone\n", p:read("trace.txt"))
    local names = journals(p)
    assert.are.equal(1, #names)
    local e = run_end_of(p, names[1])
    assert.are.equal("rolled-back", e.status)
    assert.is_true(e.interrupted)
  end)

  it("starts the next run at once after one that overran the interval, never two at a time", function()
    p:write("playbooks/slow.lua", 'return playbook { steps = { step "a" { run = function() task.sleep(0.6) end } } }')
    proc = p:spawn({ "run", "slow", "--every", "400ms" })
    assert.is_true(project.wait_for(function() return #journals(p) >= 3 end, 10))
    proc:kill("TERM")
    proc:wait()
    local runs = {}
    for i, name in ipairs(journals(p)) do
      local first, last
      for line in io.lines(p.dir .. "/.tug/runs/" .. name) do
        local e = json.decode(line)
        if e.event == "run_start" then first = e.time end
        if e.event == "run_end" then last = e.time end
      end
      runs[i] = { start = first, finish = last }
    end
    local function seconds(stamp)
      local h, m, s = stamp:match("T(%d+):(%d+):([%d%.]+)Z$")
      return tonumber(h) * 3600 + tonumber(m) * 60 + tonumber(s)
    end
    for i = 2, 3 do
      local gap = seconds(runs[i].start) - seconds(runs[i - 1].finish)
      assert.is_true(gap >= 0 and gap < 0.2, "gap " .. gap)
    end
  end)

  it("ends the loop with exit 5 when a rollback fails", function()
    p:write("playbooks/broken.lua", [[
return playbook { steps = {
  step "change" { run = function() end, undo = function() error("cannot put it back") end },
  step "fail" { run = function() error("boom") end },
} }
]])
    local r = p:tug({ "run", "broken", "--every", "100ms" }, { timeout = 20 })
    assert.are.equal(5, r.code, r.stdout .. r.stderr)
    assert.matches("a rollback failed: the loop stops", r.stderr)
    assert.are.equal(1, #journals(p))
  end)

  it("counts a run whose lock is held as locked and goes on", function()
    p:write("playbooks/locked.lua",
      'return playbook { lock = "deploy", steps = { step "a" { run = function() end } } }')
    p:write(".tug/locks/local--deploy.lock", json.encode({ host = tug.sys.hostname(), pid = tug.sys.pid(),
      run_id = "someone-else", playbook = "deploy", since = time.format(), lock = "deploy", env = "local" }))
    local port = fixture.free()
    proc = p:spawn({ "run", "locked", "--every", "200ms", "--metrics-listen", tostring(port) })
    assert.is_true(project.wait_for(function()
      local s = scrape(port)
      return (runs_total(s, "locked", "locked") or 0) >= 2
        and s['tug_run_status{playbook="locked",env="local",status="locked"}'] == 1
    end, 10))
    os.remove(p.dir .. "/.tug/locks/local--deploy.lock")
    assert.is_true(project.wait_for(function()
      return (runs_total(scrape(port), "succeeded", "locked") or 0) >= 1
    end, 10))
    proc:kill("TERM")
    local r = proc:wait()
    assert.matches("lock 'deploy' on local is held by run someone%-else", r.stderr)
  end)

  it("refuses bad values with exit 2, naming the flag, and runs nothing", function()
    local cases = {
      { { "run", "alt", "--every", "soon" }, "%-%-every must be a duration such as 30s or 5m %(got 'soon'%)" },
      { { "run", "alt", "--every", "0s" }, "%-%-every must be more than 0" },
      { { "run", "alt", "--every", "1s", "--metrics-listen", "here" }, "%-%-metrics%-listen must be ADDRESS:PORT" },
      { { "run", "alt", "--every", "1s", "--metrics-listen", "127.0.0.1:70000" }, "%-%-metrics%-listen must be" },
      { { "run", "alt", "--every", "1s", "--metrics-listen", "example.com:9464" }, "needs an IP address" },
      { { "run", "alt", "--metrics-listen", "127.0.0.1:9464" }, "%-%-metrics%-listen needs %-%-every" },
      { { "run", "alt", "--every", "1s", "--step" }, "%-%-every runs unattended" },
      { { "plan", "alt", "--every", "1s" }, "'tug plan' has no option %-%-every" },
    }
    for _, c in ipairs(cases) do
      local r = p:tug(c[1])
      assert.are.equal(2, r.code, table.concat(c[1], " ") .. ": " .. r.stderr)
      assert.matches(c[2], r.stderr)
    end
    local busy <close> = http.server({ port = 0, handler = function() return 200 end })
    local r = p:tug({ "run", "alt", "--every", "1s", "--metrics-listen", "127.0.0.1:" .. busy.port })
    assert.are.equal(2, r.code, r.stderr)
    assert.matches("%-%-metrics%-listen 127%.0%.0%.1:" .. busy.port .. ": .*address already in use", r.stderr)
    assert.are.equal(0, #journals(p))
    assert.is_nil(p:read("count.txt"))
  end)

  it("is scraped by a real Prometheus: tug_runs_total counts the runs", function()
    local port = fixture.free()
    proc = p:spawn({ "run", "alt", "--every", "1h", "--metrics-listen", "127.0.0.1:" .. port }, { timeout = 60 })
    assert.is_true(project.wait_for(function() return runs_total(scrape(port), "succeeded") == 1 end, 10))
    local prom <close> = prometheus.start({ scrape_interval = "200ms",
      targets = { { address = "127.0.0.1:" .. port, close = function() end } } })
    local result = prom:wait_for("tug_runs_total", function(list)
      for _, s in ipairs(list) do
        if s.metric.status == "succeeded" and s.value[2] == "1" then return true end
      end
    end, 20)
    local total = 0
    for _, s in ipairs(result) do
      assert.are.equal("alt", s.metric.playbook)
      assert.are.equal("local", s.metric.env)
      total = total + tonumber(s.value[2])
    end
    assert.are.equal(1, total)
    assert.are.equal(6, #result) -- one series per status, zeros included
  end)
end)
