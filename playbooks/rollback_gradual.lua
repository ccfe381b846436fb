-- rollback-gradual: the seed's gradual rollback (performance issues). Bring the stable
-- colour back up, move traffic to it, then scale the problematic colour down. Each step
-- is undone when a later one fails, and a stable colour that does not come up is scaled
-- back, so a rollback that goes wrong leaves traffic and replicas where they were.
local multiship = require("multiship")

return playbook {
  name = "rollback-gradual",
  description = "scale up the stable colour, switch traffic to it, scale the problematic one down",
  params = {
    replicas = { type = "integer", min = 1, help = "replicas for the stable colour (default: the problematic colour's)" },
    rollout_timeout = { type = "duration", default = "5m" },
    verify_within = { type = "duration", default = "1m" },
  },
  lock = "deploy",
  steps = {
    step "find the problematic and the stable colour" {
      read_only = true,
      run = function(ctx)
        local live, other = multiship.live_colour()
        ctx.state.problematic, ctx.state.stable = live, other
        local bad = k8s.get("deployment", "api-" .. live)
        local good = k8s.get("deployment", "api-" .. ctx.state.stable)
        ctx.state.problematic_replicas = bad.spec.replicas
        ctx.state.stable_replicas_before = good.spec.replicas
        ctx.state.stable_image = multiship.container_image(good)
        ctx.log.info(string.format("moving traffic from %s (%s) back to %s (%s)", live,
          multiship.container_image(bad), ctx.state.stable, ctx.state.stable_image))
      end,
    },

    step "scale up the stable colour" {
      run = function(ctx)
        local deploy = "api-" .. ctx.state.stable
        k8s.scale(deploy, ctx.params.replicas or ctx.state.problematic_replicas)
        if ctx.plan then return end
        multiship.rollout_or_restore(deploy, { timeout = ctx.params.rollout_timeout, quiet = true },
          function() k8s.scale(deploy, ctx.state.stable_replicas_before) end)
      end,
      undo = function(ctx)
        k8s.scale("api-" .. ctx.state.stable, ctx.state.stable_replicas_before)
      end,
    },

    step "switch traffic to the stable colour" {
      confirm = "Switch {env} traffic from {state.problematic} back to {state.stable}?",
      run = function(ctx) multiship.switch_traffic(ctx, ctx.state.stable) end,
      undo = function(ctx)
        k8s.patch_service_selector("api-service", { colour = ctx.state.problematic })
      end,
    },

    step "scale down the problematic colour" {
      run = function(ctx)
        k8s.scale("api-" .. ctx.state.problematic, 0)
      end,
      undo = function(ctx)
        k8s.scale("api-" .. ctx.state.problematic, ctx.state.problematic_replicas)
      end,
    },
  },
}
