-- The on-call runbooks (playbooks/runbooks/), run by the real binary: a fault injected into
-- the simulated cluster (or a real PostgreSQL), the runbook run straight through with
-- --no-step --yes, and the service found restored, the decisions in the journal and the
-- page, chat and status page received by an http.server here; plans that send nothing;
-- runs killed with -9 half-way through their mitigation, then resumed;
-- the refusal to run step by step without a terminal; and one runbook driven by hand in
-- a real terminal (tmux).
package.path = "spec/support/?.lua;" .. package.path
local harness = require("playbook_harness")
local runs = require("playbook_runs")
local postgres = require("postgres")
local project = require("project")

local ROUTING_KEY = "R0UT1NGKEY0123456789abcdefABCDEF"
local STATUSPAGE_KEY = "sp-api-key-0123456789"
local SLACK_PATH = "/services/T0001/B0002/slAckT0ken4Spec"

-- Receives every notification: PagerDuty events, Statuspage incidents, Slack messages.
local server, received
local incidents = 0

local function notify_env()
  return string.format([[
notify:
  chat: { type: slack, webhook: %s%s, events: [] }
  oncall: { type: pagerduty, routing_key: %s, url: %s/pd/enqueue, events: [] }
  status: { type: statuspage, page_id: multiship, api_key: %s, url: %s/sp, events: [] }
]], server.url, SLACK_PATH, ROUTING_KEY, server.url, STATUSPAGE_KEY, server.url)
end

