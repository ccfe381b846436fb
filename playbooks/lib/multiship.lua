-- multiship.lua: what the Multiship playbooks share: where the API answers in an
-- environment, image names, and the "probe" metrics provider the canary gates use when
-- no Prometheus is configured (the local environment's simulated cluster).

local M = {}

-- Where a Service of the API answers: on the local simulated cluster, its /svc/ path;
-- elsewhere env.service_url with {service} filled in (how an environment reaches a
-- preview Service: an internal ingress, a mesh route), or env.url for api-service.
function M.api_url(env, service)
  service = service or "api-service"
  if env.kubernetes and env.kubernetes.simulate then
    k8s.get("namespace", env.kubernetes.namespace or "multiship") -- starts the simulator
    return string.format("%s/svc/%s/%s", k8s.simulator().url, env.kubernetes.namespace or "multiship", service)
  end
  if env.service_url then return (env.service_url:gsub("{service}", service)) end
  if service == "api-service" and env.url then return env.url end
  error(string.format("the %s environment does not say how to reach service %s: set service_url " ..
    "(for example https://internal.example/{service})", env.name, service), 2)
end

-- The colour api-service sends traffic to, and the other one.
function M.live_colour()
  local live = k8s.get("service", "api-service").spec.selector.colour
  if live ~= "blue" and live ~= "green" then
    error("api-service selects colour " .. tostring(live) .. ", not blue or green")
  end
  return live, live == "blue" and "green" or "blue"
end

-- Points api-service at a colour, then checks the API answers through it.
function M.switch_traffic(ctx, colour)
  k8s.patch_service_selector("api-service", { colour = colour })
  if ctx.plan then return end
  local r = health.check({ M.api_url(ctx.env) .. "/health", within = ctx.params.verify_within or "1m",
    interval = "1s" })
  if not r.ok then error("after the switch: " .. r.reason) end
end

function M.image(env, version)
  return string.format("%s:%s", env.image_repository or "multiship/api", version)
end

function M.container_image(deploy)
  return deploy.spec.template.spec.containers[1].image
end

function M.version_of(image)
  return image:match(":([^:/]+)$")
end

-- "probe": measures the API as users see it, with a short load check through the
-- Service, when there is no Prometheus to ask. Queries: "error_rate", "error_rate_low"
-- (the low end of its 95% interval), "p95_seconds".
-- One load check serves every query within the same second.
local last = { at = -math.huge }
metrics.register("probe", {
  check = function(config) assert(config.url, "url is required") end,
  query = function(config, expr)
    if time.monotonic() - last.at > 1 or last.url ~= config.url then
      local r = health.load({ url = config.url .. (config.path or "/api/orders"),
        duration = config.duration or "1s", concurrency = config.concurrency or 16 })
      last = { at = time.monotonic(), url = config.url, result = r }
    end
    local r = last.result
    if r.count == 0 then return nil end
    if expr == "error_rate" then return r.error_rate end
    if expr == "error_rate_low" then
      -- the lower end of the 95% (Wilson) interval: a short probe of a healthy service at
      -- 0.05% errors often sees one error in a thousand requests, which alone would look
      -- like 0.1%; the gate fails only when the rate is surely above its threshold
      local n, z = r.count, 1.96
      local p = r.errors / n
      local centre = p + z * z / (2 * n)
      local spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
      return math.max(0, (centre - spread) / (1 + z * z / n))
    end
    if expr == "p95_seconds" then return r.p95 end
    metrics.fail("query", "the probe provider knows error_rate, error_rate_low and p95_seconds, not " .. expr)
  end,
})

-- The gate the seed sets: error rate < 0.1% and P95 < 500 ms (the environment's
-- thresholds), measured `count` times.
function M.gate(env, opts)
  opts = opts or {}
  local provider = env.metrics and env.metrics.prometheus and "prometheus"
    or { type = "probe", url = M.api_url(env) }
  return analysis.run({
    env = env, provider = provider, name = opts.name or "gate",
    interval = opts.interval or "2s", count = opts.count or 3, failure_limit = 0,
    metrics = {
      { name = "error-rate", query = opts.error_query or "error_rate_low",
        success = "value < thresholds.error_rate" },
      { name = "p95", query = opts.p95_query or "p95_seconds",
        success = "value < thresholds.p95_ms / 1000" },
    },
  })
end

return M
