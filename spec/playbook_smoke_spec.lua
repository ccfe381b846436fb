-- playbook_smoke_spec.lua: the smoke playbook against the simulated cluster: the seed's
-- three URLs (the API's /health and /api/orders/test under the environment's url, the
-- site as a full URL: here the simulated `api` Service), a version failing its health
-- check, a slow API, a plan, bad settings, and `--every` as synthetic monitoring whose
-- /metrics turn to failing when the API does.
package.path = "spec/support/?.lua;" .. package.path
local harness = require("playbook_harness")
local child = require("child")
local fixture = require("fixture")

local function smoke_env(h, urls)
  local lines = { "smoke:", "  urls:" }
  for _, u in ipairs(urls) do lines[#lines + 1] = "    - " .. u end
  return table.concat(lines, "\n") .. "\n"
end

local function parse_metrics(text)
  local samples = {}
  for line in text:gmatch("[^\n]+") do
    if not line:match("^#") then
      local series, value = line:match("^(.-) (%S+)$")
      samples[series] = tonumber(value)
    end
  end
  return samples
end

describe("smoke playbook", function()
  local h, site

  before_each(function()
    h = harness.new()
    site = h.cluster.url .. "/svc/multiship/api/health"
    h:write_env(smoke_env(h, { "/health", "/api/orders/test", site }))
  end)

  after_each(function() h:close() end)

  it("checks every URL, relative ones under the environment's url, and lists each status and time", function()
    local r = h:tug({ "run", "smoke" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("succeeded", h:run_end(r).status)
    local step = h:events(r, "step_end")[1]
    local results = step.state.results
    assert.are.equal(3, #results)
    assert.are.equal(h.cluster.url .. "/svc/multiship/api-service/health", results[1].url)
    assert.are.equal(h.cluster.url .. "/svc/multiship/api-service/api/orders/test", results[2].url)
    assert.are.equal(site, results[3].url)
    for _, res in ipairs(results) do
      assert.are.equal(200, res.status)
      assert.is_true(res.ms >= 0 and res.ms < 5000)
    end
    local logs = {}
    for _, e in ipairs(h:events(r, "log")) do logs[#logs + 1] = e.message end
    assert.matches("/api%-service/api/orders/test: 200 in %d+ ms", table.concat(logs, "\n"))
  end)

  it("fails naming each URL that does not answer 2xx, with its status", function()
    h.cluster:fault({ type = "unhealthy", version = "v2.1.0", status = 503 })
    local r = h:tug({ "run", "smoke" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    local e = h:run_end(r)
    assert.are.equal("failed", e.status)
    assert.matches("2 of 3 smoke URLs failed: ", e.reason, 1, true)
    assert.matches(h.cluster.url .. "/svc/multiship/api-service/health: HTTP 503", e.reason, 1, true)
    assert.matches(site .. ": HTTP 503", e.reason, 1, true)
    assert.is_nil(e.reason:find("orders/test", 1, true))
  end)

  it("fails a URL that does not answer within the timeout", function()
    h.cluster:fault({ type = "latency", service = "multiship/api-service", add = "3s" })
    local t0 = time.monotonic()
    local r = h:tug({ "run", "smoke", "timeout=300ms" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.is_true(time.monotonic() - t0 < 3)
    local reason = h:run_end(r).reason
    assert.matches("2 of 3 smoke URLs failed", reason, 1, true)
    assert.matches("/api%-service/health: timeout", reason)
    assert.matches("/api%-service/api/orders/test: timeout", reason)
  end)

  it("plans without changing anything: the checks only read", function()
    local r = h:tug({ "plan", "smoke" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("planned", h:run_end(r).status)
    assert.are.equal("", h:changes(r))
  end)

  it("says what is wrong with the environment's smoke.urls", function()
    h:write_env("")
    local r = h:tug({ "run", "smoke" })
    assert.are.equal(1, r.code)
    assert.matches("the sim environment has no smoke.urls", h:run_end(r).reason, 1, true)
    h:write_env(smoke_env(h, { "/health", "health" }))
    r = h:tug({ "run", "smoke" })
    assert.are.equal(1, r.code)
    assert.matches("smoke.urls[2] in the sim environment must be a path starting with / or an http(s) URL " ..
      "(got health)", h:run_end(r).reason, 1, true)
  end)

  it("runs --every 500ms as synthetic monitoring: /metrics turns to failing when the API does", function()
    local port = fixture.free()
    local proc = exec.spawn({ child.tug, "run", "smoke", "--every", "500ms", "--metrics-listen", "127.0.0.1:" .. port,
      "--env", "sim", "--playbooks", harness.ROOT .. "/playbooks", "--output", "json" },
      { env = { CI = "true", TUG_ENVIRONMENTS = h.dir .. "/environments", TUG_HOME = h.dir .. "/.tug" }, timeout = 60 })
    local success = 'tug_run_success{playbook="smoke",env="sim"}'
    local failed = 'tug_runs_total{playbook="smoke",env="sim",status="failed"}'
    local step = 'tug_step_success{playbook="smoke",env="sim",step="check every smoke URL answers 2xx"}'
    local samples
    local function until_metrics(pred, within)
      local deadline = time.monotonic() + within
      while time.monotonic() < deadline do
        local r = http.get("http://127.0.0.1:" .. port .. "/metrics", { timeout = 1 })
        if r.status == 200 then
          samples = parse_metrics(r.body)
          if pred(samples) then return true end
        end
        task.sleep(0.1)
      end
      return false
    end
    local ok, err = pcall(function()
      assert.is_true(until_metrics(function(s) return s[success] == 1 end, 15), json.encode(samples))
      assert.are.equal(0, samples[failed])
      h.cluster:fault({ type = "unhealthy", version = "v2.1.0", status = 503 })
      assert.is_true(until_metrics(function(s) return s[success] == 0 and s[failed] >= 2 end, 10), json.encode(samples))
      assert.are.equal(0, samples[step])
      assert.are.equal(1, samples['tug_run_status{playbook="smoke",env="sim",status="failed"}'])
      h.cluster:clear_faults()
      assert.is_true(until_metrics(function(s) return s[success] == 1 end, 10), json.encode(samples))
    end)
    proc:kill("TERM")
    local r = proc:wait()
    proc:close()
    assert(ok, err)
    assert.is_true(r.code == 130 or r.code == 4, tostring(r.code) .. r.stderr)
  end)
end)
