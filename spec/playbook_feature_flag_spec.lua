-- feature-flag, run end to end by the real binary against the simulated API's admin
-- endpoints: the switch kept or switched back by the error rate, the bearer token from
-- Secrets Manager (the AWS fixture) and never shown, a missing token, and a plan that
-- leaves the admin API untouched.
package.path = "spec/support/?.lua;" .. package.path
local aws_fixture = require("aws_fixture")
local harness = require("playbook_harness")
local runs = require("playbook_runs")

-- For runs whose gate must pass: the healthy versions without their background 0.05% of
-- errors (a one-second probe cannot tell that from the 0.1% threshold; see
-- multiship.error_rate_low), so only the tests about noise depend on it.
local QUIET = { extends = "default", images = { ["multiship/api"] = { versions = {
  ["v2.1.0"] = { error_rate = 0 }, ["v2.2.0"] = { error_rate = 0 } } } } }

local function flag(cluster, name, token)
  local status, _, body = cluster:request({ method = "GET", path = "/svc/multiship/api-service/admin/features/" .. name,
    headers = { authorization = "Bearer " .. (token or "sim-admin-token") } })
  assert.are.equal(200, status, body)
  return json.decode(body)
end

local function posts(cluster) return runs.app_requests(cluster, "/admin/features", "POST") end

describe("feature-flag", function()
  local h, cluster

  after_each(function() if h then h:close() end end)

  local function start(opts)
    h = harness.new(opts)
    cluster = h.cluster
  end

  it("switches a flag, keeps it when the error rate holds, and reports its usage", function()
    start({ scenario = QUIET })
    local r = h:tug({ "run", "feature-flag", "feature=new-shipment-tracking", "enabled=true", "watch=1s",
      "interval=500ms", "--yes" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.is_true(flag(cluster, "new-shipment-tracking").enabled)
    assert.matches("new%-shipment%-tracking is on: %d+ evaluations in the last 1h", r.stdout)
  end)

  it("switches the flag back when the error rate climbs", function()
    start()
    local breaker = task.spawn(function()
      while posts(cluster) == 0 do task.sleep(0.02) end
      cluster:fault({ type = "error_rate", version = "v2.1.0", rate = 0.5 })
    end)
    local r = h:tug({ "run", "feature-flag", "feature=new-shipment-tracking", "enabled=true", "watch=2s",
      "interval=500ms", "--yes" })
    breaker:wait()
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    local e = h:run_end(r)
    assert.are.equal("rolled-back", e.status)
    assert.matches("after the switch: error%-rate failed", e.reason)
    assert.is_false(flag(cluster, "new-shipment-tracking").enabled)
    assert.are.equal(2, posts(cluster)) -- on, then back off
  end)

  it("fails before touching the admin API when the environment has no admin_token", function()
    start()
    runs.write_env(h, [[
name: sim
url: {cluster}/svc/multiship/api-service
service_url: {cluster}/svc/multiship/{service}
kubernetes: { kubeconfig: {dir}/kubeconfig, namespace: multiship }
thresholds: { p95_ms: 500, error_rate: 0.001 }
]])
    local r = h:tug({ "run", "feature-flag", "feature=new-shipment-tracking", "enabled=true", "--yes" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("the sim environment has no admin_token", h:run_end(r).reason)
    assert.are.equal(0, posts(cluster))
    assert.is_false(flag(cluster, "new-shipment-tracking").enabled)
  end)

  it("plans: lists the switch and leaves the admin API untouched", function()
    start()
    local before = runs.snapshot(cluster)
    local r = h:tug({ "plan", "feature-flag", "feature=new-shipment-tracking", "enabled=true" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.matches("POST .*/admin/features", h:changes(r))
    assert.are.equal(0, posts(cluster))
    assert.is_false(flag(cluster, "new-shipment-tracking").enabled)
    runs.unchanged(cluster, before)
  end)

  it("takes its bearer token from Secrets Manager and never shows it", function()
    local fixture = aws_fixture.start()
    local ok, err = pcall(function()
      local token = "tok-3f9a8b7c6d5e" -- the fixture's secret prod/api-token
      local scenario = { admin_token = token }
      for k, v in pairs(QUIET) do scenario[k] = v end
      start({ scenario = scenario })
      runs.write_env(h, [[
name: sim
url: {cluster}/svc/multiship/api-service
service_url: {cluster}/svc/multiship/{service}
kubernetes: { kubeconfig: {dir}/kubeconfig, namespace: multiship }
thresholds: { p95_ms: 500, error_rate: 0.001 }
aws: { region: us-east-1, endpoint_url: ]] .. fixture.url .. [[ }
admin_token: ${secret:aws:prod/api-token}
]])
      local r = h:tug({ "run", "feature-flag", "feature=new-shipment-tracking", "enabled=true", "watch=500ms",
        "interval=500ms", "--yes" }, { env = { AWS_ACCESS_KEY_ID = aws_fixture.ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY = aws_fixture.SECRET_KEY } })
      assert.are.equal(0, r.code, r.stdout .. r.stderr)
      assert.is_true(flag(cluster, "new-shipment-tracking", token).enabled)
      local asked = fixture:last_request()
      assert.are.equal("secretsmanager.GetSecretValue", asked.headers["x-amz-target"])
      assert.is_true(asked.verified, asked.reason)
      local journal = exec.run({ "sh", "-c", 'cat "$0"/.tug/runs/*.jsonl', h.dir }).stdout
      assert.is_true(#journal > 0)
      for what, text in pairs({ stdout = r.stdout, stderr = r.stderr, journal = journal }) do
        assert.is_nil(text:find(token, 1, true), "the token shows in the " .. what)
      end
    end)
    fixture:stop()
    assert(ok, err)
  end)
end)
