-- notify.lua: telling people. Slack incoming webhooks, PagerDuty Events API v2, Atlassian
-- Statuspage incidents and generic JSON webhooks, over the http client. Every send is
-- retried with backoff (connection failures, timeouts, 429 and 5xx), and a send that still
-- fails is logged and returned as { ok = false, ... }: a notification never fails the step
-- unless the playbook says `required = true`. In plan mode nothing is sent; each send is
-- recorded (secrets redacted) and returns { ok = true, planned = true }.
--
-- An environment can name channels under `notify:`; notify.send(name, message) posts to
-- one, and notify.run_event lets the engine tell every channel that asked about a run
-- starting, succeeding, rolling back or failing to roll back, with no playbook code.

local http = require("http")
local json = require("json")
local log = require("log")
local task = require("task")
local time = require("time")

local notify = {}

local DEFAULTS = { retries = 3, backoff = 1, timeout = 10 }
local PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
local STATUSPAGE_URL = "https://api.statuspage.io"
local RETRY_ON = { "connect", "timeout", "dns", 429, 500, 502, 503, 504 }
local SEVERITIES = { critical = true, error = true, warning = true, info = true }
local ACTIONS = { trigger = true, acknowledge = true, resolve = true }
local EVENTS = { started = true, succeeded = true, rolled_back = true, rollback_failed = true, failed = true }
local INCIDENT_STATUSES = { investigating = true, identified = true, monitoring = true, resolved = true }

-- ---- checking options (mistakes raise; they are bugs in the playbook) ----

local function check(caller, opts, allowed)
  if type(opts) ~= "table" then error(("%s: takes a table (got %s)"):format(caller, type(opts)), 3) end
  for key in pairs(opts) do
    if not allowed[key] then error(("%s: unknown option '%s'"):format(caller, tostring(key)), 3) end
  end
end

local function need_string(caller, opts, key, what)
  local v = opts[key]
  if type(v) ~= "string" or v == "" then
    error(("%s: %s is required (%s)"):format(caller, key, what), 3)
  end
  return v
end

local function need_url(caller, value, key)
  if type(value) ~= "string" or not value:match("^https?://") then
    error(("%s: %s must be an http:// or https:// URL (got %s)"):format(caller, key, tostring(value)), 3)
  end
  return value
end

local COMMON = { retries = true, backoff = true, timeout = true, required = true, channel_name = true }

local function with_common(t)
  for k in pairs(COMMON) do t[k] = true end
  return t
end

-- ---- sending ----

-- One POST (or PATCH), retried; returns the result table every sender returns.
local function deliver(what, req, opts, planned_summary)
  local result = { channel = opts.channel_name or what }
  if tug.plan.active() then
    tug.plan.record("notify", planned_summary, req.body)
    result.ok, result.planned = true, true
    return result
  end
  local r = http.request({
    method = req.method or "POST", url = req.url, headers = req.headers, body = req.body,
    timeout = opts.timeout or DEFAULTS.timeout, retries = opts.retries or DEFAULTS.retries,
    backoff = opts.backoff or DEFAULTS.backoff, retry_on = RETRY_ON,
  })
  result.status, result.attempts, result.body = r.status, r.attempts, r.body
  if r.error then
    result.ok, result.error = false, r.error
    result.message = string.format("%s: %s", what, r.message or r.error)
  elseif r.status < 200 or r.status > 299 then
    result.ok, result.error = false, "status"
    local body = tostring(r.body or ""):gsub("%s+", " ")
    if #body > 200 then body = body:sub(1, 200) .. "..." end
    result.message = string.format("%s: HTTP %d%s", what, r.status, body ~= "" and (": " .. body) or "")
  else
    result.ok = true
  end
  if not result.ok then
    result.message = result.message .. string.format(" (after %d attempt%s)", r.attempts or 1,
      (r.attempts or 1) == 1 and "" or "s")
    if opts.required then
      error(tug.error.new("notify", result.message, { channel = result.channel, status = result.status,
        error = result.error }), 0)
    end
    log.warn("notify: " .. result.message)
  end
  return result
end

-- Slack mrkdwn: &, < and > are markup.
local function slack_escape(s)
  return (tostring(s):gsub("&", "&amp;"):gsub("<", "&lt;"):gsub(">", "&gt;"))
