-- incident.lua: what the on-call runbooks (playbooks/runbooks/) share. Each answer
-- recorded with who gave it; a first look at the API (health endpoints, a short load
-- check, a Deployment with its pods and what changed lately, the feature flags); the
-- evidence (error lines in the logs, warning events); paging, the status page and the
-- team's chat through the environment's notify channels; and the check that the service
-- is back. The runbooks are the seed's emergency procedures; this file is their toolbox.
local multiship = require("multiship")
local k8s_util = require("k8s.util")

local incident = {}

incident.SEVERITIES = { "sev1", "sev2", "sev3" }
local PAGER_SEVERITY = { sev1 = "critical", sev2 = "error", sev3 = "warning" }
local COMPONENT_STATUS = { sev1 = "major_outage", sev2 = "partial_outage", sev3 = "degraded_performance" }

-- The seed's critical alert: an error rate over 1%.
incident.CRITICAL_ERROR_RATE = 0.01

-- ---- params ----

-- The params runbooks share, by name (see incident.params).
local SHARED_PARAMS = {
  load_duration = { type = "duration", default = "2s", help = "the load check that measures the error rate" },
  rollout_timeout = { type = "duration", default = "5m" },
  gate_count = { type = "integer", default = 3, min = 1, help = "error-rate and P95 measurements once it answers" },
}

-- A runbook's params: severity and status_page (the answers to the questions every
-- runbook asks), the shared ones it names, and its own (which win over a shared one).
function incident.params(shared, own)
  local out = {
    severity = { type = "enum", values = incident.SEVERITIES, help = "answers \"Severity?\"" },
    status_page = { type = "boolean", help = "answers \"Open a status page incident?\"" },
  }
  for _, name in ipairs(shared) do
    local p = assert(SHARED_PARAMS[name], name)
    out[name] = {}
    for k, v in pairs(p) do out[name][k] = v end
  end
  for name, p in pairs(own) do out[name] = p end
  return out
end

-- Where users reach the API: the environment's url (the simulated cluster's api-service
-- locally).
function incident.user_url(env)
  if env.kubernetes and env.kubernetes.simulate then return multiship.api_url(env) end
  return env.url or multiship.api_url(env)
end

-- ---- decisions ----

local function listed(choices, answer)
  for _, c in ipairs(choices) do
    if c == answer then return true end
  end
  return false
end

-- The answer to one of the runbook's questions: the param `key` when the command line gave
-- it, else asked (an empty line, --yes and plans take opts.default). opts.choices limits
-- the answers; a param outside them is an error naming it. Every answer goes to
-- ctx.state.decisions and the log with who gave it, so the journal shows why each thing
-- was done.
function incident.decide(ctx, key, question, opts)
  opts = opts or {}
  local answer, by = ctx.params[key], nil
  if answer ~= nil then
    if type(answer) == "boolean" then answer = answer and "yes" or "no" end
    answer = tostring(answer)
    by = "param " .. key
    if opts.choices and not listed(opts.choices, answer) then
      error(string.format("param %s=%s is not one of the answers this incident allows: %s", key, answer,
        table.concat(opts.choices, ", ")), 0)
    end
  else
    answer = ctx:ask(question, { choices = opts.choices, default = opts.default })
    by = ctx.plan and "plan: the default" or ctx.yes and "--yes: the default" or "operator"
  end
  incident.record(ctx, question, answer, by)
  return answer
end

-- The answers of `all`, in order, that `possible(answer)` allows: the choices a question
-- offers in this incident.
function incident.offered(all, possible)
  local out = {}
  for _, answer in ipairs(all) do
    if possible(answer) then out[#out + 1] = answer end
  end
  return out
end

-- Records an answer that was not asked (a value worked out from what was seen, or a
-- param), beside the asked ones.
function incident.record(ctx, question, answer, by)
  ctx.state.decisions = ctx.state.decisions or {}
  table.insert(ctx.state.decisions, { question = question, answer = tostring(answer), by = by })
  ctx.log.info(string.format("decision: %s %s (%s)", question, tostring(answer), by))
end

-- The severity: sev1 for the seed's critical alerts (the API unavailable, database
-- connection failures, an error rate over 1%), sev2 for its warnings, sev3 otherwise.
function incident.severity(ctx, default)
  local sev = incident.decide(ctx, "severity", "Severity?", { choices = incident.SEVERITIES, default = default })
  ctx.state.severity = sev
  return sev
