-- canary: the seed's canary deployment. Start the new version on a small share of the
-- traffic (5-10%), run the analysis gate (error rate and P95 against the environment's
-- thresholds) at each weight, 5 -> 10 -> 25 -> 50 -> 100 unless the environment's
-- canary.weights or the weights param say otherwise, promote, or abort and return all
-- traffic to stable.
--
-- Traffic is shared by pod count: api-service selects the live colour, and the canary's
-- pods carry that colour, so a weight is reached by the number of canary pods (the share
-- actually reached is logged; with few stable pods the first step is coarse).
--
-- The gate asks the environment's Prometheus when it has one (the canary version's own
-- requests, by their version label), else it measures the Service with a short load
-- check (multiship.gate).
local multiship = require("multiship")

local DEFAULT_WEIGHTS = { 5, 10, 25, 50, 100 }

local function canary_replicas(stable, weight)
  if weight >= 100 then return stable end
  return math.max(1, math.floor(stable * weight / (100 - weight) + 0.5))
end

-- The traffic percentages to pass through, from the param, the environment or the
-- default: numbers that rise step by step and end at 100, the promotion.
local function weights_of(ctx)
  local source, list
  if ctx.params.weights then
    source, list = "the weights param", ctx.params.weights
  elseif ctx.env.canary and ctx.env.canary.weights then
    source, list = "the " .. ctx.env.name .. " environment's canary.weights", ctx.env.canary.weights
  else
    source, list = "the default weights", DEFAULT_WEIGHTS
  end
  if type(list) ~= "table" or #list == 0 then
    error(source .. " must be a list of percentages such as 5,10,25,50,100", 0)
  end
  local out, previous = {}, 0
  for i, w in ipairs(list) do
    local n = tonumber(w)
    if not n or n <= previous or n > 100 then
      error(string.format("%s: %s is not a percentage above %g and at most 100 (weights rise step by step, " ..
        "e.g. 5,10,25,50,100)", source, tostring(w), previous), 0)
    end
    out[i], previous = n, n
  end
  if previous ~= 100 then
    error(string.format("%s must end at 100, the promotion (got %s)", source, table.concat(out, ",")), 0)
  end
  return out
end

local function analysis_settings(ctx)
  local a = ctx.env.analysis or {}
  return ctx.params.analysis_count or a.count or 3, ctx.params.analysis_interval or a.interval or "2s"
end

return playbook {
  description = "shift traffic to a new version step by step, gated by analysis; abort to stable",
  params = {
    version = { type = "string", required = true, pattern = "^v%d+%.%d+%.%d+[%w%-]*$",
      help = "image tag to deploy, e.g. v2.2.1" },
    weights = { type = "list",
      help = "traffic percentages to pass through, ending at 100 (default: the environment's canary.weights, else 5,10,25,50,100)" },
    analysis_count = { type = "integer", min = 1,
      help = "measurements at each weight (default: the environment's analysis.count, else 3)" },
    analysis_interval = { type = "duration",
      help = "between measurements (default: the environment's analysis.interval, else 2s)" },
    rollout_timeout = { type = "duration", default = "5m" },
  },
  lock = "deploy",
  steps = {
    step "find the stable version" {
      read_only = true,
      run = function(ctx)
        ctx.state.weights = weights_of(ctx)
        ctx.state.colour = multiship.live_colour()
        local stable = k8s.get("deployment", "api-" .. ctx.state.colour)
        ctx.state.stable_deploy = "api-" .. ctx.state.colour
        ctx.state.stable_image = multiship.container_image(stable)
        ctx.state.stable_replicas = stable.spec.replicas
        ctx.log.info(string.format("stable is %s (%d pods); canary %s at %s%%", ctx.state.stable_image,
          ctx.state.stable_replicas, ctx.params.version, table.concat(ctx.state.weights, "% -> ")))
        if ctx.state.weights[1] > 10 then
          ctx.log.warn(string.format("the first step sends %g%% of the traffic to the canary; the deployment guide " ..
            "starts at 5-10%%", ctx.state.weights[1]))
        end
      end,
    },

    step "start the canary" {
      run = function(ctx)
        k8s.patch("deployment", "api-canary", { spec = { template = { metadata = { labels = { colour = ctx.state.colour } } } } })
        k8s.set_image("api-canary", { api = multiship.image(ctx.env, ctx.params.version) },
          { change_cause = "canary of " .. ctx.params.version })
      end,
      undo = function(ctx)
        k8s.scale("api-canary", 0)
      end,
    },

    step "shift traffic step by step, gated by analysis" {
      run = function(ctx)
        local count, interval = analysis_settings(ctx)
        ctx.state.analysis = {}
        for _, weight in ipairs(ctx.state.weights) do
          if weight >= 100 then break end -- 100% is the promotion
          local n = canary_replicas(ctx.state.stable_replicas, weight)
          k8s.scale("api-canary", n)
          if not ctx.plan then k8s.rollout_status("api-canary", { timeout = ctx.params.rollout_timeout, quiet = true }) end
          local share = math.floor(100 * n / (n + ctx.state.stable_replicas) + 0.5)
          ctx.log.info(string.format("canary at %d%% of traffic (%d of %d pods; asked for %g%%)", share, n,
            n + ctx.state.stable_replicas, weight))
          local r = multiship.gate(ctx.env, { name = "canary@" .. weight .. "%", count = count, interval = interval,
            version = ctx.params.version })
          local entry = { weight = weight, share = share, verdict = r.verdict, reason = r.reason, metrics = {} }
          for name, m in pairs(r.metrics or {}) do
            entry.provider = m.provider
            entry.metrics[name] = { verdict = m.verdict, query = m.query }
          end
          ctx.state.analysis[#ctx.state.analysis + 1] = entry
          if r.verdict ~= "success" then
            error(string.format("analysis at %g%%: %s", weight, r.reason))
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
        if not ctx.plan then
          multiship.rollout_or_restore(ctx.state.stable_deploy, { timeout = ctx.params.rollout_timeout, quiet = true },
            function() k8s.set_image(ctx.state.stable_deploy, { api = ctx.state.stable_image }) end)
        end
        k8s.scale("api-canary", 0)
      end,
      undo = function(ctx)
        k8s.set_image(ctx.state.stable_deploy, { api = ctx.state.stable_image })
      end,
    },
  },
}
