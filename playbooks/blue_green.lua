-- blue-green: the seed's blue-green deployment. Deploy the new version to the idle
-- colour, check its health through a preview Service, switch api-service to it, keep the
-- old colour running for an instant rollback, and scale it down after a window.
local multiship = require("multiship")

return playbook {
  description = "deploy to the idle colour, verify it, switch traffic, keep the old colour",
  params = {
    version = { type = "string", required = true, pattern = "^v%d+%.%d+%.%d+[%w%-]*$",
      help = "image tag to deploy, e.g. v2.2.0" },
    keep_old = { type = "duration", default = "0s",
      help = "how long the old colour keeps running after the switch (0: keep it until the next deploy)" },
    rollout_timeout = { type = "duration", default = "5m" },
    verify_within = { type = "duration", default = "1m", help = "how long the new colour has to become healthy" },
  },
  lock = "deploy",
  steps = {
    step "find the live colour" {
      read_only = true,
      run = function(ctx)
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
      end,
    },

    step "deploy the new version to the idle colour" {
      run = function(ctx)
        local deploy = "api-" .. ctx.state.idle
        k8s.set_image(deploy, { api = multiship.image(ctx.env, ctx.params.version) },
          { change_cause = "blue-green deploy of " .. ctx.params.version })
        k8s.scale(deploy, ctx.state.replicas)
        if not ctx.plan then k8s.rollout_status(deploy, { timeout = ctx.params.rollout_timeout }) end
      end,
      undo = function(ctx)
        local deploy = "api-" .. ctx.state.idle
        k8s.scale(deploy, ctx.state.idle_replicas)
        k8s.set_image(deploy, { api = ctx.state.idle_image })
      end,
    },

    step "health check the idle colour" {
      timeout = "3m",
      run = function(ctx)
        -- a preview Service reaches the idle colour's pods before any user does
        local preview = "api-" .. ctx.state.idle .. "-preview"
        k8s.create({ apiVersion = "v1", kind = "Service", metadata = { name = preview, labels = { app = "api" } },
          spec = { selector = { app = "api", colour = ctx.state.idle },
                   ports = { { name = "http", port = 80, targetPort = 8080 } } } })
        if ctx.plan then return end
        local base = multiship.api_url(ctx.env, preview)
        local ok, r = pcall(health.check, {
          base .. "/health", base .. "/api/health/detailed", base .. "/api/health/database",
          base .. "/api/providers/health",
          within = ctx.params.verify_within, interval = "1s",
        })
        k8s.delete("service", preview, { optional = true })
        if not ok then error(r, 0) end
        ctx.state.health = r.reason
        if not r.ok then error("the " .. ctx.state.idle .. " colour is not healthy: " .. r.reason) end
      end,
    },

    step "switch traffic to the new colour" {
      confirm = "Switch {env} traffic from {state.live} to {state.idle}?",
      run = function(ctx) multiship.switch_traffic(ctx, ctx.state.idle) end,
      undo = function(ctx)
        k8s.patch_service_selector("api-service", { colour = ctx.state.live })
      end,
    },

    step "scale down the old colour" {
      when = function(ctx) return ctx.params.keep_old > 0 end,
      run = function(ctx)
        ctx.log.info(string.format("keeping %s for %s for an instant rollback", ctx.state.live,
          time.format_duration(ctx.params.keep_old)))
        if not ctx.plan then task.sleep(ctx.params.keep_old) end
        k8s.scale("api-" .. ctx.state.live, 0)
      end,
      undo = function(ctx)
        k8s.scale("api-" .. ctx.state.live, ctx.state.replicas)
      end,
    },
  },
}
