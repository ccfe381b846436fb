-- blue-green: the seed's blue-green deployment. Deploy the new version to the idle
-- colour, check its health through a preview Service, switch api-service to it, keep the
-- old colour running for an instant rollback, and scale it down after a window (the
-- scale_down_after param, else the environment's blue_green.scale_down_after; with
-- neither, the old colour stays up until the next deploy).
--
-- While the window runs, the new colour's health is checked through api-service: if it
-- fails, or the run is interrupted (Ctrl-C), the undo switches traffic back to the old
-- colour, which is still up. The run holds the deploy lock until the window ends.
local multiship = require("multiship")

-- The seed's comprehensive health checks.
local function health_urls(base)
  return { base .. "/health", base .. "/api/health/detailed", base .. "/api/health/database",
    base .. "/api/providers/health" }
end

-- The window in seconds, or nil when the old colour is kept until the next deploy.
local function window_of(ctx)
  if ctx.params.scale_down_after then return ctx.params.scale_down_after end
  local v = ctx.env.blue_green and ctx.env.blue_green.scale_down_after
  if v == nil then return nil end
  local seconds = type(v) == "number" and v or (type(v) == "string" and time.parse_duration(v))
  if not seconds or seconds < 0 then
    error(string.format("the %s environment's blue_green.scale_down_after is %s, not a duration such as 30m",
      ctx.env.name, type(v) == "string" and string.format("%q", v) or tostring(v)), 0)
  end
  return seconds
end

-- The idle colour as it was before the run: its replicas and image.
local function restore_idle(ctx)
  local deploy = "api-" .. ctx.state.idle
  k8s.scale(deploy, ctx.state.idle_replicas)
  k8s.set_image(deploy, { api = ctx.state.idle_image })
end

return playbook {
  description = "deploy to the idle colour, verify it, switch traffic, scale the old colour down after a window",
  params = {
    version = { type = "string", required = true, pattern = "^v%d+%.%d+%.%d+[%w%-]*$",
      help = "image tag to deploy, e.g. v2.2.0" },
    scale_down_after = { type = "duration",
      help = "how long the old colour stays up for an instant rollback after the switch (default: the " ..
        "environment's blue_green.scale_down_after; without one it stays up until the next deploy)" },
    watch_interval = { type = "duration", default = "10s",
      help = "how often the new colour's health is checked while the old colour stands by" },
    rollout_timeout = { type = "duration", default = "5m" },
    verify_within = { type = "duration", default = "1m", help = "how long the new colour has to become healthy" },
  },
  lock = "deploy",
  steps = {
    step "find the live colour" {
      read_only = true,
      run = function(ctx)
        ctx.state.window = window_of(ctx)
        local live, idle = multiship.live_colour()
        ctx.state.live, ctx.state.idle = live, idle
        local live_deploy = k8s.get("deployment", "api-" .. live)
        ctx.state.replicas = live_deploy.spec.replicas
        ctx.state.live_image = multiship.container_image(live_deploy)
        local idle_deploy = k8s.get("deployment", "api-" .. ctx.state.idle)
        ctx.state.idle_image = multiship.container_image(idle_deploy)
        ctx.state.idle_replicas = idle_deploy.spec.replicas
        ctx.log.info(string.format("%s is live on %s; deploying %s to %s", live, ctx.state.live_image,
          ctx.params.version, ctx.state.idle))
        if ctx.state.window == nil then
          ctx.log.info(string.format("no scale_down_after (param or the %s environment's blue_green): %s stays up " ..
            "until the next deploy", ctx.env.name, live))
        end
      end,
    },

    step "deploy the new version to the idle colour" {
      run = function(ctx)
        local deploy = "api-" .. ctx.state.idle
        k8s.set_image(deploy, { api = multiship.image(ctx.env, ctx.params.version) },
          { change_cause = "blue-green deploy of " .. ctx.params.version })
        k8s.scale(deploy, ctx.state.replicas)
        if ctx.plan then return end
        multiship.rollout_or_restore(deploy, { timeout = ctx.params.rollout_timeout },
          function() restore_idle(ctx) end)
      end,
      undo = function(ctx) restore_idle(ctx) end,
    },

    step "health check the idle colour" {
      timeout = "3m",
      run = function(ctx)
        -- a preview Service reaches the idle colour's pods before any user does (left
        -- over by a run killed here, it is reused)
        local preview = "api-" .. ctx.state.idle .. "-preview"
        if not k8s.get("service", preview, { optional = true }) then
          k8s.create({ apiVersion = "v1", kind = "Service", metadata = { name = preview, labels = { app = "api" } },
            spec = { selector = { app = "api", colour = ctx.state.idle },
                     ports = { { name = "http", port = 80, targetPort = 8080 } } } })
        end
        if ctx.plan then return end
        local urls = health_urls(multiship.api_url(ctx.env, preview))
        urls.within, urls.interval = ctx.params.verify_within, "1s"
        local ok, r = pcall(health.check, urls)
        k8s.delete("service", preview, { optional = true })
        if not ok then error(r, 0) end
        ctx.state.health = r.reason
        if not r.ok then error("the " .. ctx.state.idle .. " colour is not healthy: " .. r.reason) end
      end,
    },

    step "switch traffic to the new colour" {
      confirm = "Switch {env} traffic from {state.live} to {state.idle}?",
      run = function(ctx)
        multiship.switch_traffic(ctx, ctx.state.idle)
        ctx.state.switched_at = time.now()
      end,
      undo = function(ctx)
        k8s.patch_service_selector("api-service", { colour = ctx.state.live })
        ctx.log.warn(string.format("traffic is back on %s (%s)", ctx.state.live, ctx.state.live_image))
      end,
    },

    step "keep the old colour for an instant rollback" {
      read_only = true,
      when = function(ctx) return ctx.state.window ~= nil and ctx.state.window > 0 end,
      run = function(ctx)
        -- from the switch, so that a resumed run waits only for what is left
        local deadline = ctx.state.switched_at + ctx.state.window
        ctx.log.info(string.format("keeping %s for %s for an instant rollback, checking %s every %s",
          ctx.state.live, time.format_duration(ctx.state.window), ctx.state.idle,
          time.format_duration(ctx.params.watch_interval)))
        if ctx.plan then return end
        local urls = health_urls(multiship.api_url(ctx.env))
        urls.within, urls.interval = ctx.params.verify_within, "1s"
        while time.now() < deadline do
          local r = health.check(urls)
          if not r.ok then
            error(string.format("%s failed while %s stood by: %s", ctx.state.idle, ctx.state.live, r.reason))
          end
          local left = deadline - time.now()
          if left > 0 then task.sleep(math.min(ctx.params.watch_interval, left)) end
        end
      end,
    },

    step "scale down the old colour" {
      when = function(ctx) return ctx.state.window ~= nil end,
      run = function(ctx)
        k8s.scale("api-" .. ctx.state.live, 0)
      end,
      undo = function(ctx)
        k8s.scale("api-" .. ctx.state.live, ctx.state.replicas)
      end,
    },
  },
}
