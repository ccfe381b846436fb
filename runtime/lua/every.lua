-- every.lua: `tug run NAME --every DURATION`, a playbook run again and again (synthetic
-- monitoring such as `tug run smoke --every 5m`). Each repetition is a whole engine run,
-- with its own run id, journal and lock; a failed run does not stop the loop. With
-- --metrics-listen, the outcomes are served in Prometheus' text format on /metrics.
--
-- The loop wraps each run's reporter to see its events (run_end, step_end) and keeps the
-- figures from them; the engine only tells it of interrupts (opts.on_interrupt).

local engine = require("tug.engine")

local M = {}

local EXIT = engine.EXIT
-- The loop stopped by Ctrl-C or SIGTERM while it waited between runs (nothing was running).
M.EXIT_STOPPED = 130

-- Every status a run can end with in the loop; "locked" is a run that could not start
-- because another run held the playbook's lock.
M.STATUSES = { "succeeded", "failed", "rolled-back", "rollback-failed", "aborted", "locked" }

local function usage(fmt, ...)
  error(tug.error.new("usage", string.format(fmt, ...)), 0)
end

-- "5m" -> 300; or nil and a message naming --every.
function M.parse_interval(text)
  local seconds = time.parse_duration(text)
  if not seconds then return nil, string.format("--every must be a duration such as 30s or 5m (got '%s')", text) end
  if seconds <= 0 then return nil, string.format("--every must be more than 0 (got '%s')", text) end
  return seconds
end

-- "127.0.0.1:9464", "[::1]:9464", "localhost:9464", "0.0.0.0:9464" or a bare port (on
-- 127.0.0.1) -> host, port; or nil and a message naming --metrics-listen. Port 0 picks a
-- free one (tug says which on stderr).
function M.parse_listen(text)
  local host, port = text:match("^%[([%x:]+)%]:(%d+)$")
  if not host then host, port = text:match("^([%w%.%-]+):(%d+)$") end
  if not host and text:match("^%d+$") then host, port = "127.0.0.1", text end
  port = tonumber(port)
  if not host or not port or port > 65535 then
    return nil, string.format("--metrics-listen must be ADDRESS:PORT such as 127.0.0.1:9464 (got '%s')", text)
  end
  if host == "localhost" then host = "127.0.0.1" end
  if not host:match("^[%d%.]+$") and not host:find(":", 1, true) then
    return nil, string.format("--metrics-listen needs an IP address, not the host name '%s'", host)
  end
  return host, math.tointeger(port)
end

-- ---- the figures and their exposition ----

local Registry = {}
Registry.__index = Registry

function M.registry()
  return setmetatable({ series = {}, order = {} }, Registry)
end

