-- multiship.lua: what the Multiship playbooks share: where the API answers in an
-- environment, which colour is live, image names, and the analysis gate of canaries and
-- feature flags: PromQL against the environment's Prometheus when it has one, else the
-- "probe" provider (a short load check through the Service), as on the simulated cluster.

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

-- Waits for a Deployment's rollout (k8s.rollout_status with opts). A step that fails has
-- no undo of its own, so when the rollout does not finish, restore() puts back what the
-- step changed before the error goes on (not when the step is cancelled: a cancelled
-- task cannot wait on anything more).
function M.rollout_or_restore(deploy, opts, restore)
  local ok, r = pcall(k8s.rollout_status, deploy, opts)
  if ok then return r end
  if not (type(r) == "table" and r.kind == "cancelled") then restore() end
  error(r, 0)
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

-- The error rate seen as `errors` of `count` requests is surely (99.9%, one-sided) at
-- least this: the low end of its Wilson interval. A one-second check of a healthy service
-- at 0.05% errors sends about 500 requests and, one time in forty, sees two errors
-- (0.4%); judged on this bound, a gate fails only when the rate is surely above its
-- threshold, so it catches a version that errs at 2% or more and rarely a healthy one
-- (about one check in 500 at 0.05% against a 0.1% threshold). `z` sets another
-- confidence (1.96: 97.5% one-sided).
function M.error_rate_low(errors, count, z)
  if not count or count == 0 then return nil end
  local n = count
  z = z or 3.09
  local p = errors / n
  local centre = p + z * z / (2 * n)
  local spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
  return math.max(0, (centre - spread) / (1 + z * z / n))
end

-- "probe": measures the API as users see it, with a short load check through the
-- Service, when there is no Prometheus to ask. Queries: "error_rate", "error_rate_low"
-- (see M.error_rate_low) and "p95_seconds". One load check serves every query within the
-- same second.
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
    if expr == "error_rate_low" then return M.error_rate_low(r.errors, r.count) end
    if expr == "p95_seconds" then return r.p95 end
    metrics.fail("query", "the probe provider knows error_rate, error_rate_low and p95_seconds, not " .. expr)
  end,
})

-- The PromQL of the gate's two metrics, over the simulator's metric names (the
-- conventional http_requests_total and http_request_duration_seconds). An environment
-- whose metrics are named otherwise sets analysis.error_query and analysis.p95_query;
-- $selector (namespace, service and, for a canary, version), $window, $namespace,
-- $service and $version are filled in. A version without a single 5xx has no error
-- series at all, hence `or vector(0)`; no requests at all stays no data.
M.PROMQL = {
  error = '(sum(rate(http_requests_total{$selector,code=~"5.."}[$window])) or vector(0))'
    .. ' / sum(rate(http_requests_total{$selector}[$window]))',
  p95 = 'histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{$selector}[$window])))',
}

local function promql(template, vars)
  return (template:gsub("%$(%a+)", function(name)
    local v = vars[name]
    if v == nil then error(string.format("analysis query %q: unknown $%s (known: $selector, $window, " ..
      "$namespace, $service, $version)", template, name), 0) end
    return v
  end))
end

-- The Prometheus queries of a gate: opts.version (a canary's tag; nil for the whole
-- service), opts.service (default api-service). Returns error_query, p95_query.
function M.promql(env, opts)
  opts = opts or {}
  local a = env.analysis or {}
  local ns = env.kubernetes and env.kubernetes.namespace or "multiship"
  local service = opts.service or "api-service"
  local selector = string.format('namespace="%s",service="%s"', ns, service)
  if opts.version then selector = selector .. string.format(',version="%s"', opts.version) end
  local window = a.window or "1m"
  if type(window) == "number" then window = string.format("%gs", window) end
  local vars = { selector = selector, window = window, namespace = ns, service = service,
    version = opts.version or "" }
  return promql(a.error_query or M.PROMQL.error, vars), promql(a.p95_query or M.PROMQL.p95, vars)
end

-- The gate the seed sets: error rate < 0.1% and P95 < 500 ms (the environment's
-- thresholds), measured `count` times. With env.metrics.prometheus the queries are PromQL
-- (M.promql; opts.version narrows them to a canary) and the first measurement waits
-- analysis.initial_delay (default: none), so the rate window holds the new pods' requests.
function M.gate(env, opts)
  opts = opts or {}
  local a = env.analysis or {}
  local provider, error_query, p95_query, initial_delay
  if env.metrics and env.metrics.prometheus then
    provider = "prometheus"
    error_query, p95_query = M.promql(env, opts)
    initial_delay = opts.initial_delay or a.initial_delay
  else
    provider = { type = "probe", url = M.api_url(env) }
    error_query, p95_query = "error_rate_low", "p95_seconds"
    initial_delay = opts.initial_delay
  end
  return analysis.run({
    env = env, provider = provider, name = opts.name or "gate",
    interval = opts.interval or "2s", count = opts.count or 3, failure_limit = 0, initial_delay = initial_delay,
    metrics = {
      { name = "error-rate", query = opts.error_query or error_query,
        success = "value < thresholds.error_rate" },
      { name = "p95", query = opts.p95_query or p95_query,
        success = "value < thresholds.p95_ms / 1000" },
    },
  })
end

return M