end

local VERDICT_MARK = {
  success = ":white_check_mark:", succeeded = ":white_check_mark:", failure = ":x:", failed = ":x:",
  ["rolled-back"] = ":leftwards_arrow_with_hook:", rolled_back = ":leftwards_arrow_with_hook:",
  ["rollback-failed"] = ":rotating_light:", rollback_failed = ":rotating_light:",
  inconclusive = ":grey_question:", error = ":warning:", started = ":arrow_forward:",
}

-- The webhook URL carries its token: keep the token out of every output.
local function slack_secret(url)
  local path = url:match("^https?://[^/]+/services/(.+)$")
  if path then
    log.secret(path)
    local last = path:match("([^/]+)$")
    if last and #last >= 8 then log.secret(last) end
  end
end

-- notify.slack{ webhook, text, title, run, step, verdict, link, reason, channel, username,
--   icon_emoji, fields, retries, backoff, timeout, required } -> result
local SLACK = with_common({
  webhook = true, text = true, title = true, run = true, step = true, verdict = true, link = true,
  reason = true, channel = true, username = true, icon_emoji = true, fields = true, playbook = true, env = true,
})
function notify.slack(opts)
  check("notify.slack", opts, SLACK)
  local url = need_url("notify.slack", opts.webhook, "webhook")
  slack_secret(url)
  if opts.text == nil and opts.title == nil and opts.verdict == nil then
    error("notify.slack: give text, a title or a verdict", 2)
  end
  local mark = opts.verdict and VERDICT_MARK[opts.verdict] or nil
  local headline = opts.title or opts.text
  if headline == nil then
    headline = string.format("%s%s%s", opts.playbook or "run", opts.env and (" on " .. opts.env) or "",
      ": " .. opts.verdict)
  end
  local fallback = (mark and (mark .. " ") or "") .. tostring(headline)
  local main = "*" .. slack_escape(headline) .. "*"
  if opts.title and opts.text then main = main .. "\n" .. slack_escape(opts.text) end
  if opts.reason then main = main .. "\n" .. slack_escape(opts.reason) end
  local context = {}
  if opts.run then context[#context + 1] = "run `" .. slack_escape(opts.run) .. "`" end
  if opts.step then context[#context + 1] = "step *" .. slack_escape(opts.step) .. "*" end
  if opts.verdict then context[#context + 1] = "verdict *" .. slack_escape(opts.verdict) .. "*" end
  if opts.link then context[#context + 1] = "<" .. opts.link .. "|details>" end
  local blocks = { { type = "section", text = { type = "mrkdwn", text = (mark and (mark .. " ") or "") .. main } } }
  if opts.fields then
    local fields = {}
    local keys = {}
    for k in pairs(opts.fields) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do
      fields[#fields + 1] = { type = "mrkdwn", text = "*" .. slack_escape(k) .. "*\n" .. slack_escape(opts.fields[k]) }
    end
    if #fields > 0 then blocks[#blocks + 1] = { type = "section", fields = json.array(fields) } end
  end
  if #context > 0 then
    blocks[#blocks + 1] = { type = "context",
      elements = json.array({ { type = "mrkdwn", text = table.concat(context, " · ") } }) }
  end
  local payload = { text = fallback, blocks = json.array(blocks) }
  if opts.channel then payload.channel = opts.channel end
  if opts.username then payload.username = opts.username end
  if opts.icon_emoji then payload.icon_emoji = opts.icon_emoji end
  return deliver("Slack webhook", {
    url = url, headers = { ["Content-Type"] = "application/json" }, body = json.encode(payload),
  }, opts, "post to Slack: " .. fallback)
end

-- notify.pagerduty{ routing_key, action = "trigger"|"acknowledge"|"resolve", dedup_key,
--   summary, source, severity, component, group, class, details, links, images, client,
--   client_url, timestamp, url, retries, backoff, timeout, required } -> result (+ dedup_key)
local PAGERDUTY = with_common({
  routing_key = true, action = true, dedup_key = true, summary = true, source = true, severity = true,
  component = true, group = true, class = true, details = true, links = true, images = true,
  client = true, client_url = true, timestamp = true, url = true,
})
function notify.pagerduty(opts)
  check("notify.pagerduty", opts, PAGERDUTY)
  local key = need_string("notify.pagerduty", opts, "routing_key", "the integration's routing key")
  log.secret(key)
  local action = opts.action or "trigger"
  if not ACTIONS[action] then
    error(("notify.pagerduty: action must be trigger, acknowledge or resolve (got %s)"):format(tostring(action)), 2)
  end
  if opts.dedup_key ~= nil and (type(opts.dedup_key) ~= "string" or #opts.dedup_key > 255) then
    error("notify.pagerduty: dedup_key must be a string of at most 255 characters", 2)
  end
  local event = { routing_key = key, event_action = action, dedup_key = opts.dedup_key }
  if action == "trigger" then
    local summary = need_string("notify.pagerduty", opts, "summary", "what is wrong, in one line")
    if #summary > 1024 then summary = summary:sub(1, 1021) .. "..." end
    local severity = opts.severity or "critical"
    if not SEVERITIES[severity] then
      error(("notify.pagerduty: severity must be critical, error, warning or info (got %s)"):format(tostring(severity)), 2)
    end
    event.payload = {
      summary = summary, source = opts.source or "tug", severity = severity,
      timestamp = opts.timestamp or time.format(nil, "%Y-%m-%dT%H:%M:%SZ"),
      component = opts.component, group = opts.group, class = opts.class, custom_details = opts.details,
    }
    if opts.links then event.links = json.array(opts.links) end
    if opts.images then event.images = json.array(opts.images) end
    event.client, event.client_url = opts.client or "tug", opts.client_url
  elseif opts.dedup_key == nil then
    error("notify.pagerduty: " .. action .. " needs the dedup_key of the incident", 2)
  end
  local url = opts.url and need_url("notify.pagerduty", opts.url, "url") or PAGERDUTY_URL
  local result = deliver("PagerDuty " .. action, {
    url = url, headers = { ["Content-Type"] = "application/json" }, body = json.encode(event),
  }, opts, string.format("%s a PagerDuty incident%s%s", action,
    event.payload and (": " .. event.payload.summary) or "", opts.dedup_key and (" (dedup_key " .. opts.dedup_key .. ")") or ""))
  result.dedup_key = opts.dedup_key
  if result.ok and result.body and result.body ~= "" then
    local ok, doc = pcall(json.decode, result.body)
    if ok and type(doc) == "table" and type(doc.dedup_key) == "string" then result.dedup_key = doc.dedup_key end
  end
  return result
end

-- notify.statuspage{ api_key, page_id, incident_id, name, status, body, impact, components,
--   deliver_notifications, url, retries, backoff, timeout, required } -> result (+ incident_id).
-- Without incident_id it opens an incident; with one it updates it (status = "resolved"
-- closes it).
local STATUSPAGE = with_common({
  api_key = true, page_id = true, incident_id = true, name = true, status = true, body = true,
  impact = true, components = true, deliver_notifications = true, url = true,
})
function notify.statuspage(opts)
  check("notify.statuspage", opts, STATUSPAGE)
  local key = need_string("notify.statuspage", opts, "api_key", "a Statuspage API key")
  log.secret(key)
  local page = need_string("notify.statuspage", opts, "page_id", "the page's id")
  if not page:match("^[%w]+$") then error("notify.statuspage: page_id must be letters and digits", 2) end
  local status = opts.status or "investigating"
  if not INCIDENT_STATUSES[status] then
    error(("notify.statuspage: status must be investigating, identified, monitoring or resolved (got %s)"):format(
      tostring(status)), 2)
  end
  local incident = { status = status, body = opts.body, impact_override = opts.impact,
    deliver_notifications = opts.deliver_notifications }
  if opts.components then
    incident.components = opts.components
    local ids = {}
    for id in pairs(opts.components) do ids[#ids + 1] = id end
    table.sort(ids)
    incident.component_ids = json.array(ids)
  end
  local base = (opts.url and need_url("notify.statuspage", opts.url, "url") or STATUSPAGE_URL):gsub("/+$", "")
  local method, url, summary
  if opts.incident_id then
    if type(opts.incident_id) ~= "string" or not opts.incident_id:match("^[%w]+$") then
      error("notify.statuspage: incident_id must be letters and digits", 2)
    end
    method = "PATCH"
    url = string.format("%s/v1/pages/%s/incidents/%s", base, page, opts.incident_id)
    incident.name = opts.name
    summary = string.format("update Statuspage incident %s: %s", opts.incident_id, status)
  else
    incident.name = need_string("notify.statuspage", opts, "name", "the incident's title")
    method = "POST"
    url = string.format("%s/v1/pages/%s/incidents", base, page)
    summary = string.format("open a Statuspage incident: %s (%s)", incident.name, status)
  end
  local result = deliver("Statuspage", {
    method = method, url = url, body = json.encode({ incident = incident }),
    headers = { ["Content-Type"] = "application/json", ["Authorization"] = "OAuth " .. key },
  }, opts, summary)
  result.incident_id = opts.incident_id
  if result.ok and result.body and result.body ~= "" then
    local ok, doc = pcall(json.decode, result.body)
    if ok and type(doc) == "table" and type(doc.id) == "string" then result.incident_id = doc.id end
  end
  return result
end

-- notify.webhook{ url, json | body, method = "POST", headers, token, retries, backoff,
--   timeout, required } -> result
local WEBHOOK = with_common({ url = true, json = true, body = true, method = true, headers = true, token = true })
function notify.webhook(opts)
  check("notify.webhook", opts, WEBHOOK)
  local url = need_url("notify.webhook", opts.url, "url")
  if opts.json ~= nil and opts.body ~= nil then error("notify.webhook: give json or body, not both", 2) end
  local headers = {}
  for k, v in pairs(opts.headers or {}) do headers[k] = v end
  local body = opts.body
  if opts.json ~= nil then
    body = json.encode(opts.json)
    headers["Content-Type"] = headers["Content-Type"] or "application/json"
  end
  if opts.token then
    log.secret(opts.token)
    headers["Authorization"] = "Bearer " .. opts.token
  end
  local method = (opts.method or "POST"):upper()
  local shown = url:gsub("^(https?://)[^/@]*@", "%1") -- no user:password in messages
  return deliver("webhook " .. method .. " " .. shown, { method = method, url = url, headers = headers, body = body },
    opts, string.format("%s %s", method, shown))
end

-- ---- named channels ----

local configured = {}

-- notify.configure{ name = { type = "slack", webhook = ..., events = { ... } }, ... }; nil
-- forgets them. Channels named in the environment's `notify:` section need no call.
function notify.configure(channels)
  if channels == nil then
    configured = {}
    return
  end
  if type(channels) ~= "table" then error("notify.configure: channels must be a table of name = settings", 2) end
  for name, c in pairs(channels) do
    if type(name) ~= "string" or type(c) ~= "table" then
      error("notify.configure: each entry must be name = { type = ..., ... }", 2)
    end
    configured[name] = c
  end
end

local function environment()
  local engine = package.loaded["tug.engine"]
  local run = type(engine) == "table" and engine.current or nil
  return type(run) == "table" and run.env or nil, run
end

-- All channels: the configured ones over the environment's.
function notify.channels(env)
  local all = {}
  env = env or environment()
  if type(env) == "table" and type(env.notify) == "table" then
    for name, c in pairs(env.notify) do all[name] = c end
  end
  for name, c in pairs(configured) do all[name] = c end
  return all
end

local CHANNEL_KEYS = {
  slack = { type = true, webhook = true, link = true, channel = true, username = true, icon_emoji = true, events = true,
    retries = true, backoff = true, timeout = true },
  pagerduty = { type = true, routing_key = true, severity = true, source = true, component = true, group = true,
    class = true, url = true, events = true, retries = true, backoff = true, timeout = true, dedup_key = true },
  webhook = { type = true, url = true, headers = true, token = true, method = true, events = true, retries = true,
    backoff = true, timeout = true },
  statuspage = { type = true, api_key = true, page_id = true, url = true, components = true, events = true,
    retries = true, backoff = true, timeout = true },
}

local function channel_of(name, env)
  local c = type(name) == "table" and name or notify.channels(env)[name]
  if c == nil then
    local names = {}
    for k in pairs(notify.channels(env)) do names[#names + 1] = k end
    table.sort(names)
    error(tug.error.new("notify", string.format("no notification channel named '%s' (channels: %s); name it under "
      .. "`notify:` in environments/ENV.yaml or call notify.configure", tostring(name),
      #names > 0 and table.concat(names, ", ") or "none")), 0)
  end
  local kind = c.type or (type(name) == "string" and CHANNEL_KEYS[name] and name) or nil
  if not CHANNEL_KEYS[kind] then
    error(tug.error.new("notify", string.format("channel '%s': type must be slack, pagerduty, webhook or statuspage (got %s)",
      tostring(type(name) == "string" and name or c.name), tostring(kind))), 0)
  end
  for key in pairs(c) do
    if not CHANNEL_KEYS[kind][key] and key ~= "name" then
      error(tug.error.new("notify", string.format("channel '%s': unknown setting '%s' for a %s channel",
        tostring(type(name) == "string" and name or c.name), tostring(key), kind)), 0)
    end
  end
  return c, kind
end

local function copy_common(c, name, msg)
  return { retries = msg.retries or c.retries, backoff = msg.backoff or c.backoff, timeout = msg.timeout or c.timeout,
    required = msg.required, channel_name = type(name) == "string" and name or nil }
end

-- "https://ci/runs/{run_id}" with the run's values.
local function expand(link, msg)
  if type(link) ~= "string" then return nil end
  return (link:gsub("{([%w_]+)}", function(k) return msg[k] ~= nil and tostring(msg[k]) or "{" .. k .. "}" end))
end

-- notify.send(channel, message [, env]) -> result. message: { text, title, verdict, run,
-- step, reason, link, playbook, env, severity, action, dedup_key, details, status, body,
-- incident_id, json, required, retries, backoff, timeout }.
function notify.send(name, msg, env)
  if type(msg) == "string" then msg = { text = msg } end
  if type(msg) ~= "table" then error("notify.send: message must be a string or a table", 2) end
  local c, kind = channel_of(name, env)
  local o = copy_common(c, name, msg)
  local link = expand(msg.link or c.link, msg)
  if kind == "slack" then
    o.webhook, o.channel, o.username, o.icon_emoji = c.webhook, c.channel, c.username, c.icon_emoji
    o.text, o.title, o.verdict, o.run, o.step, o.reason, o.link = msg.text, msg.title, msg.verdict, msg.run,
      msg.step, msg.reason, link
    o.playbook, o.env, o.fields = msg.playbook, msg.env, msg.fields
    return notify.slack(o)
  elseif kind == "pagerduty" then
    o.routing_key, o.url, o.source = c.routing_key, c.url, msg.source or c.source
    o.action = msg.action or "trigger"
    o.dedup_key = msg.dedup_key or c.dedup_key
    o.severity = msg.severity or c.severity
    o.component, o.group, o.class = msg.component or c.component, msg.group or c.group, msg.class or c.class
    if o.action == "trigger" then o.summary = msg.summary or msg.title or msg.text end
    o.details = msg.details
    if link then o.links = { { href = link, text = "details" } } end
    return notify.pagerduty(o)
  elseif kind == "webhook" then
    o.url, o.headers, o.token, o.method = c.url, c.headers, c.token, c.method
    local payload = msg.json
    if payload == nil then
      payload = { text = msg.text, title = msg.title, verdict = msg.verdict, run = msg.run, step = msg.step,
        reason = msg.reason, link = link, playbook = msg.playbook, env = msg.env, event = msg.event,
        details = msg.details, time = time.format() }
    end
    o.json = payload
    return notify.webhook(o)
  else
    o.api_key, o.page_id, o.url = c.api_key, c.page_id, c.url
    o.incident_id, o.name, o.status, o.body = msg.incident_id, msg.name or msg.title or msg.text, msg.status, msg.body
    o.impact, o.components = msg.impact, msg.components or c.components
    return notify.statuspage(o)
  end
end

-- ---- engine events ----

local DEFAULT_EVENTS = {
  slack = { "succeeded", "rolled_back", "rollback_failed", "failed" },
  webhook = { "started", "succeeded", "rolled_back", "rollback_failed", "failed" },
  pagerduty = { "rollback_failed", "succeeded" },
  statuspage = {},
}

local STATUS_EVENT = {
  succeeded = "succeeded", ["rolled-back"] = "rolled_back", ["rollback-failed"] = "rollback_failed",
  failed = "failed", aborted = "failed",
}

-- Which notification an engine event is: "started", "succeeded", ... or nil.
function notify.event_name(event)
  if event.plan then return nil end
  if event.event == "run_start" or event.event == "run_resume" then return "started" end
  if event.event == "run_end" then return STATUS_EVENT[event.status] end
  return nil
end

local function wants(c, kind, name)
  local list = c.events or DEFAULT_EVENTS[kind]
  for _, e in ipairs(list) do
    if e == name then return true end
    if not EVENTS[e] then
      log.warn(string.format("notify: unknown event '%s' in a channel's events (known: started, succeeded, "
        .. "rolled_back, rollback_failed, failed)", tostring(e)))
    end
  end
  return false
end

local HEADLINES = {
  started = "%s on %s started", succeeded = "%s on %s succeeded", rolled_back = "%s on %s failed and was rolled back",
  rollback_failed = "%s on %s failed and its rollback failed: a human must look", failed = "%s on %s failed",
}
local VERDICTS = { started = "started", succeeded = "succeeded", rolled_back = "rolled-back",
  rollback_failed = "rollback-failed", failed = "failed" }

local pending = {}

-- The message for one channel about one run event.
local function run_message(kind, name, event, run)
  local playbook = event.playbook or (run and run.playbook) or "run"
  local env_name = event.env or (run and run.env and run.env.name) or "?"
  local headline = string.format(HEADLINES[name], playbook, env_name)
  local msg = { title = headline, verdict = VERDICTS[name], run = event.run_id, reason = event.reason,
    playbook = playbook, env = env_name, run_id = event.run_id, event = name, step = event.step }
  if kind == "pagerduty" then
    msg.dedup_key = string.format("tug/%s/%s", env_name, playbook)
    if name == "succeeded" then
      msg.action = "resolve"
    else
      msg.action = "trigger"
      msg.summary = headline .. (event.reason and (": " .. event.reason) or "")
      msg.severity = name == "rollback_failed" and "critical" or "error"
      msg.details = { run_id = event.run_id, playbook = playbook, env = env_name, status = event.status,
        reason = event.reason }
    end
  elseif kind == "statuspage" then
    msg.status = name == "succeeded" and "resolved" or "investigating"
    msg.body = event.reason
  end
  return msg
end

-- notify.run_event(env, event [, run]): the engine calls this with each event it emits;
-- for run start and end it sends to every channel that asked for that event, each in its
-- own task (the run does not wait; notify.flush does). Returns how many sends it started.
function notify.run_event(env, event, run)
  if type(event) ~= "table" then return 0 end
  local name = notify.event_name(event)
  if not name or tug.plan.active() then return 0 end
  local started = 0
  for channel in pairs(notify.channels(env)) do
    local ok, c, kind = pcall(channel_of, channel, env)
    if not ok then
      log.warn("notify: " .. tostring(type(c) == "table" and c.message or c))
    elseif wants(c, kind, name) then
      local msg = run_message(kind, name, event, run)
      pending[#pending + 1] = task.spawn(function()
        local sent, result = pcall(notify.send, channel, msg, env)
        if not sent then
          if type(result) == "table" and result.kind == "cancelled" then error(result, 0) end
          log.warn("notify: " .. channel .. ": " .. tostring(type(result) == "table" and result.message or result))
          return { ok = false, channel = channel, message = tostring(result) }
        end
        return result
      end)
      started = started + 1
    end
  end
  return started
end

-- Waits (up to `timeout`, default 30 s) for the sends notify.run_event started; returns
-- their results. Sends still going after the timeout are cancelled.
function notify.flush(timeout)
  local handles = pending
  pending = {}
  local results = {}
  local deadline = time.monotonic() + (timeout and (type(timeout) == "number" and timeout
    or time.parse_duration(timeout)) or 30)
  for i, h in ipairs(handles) do
    local left = deadline - time.monotonic()
    local ok, r = pcall(task.timeout, math.max(left, 0), h.wait, h)
    if not ok then
      h:cancel()
      pcall(h.wait, h)
      r = { ok = false, message = tostring(type(r) == "table" and r.message or r) }
    end
    results[i] = r
  end
  return results
end

return notify
