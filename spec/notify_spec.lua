-- notify_spec.lua: Slack, PagerDuty, Statuspage and webhook notifications received by an
-- http.server in this spec, checked field by field against the documented formats
-- (Slack incoming webhooks with Block Kit, PagerDuty Events API v2, Statuspage's REST API);
-- retries on 5xx with backoff; a failed send never fails the step unless required; plan
-- mode sends nothing; secrets never reach the output; environment channels get run events.

package.path = "spec/support/?.lua;" .. package.path
local child = require("child")

local notify = require("notify")

local SLACK_PATH = "/services/T0001/B0002/slAckT0ken4Spec"
local ROUTING_KEY = "R0UT1NGKEY0123456789abcdefABCDEF"
local STATUSPAGE_KEY = "sp-api-key-0123456789"

describe("notify", function()
  local server, received, script

  -- script[path] = list of statuses to answer in turn (then 200/202 as the service would)
  local function answer(req)
    local queue = script[req.path]
    local status = queue and table.remove(queue, 1)
    if req.path:match("^/pd/") then
      if status then return { status = status, json = { status = "invalid event", message = "Event object is invalid",
        errors = { "'payload.summary' is missing" } } } end
      local body = json.decode(req.body)
      return { status = 202, json = { status = "success", message = "Event processed",
        dedup_key = body.dedup_key or "generated-dedup-key-1" } }
    elseif req.path:match("^/sp/") then
      if status then return { status = status, json = { error = "nope" } } end
      return { status = req.method == "POST" and 201 or 200, json = { id = "p31zjtct2jer", status = "investigating" } }
    end
    if status then return status, { ["content-type"] = "text/plain" }, status == 404 and "no_service" or "rollup_error" end
    return 200, { ["content-type"] = "text/plain" }, "ok"
  end

  local saved_level
  setup(function()
    saved_level = log.level()
    log.set_level("error")
    server = http.server({ port = 0, handler = function(req)
      received[#received + 1] = req
      return answer(req)
    end })
  end)
  teardown(function()
    server:close()
    log.set_level(saved_level)
    notify.configure(nil)
  end)
  before_each(function()
    received, script = {}, {}
  end)

  local function body(i) return json.decode(received[i or #received].body) end

  describe("slack", function()
    it("posts a Block Kit message with the run, step, verdict and link", function()
      local r = notify.slack({ webhook = server.url .. SLACK_PATH, title = "canary on production: failure",
        text = "error rate <5%> & rising", run = "20261128-2203-ab12", step = "analyse the canary",
        verdict = "failure", link = "https://ci.example.com/runs/42", fields = { version = "v2.2.0" } })
      assert.is_true(r.ok)
      assert.are.equal(200, r.status)
      assert.are.equal(1, #received)
      local req = received[1]
      assert.are.equal("POST", req.method)
      assert.are.equal(SLACK_PATH, req.path)
      assert.are.equal("application/json", req.headers["content-type"])
      local b = body()
      assert.are.equal(":x: canary on production: failure", b.text)
      assert.are.equal(3, #b.blocks)
      assert.are.equal("section", b.blocks[1].type)
      assert.are.equal("mrkdwn", b.blocks[1].text.type)
      assert.are.equal(":x: *canary on production: failure*\nerror rate &lt;5%&gt; &amp; rising", b.blocks[1].text.text)
      assert.are.equal("section", b.blocks[2].type)
      assert.are.same({ type = "mrkdwn", text = "*version*\nv2.2.0" }, b.blocks[2].fields[1])
      assert.are.equal("context", b.blocks[3].type)
      assert.are.equal("run `20261128-2203-ab12` · step *analyse the canary* · verdict *failure* · "
        .. "<https://ci.example.com/runs/42|details>", b.blocks[3].elements[1].text)
    end)

    it("retries a 5xx with backoff and succeeds", function()
      script[SLACK_PATH] = { 500, 503 }
      local t0 = time.monotonic()
      local r = notify.slack({ webhook = server.url .. SLACK_PATH, text = "hello", backoff = "50ms" })
      assert.is_true(r.ok)
      assert.are.equal(3, r.attempts)
      assert.are.equal(3, #received)
      -- the waits were about 50 ms then 100 ms (with jitter)
      assert.is_true(time.monotonic() - t0 >= 0.1)
    end)

    it("does not fail the step when it cannot deliver, unless required", function()
      script[SLACK_PATH] = { 500, 500, 500 }
      local warnings = {}
      log.set_level("warn")
      log.set_sink(function(rec) warnings[#warnings + 1] = rec.message end)
      local r = notify.slack({ webhook = server.url .. SLACK_PATH, text = "hello", retries = 2, backoff = "10ms" })
      log.set_sink(nil)
      log.set_level("error")
      assert.is_false(r.ok)
      assert.are.equal(500, r.status)
      assert.are.equal(3, r.attempts)
      assert.are.equal("Slack webhook: HTTP 500: rollup_error (after 3 attempts)", r.message)
      assert.are.same({ "notify: Slack webhook: HTTP 500: rollup_error (after 3 attempts)" }, warnings)
      -- a 4xx is not retried
      received = {}
      script[SLACK_PATH] = { 404 }
      r = notify.slack({ webhook = server.url .. SLACK_PATH, text = "hello", backoff = "10ms" })
      assert.is_false(r.ok)
      assert.are.equal(1, #received)
      -- required: the failure is the step's
      script[SLACK_PATH] = { 500 }
      local ok, err = pcall(notify.slack, { webhook = server.url .. SLACK_PATH, text = "hello", retries = 0, required = true })
      assert.is_false(ok)
      assert.are.equal("notify", err.kind)
      assert.are.equal(500, err.status)
      -- nobody listening: a connection failure, reported the same way
      r = notify.slack({ webhook = "http://127.0.0.1:1" .. SLACK_PATH, text = "hello", retries = 1, backoff = "10ms" })
      assert.is_false(r.ok)
      assert.are.equal("connect", r.error)
    end)
  end)

  describe("pagerduty", function()
    it("triggers with the Events API v2 payload and returns the dedup key", function()
      local r = notify.pagerduty({ url = server.url .. "/pd/v2/enqueue", routing_key = ROUTING_KEY,
        summary = "canary v2.2.0 on production rolled back: error rate 5%", severity = "error",
        source = "tug/production", component = "api", group = "multiship", class = "deploy",
        dedup_key = "tug/production/canary", details = { run_id = "r-1", error_rate = 0.05 },
        links = { { href = "https://ci.example.com/runs/42", text = "run" } } })
      assert.is_true(r.ok)
      assert.are.equal(202, r.status)
      assert.are.equal("tug/production/canary", r.dedup_key)
      local req = received[1]
      assert.are.equal("POST", req.method)
      assert.are.equal("application/json", req.headers["content-type"])
      local b = body()
      assert.are.equal(ROUTING_KEY, b.routing_key)
      assert.are.equal("trigger", b.event_action)
      assert.are.equal("tug/production/canary", b.dedup_key)
      assert.are.equal("canary v2.2.0 on production rolled back: error rate 5%", b.payload.summary)
      assert.are.equal("tug/production", b.payload.source)
      assert.are.equal("error", b.payload.severity)
      assert.are.equal("api", b.payload.component)
      assert.are.equal("multiship", b.payload.group)
      assert.are.equal("deploy", b.payload.class)
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$", b.payload.timestamp)
      assert.are.same({ run_id = "r-1", error_rate = 0.05 }, b.payload.custom_details)
      assert.are.same({ { href = "https://ci.example.com/runs/42", text = "run" } }, b.links)
      assert.are.equal("tug", b.client)
    end)

    it("acknowledges and resolves by dedup key alone", function()
      for _, action in ipairs({ "acknowledge", "resolve" }) do
        local r = notify.pagerduty({ url = server.url .. "/pd/v2/enqueue", routing_key = ROUTING_KEY, action = action,
          dedup_key = "tug/production/canary" })
        assert.is_true(r.ok)
        assert.are.same({ routing_key = ROUTING_KEY, event_action = action, dedup_key = "tug/production/canary" }, body())
      end
    end)

    it("reports a rejected event without retrying it, and rejects mistakes", function()
      script["/pd/v2/enqueue"] = { 400 }
      local r = notify.pagerduty({ url = server.url .. "/pd/v2/enqueue", routing_key = ROUTING_KEY, summary = "x" })
      assert.is_false(r.ok)
      assert.are.equal(1, #received)
      assert.matches("PagerDuty trigger: HTTP 400: .*Event object is invalid", r.message)
      assert.has_error(function() notify.pagerduty({ summary = "x" }) end,
        "notify.pagerduty: routing_key is required (the integration's routing key)")
      assert.has_error(function() notify.pagerduty({ routing_key = ROUTING_KEY, action = "snooze", dedup_key = "k" }) end,
        "notify.pagerduty: action must be trigger, acknowledge or resolve (got snooze)")
      assert.has_error(function() notify.pagerduty({ routing_key = ROUTING_KEY, action = "resolve" }) end,
        "notify.pagerduty: resolve needs the dedup_key of the incident")
      assert.has_error(function() notify.pagerduty({ routing_key = ROUTING_KEY, summary = "x", severity = "high" }) end,
        "notify.pagerduty: severity must be critical, error, warning or info (got high)")
      assert.has_error(function() notify.pagerduty({ routing_key = ROUTING_KEY, summry = "x" }) end,
        "notify.pagerduty: unknown option 'summry'")
    end)
  end)

  describe("statuspage", function()
    it("opens an incident and updates it, with the OAuth key", function()
      local r = notify.statuspage({ url = server.url .. "/sp", api_key = STATUSPAGE_KEY, page_id = "kctbh9vrtdwd",
        name = "Elevated API errors", status = "investigating", body = "We are rolling back a release.",
        impact = "minor", components = { ["8kbf7d35c070"] = "degraded_performance" } })
      assert.is_true(r.ok)
      assert.are.equal("p31zjtct2jer", r.incident_id)
      local req = received[1]
      assert.are.equal("POST", req.method)
      assert.are.equal("/sp/v1/pages/kctbh9vrtdwd/incidents", req.path)
      assert.are.equal("OAuth " .. STATUSPAGE_KEY, req.headers["authorization"])
      assert.are.same({ incident = { name = "Elevated API errors", status = "investigating",
        body = "We are rolling back a release.", impact_override = "minor",
        components = { ["8kbf7d35c070"] = "degraded_performance" }, component_ids = { "8kbf7d35c070" } } }, body())
      r = notify.statuspage({ url = server.url .. "/sp", api_key = STATUSPAGE_KEY, page_id = "kctbh9vrtdwd",
        incident_id = r.incident_id, status = "resolved", body = "Rolled back; errors are normal." })
      assert.is_true(r.ok)
      assert.are.equal("PATCH", received[2].method)
      assert.are.equal("/sp/v1/pages/kctbh9vrtdwd/incidents/p31zjtct2jer", received[2].path)
      assert.are.same({ incident = { status = "resolved", body = "Rolled back; errors are normal." } }, body())
    end)
  end)

  describe("webhook", function()
    it("posts JSON with a bearer token and the caller's headers", function()
      local r = notify.webhook({ url = server.url .. "/hook", json = { event = "rolled_back", version = "v2.2.0" },
        token = "hook-token-0123456789", headers = { ["X-Source"] = "tug" } })
      assert.is_true(r.ok)
      local req = received[1]
      assert.are.equal("POST", req.method)
      assert.are.equal("Bearer hook-token-0123456789", req.headers["authorization"])
      assert.are.equal("tug", req.headers["x-source"])
      assert.are.equal("application/json", req.headers["content-type"])
      assert.are.same({ event = "rolled_back", version = "v2.2.0" }, body())
    end)
  end)

  describe("in plan mode", function()
    it("sends nothing and records each notification with secrets redacted", function()
      tug.plan.set(true)
      local ok, err = pcall(function()
        assert.is_true(notify.slack({ webhook = server.url .. SLACK_PATH, text = "deploying v2.2.0" }).planned)
        assert.is_true(notify.pagerduty({ url = server.url .. "/pd/v2/enqueue", routing_key = ROUTING_KEY,
          summary = "rollback failed", dedup_key = "tug/prod/canary" }).planned)
        assert.is_true(notify.webhook({ url = server.url .. "/hook", json = { a = 1 } }).ok)
        assert.is_true(notify.statuspage({ url = server.url .. "/sp", api_key = STATUSPAGE_KEY, page_id = "abc",
          name = "Degraded" }).planned)
      end)
      local records = tug.plan.take()
      tug.plan.set(false)
      assert.is_true(ok, tostring(err))
      task.sleep(0.05)
      assert.are.equal(0, #received)
      assert.are.equal(4, #records)
      assert.are.equal("notify", records[1].module)
      assert.are.equal("post to Slack: deploying v2.2.0", records[1].summary)
      assert.are.equal("trigger a PagerDuty incident: rollback failed (dedup_key tug/prod/canary)", records[2].summary)
      assert.are.equal("POST " .. server.url .. "/hook", records[3].summary)
      assert.are.equal("open a Statuspage incident: Degraded (investigating)", records[4].summary)
      for _, rec in ipairs(records) do
        local text = rec.summary .. (rec.detail or "")
        assert.is_nil(text:find(ROUTING_KEY, 1, true))
        assert.is_nil(text:find(STATUSPAGE_KEY, 1, true))
        assert.is_nil(text:find("slAckT0ken4Spec", 1, true))
      end
      assert.matches('"routing_key":"%*%*%*"', records[2].detail)
    end)
  end)

  it("keeps routing keys, API keys and webhook tokens out of a child's output", function()
    local code = ([[
      local url = %q
      local r = notify.pagerduty({ url = "http://127.0.0.1:1/x", routing_key = %q, summary = "s", retries = 0 })
      print(r.message)
      r = notify.slack({ webhook = "http://127.0.0.1:1/services/T0001/B0002/slAckT0ken4Spec", text = "x", retries = 0 })
      print(r.message)
      r = notify.statuspage({ url = url .. "/sp", api_key = %q, page_id = "abc", name = "n" })
      print(json.encode(r))
      log.warn("keys: " .. %q .. " " .. %q)
      tug.plan.set(true)
      notify.pagerduty({ routing_key = %q, summary = "s" })
      for _, rec in ipairs(tug.plan.take()) do print(rec.summary, rec.detail) end
    ]]):format(server.url, ROUTING_KEY, STATUSPAGE_KEY, ROUTING_KEY, STATUSPAGE_KEY, ROUTING_KEY)
    local r = child.lua(code)
    assert.are.equal(0, r.code, r.stderr)
    local out = r.stdout .. r.stderr
    assert.matches("Connection refused", out)
    assert.matches("keys: %*%*%* %*%*%*", out)
    assert.is_nil(out:find(ROUTING_KEY, 1, true))
    assert.is_nil(out:find(STATUSPAGE_KEY, 1, true))
    assert.is_nil(out:find("slAckT0ken4Spec", 1, true))
  end)

  describe("channels", function()
    local env
    before_each(function()
      env = { name = "production", notify = {
        deploys = { type = "slack", webhook = server.url .. SLACK_PATH, link = "https://ci.example.com/runs/{run_id}",
          backoff = "10ms" },
        oncall = { type = "pagerduty", url = server.url .. "/pd/v2/enqueue", routing_key = ROUTING_KEY, backoff = "10ms" },
        audit = { type = "webhook", url = server.url .. "/hook", events = { "started", "rolled_back" } },
      } }
    end)

    local function by_path()
      local out = {}
      for _, req in ipairs(received) do
        out[req.path] = out[req.path] or {}
        table.insert(out[req.path], json.decode(req.body))
      end
      return out
    end

    it("are named in the environment and reached with notify.send", function()
      local r = notify.send("deploys", { title = "promoting v2.2.0", verdict = "success", run_id = "r-9",
        run = "r-9" }, env)
      assert.is_true(r.ok)
      assert.are.equal("deploys", r.channel)
      local b = body()
      assert.are.equal(":white_check_mark: promoting v2.2.0", b.text)
      assert.matches("<https://ci.example.com/runs/r%-9|details>", b.blocks[2].elements[1].text)
      local err = select(2, pcall(notify.send, "pager", "x", env))
      assert.are.equal("notify", err.kind)
      assert.matches("no notification channel named 'pager' %(channels: audit, deploys, oncall%)", err.message)
    end)

    it("hear about runs from the engine without playbook code", function()
      local started = notify.run_event(env, { event = "run_start", run_id = "r-1", playbook = "canary", env = "production" })
      assert.are.equal(1, started) -- only audit asked for "started"
      assert.are.equal(0, notify.run_event(env, { event = "step_end", name = "x" }))
      assert.are.equal(0, notify.run_event(env, { event = "run_start", run_id = "r-1", playbook = "canary",
        env = "production", plan = true }))
      started = notify.run_event(env, { event = "run_end", run_id = "r-1", playbook = "canary", env = "production",
        status = "rollback-failed", reason = "step \"switch traffic\" failed: 502; 1 undo failed: a human must look" })
      assert.are.equal(2, started) -- deploys and oncall; audit did not ask for rollback_failed
      local results = notify.flush(5)
      assert.are.equal(3, #results)
      for _, r in ipairs(results) do assert.is_true(r.ok, r.message) end
      local got = by_path()
      local audit = got["/hook"][1]
      assert.are.equal("started", audit.event)
      assert.are.equal("canary", audit.playbook)
      assert.are.equal("r-1", audit.run)
      local slack = got[SLACK_PATH][1]
      assert.are.equal(":rotating_light: canary on production failed and its rollback failed: a human must look", slack.text)
      assert.matches("step \"switch traffic\" failed: 502", slack.blocks[1].text.text)
      assert.matches("verdict %*rollback%-failed%*", slack.blocks[2].elements[1].text)
      local pd = got["/pd/v2/enqueue"][1]
      assert.are.equal("trigger", pd.event_action)
      assert.are.equal("critical", pd.payload.severity)
      assert.are.equal("tug/production/canary", pd.dedup_key)
      assert.matches("^canary on production failed and its rollback failed", pd.payload.summary)
      -- the next successful run resolves the incident it opened
      received = {}
      notify.run_event(env, { event = "run_end", run_id = "r-2", playbook = "canary", env = "production", status = "succeeded" })
      notify.flush(5)
      got = by_path()
      assert.are.same({ routing_key = ROUTING_KEY, event_action = "resolve", dedup_key = "tug/production/canary" },
        got["/pd/v2/enqueue"][1])
      assert.are.equal(":white_check_mark: canary on production succeeded", got[SLACK_PATH][1].text)
    end)

    it("never let a failing channel hold up or fail the run", function()
      script[SLACK_PATH] = { 500, 500, 500, 500 }
      notify.run_event(env, { event = "run_end", run_id = "r-3", playbook = "canary", env = "production",
        status = "rolled-back", reason = "error rate 5%" })
      local results = notify.flush(5)
      local failed = 0
      for _, r in ipairs(results) do if not r.ok then failed = failed + 1 end end
      assert.are.equal(1, failed)
    end)

    it("reject a misspelled setting with the channel's name", function()
      env.notify.deploys.webhok = "x"
      local ok, err = pcall(notify.send, "deploys", "x", env)
      assert.is_false(ok)
      assert.matches("channel 'deploys': unknown setting 'webhok' for a slack channel", err.message)
    end)
  end)
end)
