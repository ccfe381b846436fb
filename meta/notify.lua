---@meta notify
-- notify: Slack, PagerDuty, Statuspage and webhooks (modules/notify/README.md).
-- A send that fails is logged and returned as { ok = false }: it never fails the step
-- unless `required = true`. Mistakes (a missing routing key, an unknown option) raise.

---@alias tug.notify.Verdict "success"|"failure"|"rolled_back"|"rollback_failed"|"inconclusive"|string

---@class tug.notify.Common
---@field retries? integer default 3
---@field backoff? tug.Duration default 1 s, doubling, with jitter
---@field timeout? tug.Duration per attempt (default 10 s)
---@field required? boolean raise `{ kind = "notify", message, status }` when the send fails
---@field channel_name? string what the result's `channel` says (notify.send gives the channel's name)

---@class tug.notify.Slack: tug.notify.Common
---@field webhook string required: the incoming webhook URL
---@field text? string
---@field title? string
---@field verdict? tug.notify.Verdict
---@field run? string
---@field step? string
---@field reason? string
---@field link? string
---@field fields? table<string, any> shown as name/value pairs
---@field playbook? string
---@field env? string
---@field channel? string legacy override
---@field username? string legacy override
---@field icon_emoji? string legacy override

---@class tug.notify.PagerDuty: tug.notify.Common
---@field routing_key string required
---@field action? "trigger"|"acknowledge"|"resolve" default "trigger"
---@field dedup_key? string needed to acknowledge or resolve
---@field summary? string required for a trigger
---@field severity? "critical"|"error"|"warning"|"info" default "critical"
---@field source? string default "tug"
---@field component? string
---@field group? string
---@field class? string
---@field details? table custom_details
---@field links? table[]
---@field images? table[]
---@field client? string
---@field client_url? string
---@field timestamp? string
---@field url? string default https://events.pagerduty.com/v2/enqueue

---@class tug.notify.Statuspage: tug.notify.Common
---@field api_key string required
---@field page_id string required
---@field incident_id? string update this incident (else open one)
---@field name? string required to open an incident
---@field status? "investigating"|"identified"|"monitoring"|"resolved"
---@field body? string
---@field impact? string
---@field components? table<string, string> `{ [id] = "degraded_performance" }`
---@field deliver_notifications? boolean
---@field url? string default https://api.statuspage.io

---@class tug.notify.Webhook: tug.notify.Common
---@field url string
---@field json? any sent encoded
---@field body? string
---@field method? string default "POST"
---@field headers? table<string, string>
---@field token? string sent as a bearer token

---@class tug.notify.Result
---@field ok boolean
---@field status integer?
---@field attempts integer?
---@field error string?
---@field message string?
---@field channel string?
---@field planned boolean? under `tug plan`: recorded, not sent
---@field dedup_key string? PagerDuty
---@field incident_id string? Statuspage

---A message for a named channel, mapped onto the channel's kind.
---@class tug.notify.Message
---@field text? string
---@field title? string
---@field verdict? tug.notify.Verdict
---@field run? string
---@field step? string
---@field reason? string
---@field link? string
---@field fields? table<string, any>
---@field severity? string
---@field action? string
---@field dedup_key? string
---@field details? table
---@field status? string
---@field body? string
---@field incident_id? string
---@field json? any
---@field required? boolean

---@class tug.notify
notify = {}

---@param opts tug.notify.Slack
---@return tug.notify.Result
function notify.slack(opts) end

---@param opts tug.notify.PagerDuty
---@return tug.notify.Result
function notify.pagerduty(opts) end

---@param opts tug.notify.Statuspage
---@return tug.notify.Result
function notify.statuspage(opts) end

---@param opts tug.notify.Webhook
---@return tug.notify.Result
function notify.webhook(opts) end

---Names channels for this process (`{ name = { type = "slack", ... } }`); nil forgets them.
---@param channels table<string, table>|nil
function notify.configure(channels) end

---Every channel: the configured ones over those of `env` (default: the run's environment).
---@param env? tug.Environment
---@return table<string, table>
function notify.channels(env) end

---Posts to a named channel.
---@param channel string
---@param message string|tug.notify.Message
---@param env? tug.Environment
---@return tug.notify.Result
function notify.send(channel, message, env) end

---Which notification an engine event is: "started", "succeeded", "rolled_back",
---"rollback_failed", "failed", or nil.
---@param event table an engine event (run_start, run_resume, run_end)
---@return string?
function notify.event_name(event) end

---The engine's hook: tells every channel of `env` that asked about a run_start or run_end event.
---@param env tug.Environment
---@param event table
---@param run? table the run in progress ({ env, run_id, playbook })
---@return integer started how many sends it started
function notify.run_event(env, event, run) end

---Waits (up to `timeout`, default 30 s) for the sends run events started; returns their results.
---@param timeout? tug.Duration
---@return tug.notify.Result[]
function notify.flush(timeout) end

return notify
