-- feature-flag: the seed's feature-flag change through the admin API, made safe. Record
-- the flag, switch it, then watch the error rate and P95 for a window; if they climb,
-- the run fails and the undo switches the flag back. The bearer token is the
-- environment's admin_token, which staging and production take from Secrets Manager
-- (${secret:aws:...}), so it is redacted from every output and the journal.
local multiship = require("multiship")

local function admin(ctx, method, path, body)
  local token = ctx.env.admin_token
  if not token or token == "" then
    error(string.format("the %s environment has no admin_token (the admin API's bearer token; for example " ..
      "admin_token: ${secret:aws:multiship/%s/admin-token})", ctx.env.name, ctx.env.name), 0)
  end
  local r = http.request({ method = method, url = multiship.api_url(ctx.env) .. path, json = body,
    headers = { authorization = "Bearer " .. token }, timeout = "10s", retries = 2 })
  if not r.status and not r.planned then error(r.message) end
  return r
end

return playbook {
  description = "switch a feature flag, watch the error rate, switch it back if it climbs",
  params = {
    feature = { type = "string", required = true, pattern = "^[%w%-_%.]+$", help = "flag name, e.g. new-shipment-tracking" },
    enabled = { type = "boolean", required = true },
    watch = { type = "duration", default = "2m", help = "how long to watch after the switch" },
    interval = { type = "duration", default = "10s", help = "between measurements" },
  },
  lock = "feature-flags",
  steps = {
    step "read the flag" {
      read_only = true,
      run = function(ctx)
        local r = admin(ctx, "GET", "/admin/features/" .. ctx.params.feature)
        if r.status == 404 then
          ctx.state.previous = false -- an unknown flag counts as off
          ctx.state.existed = false
        else
          r:raise()
          ctx.state.previous = r:json().enabled
          ctx.state.existed = true
        end
        ctx.log.info(string.format("%s is %s", ctx.params.feature, ctx.state.previous and "on" or "off"))
      end,
    },

    step "switch the flag" {
      confirm = "Turn {params.feature} {params.enabled} on {env}?",
      run = function(ctx)
        admin(ctx, "POST", "/admin/features", { feature = ctx.params.feature, enabled = ctx.params.enabled }):raise()
      end,
      undo = function(ctx)
        admin(ctx, "POST", "/admin/features", { feature = ctx.params.feature, enabled = ctx.state.previous }):raise()
        ctx.log.warn(string.format("%s switched back to %s", ctx.params.feature, ctx.state.previous and "on" or "off"))
      end,
    },

    step "watch the error rate" {
      read_only = true,
      run = function(ctx)
        local count = math.max(1, math.floor(ctx.params.watch / ctx.params.interval + 0.5))
        local r = multiship.gate(ctx.env, { name = "after " .. ctx.params.feature, count = count,
          interval = ctx.params.interval })
        ctx.state.analysis = { verdict = r.verdict, reason = r.reason }
        if r.verdict ~= "success" then error("after the switch: " .. r.reason) end
      end,
    },

    step "report the flag's usage" {
      read_only = true,
      run = function(ctx)
        -- the seed's "monitor feature usage": a report, so it never fails the switch
        local ok, r = pcall(admin, ctx, "GET", "/admin/features/analytics")
        if not ok or r.status ~= 200 then
          ctx.log.warn("no usage report: /admin/features/analytics " ..
            (ok and ("answered " .. tostring(r.status)) or tostring(type(r) == "table" and r.message or r)))
          return
        end
        local decoded, doc = pcall(r.json, r)
        local f = decoded and type(doc) == "table" and type(doc.features) == "table"
          and doc.features[ctx.params.feature]
        if f then
          ctx.state.usage = { enabled = f.enabled, evaluations = f.evaluations, window = doc.window }
          ctx.log.info(string.format("%s is %s: %s evaluations in the last %s", ctx.params.feature,
            f.enabled and "on" or "off", tostring(f.evaluations), tostring(doc.window or "window")))
        end
      end,
    },
  },
}
