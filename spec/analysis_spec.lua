-- analysis_spec.lua: the gates. analysis.run against a real Prometheus (started once for the
-- file, scraping a loopback target whose values the spec sets): a healthy canary passes, a
-- raised error rate fails after exactly failure_limit + 1 bad measurements, no data follows
-- its policy, dry runs never fail, Prometheus going away gives "error" after the
-- consecutive limit, the run yields and can be cancelled, and plan mode measures nothing but
-- says how long promotion and abort can take. analysis.compare's Mann-Whitney numbers are
-- checked against an independent Python computation (brute-force enumeration and the
-- standard library's NormalDist) and against published worked examples.

package.path = "spec/support/?.lua;" .. package.path
local project = require("project")
local prometheus = require("prometheus")

local analysis = require("analysis")
local stats = require("analysis.stats")
local metrics = require("metrics")

local function phases(report, name)
  local out = {}
  for i, m in ipairs(report.metrics[name].measurements) do out[i] = m.phase end
  return out
end

-- Verdict lines go to the log; the spec keeps its own output quiet, and puts the level back.
local saved_level
setup(function()
  saved_level = log.level()
  log.set_level("error")
end)
teardown(function() log.set_level(saved_level) end)

local function capture_logs(fn)
  local records = {}
  log.set_level("info")
  log.set_sink(function(r) records[#records + 1] = r end)
  local ok, err = pcall(fn)
  log.set_sink(nil)
  log.set_level("error")
  if not ok then error(err, 0) end
  return records
end

describe("analysis.run with a real Prometheus", function()
  local target, prom, provider

  -- Sets the error rate and waits until Prometheus has scraped it.
  local function set_error_rate(v)
    target:set("canary_error_rate", v, { version = "v2" })
    prom:wait_for("canary_error_rate", function(result)
      return result[1] and tonumber(result[1].value[2]) == v
    end)
  end

  setup(function()
    target = prometheus.target()
    target:set("canary_error_rate", 0.0004, { version = "v2" })
    target:set("canary_p95_seconds", 0.21, { version = "v2" })
    target:set("canary_idle_ratio", 0 / 0)
    -- latency samples for analysis.compare: a new random value at every scrape
    local rng = math.random
    target:set("latency_seconds", function() return 0.100 + rng() * 0.01 end, { version = "baseline" })
    target:set("latency_seconds", function() return 0.150 + rng() * 0.01 end, { version = "canary-slow" })
    target:set("latency_seconds", function() return 0.100 + rng() * 0.01 end, { version = "canary-good" })
    prom = prometheus.start({ targets = { target }, scrape_interval = "200ms" })
    provider = { type = "prometheus", url = prom.url }
  end)

  teardown(function()
    if prom then prom:stop() end
    if target then target:close() end
  end)

  it("passes a healthy canary, with every measurement and a reason naming metric, value and threshold", function()
    local seen = {}
    local r = analysis.run({
      interval = "200ms", count = 4, provider = provider,
      on_measurement = function(name, m) seen[#seen + 1] = name .. "#" .. m.n .. ":" .. m.phase end,
      metrics = {
        { name = "error-rate", query = "canary_error_rate", success = "value < 0.001" },
        { name = "p95", query = "canary_p95_seconds", success = "value <= thresholds.p95_ms / 1000" },
      },
      env = { name = "test", thresholds = { p95_ms = 500 } },
    })
    assert.are.equal("success", r.verdict)
    assert.are.equal(4, r.rounds)
    assert.are.same({ "success", "success", "success", "success" }, phases(r, "error-rate"))
    assert.are.same({ "success", "success", "success", "success" }, phases(r, "p95"))
    local m = r.metrics["error-rate"].measurements[2]
    assert.are.equal(0.0004, m.value)
    assert.are.equal(2, m.n)
    assert.are.equal("value", m.outcome)
    assert.are.equal("all 2 metrics passed over 4 measurements: error-rate 0.0004 (value < 0.001); "
      .. "p95 0.21 (value <= thresholds.p95_ms / 1000 where thresholds.p95_ms = 500)", r.reason)
    assert.are.equal(8, #seen)
    -- the measurements were spaced by the interval, not taken at once
    local ms = r.metrics["error-rate"].measurements
    assert.is_true(ms[4].time - ms[1].time >= 0.55, "spread " .. (ms[4].time - ms[1].time))
    -- the report is plain data: it can go to the journal as it is
    assert.is_string(json.encode(r))
  end)

  it("fails a raised error rate after exactly failure_limit + 1 bad measurements", function()
    set_error_rate(0.05)
    local ok, r = pcall(analysis.run, {
      interval = "200ms", count = 10, failure_limit = 2, provider = provider,
      metrics = { { name = "error-rate", query = "canary_error_rate", success = "value < 0.001" } },
    })
    set_error_rate(0.0004)
    assert.is_true(ok, tostring(r))
    assert.are.equal("failure", r.verdict)
    assert.are.same({ "failure", "failure", "failure" }, phases(r, "error-rate"))
    assert.are.equal(3, r.rounds)
    assert.are.equal("error-rate failed: 3 of 3 measurements failed (failure_limit 2); last 0.05: wanted value < 0.001",
      r.reason)
  end)

  it("follows each metric's no_data policy, NaN included", function()
    local function run(policy, query)
      return analysis.run({ interval = "200ms", count = 2, provider = provider, metrics = {
        { name = "ghost", query = query or "no_such_metric", success = "value < 1", no_data = policy } } })
    end
    local r = run(nil)
    assert.are.equal("inconclusive", r.verdict)
    assert.are.same({ "inconclusive" }, phases(r, "ghost"))
    assert.are.equal("no data", r.metrics.ghost.measurements[1].observed)
    assert.matches("ghost inconclusive: 1 of 1 measurements inconclusive %(inconclusive_limit 0%)", r.reason)
    r = run("fail")
    assert.are.equal("failure", r.verdict)
    assert.matches("ghost failed: 1 of 1 measurements failed", r.reason)
    r = run("pass")
    assert.are.equal("success", r.verdict)
    assert.are.same({ "success", "success" }, phases(r, "ghost"))
    r = run("fail", "canary_idle_ratio")
    assert.are.equal("failure", r.verdict)
    assert.are.equal("nan", r.metrics.ghost.measurements[1].outcome)
    assert.are.equal("NaN", r.metrics.ghost.measurements[1].observed)
  end)

  it("never fails on a dry-run metric, but measures and reports it", function()
    local r = analysis.run({ interval = "200ms", count = 3, provider = provider, metrics = {
      { name = "error-rate", query = "canary_error_rate", success = "value < 0.001" },
      { name = "strict-p95", query = "canary_p95_seconds", success = "value < 0.1", dry_run = true },
    } })
    assert.are.equal("success", r.verdict)
    assert.are.equal("failure", r.metrics["strict-p95"].verdict)
    assert.is_true(r.metrics["strict-p95"].dry_run)
    assert.are.same({ "failure" }, phases(r, "strict-p95"))
    assert.are.same({ "success", "success", "success" }, phases(r, "error-rate"))
    assert.matches("dry run: strict%-p95 failure", r.reason)
  end)

  it("needs min_samples measurements with a value to pass", function()
    local r = analysis.run({ interval = "200ms", count = 3, min_samples = 2, provider = provider, metrics = {
      { name = "ghost", query = "no_such_metric", success = "value < 1", no_data = "pass" } } })
    assert.are.equal("inconclusive", r.verdict)
    assert.are.equal("ghost inconclusive: only 0 of 3 measurements had a value (min_samples 2)", r.reason)
  end)

  it("calls a value between the success and failure thresholds inconclusive", function()
    local r = analysis.run({ interval = "200ms", count = 3, inconclusive_limit = 1, provider = provider, metrics = {
      { name = "p95", query = "canary_p95_seconds", success = "value < 0.2", failure = "value > 0.5" } } })
    assert.are.equal("inconclusive", r.verdict)
    assert.are.same({ "inconclusive", "inconclusive" }, phases(r, "p95"))
    assert.matches("0.21: neither value < 0.2 nor failure value > 0.5", r.reason)
  end)

  it("takes conditions as functions, and reports the worst metric", function()
    local r = analysis.run({ interval = "200ms", count = 2, provider = provider, metrics = {
      { name = "fn", query = "canary_error_rate", success = function(v) return v < 0.001 end },
      { name = "many", query = "latency_seconds", success = "value < 1" },
      { name = "bad", query = "canary_p95_seconds", failure = function(v) return v > 0.2 end },
    } })
    assert.are.equal("failure", r.verdict)   -- failure outranks the error of "many"
    assert.are.equal("error", r.metrics.many.measurements[1].phase)
    assert.are.equal("error", r.metrics.many.verdict)
    assert.matches("3 series; aggregate them", r.metrics.many.measurements[1].message)
    assert.matches("^bad failed: 1 of 1 measurements failed %(failure_limit 0%); last 0.21: failure%(value%) is true",
      r.reason)
    assert.matches("and 1 more metric not passing", r.reason)
  end)

  it("shows each measurement as it arrives when progress is on", function()
    local records = capture_logs(function()
      analysis.run({ name = "canary gate", interval = "200ms", count = 2, provider = provider, progress = true,
        metrics = { { name = "error-rate", query = "canary_error_rate", success = "value < 0.001" } } })
    end)
    local lines = {}
    for _, rec in ipairs(records) do
      if rec.level == "info" then lines[#lines + 1] = rec.message end
    end
    assert.are.same({
      "canary gate: 1 metric every 200ms, 2 times",
      "canary gate: error-rate #1/2 0.0004 -> success",
      "canary gate: error-rate #2/2 0.0004 -> success",
      "canary gate: success: all 1 metric passed over 2 measurements: error-rate 0.0004 (value < 0.001)",
    }, lines)
  end)

  it("yields to the loop between measurements and stops at once when cancelled", function()
    local taken, ticks = 0, 0
    local ticker = task.spawn(function()
      while true do
        ticks = ticks + 1
        task.sleep(0.02)
      end
    end)
    local h = task.spawn(analysis.run, { interval = "200ms", count = 50, provider = provider,
      on_measurement = function() taken = taken + 1 end,
      metrics = { { name = "error-rate", query = "canary_error_rate", success = "value < 0.001" } } })
    task.sleep(0.5)
    local t0 = time.monotonic()
    h:cancel()
    local ok, err = pcall(h.wait, h)
    ticker:cancel()
    assert.is_false(ok)
    assert.are.equal("cancelled", err.kind)
    assert.is_true(time.monotonic() - t0 < 0.5)
    assert.is_true(taken >= 2 and taken <= 4, "taken " .. taken)
    assert.is_true(ticks >= 5, "the loop ran other tasks meanwhile: " .. ticks)
    local before = taken
    task.sleep(0.5)
    assert.are.equal(before, taken)
  end)

  it("in plan mode measures once, waits for nothing and says how long promote and abort can take", function()
    tug.plan.set(true)
    local ok, r = pcall(analysis.run, { interval = "30s", count = 10, failure_limit = 2, initial_delay = "1m",
      provider = provider,
      metrics = { { name = "error-rate", query = "canary_error_rate", success = "value < 0.001" } } })
    local records = tug.plan.take()
    tug.plan.set(false)
    assert.is_true(ok, tostring(r))
    assert.is_true(r.planned)
    assert.are.equal("success", r.verdict)
    assert.are.equal(60 + 30 * 9, r.worst_case.promote)
    assert.are.equal(60 + 30 * 2, r.worst_case.abort)
    assert.are.equal(60 + 30 * 4, r.worst_case.error)
    assert.are.equal(1, #records)
    assert.are.equal("analysis", records[1].module)
    assert.are.equal("analyse error-rate every 30s, 10 times: promotes after 5m30s; aborts after 2m "
      .. "when every measurement fails", records[1].summary)
    assert.matches("error%-rate: canary_error_rate via prometheus, now 0.0004 %-> success", records[1].detail)
  end)

  it("runs inside a playbook step, with each measurement in the run's events", function()
    local p = project.new()
    finally(function() p:remove() end)
    p:write("environments/local.yaml", ("name: local\nprotected: false\nthresholds:\n  error_rate: 0.001\n"
      .. "metrics:\n  prometheus:\n    url: %s\n"):format(prom.url))
    p:write("playbooks/canary.lua", [[
return playbook {
  description = "canary with an analysis gate",
  steps = {
    step "analyse the canary" {
      run = function(ctx)
        local r = analysis.run { env = ctx.env, provider = "prometheus", interval = "200ms", count = 3,
          progress = true,
          metrics = { { name = "error-rate", query = "canary_error_rate", success = "value < thresholds.error_rate" } } }
        ctx.state.verdict = r.verdict
        if r.verdict ~= "success" then error(r.reason) end
      end,
    },
  },
}]])
    local r = p:tug({ "run", "canary", "--output", "json" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local messages = {}
    for line in r.stdout:gmatch("[^\n]+") do
      local e = json.decode(line)
      if e.event == "log" then messages[#messages + 1] = e.message end
    end
    assert.are.same({
      "analysis: 1 metric every 200ms, 3 times",
      "analysis: error-rate #1/3 0.0004 -> success",
      "analysis: error-rate #2/3 0.0004 -> success",
      "analysis: error-rate #3/3 0.0004 -> success",
      "analysis: success: all 1 metric passed over 3 measurements: error-rate 0.0004 (value < thresholds.error_rate " ..
        "where thresholds.error_rate = 0.001)",
    }, messages)
    local plan = p:tug({ "plan", "canary" })
    assert.are.equal(0, plan.code, plan.stdout .. plan.stderr)
    assert.matches("would analysis: analyse error%-rate every 200ms, 3 times: promotes after 400ms", plan.stdout)
  end)

  it("compares a canary with its baseline over a window of real samples", function()
    local function compare(canary)
      return analysis.compare({ provider = provider, window = "3s", step = "200ms", min_samples = 8, metrics = {
        { name = "latency", baseline = 'latency_seconds{version="baseline"}',
          canary = ('latency_seconds{version="%s"}'):format(canary) } } })
    end
    local slow = compare("canary-slow")
    assert.are.equal("failure", slow.verdict)
    assert.are.equal(0, slow.score)
    local m = slow.metrics.latency
    assert.are.equal("high", m.classification)
    assert.is_true(m.baseline.n >= 8 and m.canary.n >= 8)
    assert.is_true(m.p_value < 0.001)
    assert.is_true(m.estimate > 0.04 and m.estimate < 0.06)
    assert.matches("^canary scored 0 %(pass 95, marginal 75%): latency: significantly higher: canary mean 0.15", slow.reason)
    local good = compare("canary-good")
    assert.are.equal("success", good.verdict)
    assert.are.equal(100, good.score)
    assert.are.equal("pass", good.metrics.latency.classification)
  end)

  -- last: it stops the shared Prometheus
  it("gives 'error' once Prometheus has gone away for more than consecutive_error_limit measurements", function()
    local stopper
    local r = analysis.run({ interval = "200ms", count = 30, consecutive_error_limit = 2, provider = provider,
      metrics = { { name = "error-rate", query = "canary_error_rate", success = "value < 0.001", timeout = "1s" } },
      on_measurement = function(_, m)
        if m.n == 2 then stopper = task.spawn(function() prom:stop() end) end
      end,
    })
    stopper:wait()
    assert.are.equal("error", r.verdict)
    local ph = phases(r, "error-rate")
    assert.are.same({ "error", "error", "error" }, { ph[#ph - 2], ph[#ph - 1], ph[#ph] })
    assert.are.same({ "success", "success" }, { ph[1], ph[2] })
    assert.are.equal(3, r.metrics["error-rate"].count.error)
    assert.matches("^error%-rate errored: 3 measurements in a row could not be taken %(consecutive_error_limit 2%); "
      .. "last: prometheus query canary_error_rate: .*", r.reason)
  end)
end)

describe("analysis.run", function()
  it("gives 'error' after consecutive errors, and not before", function()
    local p = { type = "prometheus", url = "http://127.0.0.1:1" }
    local r = analysis.run({ interval = "10ms", count = 10, consecutive_error_limit = 3, provider = p,
      metrics = { { name = "down", query = "up", success = "value == 1" } } })
    assert.are.equal("error", r.verdict)
    assert.are.equal(4, #r.metrics.down.measurements)
    assert.matches("Connection refused", r.reason)
    -- fewer errors than the limit, and nothing else: still an error, never a pass
    r = analysis.run({ interval = "10ms", count = 2, provider = p,
      metrics = { { name = "down", query = "up", success = "value == 1" } } })
    assert.are.equal("error", r.verdict)
    assert.matches("none of its 2 measurements could be taken", r.reason)
  end)

  it("rejects mistakes before measuring anything", function()
    local p = { type = "prometheus", url = "http://127.0.0.1:1" }
    local function mistake(spec) local ok, err = pcall(analysis.run, spec); assert.is_false(ok); return tostring(err) end
    assert.matches("analysis.run: unknown option 'intervall'", mistake({ intervall = "1s", metrics = {} }))
    assert.matches("needs metrics", mistake({ provider = p }))
    assert.matches("metric 'x': needs a success or a failure condition",
      mistake({ provider = p, metrics = { { name = "x", query = "up" } } }))
    assert.matches("metric 'x': success: condition 'value <': unexpected end of condition",
      mistake({ provider = p, metrics = { { name = "x", query = "up", success = "value <" } } }))
    assert.matches("unknown function 'os.exit'", mistake({ provider = p, metrics = { { name = "x", query = "up",
      success = "os.exit(1) == 0" } } }))
    assert.matches("'thresholds' has no 'error_rat'", mistake({ provider = p, env = { thresholds = { error_rate = 1 } },
      metrics = { { name = "x", query = "up", success = "value < thresholds.error_rat" } } }))
    assert.matches("no_data must be", mistake({ provider = p, metrics = { { name = "x", query = "up",
      success = "value < 1", no_data = "ignore" } } }))
    assert.matches("no metrics provider named 'prom'", mistake({ provider = "prom", metrics = { { name = "x",
      query = "up", success = "value < 1" } } }))
    assert.matches("the name is used twice", mistake({ provider = p, metrics = {
      { name = "x", query = "up", success = "value < 1" }, { name = "x", query = "up", success = "value < 1" } } }))
    assert.matches("count must be an integer of at least 1", mistake({ provider = p, count = 0, metrics = {
      { name = "x", query = "up", success = "value < 1" } } }))
  end)
end)

describe("conditions", function()
  local expr = require("analysis.expr")
  it("are compiled by a small parser with no access to globals", function()
    assert.is_true(expr.compile("value < 0.001")(0.0005))
    assert.is_false(expr.compile("value < 0.001")(0 / 0))
    assert.is_true(expr.compile("abs(value - 1e-3) < .5e-3 and math.max(1, 2) == 2 and value ~= inf")(0.0011))
    assert.is_true(expr.compile("-2^2 == -4 && (1 + 2 * 3) == 7 || false")(0))
    assert.is_true(expr.compile("isnan(value) or not (value >= 3)")(0 / 0))
    assert.is_true(expr.compile("value <= limit.p95 * 2", { limit = { p95 = 0.25 } })(0.5))
    assert.has_error(function() expr.compile("print('x')") end, "condition 'print('x')': unexpected ''' at position 7")
    assert.has_error(function() expr.compile("string.rep('x', 9)") end)
    assert.has_error(function() expr.compile("value + 1")(1) end, "condition 'value + 1' gave number, not true or false")
    assert.has_error(function() expr.compile("value < 1")("x") end,
      "condition 'value < 1': the left side of < is string, not a number")
  end)
end)

-- An independent computation of the Mann-Whitney numbers: U by counting pairs, the exact
-- distribution of U by enumerating every arrangement (small samples), and the normal
-- approximation with statistics.NormalDist; Hodges-Lehmann from statistics.median.
local PYTHON = [==[
import itertools, json, math, statistics, sys
from collections import Counter
out = []
for case in json.load(sys.stdin):
    x, y, conf = case["canary"], case["baseline"], case["confidence"]
    m, n = len(x), len(y)
    u = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in x for b in y)
    d = sorted(a - b for a in x for b in y)
    est = statistics.median(d)
    alpha = 1 - conf
    ties = len(set(x + y)) < m + n
    res = {"u": u, "estimate": est}
    if m < 50 and n < 50 and not ties:
        counts = Counter()
        for pos in itertools.combinations(range(m + n), m):
            chosen, seen_y, uu = set(pos), 0, 0
            for i in range(m + n):
                if i in chosen: uu += seen_y
                else: seen_y += 1
            counts[uu] += 1
        total = sum(counts.values())
        cdf = lambda q: sum(v for k, v in counts.items() if k <= q) / total
        p = (1 - cdf(u - 1)) if u > m * n / 2 else cdf(u)
        q = 0
        while cdf(q) < alpha / 2: q += 1
        res.update(method="exact", p=min(1.0, 2 * p))
    else:
        values = sorted(x + y)
        tie_sum = sum(t ** 3 - t for t in Counter(values).values())
        N = m + n
        sigma = math.sqrt(m * n / 12 * ((N + 1) - tie_sum / (N * (N - 1))))
        dz = u - m * n / 2
        z = (dz - math.copysign(0.5, dz) if dz != 0 else 0) / sigma
        nd = statistics.NormalDist()
        res.update(method="normal", p=min(1.0, 2 * nd.cdf(-abs(z))), z=z)
        q = math.ceil(m * n / 2 - 0.5 - nd.inv_cdf(1 - alpha / 2) * sigma)
    q = max(1, min(q, m * n))
    res["ci"] = [d[q - 1], d[max(q, m * n - q + 1) - 1]]
    out.append(res)
print(json.dumps(out))
]==]

-- A deterministic generator (so the data is the same on every run).
local function lcg(seed)
  local s = seed
  return function()
    s = (s * 1103515245 + 12345) % 2147483648
    return s / 2147483648
  end
end

describe("the Mann-Whitney test", function()
  local R_X = { 0.80, 0.83, 1.89, 1.04, 1.45, 1.38, 1.91, 1.64, 0.73, 1.46 }
  local R_Y = { 1.15, 0.88, 0.90, 0.74, 1.21 }
  -- ClickHouse's tests/queries/0_stateless/01560_mann_whitney.sql: U = 223, p = 0.5426959774289482
  local CH_0 = { 310, 195, 530, 155, 530, 245, 385, 450, 465, 545, 170, 180, 125, 180, 230, 75, 430, 480, 495, 295 }
  local CH_1 = { 116, 171, 176, 421, 111, 326, 481, 111, 346, 441, 261, 411, 206, 521, 456, 446, 296, 51, 426, 261 }

  it("matches published worked examples", function()
    -- R's ?wilcox.test example: W = 35, one-sided p = 0.1272, so two-sided 0.2544
    local r = stats.mann_whitney(R_X, R_Y)
    assert.are.equal(35, r.u)
    assert.are.equal("exact", r.method)
    assert.are.equal("0.2544", string.format("%.4f", r.p_value))
    r = stats.mann_whitney(CH_0, CH_1)
    assert.are.equal("normal", r.method) -- the table has ties
    assert.are.equal(223, r.u)
    assert.is_true(math.abs(r.p_value - 0.5426959774289482) < 1e-12, string.format("%.17g", r.p_value))
  end)

  it("matches an independent computation, exact and approximate, with and without ties", function()
    local rand = lcg(42)
    local function sample(k, base, spread, round)
      local out = {}
      for i = 1, k do
        local v = base + rand() * spread
        if round then v = math.floor(v / round + 0.5) * round end
        out[i] = v
      end
      return out
    end
    local cases = {
      { canary = R_X, baseline = R_Y, confidence = 0.95 },
      { canary = sample(9, 0.150, 0.03), baseline = sample(8, 0.100, 0.03), confidence = 0.98 },
      { canary = sample(7, 0.1, 0.05), baseline = sample(9, 0.1, 0.05), confidence = 0.9 },
      { canary = sample(12, 0, 0.003, 0.001), baseline = sample(12, 0, 0.002, 0.001), confidence = 0.95 },
      { canary = sample(60, 0.2, 0.1), baseline = sample(55, 0.19, 0.1), confidence = 0.98 },
      { canary = CH_0, baseline = CH_1, confidence = 0.95 },
    }
    local py = exec.run({ "python3", "-c", PYTHON }, { stdin = json.encode(cases), timeout = 60 })
    assert.are.equal(0, py.code, py.stderr)
    local expected = json.decode(py.stdout)
    for i, c in ipairs(cases) do
      local got = stats.mann_whitney(c.canary, c.baseline, { confidence = c.confidence })
      local want = expected[i]
      local label = "case " .. i
      assert.are.equal(want.method, got.method, label)
      assert.are.equal(want.u, got.u, label)
      assert.is_true(math.abs(want.p - got.p_value) < 1e-12, ("%s: p %.17g vs %.17g"):format(label, got.p_value, want.p))
      assert.is_true(math.abs(want.estimate - got.estimate) < 1e-12, label)
      assert.is_true(math.abs(want.ci[1] - got.ci[1]) < 1e-12 and math.abs(want.ci[2] - got.ci[2]) < 1e-12,
        ("%s: ci [%g, %g] vs [%g, %g]"):format(label, got.ci[1], got.ci[2], want.ci[1], want.ci[2]))
      if want.z then assert.is_true(math.abs(want.z - got.z) < 1e-12, label) end
    end
  end)
end)

describe("analysis.compare", function()
  local rand = lcg(7)
  local function sample(k, base, spread)
    local out = {}
    for i = 1, k do out[i] = base + rand() * spread end
    return out
  end

  it("fails a canary that is significantly worse, and scores it", function()
    local r = analysis.compare({ name = "latency check", baseline = sample(20, 0.10, 0.02), canary = sample(20, 0.15, 0.02) })
    assert.are.equal("failure", r.verdict)
    assert.are.equal(0, r.score)
    local m = r.metrics["latency check"]
    assert.are.equal("high", m.classification)
    assert.are.equal("exact", m.method)
    assert.is_true(m.ratio > 1.4 and m.ratio < 1.6)
    assert.matches("latency check: significantly higher: canary mean 0.1%d+ vs baseline 0.1%d+ %(%+%d+%.%d%%%), shift 0.0%d+, "
      .. "98%% CI %[0.0%d+, 0.0%d+%], p=", r.reason)
  end)

  it("passes an improvement when only increases count, and flags it when either direction does", function()
    local b, c = sample(15, 0.15, 0.02), sample(15, 0.10, 0.02)
    local better = analysis.compare({ baseline = b, canary = c })
    assert.are.equal("success", better.verdict)
    assert.matches("metric: significantly lower, which direction = increase allows", better.reason)
    local r = analysis.compare({ baseline = b, canary = c, direction = "either" })
    assert.are.equal("failure", r.verdict)
    assert.are.equal("low", r.metrics.metric.classification)
  end)

  it("tolerates a significant change within the effect-size tolerance or the absolute minimum", function()
    local b = sample(40, 1.00, 0.01)
    local c = {}
    for i, v in ipairs(sample(40, 1.00, 0.01)) do c[i] = v * 1.05 end
    local strict = analysis.compare({ baseline = b, canary = c })
    assert.are.equal("failure", strict.verdict)
    local tolerant = analysis.compare({ baseline = b, canary = c, tolerance = 0.1 })
    assert.are.equal("success", tolerant.verdict)
    assert.matches("higher, within the tolerated increase %(x1.1%)", tolerant.metrics.metric.reason)
    local absolute = analysis.compare({ baseline = b, canary = c, min_difference = 0.1 })
    assert.are.equal("success", absolute.verdict)
    assert.matches("within min_difference 0.1", absolute.metrics.metric.reason)
  end)

  it("passes identical data, and calls too little data inconclusive (or a failure when data is a must)", function()
    local same = sample(10, 1, 1)
    assert.are.equal("success", analysis.compare({ baseline = same, canary = same }).verdict)
    local r = analysis.compare({ baseline = { 1, 2, 3 }, canary = { 4, 5, 6 } })
    assert.are.equal("inconclusive", r.verdict)
    assert.matches("too little data %(baseline 3, canary 3 values; min_samples 5%)", r.reason)
    assert.is_string(json.encode(analysis.compare({ baseline = {}, canary = { 1 } })))
    r = analysis.compare({ baseline = { 1, 2, 3 }, canary = { 4, 5, 6 }, must_have_data = true })
    assert.are.equal("failure", r.verdict)
    -- NaN samples are removed by default, or counted as zeros
    local nan = 0 / 0
    r = analysis.compare({ baseline = { nan, nan, nan, nan, nan, 0 }, canary = { nan, nan, nan, nan, nan, 0 } })
    assert.are.equal("inconclusive", r.verdict)
    r = analysis.compare({ baseline = { nan, nan, nan, nan, nan, 0 }, canary = { nan, nan, nan, nan, nan, 0 }, nan = "zero" })
    assert.are.equal("success", r.verdict)
  end)

  it("scores several metrics by weight, with a marginal band and critical metrics", function()
    local good_b, good_c = sample(20, 1, 0.1), sample(20, 1, 0.1)
    local bad_b, bad_c = sample(20, 1, 0.1), sample(20, 2, 0.1)
    local function run(extra)
      local spec = { metrics = {
        { name = "a", baseline = good_b, canary = good_c },
        { name = "b", baseline = good_b, canary = good_c },
        { name = "errors", baseline = bad_b, canary = bad_c, critical = extra.critical },
      } }
      for k, v in pairs(extra) do if k ~= "critical" then spec[k] = v end end
      return analysis.compare(spec)
    end
    local r = run({})
    assert.are.equal("failure", r.verdict)
    assert.are.equal(66.67, r.score)
    assert.matches("^canary scored 66.67 %(pass 95, marginal 75%): errors: significantly higher", r.reason)
    r = run({ marginal_score = 60 })
    assert.are.equal("inconclusive", r.verdict)
    r = run({ pass_score = 60, marginal_score = 50 })
    assert.are.equal("success", r.verdict)
    r = run({ pass_score = 60, marginal_score = 50, critical = true })
    assert.are.equal("failure", r.verdict)
    assert.are.equal(0, r.score)
    assert.matches("^critical metric failed: errors: significantly higher", r.reason)
  end)

  it("gives 'error' when a query fails, and rejects mistakes", function()
    local r = analysis.compare({ provider = { type = "prometheus", url = "http://127.0.0.1:1" }, window = "5m",
      baseline = "up{version='v1'}", canary = "up{version='v2'}" })
    assert.are.equal("error", r.verdict)
    assert.matches("could not compare: metric: prometheus range query", r.reason)
    assert.has_error(function() analysis.compare({ baseline = { 1 } }) end)
    local ok, err = pcall(analysis.compare, { baseline = "up", canary = "up" })
    assert.is_false(ok)
    assert.matches("needs a provider for its queries", err)
    ok, err = pcall(analysis.compare, { baseline = { 1 }, canary = { 2 }, confidence = 2 })
    assert.matches("confidence must be a number from 0.5 to 0.9999", err)
  end)
end)