-- The figures of one playbook on one environment.
function Registry:of(playbook, env)
  local key = playbook .. "\0" .. env
  local s = self.series[key]
  if not s then
    s = { playbook = playbook, env = env, totals = {}, in_progress = 0 }
    for _, status in ipairs(M.STATUSES) do s.totals[status] = 0 end
    self.series[key] = s
    self.order[#self.order + 1] = key
  end
  return s
end

-- Records a run that ended: { status, duration, ended_at, steps = { { name, ok, duration } } }.
function Registry:record(playbook, env, run)
  local s = self:of(playbook, env)
  s.totals[run.status] = (s.totals[run.status] or 0) + 1
  s.last = run
end

-- Prometheus' text format escapes \, " and newlines in label values, \ and newlines in HELP.
local function label_value(v)
  return (tostring(v):gsub("[\\\"\n]", { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end

local function labels(s, extra_name, extra_value)
  local text = string.format('playbook="%s",env="%s"', label_value(s.playbook), label_value(s.env))
  if extra_name then text = text .. string.format(',%s="%s"', extra_name, label_value(extra_value)) end
  return "{" .. text .. "}"
end

-- The shortest text that reads back as the same number.
local function number(v)
  if math.type(v) == "integer" then return string.format("%d", v) end
  if v ~= v then return "NaN" end
  if v == math.huge then return "+Inf" end
  if v == -math.huge then return "-Inf" end
  local text = string.format("%.15g", v)
  if tonumber(text) ~= v then text = string.format("%.17g", v) end
  return text
end

local FAMILIES = {
  { "tug_run_in_progress", "gauge", "1 while a run of the playbook is going on, else 0." },
  { "tug_run_success", "gauge", "1 when the last run succeeded, 0 when it did not." },
  { "tug_run_status", "gauge", "The status the last run ended with: 1 for that status, 0 for the others." },
  { "tug_run_duration_seconds", "gauge", "How long the last run took, in seconds." },
  { "tug_run_last_end_timestamp_seconds", "gauge", "When the last run ended, in seconds since the Unix epoch." },
  { "tug_runs_total", "counter", "Runs that ended since this tug started, by status." },
  { "tug_step_success", "gauge",
    "1 when the step succeeded in the last run, 0 when it failed (steps that did not run are left out)." },
  { "tug_step_duration_seconds", "gauge",
    "How long the step took in the last run, in seconds (steps that did not run are left out)." },
}

-- The samples of one family for one playbook and environment.
local function samples(name, s, out)
  local last = s.last
  if name == "tug_run_in_progress" then
    out[#out + 1] = name .. labels(s) .. " " .. number(s.in_progress)
  elseif name == "tug_runs_total" then
    for _, status in ipairs(M.STATUSES) do
      out[#out + 1] = name .. labels(s, "status", status) .. " " .. number(s.totals[status])
    end
  elseif not last then
    return
  elseif name == "tug_run_success" then
    out[#out + 1] = name .. labels(s) .. " " .. (last.status == "succeeded" and "1" or "0")
  elseif name == "tug_run_status" then
    for _, status in ipairs(M.STATUSES) do
      out[#out + 1] = name .. labels(s, "status", status) .. " " .. (last.status == status and "1" or "0")
    end
  elseif name == "tug_run_duration_seconds" then
    out[#out + 1] = name .. labels(s) .. " " .. number(last.duration)
  elseif name == "tug_run_last_end_timestamp_seconds" then
    out[#out + 1] = name .. labels(s) .. " " .. number(last.ended_at)
  elseif name == "tug_step_success" then
    for _, step in ipairs(last.steps) do
      out[#out + 1] = name .. labels(s, "step", step.name) .. " " .. (step.ok and "1" or "0")
    end
  elseif name == "tug_step_duration_seconds" then
    for _, step in ipairs(last.steps) do
      out[#out + 1] = name .. labels(s, "step", step.name) .. " " .. number(step.duration)
    end
  end
end

-- The text exposition format (version 0.0.4), every family with its HELP and TYPE.
function Registry:exposition()
  local out = {}
  for _, family in ipairs(FAMILIES) do
    out[#out + 1] = "# HELP " .. family[1] .. " " .. family[3]
    out[#out + 1] = "# TYPE " .. family[1] .. " " .. family[2]
    for _, key in ipairs(self.order) do samples(family[1], self.series[key], out) end
  end
  return table.concat(out, "\n") .. "\n"
end

function Registry:handler()
  return function(req)
    if req.method ~= "GET" and req.method ~= "HEAD" then
      return 405, { allow = "GET, HEAD" }, "only GET and HEAD\n"
    end
    if req.path == "/metrics" then
      return 200, { ["content-type"] = "text/plain; version=0.0.4; charset=utf-8" }, self:exposition()
    end
    if req.path == "/" then return 200, nil, "tug: the metrics are on /metrics\n" end
    return 404, nil, "not found: the metrics are on /metrics\n"
  end
end

-- ---- the loop ----

-- A reporter that passes every event on and remembers what the metrics need.
local function observing(reporter, seen)
  seen.steps = {}
  return {
    event = function(e, line)
      reporter.event(e, line)
      if e.event == "step_end" and (e.status == "ok" or e.status == "failed") then
        seen.steps[#seen.steps + 1] = { name = e.name, ok = e.status == "ok", duration = e.duration or 0 }
      elseif e.event == "run_end" then
        seen.status, seen.duration, seen.interrupted = e.status, e.duration, e.interrupted
      end
    end,
    prompt_start = reporter.prompt_start, prompt_end = reporter.prompt_end, prompt_note = reporter.prompt_note,
    lines = reporter.lines, -- whether each event's JSON line is printed (--output json)
  }
end

-- Runs the loop. opts: interval (seconds), listen (nil or { host, port }), playbook, env
-- (names for the labels), new_reporter() -> a reporter for one run, run(reporter,
-- on_interrupt) -> the run's exit code (the engine calls on_interrupt when the run is
-- interrupted, so the loop stops after it). Returns the exit code: 4 when Ctrl-C or
-- SIGTERM stopped a run (rolled back as usual), 130 when they came between runs, 5 when a
-- run's rollback failed (the loop stops: repeating a playbook on a world in an unknown
-- state is not safe).
function M.loop(opts)
  local registry = M.registry()
  local figures = registry:of(opts.playbook, opts.env)
  local server
  if opts.listen then
    local ok, srv = pcall(http.server, { host = opts.listen.host, port = opts.listen.port,
      handler = registry:handler() })
    if not ok then
      usage("--metrics-listen %s:%d: %s", opts.listen.host, opts.listen.port, tostring(type(srv) == "table"
        and srv.message or srv))
    end
    server = srv
  end
  local where = ""
  if server then
    local host = opts.listen.host:find(":", 1, true) and ("[" .. opts.listen.host .. "]") or opts.listen.host
    where = string.format("; metrics on http://%s:%d/metrics", host, server.port)
  end
  io.stderr:write(string.format("tug: running %s on %s every %s until Ctrl-C or SIGTERM%s\n", opts.playbook,
    opts.env, time.format_duration(opts.interval), where))

  -- The environment's notify channels hear of the first run and then only of changes:
  -- smoke tests every 5 minutes must not post every 5 minutes, but a failure (and the
  -- recovery after it) must reach them.
  local last_status
  local function notify_when(event)
    if event.event == "run_end" then
      local changed = event.status ~= last_status
      last_status = event.status
      return changed
    end
    return last_status == nil
  end

  local stopping, sleeper = false, nil
  local function on_interrupt()
    stopping = true
    if sleeper then sleeper:cancel() end
  end

  local ok, code = pcall(function()
    local next_start = time.monotonic()
    while true do
      -- between runs the loop answers Ctrl-C itself; during a run the engine does
      tug.on_interrupt(on_interrupt)
      local wait = next_start - time.monotonic()
      if wait > 0 and not stopping then
        sleeper = task.spawn(task.sleep, wait)
        pcall(sleeper.wait, sleeper)
        sleeper = nil
      end
      if stopping then return M.EXIT_STOPPED end
      -- fixed rate: runs start every interval; after one that overran, the next starts at
      -- once and the ticks it missed are skipped
      local started = time.monotonic()
      if started - next_start >= opts.interval then next_start = started end
      next_start = next_start + opts.interval
      local seen = {}
      figures.in_progress = 1
      local run_code = opts.run(observing(opts.new_reporter(), seen), on_interrupt, notify_when)
      figures.in_progress = 0
      local status = seen.status or (run_code == EXIT.locked and "locked") or nil
      if status then
        registry:record(opts.playbook, opts.env, { status = status, ended_at = time.now(),
          duration = seen.duration or (time.monotonic() - started), steps = seen.steps })
      end
      if seen.interrupted or (stopping and run_code == EXIT.aborted) then return run_code end
      if run_code == EXIT.rollback_failed then
        io.stderr:write("tug: a rollback failed: the loop stops (a human must look before it runs again)\n")
        return run_code
      end
      if not status then return run_code end -- a run that could not start (a usage error)
    end
  end)
  tug.on_interrupt(nil)
  if server then server:close() end
  if not ok then error(code, 0) end
  local counts, total = {}, 0
  for _, status in ipairs(M.STATUSES) do
    local n = figures.totals[status]
    if n > 0 then counts[#counts + 1] = n .. " " .. status end
    total = total + n
  end
  io.stderr:write(string.format("tug: the loop stopped after %d run%s%s\n", total, total == 1 and "" or "s",
    #counts > 0 and (" (" .. table.concat(counts, ", ") .. ")") or ""))
  return code
end

return M
