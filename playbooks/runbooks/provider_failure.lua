-- provider-failure: the on-call runbook for a failing shipping provider (the seed's
-- critical alert "provider API failures", against its provider thresholds: EasyPost
-- success rate over 99.5%, Shippo response time under 1000 ms, Veeqo error rate under
-- 0.5%, set in the environment's thresholds.providers). Sample /api/providers/health,
-- name the provider that fails, page and post status, switch it off with its feature flag
-- (provider-NAME-enabled, through the admin API) so that orders go to the others, watch
-- the error rate, and switch it back on once it has recovered (asked). It asks before
-- every step.
local multiship = require("multiship")
local incident = require("incident")

local function flag_of(provider)
  return "provider-" .. provider .. "-enabled"
end

local function nearest_rank(values, p)
  if #values == 0 then return nil end
  table.sort(values)
  return values[math.max(1, math.ceil(#values * p))]
end

-- Samples /api/providers/health n times: per provider { samples, down, enabled, status,
-- success_rate, error_rate, p95_ms }. A sample the API does not answer counts against
-- no provider; it is counted in `unanswered`.
local function sample(url, n, interval)
  local per, unanswered = {}, 0
  for i = 1, n do
    local r = http.get(url .. "/api/providers/health", { timeout = "10s" })
    local ok, doc = false, nil
    if r.status then ok, doc = pcall(r.json, r) end
    if ok and type(doc) == "table" and type(doc.providers) == "table" then
      for name, p in pairs(doc.providers) do
        local s = per[name] or { samples = 0, down = 0, latencies = {} }
        per[name] = s
        s.samples = s.samples + 1
        s.status, s.enabled = p.status, p.enabled ~= false
        if p.status == "down" then
          s.down = s.down + 1
        elseif type(p.latency_ms) == "number" then
          s.latencies[#s.latencies + 1] = p.latency_ms
        end
      end
    else
      unanswered = unanswered + 1
    end
    if i < n then task.sleep(interval) end
  end
  for _, s in pairs(per) do
    s.error_rate = s.down / s.samples
    s.success_rate = 1 - s.error_rate
    s.p95_ms = nearest_rank(s.latencies, 0.95)
    s.latencies = nil
  end
  return per, unanswered
end

-- Why a provider fails its thresholds (a list of reasons; empty when it passes).
local function judge(name, s, limits)
  local why = {}
  if s.down > 0 then why[#why + 1] = string.format("down in %d of %d checks", s.down, s.samples) end
  if limits.success_rate and s.success_rate < limits.success_rate then
    why[#why + 1] = string.format("success rate %s under %s", incident.percent(s.success_rate),
      incident.percent(limits.success_rate))
  end
  if limits.error_rate and s.error_rate > limits.error_rate then
    why[#why + 1] = string.format("error rate %s over %s", incident.percent(s.error_rate),
      incident.percent(limits.error_rate))
  end
  if limits.p95_ms and s.p95_ms and s.p95_ms > limits.p95_ms then
    why[#why + 1] = string.format("p95 %.0f ms over %d ms", s.p95_ms, limits.p95_ms)
  end
  return why
end

local function sorted(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  return keys
end

return playbook {
  description = "when a shipping provider fails: switch it off so orders go to the others, back on once it recovers",
  step_by_step = true,
  params = incident.params({ "load_duration" }, {
    provider = { type = "string", pattern = "^[%w%-_]+$",
      help = "answers \"Switch off which provider?\" (a provider, or none)" },
    reenable = { type = "boolean", help = "answers \"Switch it back on?\"" },
    samples = { type = "integer", default = 5, min = 1, help = "checks of /api/providers/health per assessment" },
    sample_interval = { type = "duration", default = "1s" },
    recovery_wait = { type = "duration", default = "5m",
      help = "how long to wait for the provider to recover before asking" },
    verify_within = { type = "duration", default = "2m" },
    gate_count = { type = "integer", default = 3, min = 1, help = "error-rate and P95 measurements in each watch" },
  }),
  lock = "feature-flags",
  steps = {
    step "check the providers against their thresholds" {
      read_only = true,
      run = function(ctx)
        local url = incident.user_url(ctx.env)
        local limits = incident.thresholds(ctx.env).providers
        local per, unanswered = sample(url, ctx.params.samples, ctx.params.sample_interval)
        if unanswered > 0 then
          incident.finding(ctx, string.format("/api/providers/health did not answer %d of %d times", unanswered,
            ctx.params.samples))
        end
        local providers, failing, enabled = {}, {}, 0
        for _, name in ipairs(sorted(per)) do
          local s = per[name]
          local why = judge(name, s, limits[name] or {})
          providers[name] = { status = s.status, enabled = s.enabled, success_rate = s.success_rate,
            error_rate = s.error_rate, p95_ms = s.p95_ms, failing = #why > 0, why = table.concat(why, ", ") }
          if s.enabled then enabled = enabled + 1 end
          if not s.enabled then
            ctx.log.info(name .. " is switched off (" .. flag_of(name) .. ")")
          elseif #why > 0 then
            incident.finding(ctx, name .. " fails: " .. table.concat(why, ", "))
            failing[#failing + 1] = name
          else
            ctx.log.info(string.format("%s passes: success rate %s, p95 %s", name, incident.percent(s.success_rate),
              s.p95_ms and string.format("%.0f ms", s.p95_ms) or "unknown"))
          end
        end
        local a = incident.assess_api(ctx, url, { "/health" }, ctx.params.load_duration)
        -- the worst first: most checks down, then by name
        table.sort(failing, function(x, y)
          if per[x].down ~= per[y].down then return per[x].down > per[y].down end
          return x < y
        end)
        ctx.state.providers, ctx.state.failing, ctx.state.enabled_count = providers, failing, enabled
        ctx.state.error_rate = a.error_rate
        ctx.state.summary = (#failing > 0 and (table.concat(failing, ", ") .. " failing") or "every provider passes")
          .. (a.error_rate and ("; orders fail at " .. incident.percent(a.error_rate)) or "")
        local default = ((#failing > 0 and #failing >= enabled) or a.critical or a.unavailable) and "sev1"
          or ((#failing > 0 or a.errors_high) and "sev2") or "sev3"
        incident.severity(ctx, default)
      end,
    },

    step "page the on-call engineers" {
      run = function(ctx)
        local details = { error_rate = incident.percent(ctx.state.error_rate) }
        for name, p in pairs(ctx.state.providers) do
          details[name] = p.enabled and (p.failing and ("failing: " .. p.why) or "passing") or "switched off"
        end
        incident.page(ctx, "provider failure: " .. ctx.state.summary, details)
      end,
    },

    step "post to the status page" {
      run = function(ctx)
        incident.post_status(ctx, "Delays creating shipments",
          "We are investigating failures with a shipping provider.")
      end,
    },

    step "choose the provider to switch off" {
      read_only = true,
      run = function(ctx)
        local choices = {}
        for _, name in ipairs(sorted(ctx.state.providers)) do
          -- switching off the only provider left would stop every order
          if ctx.state.providers[name].enabled and ctx.state.enabled_count > 1 then choices[#choices + 1] = name end
        end
        choices[#choices + 1] = "none"
        local default = ctx.state.failing[1]
        if not default or not ctx.state.providers[default].enabled or ctx.state.enabled_count < 2 then default = "none" end
        local p = incident.decide(ctx, "provider", "Switch off which provider?", { choices = choices, default = default })
        ctx.state.provider = p ~= "none" and p or nil
        if ctx.state.provider then ctx.state.flag = flag_of(p) end
      end,
    },

    step "switch the provider off" {
      when = function(ctx) return ctx.state.provider ~= nil end,
      run = function(ctx)
        incident.set_flag(ctx, ctx.state.flag, false)
        ctx.log.info("orders now go to the other providers, not " .. ctx.state.provider)
      end,
      undo = function(ctx) incident.set_flag(ctx, ctx.state.flag, true) end,
    },

    step "watch the error rate" {
      read_only = true,
      run = function(ctx)
        if ctx.plan then return end
        incident.verify(ctx, incident.user_url(ctx.env),
          { paths = { "/health", "/api/providers/health" }, name = "watch" })
      end,
    },

    step "tell the status page the fix is in" {
      when = function(ctx) return ctx.state.provider ~= nil and incident.status_open(ctx) end,
      run = function(ctx)
        incident.fix_in(ctx, "Shipments are going through our other carriers' integrations "
          .. "while we monitor the affected one.")
      end,
    },

    step "investigate: the API's failed orders" {
      read_only = true,
      run = function(ctx)
        local live = multiship.live_colour()
        ctx.state.evidence = incident.report_evidence(ctx, "api-" .. live)
        for name, p in pairs(ctx.state.providers) do
          if p.failing then ctx.log.warn(name .. " at the assessment: " .. p.why) end
        end
      end,
    },

    step "switch the provider back on when it recovers" {
      when = function(ctx) return ctx.state.provider ~= nil end,
      run = function(ctx)
        local name, url = ctx.state.provider, incident.user_url(ctx.env)
        local limits = incident.thresholds(ctx.env).providers[name] or {}
        local deadline = time.monotonic() + (ctx.plan and 0 or ctx.params.recovery_wait)
        local recovered, why
        repeat
          local per = sample(url, 1, 0)
          local s = per[name]
          why = s and judge(name, s, limits) or { "not reported by /api/providers/health" }
          recovered = #why == 0
          if recovered or time.monotonic() >= deadline then break end
          task.sleep(ctx.params.sample_interval)
        until false
        local question
        if recovered then
          ctx.log.info(name .. " passes its thresholds again")
          question = name .. " has recovered. Switch it back on?"
        else
          ctx.log.warn(name .. " still fails: " .. table.concat(why, ", "))
          question = name .. " still fails. Switch it back on anyway?"
        end
        local answer = incident.decide(ctx, "reenable", question, { choices = { "yes", "no" },
          default = recovered and "yes" or "no" })
        if answer ~= "yes" then
          ctx.log.warn(string.format("%s stays off: switch it back on later with `tug run feature-flag feature=%s "
            .. "enabled=true`", name, ctx.state.flag))
          return
        end
        incident.set_flag(ctx, ctx.state.flag, true)
        if ctx.plan then return end
        -- watched here, and switched off again if orders fail: the provider is not back
        local ok, err = pcall(incident.verify, ctx, url, { paths = { "/api/providers/health" }, within = "10s",
          name = "after switching " .. name .. " on" })
        if not ok then
          if type(err) == "table" and err.kind == "cancelled" then error(err, 0) end
          incident.set_flag(ctx, ctx.state.flag, false)
          ctx.log.warn(string.format("%s switched off again: %s", name, tostring(type(err) == "table" and err.message or err)))
          return
        end
        ctx.state.reenabled = true
      end,
    },

    step "verify orders go through" {
      read_only = true,
      run = function(ctx)
        if ctx.plan then return end
        incident.verify(ctx, incident.user_url(ctx.env), { paths = { "/health", "/api/providers/health" } })
      end,
    },

    step "resolve the incident" {
      run = function(ctx)
        local p = ctx.state.provider
        local body = "Shipments are being created normally again."
        if p and not ctx.state.reenabled then
          body = "Shipments are being created normally again through our other carrier integrations."
        end
        incident.resolve(ctx, body)
      end,
    },
  },
}