-- The notifications received, as { kind, method, path, body } in order.
local function sent(kind)
  local out = {}
  for _, req in ipairs(received) do
    local k = req.path:match("^/pd/") and "pagerduty" or req.path:match("^/sp/") and "statuspage" or "slack"
    if kind == nil or kind == k then
      out[#out + 1] = { kind = k, method = req.method, path = req.path, body = json.decode(req.body) }
    end
  end
  return out
end

-- decisions recorded in the journal: the last step_end's state.decisions, question -> answer
local function decisions(h, r)
  local out = {}
  local ends = h:events(r, "step_end")
  for _, d in ipairs(ends[#ends].state.decisions or {}) do out[d.question] = d.answer .. " (" .. d.by .. ")" end
  return out
end

local function journal_events(h, run_id, name)
  local out = {}
  local f = assert(io.open(h.dir .. "/.tug/runs/" .. run_id .. ".jsonl"))
  for line in f:lines() do
    local e = json.decode(line)
    if e.event == name then out[#out + 1] = e end
  end
  f:close()
  return out
end

-- The default Multiship scenario, with the healthy releases erring once in 10,000 requests
-- rather than 5: a one-second measurement of a healthy API then never looks like a failing
-- one, so each run's verdict depends only on the fault under test.
local SCENARIO = [[
extends: default
images:
  multiship/api:
    versions:
      v2.1.0: { error_rate: 0.0001 }
      v2.2.0: { error_rate: 0.0001 }
]]

-- A harness for one test, with nothing received yet.
local function new_harness(opts)
  opts = opts or {}
  received = {}
  return harness.new({ env = notify_env() .. (opts.env or ""), scenario = SCENARIO, timing = opts.timing })
end

local function bad_rollout(cluster, version)
  assert(cluster:patch("deployments", "multiship", "api", "strategic", {
    metadata = { annotations = { ["kubernetes.io/change-cause"] = "deploy " .. version } },
    spec = { template = { spec = { containers = { { name = "api", image = "multiship/api:" .. version } } } } },
  }))
  assert.are.equal("complete", cluster:wait_rollout("multiship", "api", 10))
end

local function health_of(cluster, service, path)
  return (cluster:request({ path = "/svc/multiship/" .. service .. (path or "/health") }))
end

setup(function()
  received = {}
  server = http.server({ port = 0, handler = function(req)
    received[#received + 1] = req
    if req.path:match("^/pd/") then
      local body = json.decode(req.body)
      return { status = 202, json = { status = "success", message = "Event processed", dedup_key = body.dedup_key } }
    elseif req.path:match("^/sp/") then
      if req.method == "POST" then incidents = incidents + 1 end
      return { status = req.method == "POST" and 201 or 200, json = { id = "inc" .. incidents } }
    end
    return 200, { ["content-type"] = "text/plain" }, "ok"
  end })
end)

teardown(function() server:close() end)


-- A tug run of a runbook straight through, with short measurements.
local FAST = { "load_duration=500ms", "gate_count=1", "verify_within=20s" }

local function run(h, name, extra)
  local args = { "run", name, "--no-step", "--yes" }
  if name ~= "database-issues" then
    for _, a in ipairs(FAST) do args[#args + 1] = a end
  end
  for _, a in ipairs(extra or {}) do args[#args + 1] = a end
  local r = h:tug(args)
  if os.getenv("SHOW") then print(r.stdout, r.stderr) end
  return r
end

local function plan(h, name, extra)
  local args = { "plan", name }
  if name ~= "database-issues" then args[#args + 1] = "load_duration=1s" end
  for _, a in ipairs(extra or {}) do args[#args + 1] = a end
  return h:tug(args)
end

local function pods_of(cluster, deployment)
  local names = {}
  local d = cluster:get("deployments", "multiship", deployment)
  local selector = "app=api,track=" .. d.spec.selector.matchLabels.track
  for _, pod in ipairs(cluster:list("pods", "multiship", { label = selector })) do
    names[pod.metadata.name] = true
  end
  return names
end

describe("api-outage", function()
  local h, cluster
  before_each(function()
    h = new_harness({ timing = { pod_start = "100ms", ready_after = "200ms", crash_after = "100ms",
      restart_backoff = "30s" } })
    cluster = h.cluster
  end)
  after_each(function() h:close() end)

  it("plans without sending anything, then rolls back a release that fails its health checks", function()
    bad_rollout(cluster, "v2.2.1-bad")
    assert.are.equal(503, health_of(cluster, "api"))
    local p = plan(h, "api-outage")
    assert.are.equal(0, p.code, p.stdout .. p.stderr)
    local changes = h:changes(p)
    assert.matches("notify: trigger a PagerDuty incident: SEV1 api%-outage on sim: API outage", changes)
    assert.matches("notify: open a Statuspage incident: API unavailable", changes)
    assert.matches("k8s: patch deployment multiship/api", changes)
    assert.are.equal(0, #received)
    assert.are.equal("multiship/api:v2.2.1-bad", h:image("api"))

    local r = run(h, "api-outage")
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("multiship/api:v2.1.0", h:image("api"))
    assert.are.equal(200, health_of(cluster, "api"))
    local d = decisions(h, r)
    assert.are.equal("sev1 (--yes: the default)", d["Severity?"])
    assert.are.equal("rollback (--yes: the default)", d["Mitigation?"])
    assert.are.equal("yes (--yes: the default)", d["Open a status page incident?"])
    -- the failing pods' answers were kept before the rollback replaced them
    local ends = h:events(r, "step_end")
    assert.is_true(ends[#ends].state.evidence.server_errors > 0)
    -- paged at sev1; the status page opened, moved to monitoring, resolved; the page resolved
    local pd = sent("pagerduty")
    assert.are.equal(2, #pd, r.stdout)
    assert.are.same({ "trigger", "critical", ROUTING_KEY, "tug/sim/api-outage" },
      { pd[1].body.event_action, pd[1].body.payload.severity, pd[1].body.routing_key, pd[1].body.dedup_key })
    assert.matches("^SEV1 api%-outage on sim: API outage: the API is unavailable", pd[1].body.payload.summary)
    assert.are.same({ "resolve", "tug/sim/api-outage" }, { pd[2].body.event_action, pd[2].body.dedup_key })
    local sp = sent("statuspage")
    assert.are.equal(3, #sp)
    assert.are.same({ "POST", "PATCH", "PATCH" }, { sp[1].method, sp[2].method, sp[3].method })
    assert.are.same({ "API unavailable", "investigating" }, { sp[1].body.incident.name, sp[1].body.incident.status })
    assert.are.equal("/sp/v1/pages/multiship/incidents/inc" .. incidents, sp[2].path)
    assert.are.same({ "monitoring", "resolved" }, { sp[2].body.incident.status, sp[3].body.incident.status })
    local chat = sent("slack")
    assert.are.equal(2, #chat)
    assert.matches("SEV1 api%-outage on sim: API outage", chat[1].body.text)
    assert.matches(":white_check_mark: SEV1 api%-outage on sim: resolved", chat[2].body.text)
    assert.is_nil(r.stdout:find(ROUTING_KEY, 1, true))
    assert.is_nil(r.stdout:find(STATUSPAGE_KEY, 1, true))
  end)

  it("undoes a rollback that does not bring the API back, and leaves the page open", function()
    bad_rollout(cluster, "v2.2.1-bad")
    cluster:fault({ type = "unhealthy", version = "v2.1.0" }) -- the old release fails too: not the cause
    local r = run(h, "api-outage", { "verify_within=2s", "status_page=false" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    local e = h:run_end(r)
    assert.are.equal("rolled-back", e.status)
    assert.matches("not restored: 2 of 2 health checks failed within 2s: .*/health: status 503", e.reason)
    assert.are.equal("multiship/api:v2.2.1-bad", h:image("api")) -- rolled forward to where it was
    local pd = sent("pagerduty")
    assert.are.equal(1, #pd)
    assert.are.equal("trigger", pd[1].body.event_action)
  end)

  it("resumes a run killed during the rollback without rolling forward again", function()
    bad_rollout(cluster, "v2.2.1-bad")
    local tug = require("child").tug
    local env = { CI = "true", TUG_ENVIRONMENTS = h.dir .. "/environments", TUG_HOME = h.dir .. "/.tug",
      GITHUB_ACTIONS = false }
    local argv = { tug, "run", "api-outage", "--no-step", "--yes", "--env", "sim", "--playbooks",
      harness.ROOT .. "/playbooks", "--output", "json" }
    for _, a in ipairs(FAST) do argv[#argv + 1] = a end
    local proc = exec.spawn(argv, { timeout = 60, env = env })
    -- the rollback has been sent and its rollout is under way: the machine dies
    assert.truthy(cluster:wait_for(function() return h:image("api") == "multiship/api:v2.1.0" end, 20))
    proc:kill("KILL")
    proc:wait()
    local run_id = exec.run({ "ls", h.dir .. "/.tug/runs" }).stdout:match("([%w%-]+)%.jsonl")
    local r = exec.run({ tug, "resume", run_id, "--no-step", "--yes", "--output", "json" }, { timeout = 60, env = env })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.matches("api already runs multiship/api:v2%.1%.0: the rollback was sent", r.stdout)
    assert.are.equal("multiship/api:v2.1.0", h:image("api"))
    assert.are.equal(200, health_of(cluster, "api"))
    assert.are.equal("resolve", sent("pagerduty")[#sent("pagerduty")].body.event_action)
  end)

  it("scales up an API scaled to zero", function()
    assert(cluster:patch("deployments", "multiship", "api", "merge", { spec = { replicas = 0 } }))
    assert.truthy(cluster:wait_for(function() return health_of(cluster, "api") == 503 end, 5))
    local r = run(h, "api-outage", { "status_page=false" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal(2, cluster:get("deployments", "multiship", "api").spec.replicas)
    assert.are.equal(200, health_of(cluster, "api"))
    local d = decisions(h, r)
    assert.are.equal("scale (--yes: the default)", d["Mitigation?"])
    assert.are.equal("2 (twice the current, at least 2)", d["Replicas to scale up to?"])
    assert.are.equal("no (param status_page)", d["Open a status page incident?"])
    assert.are.equal(0, #sent("statuspage"))
  end)

  it("restarts pods left in their crash-loop back-off after the database came back", function()
    local fault = cluster:fault({ type = "crash_loop", version = "v2.1.0" })
    assert.truthy(cluster:wait_for(function()
      return cluster:get("deployments", "multiship", "api").status.readyReplicas == nil
    end, 10))
    cluster:clear_faults(fault) -- the dependency is back; the pods wait out their 30 s back-off
    local before = pods_of(cluster, "api")
    local r = run(h, "api-outage", { "verify_within=10s" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("restart (--yes: the default)", decisions(h, r)["Mitigation?"])
    for name in pairs(pods_of(cluster, "api")) do assert.is_nil(before[name], name .. " was not replaced") end
    local template = cluster:get("deployments", "multiship", "api").spec.template
    assert.truthy(template.metadata.annotations["kubectl.kubernetes.io/restartedAt"])
    assert.are.equal(200, health_of(cluster, "api"))
  end)

  it("refuses a mitigation the incident does not allow, naming the param", function()
    local r = run(h, "api-outage", { "mitigation=rollback", "status_page=false" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("param mitigation=rollback is not one of the answers this incident allows: scale, restart, "
      .. "disable%-flag, none", h:run_end(r).reason)
    assert.are.equal("multiship/api:v2.1.0", h:image("api"))
  end)

  it("need a terminal unless --no-step, and send nothing", function()
    for _, name in ipairs({ "api-outage", "service-outage", "provider-failure", "database-issues" }) do
      local r = h:tug({ "run", name })
      assert.are.equal(2, r.code, r.stdout .. r.stderr)
      assert.matches(name:gsub("%-", "%%-") .. " runs step by step and needs a terminal to ask on %(%-%-no%-step "
        .. "runs it straight through%)", r.stdout .. r.stderr)
    end
    assert.are.equal(0, #received)
    assert.are.equal("multiship/api:v2.1.0", h:image("api"))
  end)

  it("pages and posts through the channels the environment names, and names one that cannot", function()
    h:write_env(notify_env() .. "incident: { page: oncall, announce: [], status: [chat] }\n")
    local r = run(h, "api-outage", { "severity=sev1" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("environment sim: incident.status names channel 'chat', a slack channel", h:run_end(r).reason)
    assert.are.equal(1, #sent("pagerduty"))
    assert.are.equal(0, #sent("slack"))
    assert.are.equal(0, #sent("statuspage"))
  end)

  it("says when the environment has no database to look at, or the database does not answer", function()
    local r = run(h, "database-issues")
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("the sim environment has no database_url %(or database.admin_url%)", h:run_end(r).reason)
    local port = require("fixture").free()
    h:write_env(notify_env() .. string.format("database_url: postgresql://postgres@127.0.0.1:%d/postgres\n", port))
    r = run(h, "database-issues", { "verify_within=1s", "status_page=false" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    local ends = h:events(r, "step_end")
    assert.matches("PostgreSQL does not answer: .*Connection refused", ends[1].state.findings[1])
    assert.are.equal("sev1 (--yes: the default)", decisions(h, r)["Severity?"])
    assert.are.equal("none (--yes: the default)", decisions(h, r)["Mitigation?"])
    assert.matches("not restored: PostgreSQL does not answer", h:run_end(r).reason)
  end)
end)

describe("service-outage", function()
  local h, cluster
  before_each(function() h = new_harness(); cluster = h.cluster end)
  after_each(function() h:close() end)

  it("fails over from a live colour that fails its health checks to the stable one", function()
    -- blue went live with v2.2.0, which now fails; green keeps v2.1.0, scaled down
    assert(cluster:patch("deployments", "multiship", "api-blue", "strategic",
      { spec = { template = { spec = { containers = { { name = "api", image = "multiship/api:v2.2.0" } } } } } }))
    assert.are.equal("complete", cluster:wait_rollout("multiship", "api-blue", 10))
    cluster:fault({ type = "unhealthy", version = "v2.2.0" })
    local p = plan(h, "service-outage")
    assert.are.equal(0, p.code, p.stdout .. p.stderr)
    assert.matches("k8s: patch service multiship/api%-service", h:changes(p))
    assert.are.equal(0, #received)
    assert.are.equal("blue", cluster:get("services", "multiship", "api-service").spec.selector.colour)

    local r = run(h, "service-outage")
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("green", cluster:get("services", "multiship", "api-service").spec.selector.colour)
    assert.are.equal(4, cluster:get("deployments", "multiship", "api-green").status.readyReplicas)
    assert.are.equal(200, health_of(cluster, "api-service"))
    local d = decisions(h, r)
    assert.are.equal("sev1 (--yes: the default)", d["Severity?"])
    assert.are.equal("failover (--yes: the default)", d["Mitigation?"])
    local ends = h:events(r, "step_end")
    assert.are.same({ api = "down", database = "down", providers = "up", pods = "4/4 ready (blue)" },
      ends[1].state.components)
    local sp = sent("statuspage")
    assert.are.equal("Service disruption: api, database", sp[1].body.incident.name)
    assert.are.same({ "investigating", "monitoring", "resolved" },
      { sp[1].body.incident.status, sp[2].body.incident.status, sp[3].body.incident.status })
    assert.are.equal(2, #sent("pagerduty"))
  end)

  it("killed with -9 while the stable colour scales up, resumes, fails over and resolves, paging once", function()
    assert(cluster:patch("deployments", "multiship", "api-blue", "strategic",
      { spec = { template = { spec = { containers = { { name = "api", image = "multiship/api:v2.2.0" } } } } } }))
    assert.are.equal("complete", cluster:wait_rollout("multiship", "api-blue", 10))
    cluster:fault({ type = "unhealthy", version = "v2.2.0" })
    cluster:set_timing({ pod_start = "1500ms" }) -- green's pods take a while to start
    local args = { "run", "service-outage", "--no-step", "--yes", "status_page=false" }
    for _, a in ipairs(FAST) do args[#args + 1] = a end
    local run_id = runs.kill_when(h, args, function(e, c)
      return e.event == "step_start" and e.name == "scale up the stable colour"
        and c:get("deployments", "multiship", "api-green").spec.replicas == 4
    end)
    -- half-changed: green scaled up, traffic still on the failing blue, the incident open
    assert.are.equal("blue", cluster:get("services", "multiship", "api-service").spec.selector.colour)
    assert.are.equal(1, #sent("pagerduty"))
    cluster:set_timing({ pod_start = "100ms" })
    local r = runs.resume_runbook(h, run_id)
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("succeeded", h:run_end(r).status)
    assert.are.equal("green", cluster:get("services", "multiship", "api-service").spec.selector.colour)
    assert.are.equal(4, cluster:get("deployments", "multiship", "api-green").status.readyReplicas)
    assert.are.equal(200, health_of(cluster, "api-service"))
    assert.are.equal("failover (--yes: the default)", decisions(h, r)["Mitigation?"])
    -- paged before the kill, resolved after the resume: nothing sent twice
    local pd = sent("pagerduty")
    assert.are.same({ "trigger", "resolve" }, { pd[1].body.event_action, pd[2] and pd[2].body.event_action })
    assert.are.equal(2, #pd)
  end)
end)

describe("service-outage, scaling", function()
  local h, cluster
  before_each(function() h = new_harness(); cluster = h.cluster end)
  after_each(function() h:close() end)

  it("scales up a live colour left with no replicas", function()
    assert(cluster:patch("deployments", "multiship", "api-blue", "merge", { spec = { replicas = 0 } }))
    assert.truthy(cluster:wait_for(function() return health_of(cluster, "api-service") == 503 end, 5))
    local r = run(h, "service-outage", { "status_page=false" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("scale (--yes: the default)", decisions(h, r)["Mitigation?"])
    assert.are.equal(2, cluster:get("deployments", "multiship", "api-blue").spec.replicas)
    assert.are.equal("blue", cluster:get("services", "multiship", "api-service").spec.selector.colour)
    assert.are.equal(200, health_of(cluster, "api-service"))
  end)
end)

describe("provider-failure", function()
  local h, cluster
  before_each(function() h = new_harness(); cluster = h.cluster end)
  after_each(function() h:close() end)

  local function flags()
    local r = http.get(h.cluster.url .. "/svc/multiship/api-service/admin/features",
      { headers = { authorization = "Bearer sim-admin-token" } })
    local out = {}
    for _, f in ipairs(r:json().features) do out[f.feature] = f.enabled end
    return out
  end

  it("switches a provider that is down off, and back on once it recovers", function()
    cluster:fault({ type = "provider_down", provider = "easypost", duration = "4s" })
    local p = plan(h, "provider-failure", { "samples=2", "sample_interval=100ms" })
    assert.are.equal(0, p.code, p.stdout .. p.stderr)
    assert.matches("http: POST .*/admin/features", h:changes(p))
    assert.are.equal(0, #received)
    assert.is_nil(flags()["provider-easypost-enabled"])

    local r = run(h, "provider-failure", { "samples=3", "sample_interval=200ms", "recovery_wait=20s" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local d = decisions(h, r)
    assert.are.equal("easypost (--yes: the default)", d["Switch off which provider?"])
    assert.are.equal("yes (--yes: the default)", d["easypost has recovered. Switch it back on?"])
    assert.is_true(flags()["provider-easypost-enabled"])
    local ends = h:events(r, "step_end")
    assert.matches("down in 3 of 3 checks", ends[1].state.providers.easypost.why)
    assert.is_true(ends[1].state.error_rate > 0.1) -- a third of the orders went to easypost
    assert.matches("easypost failing", sent("pagerduty")[1].body.payload.summary)
  end)

  it("keeps a provider that stays down switched off, with the orders going to the others", function()
    cluster:fault({ type = "provider_down", provider = "shippo" })
    local r = run(h, "provider-failure", { "samples=2", "sample_interval=100ms", "recovery_wait=1s",
      "status_page=false" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("no (--yes: the default)", decisions(h, r)["shippo still fails. Switch it back on anyway?"])
    assert.is_false(flags()["provider-shippo-enabled"])
    local load = health.load({ url = cluster.url .. "/svc/multiship/api-service/api/orders", duration = "500ms",
      concurrency = 4 })
    assert.are.equal(0, load.statuses[502] or 0)
  end)

  it("killed with -9 after switching the provider off, resumes and switches it back on once, when it recovers",
    function()
    cluster:fault({ type = "provider_down", provider = "easypost", duration = "4s" })
    local args = { "run", "provider-failure", "--no-step", "--yes", "samples=2", "sample_interval=200ms",
      "recovery_wait=20s", "status_page=false" }
    for _, a in ipairs(FAST) do args[#args + 1] = a end
    local run_id = runs.kill_when(h, args, function(e)
      return e.event == "step_start" and e.name == "watch the error rate"
    end)
    -- half-changed: easypost switched off, nobody watching
    assert.is_false(flags()["provider-easypost-enabled"])
    local r = runs.resume_runbook(h, run_id)
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("succeeded", h:run_end(r).status)
    assert.are.equal("yes (--yes: the default)", decisions(h, r)["easypost has recovered. Switch it back on?"])
    assert.is_true(flags()["provider-easypost-enabled"])
    -- off before the kill, on after the resume: the flag was not switched off again
    assert.are.equal(2, runs.app_requests(cluster, "/admin/features", "POST"))
    local pd = sent("pagerduty")
    assert.are.same({ "trigger", "resolve" }, { pd[1].body.event_action, pd[2] and pd[2].body.event_action })
    assert.are.equal(2, #pd)
  end)
end)

describe("database-issues", function()
  local h, cluster, db
  setup(function()
    db = postgres.start()
    db:psql("CREATE TABLE orders (id int PRIMARY KEY, status text); INSERT INTO orders VALUES (1, 'new')")
  end)
  teardown(function() db:stop() end)
  before_each(function() h = new_harness({ env = "database_url: " .. db.url .. "\n" }); cluster = h.cluster end)
  after_each(function() h:close() end)

  -- a session holding a row lock (an open transaction, or one long statement) and one
  -- waiting for it
  local function lock_and_wait(holder_sql)
    local holder = pg.connect(db.url, { application_name = "holder" })
    local waiter = pg.connect(db.url, { application_name = "waiter" })
    local holding = task.spawn(function() return pcall(holder.exec, holder, holder_sql) end)
    local observer = pg.connect(db.url)
    assert.truthy(project.wait_for(function()
      return observer:value("SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid' AND granted AND pid = $1",
        holder:info().backend_pid) > 0
    end, 5))
    local waiting = task.spawn(function() return waiter:exec("UPDATE orders SET status = 'waiting' WHERE id = 1") end)
    assert.truthy(project.wait_for(function()
      return observer:value("SELECT count(*) FROM pg_stat_activity WHERE cardinality(pg_blocking_pids(pid)) > 0") > 0
    end, 5))
    observer:close()
    return holder, waiting, holding
  end

  it("plans without ending anything, then terminates the idle transaction that blocks an update", function()
    local holder, waiting = lock_and_wait("BEGIN; UPDATE orders SET status = 'held' WHERE id = 1")
    local pid = holder:info().backend_pid
    local p = plan(h, "database-issues", { "long_running=1s" })
    assert.are.equal(0, p.code, p.stdout .. p.stderr)
    local changes = h:changes(p)
    assert.matches("confirm: would ask: Terminate session " .. pid .. " %(postgres, holder, idle in transaction", changes)
    assert.matches("step: pg_terminate_backend%(" .. pid .. "%)", changes)
    assert.are.equal(0, #received)
    assert.are.equal("waiting", waiting:status()) -- still blocked: nothing was ended
    assert.are.equal(1, holder:value("SELECT 1"))
    local r = run(h, "database-issues", { "long_running=1s", "verify_within=5s" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal(1, waiting:wait()) -- the update went through
    local ok, err = pcall(holder.value, holder, "SELECT 1")
    assert.is_false(ok)
    assert.is_true(err.connection_lost)
    local d = decisions(h, r)
    assert.are.equal("sev2 (--yes: the default)", d["Severity?"])
    assert.are.equal("terminate (--yes: the default)", d["Mitigation?"])
    assert.are.equal(tostring(pid) .. " (--yes: the default)", d["Which session?"])
    assert.matches("session " .. pid .. " %(postgres, holder, idle in transaction", h:run_end(r) and
      table.concat(h:events(r, "step_end")[1].state.findings, "\n"))
    holder:close()
  end)

  it("cancels a long statement that holds a lock", function()
    local holder, waiting, holding = lock_and_wait(
      "WITH u AS (UPDATE orders SET status = 'slow' WHERE id = 1 RETURNING 1) SELECT pg_sleep(60) FROM u")
    local r = run(h, "database-issues", { "long_running=1s", "verify_within=5s", "status_page=false" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("cancel (--yes: the default)", decisions(h, r)["Mitigation?"])
    local ok, err = holding:wait()
    assert.is_false(ok)
    assert.are.equal("57014", err.sqlstate) -- canceling statement due to user request
    assert.are.equal(1, waiting:wait())
    assert.are.equal(1, holder:value("SELECT 1")) -- the session itself goes on
    holder:close()
  end)

  it("says to terminate a session whose cancelled query leaves its transaction's locks held", function()
    local holder, waiting = lock_and_wait("BEGIN; UPDATE orders SET status = 'held' WHERE id = 1")
    local r = run(h, "database-issues", { "mitigation=cancel", "verify_within=1s", "status_page=false" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    local e = h:run_end(r)
    assert.are.equal("failed", e.status)
    assert.matches("still blocks others or runs after its query was cancelled %(a transaction keeps its locks%): "
      .. "terminate it instead", e.reason)
    holder:exec("ROLLBACK")
    assert.are.equal(1, waiting:wait())
    holder:close()
  end)

  it("undoes a scale-down that does not clear the blocked sessions", function()
    local holder, waiting = lock_and_wait("BEGIN; UPDATE orders SET status = 'held' WHERE id = 1")
    local r = run(h, "database-issues", { "mitigation=scale-down", "verify_within=2s", "status_page=false" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    local e = h:run_end(r)
    assert.are.equal("rolled-back", e.status)
    assert.matches("not restored: a session still waits on another's lock", e.reason)
    assert.are.equal(4, cluster:get("deployments", "multiship", "api").spec.replicas)
    assert.are.equal("2 (half, at least 1)", decisions(h, r)["Replicas to scale the API down to?"])
    holder:exec("ROLLBACK")
    assert.are.equal(1, waiting:wait())
    holder:close()
  end)

  it("killed with -9 while it verifies a scale-down, resumes and scales the API back up once the lock is gone",
    function()
    local holder, waiting = lock_and_wait("BEGIN; UPDATE orders SET status = 'held' WHERE id = 1")
    local run_id = runs.kill_when(h, { "run", "database-issues", "--no-step", "--yes", "mitigation=scale-down",
      "verify_within=20s", "status_page=false" }, function(e)
      return e.event == "step_start" and e.name == "verify the database is healthy"
    end)
    -- half-changed: the API scaled down to half, the incident open
    assert.are.equal(2, cluster:get("deployments", "multiship", "api").spec.replicas)
    holder:exec("ROLLBACK") -- while tug is down, the blocking transaction ends
    assert.are.equal(1, waiting:wait())
    local r = runs.resume_runbook(h, run_id)
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("succeeded", h:run_end(r).status)
    assert.are.equal(4, cluster:get("deployments", "multiship", "api").spec.replicas)
    assert.are.equal(4, cluster:get("deployments", "multiship", "api").status.readyReplicas)
    local pd = sent("pagerduty")
    assert.are.same({ "trigger", "resolve" }, { pd[1].body.event_action, pd[2] and pd[2].body.event_action })
    assert.are.equal(2, #pd)
    holder:close()
  end)
end)

describe("a runbook on a terminal", function()
  local h, cluster
  local SOCKET = "tug-runbooks-spec"
  before_each(function() h = new_harness(); cluster = h.cluster end)
  after_each(function()
    exec.run({ "tmux", "-L", SOCKET, "kill-server" })
    h:close()
  end)

  -- Runs tug in a real terminal (tmux) with the harness's environment; returns a function
  -- that types keys and one that reads everything the terminal showed.
  local function terminal(args)
    local argv = { require("child").tug }
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    for _, a in ipairs({ "--env", "sim", "--playbooks", harness.ROOT .. "/playbooks", "--output", "plain" }) do
      argv[#argv + 1] = a
    end
    exec.run({ "tmux", "-L", SOCKET, "new-session", "-d", "-x", "200", "-y", "50", "-c", h.dir, "-e", "CI=",
      "-e", "GITHUB_ACTIONS=", "-e", "TUG_ENVIRONMENTS=" .. h.dir .. "/environments", "-e", "TUG_HOME=" .. h.dir .. "/.tug",
      table.concat(argv, " ") .. "; echo EXIT=$?; sleep 60" }, { check = true })
    local function keys(...)
      exec.run({ "tmux", "-L", SOCKET, "send-keys", ... }, { check = true })
    end
    local function screen()
      return exec.run({ "tmux", "-L", SOCKET, "capture-pane", "-p", "-J", "-S", "-" }).stdout
    end
    return keys, screen
  end

  -- Answers every prompt as it appears (answer(prompt) gives the keys; "" is Enter alone)
  -- until tug exits; returns what the terminal showed and the prompts, in order.
  local function drive(keys, screen, answer, seconds)
    local asked = {}
    local deadline = time.monotonic() + seconds
    while time.monotonic() < deadline do
      local text = screen()
      local prompts = {}
      for line in text:gmatch("[^\n]+") do
        if line:find("[r]un, [s]kip or [a]bort?", 1, true) or line:match("%? %[[^%]]+%]") then
          prompts[#prompts + 1] = line
        end
      end
      if #prompts > #asked then
        local prompt = prompts[#asked + 1]
        asked[#asked + 1] = prompt
        local a = answer(prompt)
        if a == "" then keys("Enter") else keys(a, "Enter") end
      elseif text:find("EXIT=%d") then
        return text, asked
      end
      task.sleep(0.05)
    end
    return screen(), asked
  end

  it("asks before each step and takes the operator's mitigation: the flag that broke orders goes off", function()
    -- a feature switched on a moment ago (after the others: their times are in whole
    -- seconds) makes 30% of the orders fail
    task.sleep(1.1)
    local status = cluster:request({ method = "POST", path = "/svc/multiship/api/admin/features",
      headers = { authorization = "Bearer sim-admin-token", ["content-type"] = "application/json" },
      body = json.encode({ feature = "new-shipment-tracking", enabled = true }) })
    assert.are.equal(200, status)
    cluster:fault({ type = "error_rate", rate = 0.3, feature = "new-shipment-tracking" })
    local keys, screen = terminal({ "run", "api-outage", "load_duration=1s", "gate_count=1", "verify_within=20s" })
    local text, asked = drive(keys, screen, function(prompt)
      if prompt:find("[r]un, [s]kip", 1, true) then return "r" end
      if prompt:find("Open a status page incident?", 1, true) then return "no" end
      if prompt:find("Mitigation?", 1, true) then return "disable-flag" end
      return "" -- the defaults: the severity, the flag switched on last
    end, 40)
    assert.matches("EXIT=0", text)
    -- no rollback offered: the API has no earlier revision
    assert.matches("Mitigation%? %[scale/restart/disable%-flag/none%] %(default disable%-flag%)", text)
    assert.matches("Which feature flag to switch off%? %[new%-shipment%-tracking/bulk%-label%-printing%] "
      .. "%(default new%-shipment%-tracking%)", text)
    assert.is_true(#asked >= 12, text)
    local _, _, flag = cluster:request({ path = "/svc/multiship/api/admin/features/new-shipment-tracking",
      headers = { authorization = "Bearer sim-admin-token" } })
    assert.is_false(json.decode(flag).enabled)
    -- the operator's answers are decisions in the journal
    local run_id = text:match("run api%-outage on sim %(run ([%w%-]+)%)")
    local answers = {}
    for _, e in ipairs(journal_events(h, run_id, "decision")) do answers[e.question] = e.answer end
    assert.are.equal("disable-flag", answers["Mitigation?"])
    assert.are.equal("no", answers["Open a status page incident?"])
    assert.are.equal("sev1", answers["Severity?"])
    assert.are.equal("new-shipment-tracking", answers["Which feature flag to switch off?"])
    assert.are.equal("run", answers["step switch off the suspect feature flag"])
    assert.are.equal(0, #sent("statuspage"))
    assert.are.equal(2, #sent("pagerduty"))
  end)
end)

describe("the simulator's faults the runbooks need", function()
  local s
  before_each(function() s = sim.start({ port = 0, serve = false }) end)
  after_each(function() s:close() end)

  local ADMIN = { authorization = "Bearer sim-admin-token", ["content-type"] = "application/json" }
  local function get(path) return s:request({ path = "/svc/multiship/api-service" .. path }) end
  local function flag(name, enabled)
    return (s:request({ method = "POST", path = "/svc/multiship/api-service/admin/features", headers = ADMIN,
      body = json.encode({ feature = name, enabled = enabled }) }))
  end

  it("ties a fault to a feature flag, and only the faults the application sees", function()
    s:fault({ type = "unhealthy", version = "v2.1.0", feature = "new-shipment-tracking" })
    assert.are.equal(200, get("/health"))
    assert.are.equal(200, flag("new-shipment-tracking", true))
    assert.are.equal(503, get("/health"))
    flag("new-shipment-tracking", false)
    assert.are.equal(200, get("/health"))
    assert.has_error(function() s:fault({ type = "crash_loop", version = "v2.1.0", feature = "new-shipment-tracking" }) end,
      "sim: feature (a flag name) goes with unhealthy, error_rate and latency faults")
  end)

  it("fails a share of the orders on a provider that is down until its flag is switched off", function()
    s:fault({ type = "provider_down", provider = "easypost" })
    local function failed_orders()
      local requests = {}
      for i = 1, 60 do requests[i] = function() return get("/api/orders") end end
      local n = 0
      for _, status in ipairs({ task.parallel(requests) }) do
        if status == 502 then n = n + 1 end
      end
      return n
    end
    assert.is_true(failed_orders() > 5)
    assert.are.equal(503, get("/api/providers/health"))
    assert.are.equal(200, flag("provider-easypost-enabled", false))
    assert.are.equal(0, failed_orders())
    local status, _, body = get("/api/providers/health")
    assert.are.equal(200, status)
    local doc = json.decode(body)
    assert.are.same({ "healthy", "down", false }, { doc.status, doc.providers.easypost.status,
      doc.providers.easypost.enabled })
    for _, name in ipairs({ "easypost", "shippo", "veeqo" }) do flag("provider-" .. name .. "-enabled", false) end
    assert.are.equal(503, get("/api/orders"))
  end)
end)