end

-- Records a finding: the log, and ctx.state.findings for the page and the journal.
function incident.finding(ctx, text)
  ctx.state.findings = ctx.state.findings or {}
  table.insert(ctx.state.findings, text)
  ctx.log.warn(text)
end

-- The findings so far, on one line for the page.
function incident.findings_line(ctx)
  return table.concat(ctx.state.findings or {}, "; ")
end

-- Seconds since a Kubernetes (RFC 3339) timestamp, or nil.
function incident.age(timestamp)
  local t = k8s_util.parse_time(timestamp)
  return t and math.max(0, time.now() - t) or nil
end

-- The low end of the 95% Wilson interval of an error rate, for the assessment: a short
-- check of a healthy API at 0.05% errors often sees one error in a few hundred requests,
-- which alone looks like 0.2%; the rate counts as high only when it is so at 95%. (The
-- verification is stricter: multiship.error_rate_low, 99.9%, as the gates judge, since a
-- false alarm there would undo a mitigation that worked.)
function incident.rate_low(errors, count)
  return multiship.error_rate_low(errors, count, 1.96)
end

function incident.percent(rate)
  if rate == nil then return "unknown" end
  return string.format("%.1f%%", rate * 100)
end

-- The seed's provider thresholds: EasyPost success rate over 99.5%, Shippo response time
-- under 1000 ms, Veeqo error rate under 0.5%.
incident.PROVIDER_THRESHOLDS = { easypost = { success_rate = 0.995 }, shippo = { p95_ms = 1000 },
  veeqo = { error_rate = 0.005 } }

-- The environment's limits, with the seed's values where it has none.
function incident.thresholds(env)
  local t = env.thresholds or {}
  return { error_rate = t.error_rate or 0.001, p95_ms = t.p95_ms or 500,
    providers = t.providers or incident.PROVIDER_THRESHOLDS, database = t.database or {} }
end

-- ---- looking at the API ----

-- One GET of each path under base, all at once: a list of { path, url, ok, status, ms,
-- reason, doc } (doc: the JSON body, when there is one). A failure is a value.
function incident.probe(base, paths, timeout)
  local fns = {}
  for i, path in ipairs(paths) do
    fns[i] = function()
      local out = { path = path, url = base .. path }
      local r = http.get(out.url, { timeout = timeout or "5s" })
      if not r.status then
        out.ok, out.reason = false, r.message or r.error
        return out
      end
      out.status, out.ok = r.status, r.status >= 200 and r.status < 300
      out.ms = r.timings and r.timings.total and r.timings.total * 1000
      local decoded, doc = pcall(r.json, r)
      if decoded and type(doc) == "table" then out.doc = doc end
      if not out.ok then
        local doc = out.doc or {}
        local why = doc.error or doc.message or (doc.status and ("status " .. tostring(doc.status)))
        if type(why) ~= "string" then why = r.body:gsub("%s+$", ""):sub(1, 120) end
        out.reason = string.format("status %d%s", r.status, why ~= "" and (": " .. tostring(why)) or "")
      end
      return out
    end
  end
  return { task.parallel(fns) }
end

-- A short load check of url: { count, errors, error_rate, error_rate_low (see rate_low),
-- p95_ms, summary }, or { planned
-- = true } under tug plan (which sends nothing), or { error = message }.
function incident.load(url, duration, concurrency)
  local r = health.load({ url = url, duration = duration or "2s", concurrency = concurrency or 8, timeout = "5s" })
  if r.planned then return { planned = true } end
  if r.error then return { error = r.message or r.error } end
  if r.count == 0 then return { count = 0 } end
  return { count = r.count, errors = r.errors, error_rate = r.error_rate, p95_ms = r.p95 and r.p95 * 1000,
    summary = r.error_summary, error_rate_low = incident.rate_low(r.errors, r.count) }
end

