-- The Multiship playbooks, run end to end by the real binary against a simulated cluster
-- this spec serves (so it can look at the cluster afterwards): the happy paths, the
-- faults each procedure is meant to catch, and plans that send nothing.
package.path = "spec/support/?.lua;" .. package.path
local harness = require("playbook_harness")

describe("Multiship playbooks on the simulated cluster", function()
  local h, cluster

  before_each(function()
    h = harness.new()
    cluster = h.cluster
  end)

  after_each(function() h:close() end)

  local function tug(args) return h:tug(args) end
  local function run_end(r) return h:run_end(r) end
  local function image(name) return h:image(name) end

  it("blue-green deploys to the idle colour and switches traffic to it", function()
    local r = tug({ "run", "blue-green", "version=v2.2.0", "--yes" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("green", cluster:get("services", "multiship", "api-service").spec.selector.colour)
    assert.are.equal("multiship/api:v2.2.0", image("api-green"))
    assert.are.equal(4, cluster:get("deployments", "multiship", "api-green").spec.replicas)
    -- the old colour stays up for an instant rollback
    assert.are.equal(4, cluster:get("deployments", "multiship", "api-blue").spec.replicas)
    assert.is_nil(cluster:get("services", "multiship", "api-green-preview"))
  end)

  it("blue-green of a version that fails its health checks leaves traffic on the old colour", function()
    local r = tug({ "run", "blue-green", "version=v2.2.1-bad", "--yes", "verify_within=2s" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    local e = run_end(r)
    assert.are.equal("rolled-back", e.status)
    assert.matches("not healthy", e.reason)
    assert.are.equal("blue", cluster:get("services", "multiship", "api-service").spec.selector.colour)
    assert.are.equal(0, cluster:get("deployments", "multiship", "api-green").spec.replicas)
    assert.are.equal("multiship/api:v2.1.0", image("api-green"))
    assert.is_nil(cluster:get("services", "multiship", "api-green-preview"))
  end)

  it("canary of a bad version fails its analysis and returns all traffic to stable", function()
    local r = tug({ "run", "canary", "version=v2.2.1-bad", "--yes", "analysis_count=2", "analysis_interval=500ms" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    local e = run_end(r)
    assert.are.equal("rolled-back", e.status)
    assert.matches("analysis at 5%%: error%-rate failed", e.reason)
    assert.are.equal(0, cluster:get("deployments", "multiship", "api-canary").spec.replicas)
    assert.are.equal("multiship/api:v2.1.0", image("api-blue"))
  end)

  it("canary of a good version passes its gates and is promoted", function()
    local r = tug({ "run", "canary", "version=v2.2.0", "weights=50,100", "--yes", "analysis_count=1",
      "analysis_interval=500ms" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("multiship/api:v2.2.0", image("api-blue"))
    assert.are.equal(0, cluster:get("deployments", "multiship", "api-canary").spec.replicas)
  end)

  it("deploy sets the image, waits for the rollout and verifies health", function()
    local r = tug({ "run", "deploy", "version=v2.2.0" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("multiship/api:v2.2.0", image("api"))
  end)

  it("deploy of a version that fails its health checks is undone with a rollout undo", function()
    local r = tug({ "run", "deploy", "version=v2.2.1-bad", "verify_within=2s" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    local e = run_end(r)
    assert.are.equal("rolled-back", e.status)
    assert.matches("status 503", e.reason)
    assert.are.equal("multiship/api:v2.1.0", image("api"))
  end)

  it("rollback returns the API to its previous revision", function()
    assert.are.equal(0, tug({ "run", "deploy", "version=v2.2.0" }).code)
    local r = tug({ "run", "rollback", "--yes" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("multiship/api:v2.1.0", image("api"))
  end)

  it("verify passes on a healthy API and fails, saying why, when its health endpoints fail", function()
    local r = tug({ "run", "verify", "load_duration=1s", "within=3s" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    cluster:fault({ type = "unhealthy", version = "v2.1.0", status = 503 })
    r = tug({ "run", "verify", "load_duration=1s", "within=2s" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("status 503", run_end(r).reason)
  end)

  it("feature-flag switches a flag and keeps it when the error rate holds", function()
    local r = tug({ "run", "feature-flag", "feature=new-shipment-tracking", "enabled=true", "watch=1s",
      "interval=500ms", "--yes" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local _, _, body = cluster:request({ method = "GET", path = "/svc/multiship/api-service/admin/features/new-shipment-tracking",
      headers = { authorization = "Bearer sim-admin-token" } })
    local flag = json.decode(body)
    assert.is_true(flag.enabled)
  end)

  it("feature-flag switches the flag back when the error rate climbs", function()
    local breaker = task.spawn(function()
      task.sleep(0.3)
      cluster:fault({ type = "error_rate", version = "v2.1.0", rate = 0.5 })
    end)
    local r = tug({ "run", "feature-flag", "feature=new-shipment-tracking", "enabled=true", "watch=2s",
      "interval=500ms", "--yes" })
    breaker:wait()
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("after the switch: error%-rate failed", run_end(r).reason)
    local _, _, body = cluster:request({ method = "GET", path = "/svc/multiship/api-service/admin/features/new-shipment-tracking",
      headers = { authorization = "Bearer sim-admin-token" } })
    local flag = json.decode(body)
    assert.is_false(flag.enabled)
  end)

  it("rollback-gradual moves traffic back to the stable colour and scales the other down", function()
    assert.are.equal(0, tug({ "run", "blue-green", "version=v2.2.0", "--yes" }).code)
    local r = tug({ "run", "rollback-gradual", "--yes" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("blue", cluster:get("services", "multiship", "api-service").spec.selector.colour)
    assert.are.equal(4, cluster:get("deployments", "multiship", "api-blue").spec.replicas)
    assert.are.equal(0, cluster:get("deployments", "multiship", "api-green").spec.replicas)
  end)

  it("plans blue-green: lists the writes and sends none", function()
    local r = tug({ "plan", "blue-green", "version=v2.2.0" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local text = h:changes(r)
    assert.matches("k8s: patch deployment multiship/api%-green", text)
    assert.matches("k8s: patch service multiship/api%-service", text)
    assert.are.equal("blue", cluster:get("services", "multiship", "api-service").spec.selector.colour)
    assert.are.equal("multiship/api:v2.1.0", image("api-green"))
    assert.are.equal(0, cluster:get("deployments", "multiship", "api-green").spec.replicas)
  end)
end)
