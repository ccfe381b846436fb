-- deploy, run end to end by the real binary against a simulated cluster this spec
-- serves: the image checked in ECR (the AWS fixture), set, rolled out, verified and its
-- logs scanned; each failure undone with a rollout undo; a plan that sends nothing; a run
-- killed with -9 then resumed.
package.path = "spec/support/?.lua;" .. package.path
local aws_fixture = require("aws_fixture")
local harness = require("playbook_harness")
local runs = require("playbook_runs")

local function ready(cluster) return cluster:get("deployments", "multiship", "api").status.readyReplicas end

describe("deploy", function()
  local h, cluster
  local new_harness = harness.per_test()
  local function start(opts) h, cluster = new_harness(opts) end

  it("sets the image, waits for the rollout and verifies health", function()
    start()
    local r = h:tug({ "run", "deploy", "version=v2.2.0" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("multiship/api:v2.2.0", h:image("api"))
    assert.are.equal(4, ready(cluster))
    local d = cluster:get("deployments", "multiship", "api")
    assert.are.equal("deploy v2.2.0", d.metadata.annotations["kubernetes.io/change-cause"])
  end)

  it("of a version that fails its health checks is undone with a rollout undo", function()
    start()
    local r = h:tug({ "run", "deploy", "version=v2.2.1-bad", "verify_within=2s" })
    runs.failed(h, r, "rolled-back", "status 503")
    assert.are.equal("multiship/api:v2.1.0", h:image("api"))
  end)

  it("of a version whose rollout never becomes ready is rolled back", function()
    start()
    cluster:fault({ type = "never_ready", version = "v2.2.0" })
    local r = h:tug({ "run", "deploy", "version=v2.2.0", "rollout_timeout=2s" })
    runs.failed(h, r, "rolled-back", "wait for the rollout", "timed out")
    assert.are.equal("multiship/api:v2.1.0", h:image("api"))
    assert.are.equal(4, ready(cluster))
  end)

  it("of a version whose pods crashed while starting is caught by the log scan and rolled back", function()
    start({ timing = { pod_start = "100ms", ready_after = "200ms", crash_after = "100ms", restart_backoff = "200ms" } })
    -- crashes for its first second, then comes up: the rollout and the health checks pass
    cluster:fault({ type = "crash_loop", version = "v2.2.0", duration = "1s" })
    local r = h:tug({ "run", "deploy", "version=v2.2.0" })
    runs.failed(h, r, "rolled-back", "error lines? in the pods' logs",
      "ERROR unhandled exception: connection to database lost during startup", "before restart")
    assert.are.equal("multiship/api:v2.1.0", h:image("api"))
  end)

  it("of the image the deployment already runs, failing, does not roll back past it", function()
    start()
    assert.are.equal(0, h:tug({ "run", "deploy", "version=v2.2.0" }).code)
    cluster:fault({ type = "unhealthy", version = "v2.2.0" })
    local r = h:tug({ "run", "deploy", "version=v2.2.0", "verify_within=1s" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("already runs multiship/api:v2.2.0", r.stdout)
    assert.are.equal("multiship/api:v2.2.0", h:image("api"))
  end)

  it("plans: lists the new image and sends nothing", function()
    start()
    local text = runs.plan(h, { "plan", "deploy", "version=v2.2.0" })
    assert.matches("k8s: patch deployment multiship/api", text)
    assert.are.equal("multiship/api:v2.1.0", h:image("api"))
  end)

  it("killed with -9 while waiting for the rollout, resumes and ends deployed", function()
    start({ timing = { pod_start = "1s", ready_after = "200ms" } })
    local run_id = runs.kill_when(h, { "run", "deploy", "version=v2.2.0" }, function(e)
      return e.event == "step_start" and e.name == "wait for the rollout"
    end)
    local r = runs.resume(h, run_id)
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("succeeded", h:run_end(r).status)
    assert.are.equal("multiship/api:v2.2.0", h:image("api"))
    assert.are.equal(4, ready(cluster))
  end)

  describe("with ECR configured", function()
    local fixture
    lazy_setup(function() fixture = aws_fixture.start() end)
    lazy_teardown(function() if fixture then fixture:stop() end end)

    local function aws_env()
      return { AWS_ACCESS_KEY_ID = aws_fixture.ACCESS_KEY, AWS_SECRET_ACCESS_KEY = aws_fixture.SECRET_KEY }
    end

    it("refuses an image that is not in ECR, changing nothing", function()
      start({ env = "ecr_repository: multiship/api\naws: { region: us-east-1, endpoint_url: " .. fixture.url .. " }\n" })
      local before = runs.snapshot(cluster)
      local r = h:tug({ "run", "deploy", "version=v2.2.1-bad" }, { env = aws_env() })
      runs.failed(h, r, "failed", "multiship/api:v2.2.1%-bad is not in ECR")
      runs.unchanged(cluster, before)
      local last = fixture:last_request()
      assert.is_true(last.verified, last.reason)
      assert.matches("DescribeImages", last.headers["x-amz-target"])
    end)

    it("deploys an image that is in ECR", function()
      start({ env = "ecr_repository: multiship/api\naws: { region: us-east-1, endpoint_url: " .. fixture.url .. " }\n" })
      local r = h:tug({ "run", "deploy", "version=v2.2.0" }, { env = aws_env() })
      assert.are.equal(0, r.code, r.stdout .. r.stderr)
      assert.matches("multiship/api:v2.2.0 is in ECR", r.stdout)
      assert.are.equal("multiship/api:v2.2.0", h:image("api"))
    end)
  end)
end)