-- The API as its users see it: one GET of each path (a failing /health means it is
-- unavailable) and a short load check of /api/orders. Findings are recorded. Returns {
-- unavailable, errors_high (surely over the environment's error rate), critical (surely
-- over 1%, the seed's critical alert), error_rate, error_rate_low, p95_ms, failed (paths) }.
function incident.assess_api(ctx, base, paths, load_duration)
  local limits = incident.thresholds(ctx.env)
  local a = { failed = {} }
  for _, p in ipairs(incident.probe(base, paths)) do
    if p.ok then
      ctx.log.info(string.format("%s answers %d in %.0f ms", p.path, p.status, p.ms or 0))
    else
      incident.finding(ctx, p.path .. ": " .. p.reason)
      a.failed[p.path] = true
      if p.path == "/health" then a.unavailable = true end
    end
  end
  local load = incident.load(base .. "/api/orders", load_duration)
  a.error_rate, a.error_rate_low, a.p95_ms = load.error_rate, load.error_rate_low, load.p95_ms
  if load.error then
    incident.finding(ctx, "the load check of /api/orders could not run: " .. load.error)
    a.unavailable = true
  elseif load.count == 0 then
    incident.finding(ctx, "no request to /api/orders was answered")
    a.unavailable = true
  elseif not load.planned then
    local line = string.format("/api/orders: error rate %s of %d requests, p95 %.0f ms",
      incident.percent(load.error_rate), load.count, load.p95_ms or 0)
    a.errors_high = load.error_rate_low > limits.error_rate
    a.critical = load.error_rate_low > incident.CRITICAL_ERROR_RATE
    if a.errors_high or load.p95_ms > limits.p95_ms then
      incident.finding(ctx, line .. (load.summary and load.summary ~= "" and (": " .. load.summary) or ""))
    else
      ctx.log.info(line)
    end
  end
  return a
end

-- A Deployment as an on-call engineer reads it: replicas (desired, ready, updated,
-- available), whether a rollout is under way or stalled, its revision with the change
-- cause and age, the previous revision's image, and its pods (ready, restarts, why
-- waiting). recent: seconds within which a revision change counts as recent.
function incident.deployment(name, recent)
  local d = k8s.get("deployment", name)
  local st = d.status or {}
  local out = {
    name = name, image = multiship.container_image(d), replicas = d.spec.replicas or 0,
    ready = st.readyReplicas or 0, updated = st.updatedReplicas or 0, available = st.availableReplicas or 0,
  }
  for _, c in ipairs(st.conditions or {}) do
    if c.type == "Progressing" then out.progressing = c.reason end
  end
  out.stalled = out.progressing == "ProgressDeadlineExceeded"
  out.rolling = (d.metadata.generation or 0) > (st.observedGeneration or 0) or out.updated < out.replicas
    or (st.replicas or 0) > out.updated
  local annotations = d.metadata.annotations or {}
  out.revision = tonumber(annotations["deployment.kubernetes.io/revision"])
  local current, previous
  for _, h in ipairs(k8s.rollout_history(name)) do
    if h.revision == out.revision then
      current = h
    elseif out.revision and h.revision < out.revision then
      previous = h
    end
  end
  if current then
    out.change_cause = current.change_cause
    out.changed_seconds_ago = incident.age(current.created)
  end
  if previous then
    out.previous_revision = previous.revision
    local containers = previous.template and previous.template.spec and previous.template.spec.containers
    out.previous_image = containers and containers[1] and containers[1].image
  end
  out.recent_change = previous ~= nil and out.changed_seconds_ago ~= nil and out.changed_seconds_ago <= (recent or 3600)
  out.pods, out.crash_looping, out.pull_errors, out.restarts = {}, 0, 0, 0
  local labels = d.spec.selector and d.spec.selector.matchLabels or {}
  for _, pod in ipairs(k8s.list("pods", { labels = labels }).items) do
    local p = { name = pod.metadata.name, ready = false, restarts = 0 }
    for _, c in ipairs(pod.status and pod.status.conditions or {}) do
      if c.type == "Ready" then p.ready = c.status == "True" end
    end
    for _, cs in ipairs(pod.status and pod.status.containerStatuses or {}) do
      p.restarts = p.restarts + (cs.restartCount or 0)
      local waiting = cs.state and cs.state.waiting
      if waiting and waiting.reason then p.waiting = waiting.reason end
    end
    if p.waiting == "CrashLoopBackOff" then out.crash_looping = out.crash_looping + 1 end
    if p.waiting == "ErrImagePull" or p.waiting == "ImagePullBackOff" then out.pull_errors = out.pull_errors + 1 end
    out.restarts = out.restarts + p.restarts
    out.pods[#out.pods + 1] = p
  end
  return out
end

-- One line about a Deployment for the log and the page.
function incident.describe_deployment(d)
  local parts = { string.format("%s: %d/%d ready, %s", d.name, d.ready, d.replicas, d.image) }
  if d.revision then
    parts[#parts + 1] = string.format("revision %d%s%s", d.revision,
      d.change_cause and (" (" .. d.change_cause .. ")") or "",
      d.changed_seconds_ago and (", " .. time.format_duration(math.floor(d.changed_seconds_ago)) .. " ago") or "")
  end
  if d.stalled then parts[#parts + 1] = "rollout stalled (progress deadline exceeded)"
  elseif d.rolling then parts[#parts + 1] = "rollout in progress" end
  if d.crash_looping > 0 then parts[#parts + 1] = d.crash_looping .. " pods in CrashLoopBackOff" end
  if d.pull_errors > 0 then parts[#parts + 1] = d.pull_errors .. " pods cannot pull their image" end
  if d.restarts > 0 then parts[#parts + 1] = d.restarts .. " restarts" end
  return table.concat(parts, "; ")
end

-- ---- feature flags (the admin API, as in playbooks/feature_flag.lua) ----

local function admin(ctx, method, path, body)
  local token = ctx.env.admin_token
  if not token then error("the " .. ctx.env.name .. " environment has no admin_token for the feature-flag admin API", 0) end
  local r = http.request({ method = method, url = multiship.api_url(ctx.env) .. path, json = body,
    headers = { authorization = "Bearer " .. token }, timeout = "10s", retries = 2 })
  if not r.status and not r.planned then error("feature-flag admin API: " .. r.message, 0) end
  return r
end

-- The flags, newest change first: { feature, enabled, updated_at, age, recent }; nil and a
-- reason when the environment has no admin token or the admin API does not answer.
function incident.flags(ctx, recent)
  if not ctx.env.admin_token then return nil, "no admin_token in the environment" end
  local ok, r = pcall(admin, ctx, "GET", "/admin/features")
  if not ok then return nil, tostring(type(r) == "table" and r.message or r) end
  if r.status ~= 200 then return nil, "GET /admin/features answered " .. r.status end
  local out = {}
  for _, f in ipairs(r:json().features or {}) do
    local age = incident.age(f.updated_at)
    out[#out + 1] = { feature = f.feature, enabled = f.enabled == true, updated_at = f.updated_at, age = age,
      recent = age ~= nil and age <= (recent or 3600) }
  end
  table.sort(out, function(a, b) return (a.age or math.huge) < (b.age or math.huge) end)
  return out
end

-- Switches a flag through the admin API (recorded, not sent, under tug plan).
function incident.set_flag(ctx, feature, enabled)
  admin(ctx, "POST", "/admin/features", { feature = feature, enabled = enabled }):raise()
  ctx.log.info(string.format("feature flag %s switched %s", feature, enabled and "on" or "off"))
end

-- ---- evidence ----

-- What the logs and the cluster say about a Deployment: ERROR lines and 5xx answers in
-- its pods' recent logs, and its pods' and ReplicaSets' Warning events, grouped by reason.
function incident.evidence(deployment, opts)
  opts = opts or {}
  local out = { error_lines = {}, server_errors = 0, events = {} }
  local ok, logs = pcall(k8s.logs, "deployment/" .. deployment, { tail = opts.tail or 200 })
  if ok then
    for _, line in ipairs(logs.lines) do
      if line.text:find("ERROR", 1, true) then
        if #out.error_lines < (opts.max_lines or 10) then
          out.error_lines[#out.error_lines + 1] = line.pod .. ": " .. line.text
        end
      elseif line.text:match("%s5%d%d%s+%d+ms$") then
        out.server_errors = out.server_errors + 1
      end
    end
  else
    out.logs_error = tostring(type(logs) == "table" and logs.message or logs)
  end
  local owned = {}
  for _, h in ipairs(k8s.rollout_history(deployment)) do owned[#owned + 1] = h.replicaset end
  local function ours(name)
    if name == deployment then return true end
    for _, rs in ipairs(owned) do
      if name == rs or name:sub(1, #rs + 1) == rs .. "-" then return true end
    end
    return false
  end
  local by_reason = {}
  for _, e in ipairs(k8s.list("events").items) do
    local involved = e.involvedObject or {}
    if e.type == "Warning" and involved.name and ours(involved.name) then
      local g = by_reason[e.reason]
      if not g then
        g = { reason = e.reason, count = 0, message = e.message, object = involved.kind .. "/" .. involved.name }
        by_reason[e.reason] = g
        out.events[#out.events + 1] = g
      end
      g.count = g.count + (e.count or 1)
    end
  end
  table.sort(out.events, function(a, b) return a.count > b.count end)
  return out
end

-- What changed lately, newest first, as lines: the Deployment's revisions made within
-- `recent` seconds (with their change cause) and the feature flags switched since.
function incident.what_changed(ctx, deployment, recent)
  local changes = {}
  for _, h in ipairs(k8s.rollout_history(deployment)) do
    local age = incident.age(h.created)
    if age and age <= recent then
      changes[#changes + 1] = { age = age, text = string.format("%s revision %d%s", deployment, h.revision,
        h.change_cause and (" (" .. h.change_cause .. ")") or "") }
    end
  end
  for _, f in ipairs(incident.flags(ctx, recent) or {}) do
    if f.recent then
      changes[#changes + 1] = { age = f.age, text = string.format("feature flag %s switched %s", f.feature,
        f.enabled and "on" or "off") }
    end
  end
  table.sort(changes, function(a, b) return a.age < b.age end)
  local lines = {}
  for i, c in ipairs(changes) do
    lines[i] = string.format("%s, %s ago", c.text, time.format_duration(math.floor(c.age)))
  end
  return lines
end

-- Gathers the evidence about a Deployment (incident.evidence) and logs what it found, one
-- line each, under `what` (the Deployment's name by default); returns the plain data for
-- ctx.state.
function incident.report_evidence(ctx, deployment, what)
  what = what or deployment
  local ev = incident.evidence(deployment)
  if ev.logs_error then ctx.log.warn(what .. ": logs could not be read: " .. ev.logs_error) end
  ctx.log.info(string.format("%s: %d ERROR lines, %d 5xx answers in the recent logs, %d kinds of warning events",
    what, #ev.error_lines, ev.server_errors, #ev.events))
  for _, line in ipairs(ev.error_lines) do ctx.log.warn(line) end
  for _, e in ipairs(ev.events) do
    ctx.log.warn(string.format("%s x%d on %s: %s", e.reason, e.count, e.object, e.message or ""))
  end
  return { error_lines = ev.error_lines, server_errors = ev.server_errors, events = ev.events, logs_error = ev.logs_error }
end

-- What changed lately about a Deployment (incident.what_changed, within the param
-- `recent`), logged one line each; returns the lines.
function incident.report_changes(ctx, deployment)
  local lines = incident.what_changed(ctx, deployment, ctx.params.recent)
  for _, line in ipairs(lines) do ctx.log.info("changed lately: " .. line) end
  return lines
end

-- ---- mitigating ----

-- Waits for a Deployment's rollout within the param rollout_timeout (opts: quiet); not
-- under tug plan. Returns whether it waited.
function incident.wait_rollout(ctx, name, opts)
  if ctx.plan then return false end
  k8s.rollout_status(name, { timeout = ctx.params.rollout_timeout, quiet = opts and opts.quiet })
  return true
end

-- Scales a Deployment and waits for its replicas (incident.wait_rollout, quietly).
-- Returns whether it waited.
function incident.scale(ctx, name, replicas)
  k8s.scale(name, replicas)
  return incident.wait_rollout(ctx, name, { quiet = true })
end

-- Rolls a Deployment that runs `image` back to its previous revision and waits for the
-- rollout. One that runs another image already had its rollback sent (a resumed run that
-- died after sending it): another undo would go forward, so none is sent.
function incident.roll_back(ctx, name, image)
  local now = multiship.container_image(k8s.get("deployment", name))
  if now ~= image then
    ctx.log.info(string.format("%s already runs %s: the rollback was sent", name, now))
  else
    local r = k8s.rollout_undo(name)
    if r and r.skipped then error(r.message, 0) end
  end
  incident.wait_rollout(ctx, name)
end

-- Takes back incident.roll_back: the Deployment returns to `revision` unless it runs
-- `image` still. Not waited for: that revision may be the one that crashes. Returns
-- whether it rolled forward.
function incident.roll_forward(name, image, revision)
  if multiship.container_image(k8s.get("deployment", name)) == image then return false end
  k8s.rollout_undo(name, { to_revision = revision })
  return true
end

-- ---- telling people ----

local ROLE_TYPES = { page = { pagerduty = true }, status = { statuspage = true },
  announce = { slack = true, webhook = true } }

local function kind_of(name, c)
  return c.type or name
end

-- The channels that play `role` ("page", "status", "announce"): those named under the
-- environment's `incident: { page, status, announce }`, else every channel of the kind
-- (PagerDuty pages, Statuspage carries the status, Slack and webhooks are the team's chat).
function incident.channels(env, role)
  local all = notify.channels(env)
  local named = type(env.incident) == "table" and env.incident[role] or nil
  local out = {}
  if named ~= nil then
    if type(named) == "string" then named = { named } end
    for _, name in ipairs(named) do
      local c = all[name]
      if not c then
        error(string.format("environment %s: incident.%s names channel '%s', which is not under notify:", env.name,
          role, tostring(name)), 0)
      end
      if not ROLE_TYPES[role][kind_of(name, c)] then
        error(string.format("environment %s: incident.%s names channel '%s', a %s channel", env.name, role, name,
          tostring(kind_of(name, c))), 0)
      end
      out[#out + 1] = name
    end
    return out
  end
  for name, c in pairs(all) do
    if ROLE_TYPES[role][kind_of(name, c)] then out[#out + 1] = name end
  end
  table.sort(out)
  return out
end

-- PagerDuty's dedup key for this runbook in this environment: the engine's own run
-- events use the same one, so a run that succeeds resolves what it paged.
function incident.dedup_key(ctx)
  return string.format("tug/%s/%s", ctx.env.name, ctx.playbook)
end

local function title(ctx, text)
  return string.format("%s %s on %s: %s", (ctx.state.severity or "sev?"):upper(), ctx.playbook, ctx.env.name, text)
end

-- Posts to the team's chat.
function incident.announce(ctx, text, opts)
  opts = opts or {}
  local names = incident.channels(ctx.env, "announce")
  for _, name in ipairs(names) do
    local r = notify.send(name, { title = title(ctx, text), text = opts.body, verdict = opts.verdict or "error",
      run = ctx.run_id, run_id = ctx.run_id, playbook = ctx.playbook, env = ctx.env.name, fields = opts.fields,
      details = opts.fields })
    ctx.state.announced = (ctx.state.announced or 0) + (r.ok and 1 or 0)
  end
  return #names
end

-- Pages the on-call engineers (a PagerDuty trigger at the severity's urgency) and tells the
-- team's chat. Without a PagerDuty channel it says who to call instead. The details
-- always carry the severity and the run id.
function incident.page(ctx, summary, details)
  local sev = ctx.state.severity or "sev2"
  details = details or {}
  details.severity = details.severity or ctx.state.severity
  details.run_id = details.run_id or ctx.run_id
  local names = incident.channels(ctx.env, "page")
  if #names == 0 then
    ctx.log.warn("no PagerDuty channel under notify: in environments/" .. ctx.env.name ..
      ".yaml: page the on-call engineer by hand (PagerDuty schedule)")
  end
  ctx.state.paged = ctx.state.paged or {}
  for _, name in ipairs(names) do
    local r = notify.send(name, { action = "trigger", summary = title(ctx, summary), severity = PAGER_SEVERITY[sev],
      dedup_key = incident.dedup_key(ctx), component = ctx.params.deployment, source = "tug",
      details = details, run_id = ctx.run_id })
    ctx.state.paged[name] = r.ok
    if r.ok then ctx.log.info("paged through " .. name .. " (" .. PAGER_SEVERITY[sev] .. ")") end
  end
  incident.announce(ctx, summary, { fields = details })
end

local function components(ctx, name, status)
  local c = notify.channels(ctx.env)[name]
  if type(c.components) ~= "table" then return nil end
  local out = {}
  for id in pairs(c.components) do out[id] = status end
  return out
end

-- Opens an incident on every status page channel ("investigating"); its id per channel
-- goes to ctx.state.status_page so later updates reach the same incident.
function incident.open_status(ctx, name_text, body)
  ctx.state.status_page = ctx.state.status_page or {}
  local names = incident.channels(ctx.env, "status")
  if #names == 0 then
    ctx.log.warn("no Statuspage channel under notify: in environments/" .. ctx.env.name ..
      ".yaml: update the status page by hand")
  end
  for _, name in ipairs(names) do
    local r = notify.send(name, { name = name_text, status = "investigating", body = body,
      components = components(ctx, name, COMPONENT_STATUS[ctx.state.severity or "sev2"]) })
    if r.ok then
      -- a plan sends nothing and gets no id: later updates are shown against "planned"
      ctx.state.status_page[name] = r.incident_id or (r.planned and "planned") or nil
      ctx.log.info("status page incident opened on " .. name .. (r.incident_id and (": " .. r.incident_id) or ""))
    end
  end
end

-- Updates the open status page incidents ("identified", "monitoring", "resolved").
function incident.update_status(ctx, status, body)
  for name, id in pairs(ctx.state.status_page or {}) do
    local r = notify.send(name, { incident_id = id, status = status, body = body,
      components = status == "resolved" and components(ctx, name, "operational") or nil })
    if r.ok then ctx.log.info("status page incident on " .. name .. ": " .. status) end
  end
end

-- Closes the incident: status page resolved, the page resolved, the chat told.
function incident.resolve(ctx, body)
  incident.update_status(ctx, "resolved", body)
  for name, paged in pairs(ctx.state.paged or {}) do
    if paged then
      notify.send(name, { action = "resolve", dedup_key = incident.dedup_key(ctx) })
      ctx.log.info("page resolved through " .. name)
    end
  end
  incident.announce(ctx, "resolved", { body = body, verdict = "succeeded" })
end

-- Asks whether to open a status page incident: yes for sev1 and sev2 by default.
function incident.want_status_page(ctx)
  local default = ctx.state.severity == "sev3" and "no" or "yes"
  local answer = incident.decide(ctx, "status_page", "Open a status page incident?",
    { choices = { "yes", "no" }, default = default })
  return answer == "yes"
end

-- The status page step: asks whether to open an incident (incident.want_status_page)
-- and opens it (incident.open_status).
function incident.post_status(ctx, name_text, body)
  if incident.want_status_page(ctx) then incident.open_status(ctx, name_text, body) end
end

-- Whether a status page incident is open.
function incident.status_open(ctx)
  return next(ctx.state.status_page or {}) ~= nil
end

-- Tells the open status page incidents that a fix is in ("monitoring").
function incident.fix_in(ctx, body)
  incident.update_status(ctx, "monitoring", body or "A fix has been put in place and we are monitoring the results.")
end

-- ---- is it back? ----

-- The API at base is back: every path answers 2xx within opts.within (the param
-- verify_within by default), then opts.count (the param gate_count) short load checks of
-- /api/orders (opts.interval apart) each show an error rate and a P95 under the
-- environment's thresholds. The error rate is judged by the low end of its 99.9%
-- interval (multiship.error_rate_low): a false alarm here would undo a mitigation that
-- worked. The checks go to the API directly, not to Prometheus, whose rate window would
-- still hold the errors from before the mitigation. Raises with the reason when not.
function incident.verify(ctx, base, opts)
  opts = opts or {}
  local checks = {}
  for i, path in ipairs(opts.paths or { "/health" }) do checks[i] = base .. path end
  checks.within, checks.interval = opts.within or ctx.params.verify_within or "2m", "1s"
  local r = health.check(checks)
  if not r.ok then error("not restored: " .. r.reason, 0) end
  local _, sentence = health.gate(r)
  local limits = incident.thresholds(ctx.env)
  local count = opts.count or ctx.params.gate_count or 3
  local last
  for i = 1, count do
    local load = health.load({ url = base .. "/api/orders", duration = opts.duration or "1s", concurrency = 16,
      timeout = "5s" })
    if load.error then error("not restored: the load check could not run: " .. (load.message or load.error), 0) end
    if load.count == 0 then error("not restored: no request to /api/orders was answered", 0) end
    local low = multiship.error_rate_low(load.errors, load.count)
    last = string.format("error rate %s of %d requests, p95 %.0f ms", incident.percent(load.error_rate), load.count,
      (load.p95 or 0) * 1000)
    ctx.log.info(string.format("%s %d/%d: %s", opts.name or "verify", i, count, last))
    if low > limits.error_rate then
      error(string.format("not restored: %s%s, surely over the %s limit", last,
        load.error_summary and (" (" .. load.error_summary .. ")") or "", incident.percent(limits.error_rate)), 0)
    end
    if load.p95 * 1000 > limits.p95_ms then
      error(string.format("not restored: %s, over the %d ms limit", last, limits.p95_ms), 0)
    end
    if i < count then task.sleep(opts.interval or "2s") end
  end
  ctx.log.info((opts.name and (opts.name .. ": passed: ") or "restored: ") .. sentence .. "; " .. last)
end

return incident
