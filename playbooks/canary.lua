-- canary: the seed's canary deployment. Start the new version on a small share of the
-- traffic, run the analysis gate (error rate and P95 against the environment's
-- thresholds) at each weight, promote, or abort and return all traffic to stable.
--
-- Traffic is shared by pod count: api-service selects the live colour, and the canary's
-- pods carry that colour, so a weight is reached by the number of canary pods (the share
-- actually reached is logged; with few stable pods the first step is coarse).
local multiship = require("multiship")

local function canary_replicas(stable, weight)
  if weight >= 100 then return stable end
  return math.max(1, math.floor(stable * weight / (100 - weight) + 0.5))
end

return playbook {
  description = "shift traffic to a new version step by step, gated by analysis; abort to stable",
  params = {
    version = { type = "string", required = true, pattern = "^v%d+%.%d+%.%d+[%w%-]*$",
      help = "image tag to deploy, e.g. v2.2.1" },
    weights = { type = "list", help = "traffic percentages to pass through (default: the environment's canary.weights or 5,10,25,50,100)" },
    analysis_count = { type = "integer", default = 3, min = 1, help = "measurements at each weight" },
    analysis_interval = { type = "duration", default = "2s" },
  },
  lock = "deploy",
  steps = {
    step "find the stable version" {
      read_only = true,
      run = function(ctx)
        ctx.state.colour = multiship.live_colour()
        local stable = k8s.get("deployment", "api-" .. ctx.state.colour)
        ctx.state.stable_deploy = "api-" .. ctx.state.colour
        ctx.state.stable_image = multiship.container_image(stable)
        ctx.state.stable_replicas = stable.spec.replicas
        local weights = ctx.params.weights or (ctx.env.canary and ctx.env.canary.weights) or { 5, 10, 25, 50, 100 }
        ctx.state.weights = {}
        for i, w in ipairs(weights) do ctx.state.weights[i] = tonumber(w) end
        ctx.log.info(string.format("stable is %s (%d pods); canary %s at %s%%", ctx.state.stable_image,
          ctx.state.stable_replicas, ctx.params.version, table.concat(ctx.state.weights, "% -> ")))
      end,
    },

    step "start the canary" {
      run = function(ctx)
        k8s.patch("deployment", "api-canary", { spec = { template = { metadata = { labels = { colour = ctx.state.colour } } } } })
        k8s.set_image("api-canary", { api = multiship.image(ctx.env, ctx.params.version) },
          { change_cause = "canary of " .. ctx.params.version })
        ctx.state.canary_started = true
      end,
      undo = function(ctx)
        k8s.scale("api-canary", 0)
      end,
    },

    step "shift traffic step by step, gated by analysis" {
      run = function(ctx)
        for _, weight in ipairs(ctx.state.weights) do
          if weight >= 100 then break end -- 100% is the promotion
          local n = canary_replicas(ctx.state.stable_replicas, weight)
          k8s.scale("api-canary", n)
          if not ctx.plan then k8s.rollout_status("api-canary", { timeout = "5m", quiet = true }) end
          local share = math.floor(100 * n / (n + ctx.state.stable_replicas) + 0.5)
          ctx.log.info(string.format("canary at %d%% of traffic (%d of %d pods; asked for %d%%)", share, n,
            n + ctx.state.stable_replicas, weight))
          local r = multiship.gate(ctx.env, { name = "canary@" .. weight .. "%", count = ctx.params.analysis_count,
            interval = ctx.params.analysis_interval })
          ctx.state.analysis = ctx.state.analysis or {}
          ctx.state.analysis[#ctx.state.analysis + 1] = { weight = weight, verdict = r.verdict, reason = r.reason }
          if r.verdict ~= "success" then
            error(string.format("analysis at %d%%: %s", weight, r.reason))
          end
        end
      end,
      undo = function(ctx)
        k8s.scale("api-canary", 0)
      end,
    },

    step "promote the canary to stable" {
      run = function(ctx)
        k8s.set_image(ctx.state.stable_deploy, { api = multiship.image(ctx.env, ctx.params.version) },
          { change_cause = "canary promotion of " .. ctx.params.version })
        if not ctx.plan then k8s.rollout_status(ctx.state.stable_deploy, { timeout = "5m", quiet = true }) end
        k8s.scale("api-canary", 0)
      end,
      undo = function(ctx)
        k8s.set_image(ctx.state.stable_deploy, { api = ctx.state.stable_image })
      end,
    },
  },
}
