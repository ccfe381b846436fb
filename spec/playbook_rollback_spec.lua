-- rollback (immediate) and rollback-gradual, run end to end by the real binary against a
-- simulated cluster this spec serves: the rollbacks, what they do when the version they
-- go back to does not come up, plans that send nothing, and runs killed with -9 then
-- resumed.
package.path = "spec/support/?.lua;" .. package.path
local harness = require("playbook_harness")
local runs = require("playbook_runs")

local function selector(cluster) return cluster:get("services", "multiship", "api-service").spec.selector.colour end
local function replicas(cluster, name) return cluster:get("deployments", "multiship", name).spec.replicas end
local function ready(cluster, name) return cluster:get("deployments", "multiship", name).status.readyReplicas end
local function revision(cluster)
  return cluster:get("deployments", "multiship", "api").metadata.annotations["deployment.kubernetes.io/revision"]
end

-- Every test of both blocks starts from a fresh cluster running v2.1.0.
local h, cluster
local new_harness = harness.per_test()
before_each(function() h, cluster = new_harness() end)

describe("rollback", function()
  it("returns the API to its previous revision and verifies it", function()
    assert.are.equal(0, h:tug({ "run", "deploy", "version=v2.2.0" }).code)
    local r = h:tug({ "run", "rollback", "--yes" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("succeeded", h:run_end(r).status)
    assert.are.equal("multiship/api:v2.1.0", h:image("api"))
    assert.are.equal(4, cluster:get("deployments", "multiship", "api").status.readyReplicas)
    assert.matches("now running multiship/api:v2.1.0", r.stdout)
  end)

  it("refuses when there is no earlier revision, changing nothing", function()
    local before = runs.snapshot(cluster)
    local r = h:tug({ "run", "rollback", "--yes" })
    runs.failed(h, r, nil, "api has no earlier revision to roll back to")
    runs.unchanged(cluster, before)
  end)

  it("fails, saying so, when the revision it went back to is not healthy", function()
    assert.are.equal(0, h:tug({ "run", "deploy", "version=v2.2.0" }).code)
    cluster:fault({ type = "unhealthy", version = "v2.1.0", status = 503 })
    local r = h:tug({ "run", "rollback", "--yes", "verify_within=1s" })
    runs.failed(h, r, "failed", "after the rollback to multiship/api:v2.1.0: .*status 503")
  end)

  it("plans: lists the rollout undo and sends nothing", function()
    assert.are.equal(0, h:tug({ "run", "deploy", "version=v2.2.0" }).code)
    local text = runs.plan(h, { "plan", "rollback" })
    assert.matches("k8s: patch deployment multiship/api", text)
    assert.are.equal("multiship/api:v2.2.0", h:image("api"))
  end)

  it("killed with -9 while the old revision comes back, resumes without sending a second undo", function()
    assert.are.equal(0, h:tug({ "run", "deploy", "version=v2.2.0" }).code)
    assert.are.equal("2", revision(cluster))
    cluster:set_timing({ pod_start = "1s" }) -- the rolled-back pods take a while to start
    local run_id = runs.kill_when(h, { "run", "rollback", "--yes" }, function(e, c)
      return e.event == "step_start" and e.name == "roll back" and h:image("api") == "multiship/api:v2.1.0"
    end)
    -- the undo is in and rolling out: a second one would go forward to v2.2.0 again
    assert.are.equal("3", revision(cluster))
    cluster:set_timing({ pod_start = "100ms" })
    local r = runs.resume(h, run_id)
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("succeeded", h:run_end(r).status)
    assert.matches("api already runs multiship/api:v2%.1%.0 %(revision 3%): the rollback was sent", r.stdout)
    assert.are.equal("multiship/api:v2.1.0", h:image("api"))
    assert.are.equal("3", revision(cluster))
    assert.are.equal(4, ready(cluster, "api"))
  end)
end)

describe("rollback-gradual", function()
  it("moves traffic back to the stable colour and scales the other down", function()
    assert.are.equal(0, h:tug({ "run", "blue-green", "version=v2.2.0", "--yes", "scale_down_after=0s" }).code)
    assert.are.equal(0, replicas(cluster, "api-blue"))
    local r = h:tug({ "run", "rollback-gradual", "--yes" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("blue", selector(cluster))
    assert.are.equal(4, replicas(cluster, "api-blue"))
    assert.are.equal(4, cluster:get("deployments", "multiship", "api-blue").status.readyReplicas)
    assert.are.equal(0, replicas(cluster, "api-green"))
  end)

  it("leaves traffic where it was when the stable colour does not come up", function()
    assert.are.equal(0, h:tug({ "run", "blue-green", "version=v2.2.0", "--yes", "scale_down_after=0s" }).code)
    cluster:fault({ type = "never_ready", version = "v2.1.0" })
    local r = h:tug({ "run", "rollback-gradual", "--yes", "rollout_timeout=2s" })
    runs.failed(h, r, "failed", "scale up the stable colour", "timed out")
    assert.are.equal("green", selector(cluster))
    assert.are.equal(4, replicas(cluster, "api-green"))
    assert.are.equal(0, replicas(cluster, "api-blue"))
  end)

  it("plans: lists the scaling and the switch and sends nothing", function()
    assert.are.equal(0, h:tug({ "run", "blue-green", "version=v2.2.0", "--yes", "scale_down_after=0s" }).code)
    local text = runs.plan(h, { "plan", "rollback-gradual" })
    assert.matches("k8s: patch deployment multiship/api%-blue", text)
    assert.matches("k8s: patch service multiship/api%-service", text)
    assert.matches("k8s: patch deployment multiship/api%-green", text)
    assert.are.equal("green", selector(cluster))
  end)

  it("killed with -9 after scaling the stable colour up, before the switch, resumes and ends switched", function()
    assert.are.equal(0, h:tug({ "run", "blue-green", "version=v2.2.0", "--yes", "scale_down_after=0s" }).code)
    cluster:set_timing({ pod_start = "1500ms" }) -- blue's pods take a while to start
    local run_id = runs.kill_when(h, { "run", "rollback-gradual", "--yes" }, function(e, c)
      return e.event == "step_start" and e.name == "scale up the stable colour" and replicas(c, "api-blue") == 4
    end)
    -- half-changed: blue scaled up, traffic still on green
    assert.are.equal("green", selector(cluster))
    assert.are.equal(4, replicas(cluster, "api-green"))
    cluster:set_timing({ pod_start = "100ms" })
    local r = runs.resume(h, run_id)
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("succeeded", h:run_end(r).status)
    assert.are.equal("blue", selector(cluster))
    assert.are.equal(4, replicas(cluster, "api-blue"))
    assert.are.equal(4, ready(cluster, "api-blue"))
    assert.are.equal(0, replicas(cluster, "api-green"))
    assert.are.equal("multiship/api:v2.1.0", cluster:get("deployments", "multiship", "api-blue")
      .spec.template.spec.containers[1].image)
  end)
end)
