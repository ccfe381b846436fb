-- verify, run end to end by the real binary against a simulated cluster this spec serves:
-- the four health endpoints, the response-time check, the load check against the P95 and
-- error-rate thresholds, database connectivity, and a plan that sends nothing.
package.path = "spec/support/?.lua;" .. package.path
local harness = require("playbook_harness")
local runs = require("playbook_runs")

local function step_state(h, r, name)
  for _, e in ipairs(h:events(r, "step_end")) do
    if e.name == name then return e.state end
  end
end

describe("verify", function()
  local h, cluster
  local new_harness = harness.per_test()
  before_each(function() h, cluster = new_harness() end)

  it("passes a healthy API, reporting timings, the load check and the database", function()
    local r = h:tug({ "run", "verify", "load_duration=1s", "within=3s" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local state = step_state(h, r, "check database connectivity")
    assert.are.equal("healthy", state.database)
    assert.is_true(state.timings_ms.total > 0)
    assert.is_true(state.load.count > 50)
    assert.is_true(state.load.p95_ms < 500)
    assert.matches("error rate [%d.]+%% %(%d+ of %d+ requests.-%) is not surely over the 0.1%% limit", r.stdout)
  end)

  it("fails, saying why, when its health endpoints fail", function()
    cluster:fault({ type = "unhealthy", version = "v2.1.0", status = 503 })
    local r = h:tug({ "run", "verify", "load_duration=1s", "within=2s" })
    runs.failed(h, r, nil, "check the health endpoints", "status 503")
  end)

  it("fails when a response takes longer than the P95 threshold", function()
    cluster:fault({ type = "latency", version = "v2.1.0", add = "600ms" })
    local r = h:tug({ "run", "verify", "load_duration=1s", "within=5s" })
    runs.failed(h, r, nil, "GET /api/orders took %d+ ms, over the 500 ms limit")
  end)

  it("fails the load check when the error rate is surely over the threshold", function()
    cluster:fault({ type = "error_rate", version = "v2.1.0", rate = 0.2 })
    local r = h:tug({ "run", "verify", "load_duration=1s", "within=3s" })
    runs.failed(h, r, nil, "run a short load check",
      "error rate [%d.]+%% %(%d+ of %d+ requests: %d+ x status 500%) is over the 0.1%% limit %(surely at least")
  end)

  it("plans: sends no write and no load", function()
    local before = runs.snapshot(cluster)
    local orders = runs.app_requests(cluster, "/api/orders", "GET")
    local r = h:tug({ "plan", "verify" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.matches("would send requests for 5s from 10 connections", h:changes(r))
    -- the one response-time probe is a read; the load check sent nothing
    assert.is_true(runs.app_requests(cluster, "/api/orders", "GET") - orders <= 1)
    runs.unchanged(cluster, before)
  end)
end)
