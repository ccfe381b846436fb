-- analysis.lua: the gates that promote or abort a canary. analysis.run measures metrics
-- every `interval`, `count` times, judges each measurement (success, failure,
-- inconclusive, or error when the query itself failed), stops as soon as a limit is
-- exceeded, and returns a verdict with every measurement as evidence and a one-line reason.
-- analysis.compare judges a canary against its baseline over one window with the
-- Mann-Whitney U test, as Kayenta does, and scores it.
--
-- The policy an SRE may want to read is here: what counts as a failure, how no data and
-- NaN are treated, which verdict wins, when the run stops early. The numbers come from
-- the metrics module; conditions written as text are compiled by analysis.expr; the
-- statistics are in analysis.stats.

local expr = require("analysis.expr")
local log = require("log")
local metrics = require("metrics")
local stats = require("analysis.stats")
local task = require("task")
local time = require("time")

local analysis = {}

-- success < inconclusive < error < failure: the run's verdict is its worst metric's.
local SEVERITY = { success = 1, inconclusive = 2, error = 3, failure = 4 }
local NO_DATA = { inconclusive = "inconclusive", fail = "failure", pass = "success" }

local RUN_OPTIONS = {
  name = true, interval = true, count = true, initial_delay = true, failure_limit = true,
  inconclusive_limit = true, consecutive_error_limit = true, min_samples = true, metrics = true,
  provider = true, env = true, vars = true, on_measurement = true, progress = true, timeout = true,
  plan_check = true,
}
local METRIC_OPTIONS = {
  name = true, provider = true, query = true, success = true, failure = true, no_data = true,
  dry_run = true, failure_limit = true, inconclusive_limit = true, consecutive_error_limit = true,
  min_samples = true, timeout = true,
}

-- ---- checking the specification (mistakes raise before anything is measured) ----

local function spec_error(where, fmt, ...)
  error(where .. ": " .. string.format(fmt, ...), 0)
end

local function seconds(value, what, where, default)
  if value == nil then return default end
  if type(value) == "number" and value >= 0 then return value end
  if type(value) == "string" then
    local s = time.parse_duration(value)
    if s then return s end
  end
  spec_error(where, "%s must be seconds or a duration such as \"30s\" (got %s)", what, tostring(value))
end

local function count_of(value, what, where, default, min)
  if value == nil then return default end
  if math.type(value) ~= "integer" or value < (min or 0) then
    spec_error(where, "%s must be an integer of at least %d (got %s)", what, min or 0, tostring(value))
  end
  return value
end

local function check_keys(t, allowed, where)
  for key in pairs(t) do
    if not allowed[key] then spec_error(where, "unknown option '%s'", tostring(key)) end
  end
end

-- The names a text condition may use besides `value`: the environment's thresholds and
-- the caller's vars.
local function condition_vars(spec)
  local vars = {}
  local env = spec.env or metrics.environment()
  if type(env) == "table" and type(env.thresholds) == "table" then vars.thresholds = env.thresholds end
  for k, v in pairs(spec.vars or {}) do vars[k] = v end
  return vars
end

