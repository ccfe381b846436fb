-- blue-green, run end to end by the real binary against a simulated cluster this spec
-- serves: the switch, the old colour kept for an instant rollback and scaled down after
-- its window, the faults that must leave (or put back) traffic on the old colour, a plan
-- that sends nothing, and a run killed with -9 then resumed.
package.path = "spec/support/?.lua;" .. package.path
local harness = require("playbook_harness")
local runs = require("playbook_runs")

local function selector(cluster) return cluster:get("services", "multiship", "api-service").spec.selector.colour end
local function replicas(cluster, name) return cluster:get("deployments", "multiship", name).spec.replicas end

describe("blue-green", function()
  local h, cluster
  local new_harness = harness.per_test()
  local function start(opts) h, cluster = new_harness(opts) end

  it("deploys to the idle colour and switches traffic, keeping the old colour when no window is set", function()
    start()
    local r = h:tug({ "run", "blue-green", "version=v2.2.0", "--yes" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("green", selector(cluster))
    assert.are.equal("multiship/api:v2.2.0", h:image("api-green"))
    assert.are.equal(4, replicas(cluster, "api-green"))
    assert.are.equal(4, replicas(cluster, "api-blue"))
    assert.is_nil(cluster:get("services", "multiship", "api-green-preview"))
    assert.matches("blue stays up until the next deploy", r.stdout)
  end)

  it("keeps the old colour up for the window, then scales it down", function()
    start()
    -- watch the cluster while the run goes: blue must still serve after the switch
    local blue_at_switch
    local watcher = task.spawn(function()
      while not blue_at_switch do
        if selector(cluster) == "green" then blue_at_switch = replicas(cluster, "api-blue") end
        task.sleep(0.02)
      end
    end)
    local t0 = time.monotonic()
    local r = h:tug({ "run", "blue-green", "version=v2.2.0", "--yes", "scale_down_after=1500ms", "watch_interval=300ms" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    watcher:wait()
    assert.are.equal(4, blue_at_switch)
    assert.is_true(time.monotonic() - t0 >= 1.5)
    assert.are.equal("green", selector(cluster))
    assert.are.equal(0, replicas(cluster, "api-blue"))
    assert.are.equal(4, replicas(cluster, "api-green"))
  end)

  it("takes the window from the environment's blue_green.scale_down_after", function()
    start({ env = "blue_green: { scale_down_after: 0s }\n" })
    local r = h:tug({ "run", "blue-green", "version=v2.2.0", "--yes" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal(0, replicas(cluster, "api-blue"))
    local skipped = h:events(r, "step_skip")
    assert.are.equal(1, #skipped) -- a window of 0: nothing to wait for
    assert.are.equal("keep the old colour for an instant rollback", skipped[1].name)
  end)

  it("refuses an environment window that is not a duration, changing nothing", function()
    start({ env = "blue_green: { scale_down_after: half an hour }\n" })
    local before = runs.snapshot(cluster)
    local r = h:tug({ "run", "blue-green", "version=v2.2.0", "--yes" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches('blue_green.scale_down_after is "half an hour", not a duration', h:run_end(r).reason)
    runs.unchanged(cluster, before)
  end)

  it("of a version that fails its health checks leaves traffic on the old colour", function()
    start()
    local r = h:tug({ "run", "blue-green", "version=v2.2.1-bad", "--yes", "verify_within=2s" })
    runs.failed(h, r, "rolled-back", "not healthy")
    assert.are.equal("blue", selector(cluster))
    assert.are.equal(0, replicas(cluster, "api-green"))
    assert.are.equal("multiship/api:v2.1.0", h:image("api-green"))
    assert.is_nil(cluster:get("services", "multiship", "api-green-preview"))
  end)

  it("of a version whose rollout never becomes ready leaves traffic and the idle colour as they were", function()
    start()
    cluster:fault({ type = "never_ready", version = "v2.2.0" })
    local r = h:tug({ "run", "blue-green", "version=v2.2.0", "--yes", "rollout_timeout=1500ms" })
    runs.failed(h, r, nil, "deploy the new version to the idle colour.*timed out")
    assert.are.equal("blue", selector(cluster))
    assert.are.equal(0, replicas(cluster, "api-green"))
    assert.are.equal("multiship/api:v2.1.0", h:image("api-green"))
    assert.are.equal(4, replicas(cluster, "api-blue"))
  end)

  it("switches traffic back to the old colour when the new one fails during the window", function()
    start()
    local injected = task.spawn(function()
      while selector(cluster) ~= "green" do task.sleep(0.02) end
      task.sleep(0.3)
      cluster:fault({ type = "unhealthy", version = "v2.2.0", status = 503 })
    end)
    local r = h:tug({ "run", "blue-green", "version=v2.2.0", "--yes", "scale_down_after=1m", "watch_interval=200ms",
      "verify_within=1s" })
    injected:wait()
    runs.failed(h, r, "rolled-back", "green failed while blue stood by: .*status 503")
    assert.are.equal("blue", selector(cluster))
    assert.are.equal(4, replicas(cluster, "api-blue"))
    assert.are.equal(0, replicas(cluster, "api-green"))
    assert.are.equal("multiship/api:v2.1.0", h:image("api-green"))
  end)

  it("interrupted during the window (SIGTERM, as Ctrl-C), switches traffic back to the old colour", function()
    start()
    local _, events, r = runs.kill_when(h, { "run", "blue-green", "version=v2.2.0", "--yes", "scale_down_after=1m" },
      function(e) return e.event == "step_start" and e.name == "keep the old colour for an instant rollback" end,
      { signal = "TERM" })
    assert.are.equal(4, r.code, r.stdout .. r.stderr)
    local last = events[#events]
    assert.are.equal("run_end", last.event)
    assert.are.equal("rolled-back", last.status)
    assert.is_truthy(last.interrupted)
    assert.are.equal("blue", selector(cluster))
    assert.are.equal(4, replicas(cluster, "api-blue"))
    assert.are.equal(0, replicas(cluster, "api-green"))
  end)

  it("plans: lists the writes, the scale-down included, and sends none", function()
    start()
    local text, r = runs.plan(h, { "plan", "blue-green", "version=v2.2.0", "scale_down_after=30m" })
    assert.are.equal("planned", h:run_end(r).status)
    assert.matches("k8s: patch deployment multiship/api%-green", text)
    assert.matches("k8s: create service multiship/api%-green%-preview", text)
    assert.matches("k8s: patch service multiship/api%-service", text)
    assert.matches("k8s: patch deployment multiship/api%-blue", text) -- the scale-down
    assert.are.equal("blue", selector(cluster))
    assert.are.equal("multiship/api:v2.1.0", h:image("api-green"))
  end)

  it("killed with -9 during the rollout, resumes and ends switched, with the old colour scaled down", function()
    start({ timing = { pod_start = "1500ms", ready_after = "200ms" } })
    local run_id = runs.kill_when(h, { "run", "blue-green", "version=v2.2.0", "--yes", "scale_down_after=0s" },
      function(e, c)
        return e.event == "step_start" and e.name == "deploy the new version to the idle colour"
          and replicas(c, "api-green") == 4
      end)
    -- killed mid-rollout: nothing switched yet
    assert.are.equal("blue", selector(cluster))
    local r = runs.resume(h, run_id)
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal(1, #h:events(r, "run_resume"))
    assert.are.equal("succeeded", h:run_end(r).status)
    assert.are.equal("green", selector(cluster))
    assert.are.equal("multiship/api:v2.2.0", h:image("api-green"))
    assert.are.equal(4, cluster:get("deployments", "multiship", "api-green").status.readyReplicas)
    assert.are.equal(0, replicas(cluster, "api-blue"))
    assert.matches("succeeded", runs.show(h, run_id).stdout)
  end)
end)
