-- canary, run end to end by the real binary against a simulated cluster this spec
-- serves: weights from the environment or the param, the gate that aborts a bad version
-- and promotes a good one (measured through the Service, and against a real Prometheus
-- scraping the simulator), a plan that sends nothing, and a run killed with -9 then resumed.
package.path = "spec/support/?.lua;" .. package.path
local harness = require("playbook_harness")
local prometheus = require("prometheus")
local runs = require("playbook_runs")

local function replicas(cluster, name) return cluster:get("deployments", "multiship", name).spec.replicas end

-- The "canary at N% of traffic (...; asked for W%)" lines of a run: the weights it went through.
local function asked(h, r)
  local out = {}
  for _, e in ipairs(h:events(r, "log")) do
    local w = e.message:match("^canary at %d+%% of traffic %(.*asked for (%d+)%%%)$")
    if w then out[#out + 1] = tonumber(w) end
  end
  return out
end

local function analysis_state(h, r)
  for _, e in ipairs(h:events(r, "step_end")) do
    if e.name == "shift traffic step by step, gated by analysis" then return e.state.analysis end
  end
end

describe("canary", function()
  local h, cluster
  local new_harness = harness.per_test()
  local function start(opts) h, cluster = new_harness(opts) end

  it("of a bad version fails its analysis at the environment's first weight and returns all traffic to stable", function()
    start({ env = "canary: { weights: [10, 50, 100] }\n" })
    local r = h:tug({ "run", "canary", "version=v2.2.1-bad", "--yes", "analysis_count=2", "analysis_interval=500ms" })
    runs.failed(h, r, "rolled-back", "analysis at 10%%: .*failed")
    assert.are.equal("failure", analysis_state(h, r)[1].metrics["error-rate"].verdict)
    assert.are.same({ 10 }, asked(h, r))
    assert.are.equal(0, replicas(cluster, "api-canary"))
    assert.are.equal("multiship/api:v2.1.0", h:image("api-blue"))
    assert.are.equal("blue", cluster:get("services", "multiship", "api-service").spec.selector.colour)
  end)

  it("of a good version passes every weight of the environment and is promoted", function()
    start({ env = "canary: { weights: [25, 50, 100] }\nanalysis: { count: 1, interval: 500ms }\n" })
    local r = h:tug({ "run", "canary", "version=v2.2.0", "--yes" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.same({ 25, 50 }, asked(h, r))
    local a = analysis_state(h, r)
    assert.are.equal("probe", a[1].provider)
    assert.are.equal("success", a[2].verdict)
    assert.are.equal("multiship/api:v2.2.0", h:image("api-blue"))
    assert.are.equal(0, replicas(cluster, "api-canary"))
  end)

  it("takes its weights from the param over the environment's", function()
    start({ quiet = true, env = "canary: { weights: [10, 50, 100] }\n" })
    local r = h:tug({ "run", "canary", "version=v2.2.0", "weights=50,100", "--yes", "analysis_count=1",
      "analysis_interval=500ms" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.same({ 50 }, asked(h, r))
    assert.matches("the first step sends 50%% of the traffic", r.stdout)
  end)

  it("refuses weights that do not rise to 100, naming them, and changes nothing", function()
    start()
    local before = runs.snapshot(cluster)
    local r = h:tug({ "run", "canary", "version=v2.2.0", "weights=10,5,100", "--yes" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("the weights param: 5 is not a percentage above 10 and at most 100", h:run_end(r).reason)
    r = h:tug({ "run", "canary", "version=v2.2.0", "weights=5,10", "--yes" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("the weights param must end at 100, the promotion", h:run_end(r).reason)
    runs.unchanged(cluster, before)
  end)

  it("whose promotion does not roll out puts stable back on its version", function()
    start({ quiet = true })
    -- the canary passes; then v2.2.0 stops becoming ready, as the stable pods roll to it
    local injected = task.spawn(function()
      while h:image("api-blue") ~= "multiship/api:v2.2.0" do task.sleep(0.02) end
      cluster:fault({ type = "never_ready", version = "v2.2.0" })
    end)
    local r = h:tug({ "run", "canary", "version=v2.2.0", "weights=50,100", "--yes", "analysis_count=1",
      "analysis_interval=500ms", "rollout_timeout=1500ms" })
    injected:wait()
    runs.failed(h, r, "rolled-back", "promote the canary to stable.*timed out")
    assert.are.equal("multiship/api:v2.1.0", h:image("api-blue"))
    assert.are.equal(0, replicas(cluster, "api-canary"))
    assert.is_true(cluster:wait_for(function()
      return cluster:get("deployments", "multiship", "api-blue").status.readyReplicas == 4
    end, 5))
  end)

  it("plans: lists the writes and sends none", function()
    start()
    local text, r = runs.plan(h, { "plan", "canary", "version=v2.2.0" })
    assert.matches("k8s: patch deployment multiship/api%-canary", text)
    assert.matches("k8s: patch deployment multiship/api%-blue", text) -- the promotion
    assert.are.same({ 5, 10, 25, 50 }, asked(h, r))
    assert.are.equal("multiship/api:v2.1.0", h:image("api-canary"))
    assert.are.equal(0, replicas(cluster, "api-canary"))
  end)

  it("killed with -9 during its analysis, resumes and promotes", function()
    start({ quiet = true })
    local run_id = runs.kill_when(h, { "run", "canary", "version=v2.2.0", "weights=50,100", "--yes",
      "analysis_count=3", "analysis_interval=1s" }, function(e)
        return e.event == "log" and e.message:match("^canary at") ~= nil
      end)
    assert.are.equal(4, replicas(cluster, "api-canary"))
    assert.are.equal("multiship/api:v2.1.0", h:image("api-blue"))
    local r = runs.resume(h, run_id)
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal(1, #h:events(r, "run_resume"))
    assert.are.equal("succeeded", h:run_end(r).status)
    assert.are.equal("multiship/api:v2.2.0", h:image("api-blue"))
    assert.are.equal(4, cluster:get("deployments", "multiship", "api-blue").status.readyReplicas)
    assert.are.equal(0, replicas(cluster, "api-canary"))
  end)
end)

-- The gate against a real Prometheus that scrapes the simulator's /metrics every second:
-- the canary version's own requests, by their version label, through PromQL.
describe("canary gated by a real Prometheus", function()
  local h, prom

  lazy_setup(function()
    -- quiet: at the few requests a second of the simulated traffic, one error in a
    -- ten-second window would read as 1%. The window is ten seconds, and the first
    -- measurement six seconds in, because rate() needs two scrapes of a series: with a
    -- five-second window a bad canary's first 5xx series was sometimes too new to count
    -- (read as 0 through "or vector(0)") at both measurements of its first weight.
    h = harness.new({ quiet = true })
    local sim_target = { address = h.cluster.url:match("^http://(.*)$"), close = function() end }
    prom = prometheus.start({ targets = { sim_target }, scrape_interval = "1s" })
    h:write_env(string.format([[
metrics: { prometheus: { url: %s } }
analysis: { window: 10s, initial_delay: 6s, count: 2, interval: 1s }
canary: { weights: [10, 50, 100] }
]], prom.url))
  end)

  lazy_teardown(function()
    if prom then prom:stop() end
    if h then h:close() end
  end)

  it("fails the analysis of v2.2.1-bad on its error rate and returns all traffic to stable", function()
    local r = h:tug({ "run", "canary", "version=v2.2.1-bad", "--yes" })
    runs.failed(h, r, "rolled-back", "analysis at 10%%: .* failed")
    local a = analysis_state(h, r)
    assert.are.equal("prometheus", a[1].provider)
    assert.are.equal("failure", a[1].metrics["error-rate"].verdict)
    assert.matches('version="v2.2.1-bad"', a[1].metrics["error-rate"].query, 1, true)
    assert.are.equal(0, replicas(h.cluster, "api-canary"))
    assert.are.equal("multiship/api:v2.1.0", h:image("api-blue"))
    -- Prometheus itself saw what the gate judged: the bad version's 5xx share, far over 0.1%
    local doc = prom:query('sum(rate(http_requests_total{service="api-service",version="v2.2.1-bad",code=~"5.."}[1m]))'
      .. ' / sum(rate(http_requests_total{service="api-service",version="v2.2.1-bad"}[1m]))')
    assert.is_true(tonumber(doc.data.result[1].value[2]) > 0.1)
  end)

  it("passes v2.2.0 on PromQL and promotes it", function()
    local r = h:tug({ "run", "canary", "version=v2.2.0", "weights=50,100", "--yes" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local a = analysis_state(h, r)
    assert.are.equal(1, #a)
    assert.are.equal("prometheus", a[1].provider)
    assert.are.equal("success", a[1].verdict)
    assert.matches('version="v2.2.0"', a[1].metrics.p95.query, 1, true)
    assert.matches("error%-rate 0", a[1].reason)
    assert.are.equal("multiship/api:v2.2.0", h:image("api-blue"))
    assert.are.equal(0, replicas(h.cluster, "api-canary"))
  end)
end)