-- " where thresholds.error_rate = 0.001": the values of the names a text condition uses, so
-- that a verdict shows what a measurement was held to, not only the name of it.
local function values_of(text, vars)
  local shown, seen = {}, {}
  for name in text:gmatch("[%a_][%w_]*%.[%w_%.]+") do
    local v = vars
    for part in name:gmatch("[^%.]+") do v = type(v) == "table" and v[part] or nil end
    if v ~= nil and type(v) ~= "table" and not seen[name] then
      seen[name] = true
      shown[#shown + 1] = name .. " = " .. tostring(v)
    end
  end
  if #shown == 0 then return "" end
  return " where " .. table.concat(shown, ", ")
end

-- A condition -> { fn = function(value, result) -> boolean, text = "value < 0.001" }.
local function condition(value, what, where, vars)
  if value == nil then return nil end
  if type(value) == "function" then return { fn = value, text = what .. "(value)", is_fn = true } end
  if type(value) == "string" then
    local ok, fn = pcall(expr.compile, value, vars)
    if not ok then spec_error(where, "%s: %s", what, tostring(fn)) end
    return { fn = fn, text = value .. values_of(value, vars) }
  end
  spec_error(where, "%s must be a function(value) or a condition such as \"value < 0.001\" (got %s)", what, type(value))
end

local function check_metric(m, i, spec, vars, seen)
  local where = string.format("analysis.run: metrics[%d]", i)
  if type(m) ~= "table" then spec_error(where, "must be a table (got %s)", type(m)) end
  check_keys(m, METRIC_OPTIONS, where)
  if type(m.name) ~= "string" or m.name == "" then spec_error(where, "needs a name") end
  where = string.format("analysis.run: metric '%s'", m.name)
  if seen[m.name] then spec_error(where, "the name is used twice") end
  seen[m.name] = true
  if type(m.query) ~= "string" or m.query == "" then spec_error(where, "needs a query (a string)") end
  local provider = m.provider or spec.provider
  if provider == nil then spec_error(where, "needs a provider (on the metric or on the run)") end
  local success = condition(m.success, "success", where, vars)
  local failure = condition(m.failure, "failure", where, vars)
  if not success and not failure then spec_error(where, "needs a success or a failure condition") end
  local no_data = m.no_data or "inconclusive"
  if not NO_DATA[no_data] then
    spec_error(where, "no_data must be \"inconclusive\", \"fail\" or \"pass\" (got %s)", tostring(no_data))
  end
  if m.dry_run ~= nil and type(m.dry_run) ~= "boolean" then spec_error(where, "dry_run must be true or false") end
  return {
    name = m.name, query = m.query, provider_spec = provider, success = success, failure = failure,
    no_data = no_data, dry_run = m.dry_run or false,
    failure_limit = count_of(m.failure_limit, "failure_limit", where, spec.failure_limit),
    inconclusive_limit = count_of(m.inconclusive_limit, "inconclusive_limit", where, spec.inconclusive_limit),
    consecutive_error_limit = count_of(m.consecutive_error_limit, "consecutive_error_limit", where,
      spec.consecutive_error_limit),
    min_samples = count_of(m.min_samples, "min_samples", where, spec.min_samples, 1),
    timeout = seconds(m.timeout, "timeout", where, spec.timeout),
  }
end

local function check_run(spec)
  local where = "analysis.run"
  if type(spec) ~= "table" then spec_error(where, "takes a table (got %s)", type(spec)) end
  check_keys(spec, RUN_OPTIONS, where)
  local s = {
    name = spec.name or "analysis",
    interval = seconds(spec.interval, "interval", where, 30),
    count = count_of(spec.count, "count", where, 1, 1),
    initial_delay = seconds(spec.initial_delay, "initial_delay", where, 0),
    failure_limit = count_of(spec.failure_limit, "failure_limit", where, 0),
    inconclusive_limit = count_of(spec.inconclusive_limit, "inconclusive_limit", where, 0),
    consecutive_error_limit = count_of(spec.consecutive_error_limit, "consecutive_error_limit", where, 4),
    min_samples = count_of(spec.min_samples, "min_samples", where, nil, 1),
    timeout = seconds(spec.timeout, "timeout", where, nil),
    provider = spec.provider, env = spec.env, vars = spec.vars,
  }
  if spec.env ~= nil and type(spec.env) ~= "table" then spec_error(where, "env must be an environment table (ctx.env)") end
  if spec.vars ~= nil and type(spec.vars) ~= "table" then spec_error(where, "vars must be a table") end
  if spec.on_measurement ~= nil and type(spec.on_measurement) ~= "function" then
    spec_error(where, "on_measurement must be a function(metric, measurement)")
  end
  s.on_measurement = spec.on_measurement
  if spec.progress ~= nil then s.progress = spec.progress else s.progress = tug.sys.isatty(1) end
  s.plan_check = spec.plan_check ~= false
  if type(spec.metrics) ~= "table" or #spec.metrics == 0 then spec_error(where, "needs metrics = { { name, query, ... }, ... }") end
  local vars, seen = condition_vars(s), {}
  s.metrics = {}
  for i, m in ipairs(spec.metrics) do s.metrics[i] = check_metric(m, i, s, vars, seen) end
  -- a provider that cannot be resolved is a configuration mistake: say so now
  for _, m in ipairs(s.metrics) do
    local ok, p = pcall(metrics.provider, m.provider_spec, s.env)
    if not ok then spec_error("analysis.run: metric '" .. m.name .. "'", "%s", tostring(type(p) == "table" and p.message or p)) end
    m.provider = p
  end
  return s
end

-- ---- one measurement ----

local function show(v) return metrics.show(v) end

local function is_cancel(err) return type(err) == "table" and err.kind == "cancelled" end

local function message_of(err)
  if type(err) == "table" then return tostring(err.message or err) end
  return tostring(err)
end

-- Applies the conditions to a value: failure wins, then success; with both given and
-- neither true the measurement is inconclusive (a grey zone between the two thresholds).
local function judge_value(m, value, result)
  local fails, succeeds
  if m.failure then
    fails = m.failure.fn(value, result)
    if type(fails) ~= "boolean" then error("the failure condition returned " .. type(fails) .. ", not true or false", 0) end
    if fails then
      return "failure", string.format("%s: %s%s is true", show(value), m.failure.is_fn and "" or "failure condition ",
        m.failure.text)
    end
  end
  if m.success then
    succeeds = m.success.fn(value, result)
    if type(succeeds) ~= "boolean" then error("the success condition returned " .. type(succeeds) .. ", not true or false", 0) end
    if succeeds then return "success", string.format("%s: %s", show(value), m.success.text) end
    if m.failure then
      return "inconclusive", string.format("%s: neither %s nor failure %s", show(value), m.success.text, m.failure.text)
    end
    return "failure", string.format("%s: wanted %s", show(value), m.success.text)
  end
  return "success", string.format("%s: %s%s is false", show(value), m.failure.is_fn and "" or "failure condition ",
    m.failure.text)
end

-- Measures metric m once; never raises except when the task is cancelled.
local function measure(m, n, timeout)
  local t = time.now()
  local meas = { n = n, time = t }
  local ok, r = pcall(metrics.query, m.provider, m.query, { timeout = timeout })
  if not ok then
    if is_cancel(r) then error(r, 0) end
    meas.phase, meas.message = "error", message_of(r)
    meas.observed = "error"
    return meas
  end
  meas.outcome = r.outcome
  if r.outcome == "value" then
    local v = r.value
    if v == v and v ~= math.huge and v ~= -math.huge then meas.value = v end
    meas.observed = show(v)
    local judged, phase, message = pcall(judge_value, m, v, r)
    if not judged then
      if is_cancel(phase) then error(phase, 0) end
      meas.phase, meas.message = "error", message_of(phase)
    else
      meas.phase, meas.message = phase, message
    end
  elseif r.outcome == "empty" or r.outcome == "nan" then
    meas.observed = r.outcome == "nan" and "NaN" or "no data"
    meas.phase = NO_DATA[m.no_data]
    meas.message = string.format("%s (no_data = %s)", r.outcome == "nan" and "NaN, no data to judge" or
      ("no data" .. (r.note and (": " .. r.note) or "")), m.no_data)
  elseif r.outcome == "many" then
    meas.phase, meas.observed = "error", #r.series .. " series"
    meas.message = string.format("the query returned %d series; aggregate them to one value (sum, max, avg)", #r.series)
  else
    meas.phase, meas.observed = "error", "a range"
    meas.message = "the query returned a range of points; a measurement needs one value (an instant query)"
  end
  if r.warnings then meas.warnings = r.warnings end
  return meas
end

-- ---- the per-metric state machine ----

local function new_state(m)
  return {
    spec = m, name = m.name, dry_run = m.dry_run, measurements = {},
    count = { success = 0, failure = 0, inconclusive = 0, error = 0 },
    consecutive_errors = 0, with_value = 0, verdict = nil,
  }
end

local function last_value_text(st)
  for i = #st.measurements, 1, -1 do
    local meas = st.measurements[i]
    if meas.phase ~= "error" then return meas.observed end
  end
  return "none"
end

local function condition_text(m)
  if m.success and m.failure then return m.success.text .. ", failing when " .. m.failure.text end
  if m.success then return m.success.text end
  return "not " .. m.failure.text
end

-- Adds a measurement; decides the metric's verdict when a limit is exceeded.
local function record(st, meas)
  local m = st.spec
  st.measurements[#st.measurements + 1] = meas
  st.count[meas.phase] = st.count[meas.phase] + 1
  if meas.outcome == "value" and meas.phase ~= "error" then st.with_value = st.with_value + 1 end
  if meas.phase == "error" then
    st.consecutive_errors = st.consecutive_errors + 1
  else
    st.consecutive_errors = 0
  end
  if st.count.failure > m.failure_limit then
    st.verdict = "failure"
    st.reason = string.format("%s failed: %d of %d measurements failed (failure_limit %d); last %s",
      m.name, st.count.failure, #st.measurements, m.failure_limit, meas.message)
  elseif st.count.inconclusive > m.inconclusive_limit then
    st.verdict = "inconclusive"
    st.reason = string.format("%s inconclusive: %d of %d measurements inconclusive (inconclusive_limit %d); last %s",
      m.name, st.count.inconclusive, #st.measurements, m.inconclusive_limit, meas.message)
  elseif st.consecutive_errors > m.consecutive_error_limit then
    st.verdict = "error"
    st.reason = string.format("%s errored: %d measurements in a row could not be taken (consecutive_error_limit %d); last: %s",
      m.name, st.consecutive_errors, m.consecutive_error_limit, meas.message)
  end
end

-- After the last measurement: what a metric that exceeded no limit ends as.
local function settle(st)
  if st.verdict then return end
  local m = st.spec
  local n = #st.measurements
  if n > 0 and st.count.error == n then
    st.verdict = "error"
    st.reason = string.format("%s errored: none of its %d measurements could be taken; last: %s",
      m.name, n, st.measurements[n].message)
  elseif m.min_samples and st.with_value < m.min_samples then
    st.verdict = "inconclusive"
    st.reason = string.format("%s inconclusive: only %d of %d measurements had a value (min_samples %d)",
      m.name, st.with_value, n, m.min_samples)
  else
    st.verdict = "success"
    st.reason = string.format("%s passed: %s (%s) over %d measurement%s", m.name, last_value_text(st),
      condition_text(m), n, n == 1 and "" or "s")
    if st.count.failure + st.count.inconclusive + st.count.error > 0 then
      st.reason = st.reason .. string.format(" with %d failed, %d inconclusive, %d errors", st.count.failure,
        st.count.inconclusive, st.count.error)
    end
  end
end

local function report_metric(st)
  local m = st.spec
  return {
    name = m.name, verdict = st.verdict, reason = st.reason, dry_run = m.dry_run,
    provider = m.provider.name, query = m.query, condition = condition_text(m), no_data = m.no_data,
    count = st.count, measurements = st.measurements,
  }
end

-- The run's verdict: the worst non-dry-run metric; the reason names it (and how many more
-- went wrong).
local function overall(states, s, measured_rounds)
  local worst, bad = nil, {}
  for _, st in ipairs(states) do
    if not st.dry_run then
      if worst == nil or SEVERITY[st.verdict] > SEVERITY[worst.verdict] then worst = st end
      if st.verdict ~= "success" then bad[#bad + 1] = st end
    end
  end
  if worst == nil then
    return "success", "every metric is a dry run: nothing to judge (" .. #states .. " measured)"
  end
  if worst.verdict == "success" then
    local parts = {}
    for _, st in ipairs(states) do
      if not st.dry_run then
        parts[#parts + 1] = string.format("%s %s (%s)", st.name, last_value_text(st), condition_text(st.spec))
      end
    end
    local reason = string.format("all %d metric%s passed over %d measurement%s: %s", #parts,
      #parts == 1 and "" or "s", measured_rounds, measured_rounds == 1 and "" or "s", table.concat(parts, "; "))
    local dry = {}
    for _, st in ipairs(states) do
      if st.dry_run and st.verdict ~= "success" then dry[#dry + 1] = st.name .. " " .. st.verdict end
    end
    if #dry > 0 then reason = reason .. " (dry run: " .. table.concat(dry, ", ") .. ")" end
    return "success", reason
  end
  local reason = worst.reason
  if #bad > 1 then reason = reason .. string.format(" (and %d more metric%s not passing)", #bad - 1, #bad > 2 and "s" or "") end
  return worst.verdict, reason
end

-- ---- plan mode ----

local function worst_case(s)
  local limits = { failure = s.failure_limit, error = s.consecutive_error_limit, inconclusive = s.inconclusive_limit }
  for _, m in ipairs(s.metrics) do
    if not m.dry_run then
      limits.failure = math.max(limits.failure, m.failure_limit)
      limits.error = math.max(limits.error, m.consecutive_error_limit)
      limits.inconclusive = math.max(limits.inconclusive, m.inconclusive_limit)
    end
  end
  local function after(k) return s.initial_delay + s.interval * math.min(k, s.count - 1) end
  return {
    promote = after(s.count - 1),
    abort = after(limits.failure),
    inconclusive = after(limits.inconclusive),
    error = after(limits.error),
  }
end

local function fmt(seconds) return time.format_duration(seconds) end

local function plan_run(s)
  local wc = worst_case(s)
  local names = {}
  for i, m in ipairs(s.metrics) do names[i] = m.name .. (m.dry_run and " (dry run)" or "") end
  local summary = string.format("analyse %s every %s, %d time%s: promotes after %s; aborts after %s "
    .. "when every measurement fails", table.concat(names, ", "), fmt(s.interval), s.count,
    s.count == 1 and "" or "s", fmt(wc.promote), fmt(wc.abort))
  local lines = {
    string.format("worst case: promote %s (initial_delay %s + interval %s x (count %d - 1)); abort %s "
      .. "(initial_delay + interval x failure_limit); error %s (consecutive_error_limit); inconclusive %s",
      fmt(wc.promote), fmt(s.initial_delay), fmt(s.interval), s.count, fmt(wc.abort), fmt(wc.error),
      fmt(wc.inconclusive)),
  }
  local result = { verdict = "success", planned = true, worst_case = wc, metrics = {} }
  local checks = {}
  if s.plan_check then
    local fns = {}
    for i, m in ipairs(s.metrics) do
      fns[i] = function() return measure(m, 1, math.min(m.timeout or 5, 5)) end
    end
    checks = { task.parallel(fns) }
  end
  for i, m in ipairs(s.metrics) do
    local check = checks[i]
    local entry = { name = m.name, verdict = "planned", dry_run = m.dry_run, condition = condition_text(m),
      query = m.query, provider = m.provider.name, measurements = {} }
    if check then
      entry.check = check
      lines[#lines + 1] = string.format("%s: %s via %s, now %s -> %s%s", m.name, m.query, m.provider.name,
        check.observed, check.phase, check.phase == "error" and (": " .. check.message) or "")
    else
      lines[#lines + 1] = string.format("%s: %s via %s (%s)", m.name, m.query, m.provider.name, condition_text(m))
    end
    result.metrics[m.name] = entry
  end
  tug.plan.record("analysis", summary, table.concat(lines, "\n"))
  result.reason = "planned: " .. summary
  return result
end

-- ---- analysis.run ----

function analysis.run(spec)
  local ok, s = pcall(check_run, spec)
  if not ok then error(s, 2) end
  if tug.plan.active() then return plan_run(s) end

  local states = {}
  for i, m in ipairs(s.metrics) do states[i] = new_state(m) end
  local started = time.now()
  local t0 = time.monotonic()
  local say = s.progress and log.info or log.debug
  say(string.format("%s: %d metric%s every %s, %d time%s", s.name, #states, #states == 1 and "" or "s",
    fmt(s.interval), s.count, s.count == 1 and "" or "s"))

  local rounds = 0
  for round = 1, s.count do
    local due = t0 + s.initial_delay + s.interval * (round - 1)
    local wait = due - time.monotonic()
    if wait > 0 then task.sleep(wait) end
    local active, fns = {}, {}
    for _, st in ipairs(states) do
      if st.verdict == nil then
        active[#active + 1] = st
        local m = st.spec
        fns[#fns + 1] = function() return measure(m, round, m.timeout) end
      end
    end
    if #active == 0 then break end
    rounds = round
    local results = { task.parallel(fns) }
    local stop = false
    for i, st in ipairs(active) do
      local meas = results[i]
      record(st, meas)
      say(string.format("%s: %s #%d/%d %s -> %s%s", s.name, st.name, round, s.count, meas.observed, meas.phase,
        meas.phase ~= "success" and (" (" .. meas.message .. ")") or ""))
      if s.on_measurement then s.on_measurement(st.name, meas) end
      if st.verdict and st.verdict ~= "success" and not st.dry_run then stop = true end
    end
    if stop then break end
  end
  for _, st in ipairs(states) do settle(st) end

  local verdict, reason = overall(states, s, rounds)
  local report = {
    verdict = verdict, reason = reason, name = s.name, started = started,
    duration = time.monotonic() - t0, rounds = rounds, metrics = {},
  }
  for _, st in ipairs(states) do report.metrics[st.name] = report_metric(st) end
  local level = verdict == "success" and log.info or log.warn
  level(string.format("%s: %s: %s", s.name, verdict, reason))
  return report
end

-- ---- analysis.compare ----

local COMPARE_OPTIONS = {
  name = true, provider = true, env = true, window = true, step = true, at = true, confidence = true,
  tolerance = true, band = true, direction = true, min_samples = true, nan = true, pass_score = true,
  marginal_score = true, metrics = true, baseline = true, canary = true, min_difference = true,
  critical = true, must_have_data = true, allowed_increase = true, allowed_decrease = true, timeout = true,
}
local COMPARE_METRIC_OPTIONS = {
  name = true, provider = true, baseline = true, canary = true, direction = true, tolerance = true,
  min_difference = true, critical = true, must_have_data = true, weight = true, allowed_increase = true,
  allowed_decrease = true, critical_increase = true, critical_decrease = true, nan = true, min_samples = true,
}
local DIRECTIONS = { increase = true, decrease = true, either = true }

local function fraction(value, what, where, default, lo, hi)
  if value == nil then return default end
  if type(value) ~= "number" or value < lo or value > hi then
    spec_error(where, "%s must be a number from %g to %g (got %s)", what, lo, hi, tostring(value))
  end
  return value
end

local function check_compare(spec)
  local where = "analysis.compare"
  if type(spec) ~= "table" then spec_error(where, "takes a table (got %s)", type(spec)) end
  check_keys(spec, COMPARE_OPTIONS, where)
  local s = {
    name = spec.name or "comparison", provider = spec.provider, env = spec.env,
    window = seconds(spec.window, "window", where, 600),
    step = seconds(spec.step, "step", where, nil),
    at = spec.at, timeout = seconds(spec.timeout, "timeout", where, nil),
    confidence = fraction(spec.confidence, "confidence", where, 0.98, 0.5, 0.9999),
    band = fraction(spec.band, "band", where, 0.25, 0, 10),
    pass_score = fraction(spec.pass_score, "pass_score", where, 95, 0, 100),
    marginal_score = fraction(spec.marginal_score, "marginal_score", where, 75, 0, 100),
  }
  if s.marginal_score > s.pass_score then spec_error(where, "marginal_score must not be above pass_score") end
  local list = spec.metrics
  if list == nil then
    if spec.baseline == nil or spec.canary == nil then
      spec_error(where, "needs baseline and canary (queries or lists of numbers), or metrics = { ... }")
    end
    list = { { name = spec.name or "metric", baseline = spec.baseline, canary = spec.canary } }
  elseif spec.baseline ~= nil or spec.canary ~= nil then
    spec_error(where, "give baseline and canary either at the top or in each of metrics, not both")
  end
  if type(list) ~= "table" or #list == 0 then spec_error(where, "metrics must be a non-empty list") end
  s.metrics = {}
  local seen = {}
  for i, m in ipairs(list) do
    local w = string.format("analysis.compare: metrics[%d]", i)
    if type(m) ~= "table" then spec_error(w, "must be a table") end
    check_keys(m, COMPARE_METRIC_OPTIONS, w)
    if type(m.name) ~= "string" or m.name == "" then spec_error(w, "needs a name") end
    w = "analysis.compare: metric '" .. m.name .. "'"
    if seen[m.name] then spec_error(w, "the name is used twice") end
    seen[m.name] = true
    for _, side in ipairs({ "baseline", "canary" }) do
      local v = m[side]
      if type(v) == "table" then
        for j, x in ipairs(v) do
          if type(x) ~= "number" then spec_error(w, "%s[%d] must be a number (got %s)", side, j, type(x)) end
        end
      elseif type(v) ~= "string" or v == "" then
        spec_error(w, "%s must be a query or a list of numbers", side)
      end
    end
    local direction = m.direction or spec.direction or "increase"
    if not DIRECTIONS[direction] then
      spec_error(w, "direction must be \"increase\", \"decrease\" or \"either\" (got %s)", tostring(direction))
    end
    local tolerance = fraction(m.tolerance or spec.tolerance, "tolerance", w, 0, 0, 100)
    local nan = m.nan or spec.nan or "remove"
    if nan ~= "remove" and nan ~= "zero" then spec_error(w, "nan must be \"remove\" or \"zero\"") end
    local entry = {
      name = m.name, baseline = m.baseline, canary = m.canary, direction = direction, nan = nan,
      allowed_increase = fraction(m.allowed_increase or spec.allowed_increase, "allowed_increase", w, 1 + tolerance, 0, math.huge),
      allowed_decrease = fraction(m.allowed_decrease or spec.allowed_decrease, "allowed_decrease", w,
        math.max(0, 1 - tolerance), 0, math.huge),
      min_difference = fraction(m.min_difference or spec.min_difference, "min_difference", w, 0, 0, math.huge),
      critical = m.critical, must_have_data = m.must_have_data,
      weight = fraction(m.weight, "weight", w, 1, 0, math.huge),
      min_samples = count_of(m.min_samples or spec.min_samples, "min_samples", w, 5, 1),
      provider_spec = m.provider or spec.provider,
    }
    if entry.critical == nil then entry.critical = spec.critical or false end
    if entry.must_have_data == nil then entry.must_have_data = spec.must_have_data or false end
    entry.critical_increase = fraction(m.critical_increase, "critical_increase", w, entry.allowed_increase, 0, math.huge)
    entry.critical_decrease = fraction(m.critical_decrease, "critical_decrease", w, entry.allowed_decrease, 0, math.huge)
    if (type(entry.baseline) == "string" or type(entry.canary) == "string") then
      if entry.provider_spec == nil then spec_error(w, "needs a provider for its queries") end
      local ok, p = pcall(metrics.provider, entry.provider_spec, s.env)
      if not ok then spec_error(w, "%s", tostring(type(p) == "table" and p.message or p)) end
      entry.provider = p
    end
    s.metrics[i] = entry
  end
  return s
end

-- The samples of one side: the list given, or every point of every series of a range query.
local function samples(m, side, s)
  local v = m[side]
  local values, series = {}, 0
  if type(v) == "table" then
    for i, x in ipairs(v) do values[i] = x end
  else
    local r = metrics.query(m.provider, v, { range = s.window, step = s.step or math.max(1, s.window / 60),
      at = s.at, timeout = s.timeout })
    if r.type == "range" then
      for _, sr in ipairs(r.series) do
        series = series + 1
        for _, p in ipairs(sr.points) do values[#values + 1] = p[2] end
      end
    else
      for _, sr in ipairs(r.series) do
        series = series + 1
        values[#values + 1] = sr.value
      end
    end
  end
  local kept, nans = {}, 0
  for _, x in ipairs(values) do
    if x ~= x then
      nans = nans + 1
      if m.nan == "zero" then kept[#kept + 1] = 0 end
    elseif x ~= math.huge and x ~= -math.huge then
      kept[#kept + 1] = x
    end
  end
  return kept, { nan = nans, series = series }
end

local function pct(ratio)
  if ratio ~= ratio or ratio == math.huge then return "n/a" end
  return string.format("%+.1f%%", (ratio - 1) * 100)
end

local function same(a, b)
  if #a ~= #b then return false end
  for i = 1, #a do if a[i] ~= b[i] then return false end end
  return true
end

-- Classifies one metric: pass, high, low, nodata or error (Kayenta's labels).
local function classify(m, s)
  local out = { name = m.name, direction = m.direction, critical = m.critical }
  local ok, err = pcall(function()
    local b, binfo = samples(m, "baseline", s)
    local c, cinfo = samples(m, "canary", s)
    out.baseline = stats.describe(b)
    out.canary = stats.describe(c)
    out.baseline.nan, out.canary.nan = binfo.nan, cinfo.nan
    if #b < m.min_samples or #c < m.min_samples then
      out.classification = m.must_have_data and "nodata_fail" or "nodata"
      out.reason = string.format("%s: too little data (baseline %d, canary %d values; min_samples %d)",
        m.name, #b, #c, m.min_samples)
      return
    end
    out.ratio = out.baseline.mean ~= 0 and out.canary.mean / out.baseline.mean
      or (out.canary.mean == 0 and 1 or math.huge)
    if same(b, c) then
      out.classification, out.ratio = "pass", 1
      out.reason = m.name .. ": canary and baseline data are identical"
      return
    end
    local t = stats.mann_whitney(c, b, { confidence = s.confidence })
    out.p_value, out.u, out.estimate, out.ci, out.method = t.p_value, t.u, t.estimate, t.ci, t.method
    local bound = s.band * math.abs(t.estimate)
    local higher, lower = t.ci[1] > bound, t.ci[2] < -bound
    local high = higher and (m.direction == "increase" or m.direction == "either")
    local low = lower and (m.direction == "decrease" or m.direction == "either")
    local detail = string.format("canary mean %s vs baseline %s (%s), shift %s, %g%% CI [%s, %s], p=%.3g",
      metrics.show(out.canary.mean), metrics.show(out.baseline.mean), pct(out.ratio), metrics.show(t.estimate),
      s.confidence * 100, metrics.show(t.ci[1]), metrics.show(t.ci[2]), t.p_value)
    if (high or low) and math.abs(t.estimate) < m.min_difference then
      out.classification = "pass"
      out.reason = string.format("%s: a significant but small change within min_difference %s: %s", m.name,
        metrics.show(m.min_difference), detail)
    elseif high and out.ratio == out.ratio and out.ratio <= m.allowed_increase then
      out.classification = "pass"
      out.reason = string.format("%s: higher, within the tolerated increase (x%s): %s", m.name,
        metrics.show(m.allowed_increase), detail)
    elseif low and out.ratio == out.ratio and out.ratio >= m.allowed_decrease then
      out.classification = "pass"
      out.reason = string.format("%s: lower, within the tolerated decrease (x%s): %s", m.name,
        metrics.show(m.allowed_decrease), detail)
    elseif high or low then
      out.classification = high and "high" or "low"
      out.reason = string.format("%s: significantly %s: %s", m.name, high and "higher" or "lower", detail)
      if m.critical then
        local beyond = out.ratio ~= out.ratio or (high and out.ratio > m.critical_increase)
          or (low and out.ratio < m.critical_decrease)
        out.critical_failure = beyond
      end
    elseif higher or lower then
      out.classification = "pass"
      out.reason = string.format("%s: significantly %s, which direction = %s allows: %s", m.name,
        higher and "higher" or "lower", m.direction, detail)
    else
      out.classification = "pass"
      out.reason = string.format("%s: no significant difference: %s", m.name, detail)
    end
  end)
  if not ok then
    if is_cancel(err) then error(err, 0) end
    out.classification, out.reason = "error", m.name .. ": " .. message_of(err)
  end
  local verdicts = { pass = "success", high = "failure", low = "failure", nodata = "inconclusive",
    nodata_fail = "failure", error = "error" }
  out.verdict = verdicts[out.classification]
  if out.ratio and (out.ratio ~= out.ratio or out.ratio == math.huge) then out.ratio = nil end
  return out
end

-- analysis.compare{ baseline = query | numbers, canary = query | numbers, ... } or
-- { metrics = { { name, baseline, canary, ... }, ... } } -> { verdict, score, reason, metrics }.
-- The first two reasons of a list, and how many more there are.
local function first_reasons(list)
  local parts = {}
  for i, r in ipairs(list) do if i <= 2 then parts[#parts + 1] = r.reason end end
  if #list > 2 then parts[#parts + 1] = string.format("%d more", #list - 2) end
  return table.concat(parts, "; ")
end

function analysis.compare(spec)
  local ok, s = pcall(check_compare, spec)
  if not ok then error(s, 2) end
  local fns = {}
  for i, m in ipairs(s.metrics) do fns[i] = function() return classify(m, s) end end
  local results = { task.parallel(fns) }

  local report = { name = s.name, metrics = {}, confidence = s.confidence }
  local counted, passed = 0, 0
  local all, failing, nodata, errors, critical = {}, {}, {}, {}, nil
  for i, m in ipairs(s.metrics) do
    local r = results[i]
    report.metrics[m.name] = r
    all[i] = r
    local c = r.classification
    if c == "nodata" then
      nodata[#nodata + 1] = r
    elseif c == "error" then
      errors[#errors + 1] = r
    else
      counted = counted + m.weight
      if c == "pass" then passed = passed + m.weight else failing[#failing + 1] = r end
    end
    if r.critical_failure and not critical then critical = r end
  end
  -- Nodata metrics are left out of the score (Kayenta's rule); all of them left out is 100.
  local score = counted > 0 and 100 * passed / counted or 100
  report.score = math.floor(score * 100 + 0.5) / 100
  if critical then
    report.score = 0
    report.verdict = "failure"
    report.reason = "critical metric failed: " .. critical.reason
  elseif #errors > 0 then
    report.verdict = "error"
    report.reason = "could not compare: " .. first_reasons(errors)
  elseif #nodata * 2 >= #s.metrics then
    report.verdict = "inconclusive"
    report.reason = string.format("%d of %d metrics had too little data: %s", #nodata, #s.metrics,
      first_reasons(nodata))
  elseif score >= s.pass_score then
    report.verdict = "success"
    report.reason = string.format("canary scored %s (pass %s): %s", metrics.show(report.score),
      metrics.show(s.pass_score), first_reasons(#failing > 0 and failing or all))
  else
    report.verdict = score >= s.marginal_score and "inconclusive" or "failure"
    report.reason = string.format("canary scored %s (pass %s, marginal %s): %s", metrics.show(report.score),
      metrics.show(s.pass_score), metrics.show(s.marginal_score), first_reasons(failing))
  end
  local level = report.verdict == "success" and log.info or log.warn
  level(string.format("%s: %s: %s", s.name, report.verdict, report.reason))
  return report
end

analysis.SEVERITY = SEVERITY

return analysis
