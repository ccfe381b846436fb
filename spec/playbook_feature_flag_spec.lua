-- feature-flag, run end to end by the real binary against the simulated API's admin
-- endpoints: the switch kept or switched back by the error rate, the bearer token from
-- Secrets Manager (the AWS fixture) and never shown, a missing token, a plan that
-- leaves the admin API untouched, and runs killed with -9 while they watch, then resumed.
package.path = "spec/support/?.lua;" .. package.path
local aws_fixture = require("aws_fixture")
local harness = require("playbook_harness")
local runs = require("playbook_runs")

local function flag(cluster, name, token)
  local status, _, body = cluster:request({ method = "GET", path = "/svc/multiship/api-service/admin/features/" .. name,
    headers = { authorization = "Bearer " .. (token or "sim-admin-token") } })
  assert.are.equal(200, status, body)
  return json.decode(body)
end

local function posts(cluster) return runs.app_requests(cluster, "/admin/features", "POST") end

describe("feature-flag", function()
  local h, cluster
  local new_harness = harness.per_test()
  local function start(opts) h, cluster = new_harness(opts) end

  it("switches a flag, keeps it when the error rate holds, and reports its usage", function()
    start({ quiet = true })
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
    runs.failed(h, r, "rolled-back", "after the switch: error%-rate failed")
    assert.is_false(flag(cluster, "new-shipment-tracking").enabled)
    assert.are.equal(2, posts(cluster)) -- on, then back off
  end)

  it("fails before touching the admin API when the environment has no admin_token", function()
    start({ admin_token = false })
    local r = h:tug({ "run", "feature-flag", "feature=new-shipment-tracking", "enabled=true", "--yes" })
    runs.failed(h, r, nil, "the sim environment has no admin_token")
    assert.are.equal(0, posts(cluster))
    assert.is_false(flag(cluster, "new-shipment-tracking").enabled)
  end)

  it("plans: lists the switch and leaves the admin API untouched", function()
    start()
    local text = runs.plan(h, { "plan", "feature-flag", "feature=new-shipment-tracking", "enabled=true" })
    assert.matches("POST .*/admin/features", text)
    assert.are.equal(0, posts(cluster))
    assert.is_false(flag(cluster, "new-shipment-tracking").enabled)
  end)

  local WATCHED = { "run", "feature-flag", "feature=new-shipment-tracking", "enabled=true", "watch=1500ms",
    "interval=500ms", "--yes" }
  local function killed_while_watching()
    local run_id = runs.kill_when(h, WATCHED, function(e)
      return e.event == "step_start" and e.name == "watch the error rate"
    end)
    -- half-changed: the flag is on and nobody watches it
    assert.is_true(flag(cluster, "new-shipment-tracking").enabled)
    assert.are.equal(1, posts(cluster))
    return run_id
  end

  it("killed with -9 while it watches, resumes the watch and keeps the flag, switched once", function()
    start({ quiet = true })
    local r = runs.resume(h, killed_while_watching())
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("succeeded", h:run_end(r).status)
    assert.are.equal("watch the error rate", h:events(r, "step_start")[1].name)
    assert.is_true(flag(cluster, "new-shipment-tracking").enabled)
    assert.are.equal(1, posts(cluster))
  end)

  it("killed with -9 while it watches, resumes and switches the flag back when the error rate climbed", function()
    start()
    local run_id = killed_while_watching()
    cluster:fault({ type = "error_rate", version = "v2.1.0", rate = 0.5 })
    local r = runs.resume(h, run_id)
    runs.failed(h, r, "rolled-back", "after the switch: error%-rate failed")
    assert.is_false(flag(cluster, "new-shipment-tracking").enabled)
    assert.are.equal(2, posts(cluster)) -- on before the kill, back off after the resume
  end)

  it("takes its bearer token from Secrets Manager and never shows it", function()
    local fixture = aws_fixture.start()
    local ok, err = pcall(function()
      local token = "tok-3f9a8b7c6d5e" -- the fixture's secret prod/api-token
      start({ quiet = true, scenario = { admin_token = token }, admin_token = "${secret:aws:prod/api-token}",
        env = "aws: { region: us-east-1, endpoint_url: " .. fixture.url .. " }\n" })
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
