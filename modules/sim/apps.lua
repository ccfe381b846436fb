-- apps.lua (sim.apps): the applications behind the simulated cluster's Services.
--
-- /svc/NAMESPACE/SERVICE/PATH (and the API's services/NAME/proxy/PATH) picks one of the
-- Service's endpoints, the ready pods its selector matches, at random, so traffic
-- splits by pod count the way kube-proxy splits it; the pod's image version decides
-- how the request goes (sim.faults: health status, error rate, latency). No endpoint:
-- 503. The Multiship API model answers the endpoints of the deployment guide (health,
-- detailed health, database, providers, orders, the feature-flag admin API); orders go
-- through the shipping providers whose flag provider-NAME-enabled is not off, so a
-- provider that is down fails its share of them until its flag is switched off; other
-- images get a generic model. Every request is counted in /metrics and logged in the
-- serving pod's container log. `traffic` in the scenario adds background requests
-- (counted, not sent) so that metrics move without a load generator.

local json = require("json")
local task = require("task")
local selectors = require("sim.selectors")
local util = require("sim.util")

local apps = {}
local A = {}
A.__index = A

local PROVIDERS = { "easypost", "shippo", "veeqo" }
local BASE_LATENCY_MS = { easypost = 140, shippo = 210, veeqo = 95 }

function apps.new(sim, scenario)
  local a = setmetatable({
    sim = sim,
    store = sim.store,
    endpoints_cache = {},
    generation = {}, -- namespace -> counter bumped by pod and service writes
    features = {}, -- namespace -> { name -> { enabled, updated_at, evaluations } }
    initial_features = scenario.features or {},
    providers = scenario.providers or {},
    admin_token = scenario.admin_token or "sim-admin-token",
    started_at = util.timestamp(), -- when the scenario's flags were set
    traffic = scenario.traffic or {},
    served = 0,
  }, A)
  local function bump(kind, obj)
    local ns = obj.metadata.namespace or ""
    a.generation[ns] = (a.generation[ns] or 0) + 1
  end
  sim.store:on("pods", bump)
  sim.store:on("services", bump)
  return a
end

-- ---- endpoints ----

local function pod_ready(pod)
  if pod.metadata.deletionTimestamp then return false end
  for _, c in ipairs(pod.status and pod.status.conditions or {}) do
    if c.type == "Ready" then return c.status == "True" end
  end
  return false
end

-- The ready pods behind ns/name (a Service), or nil when there is no such Service.
function A:endpoints(ns, name)
  local svc = self.store:get("services", ns, name)
  if not svc then return nil end
  local key = ns .. "/" .. name
  local gen = self.generation[ns] or 0
  local cached = self.endpoints_cache[key]
  if cached and cached.gen == gen and cached.svc == svc then return cached.pods, svc end
  local match = selectors.from_map(svc.spec and svc.spec.selector)
  local pods = {}
  for _, p in ipairs(self.store:list("pods", ns)) do
    if match(p.metadata.labels) and pod_ready(p) then pods[#pods + 1] = p end
  end
  self.endpoints_cache[key] = { gen = gen, svc = svc, pods = pods }
  return pods, svc
end

local function version_of(pod)
  local c = pod.spec.containers[1]
  local _, tag = util.split_image(c and c.image)
  return tag, c and c.image or ""
end

-- ---- latency and errors ----

-- A log-normal draw with the given median and 95th percentile.
local function sample_latency(b)
  local l = b.latency or { p50 = 0, p95 = 0 }
  local p50, p95 = l.p50 or 0, l.p95 or l.p50 or 0
  local extra = b.extra_latency or 0
  if p50 <= 0 then return extra end
  local sigma = p95 > p50 and (math.log(p95) - math.log(p50)) / 1.6449 or 0
  local u1, u2 = math.random(), math.random()
  if u1 < 1e-12 then u1 = 1e-12 end
  local z = math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)
  return math.exp(math.log(p50) + sigma * z) + extra
end
apps.sample_latency = sample_latency

local ROUTES = {
  ["/health"] = true, ["/api/health/detailed"] = true, ["/api/health/database"] = true,
  ["/api/providers/health"] = true, ["/api/orders"] = true, ["/admin/features"] = true,
}

local function route_of(path)
  if ROUTES[path] then return path end
  if path:match("^/admin/features/") then return "/admin/features/{name}" end
  if path:match("^/api/orders/") then return "/api/orders/{id}" end
  return "other"
end

local function is_health(path)
  return path == "/health" or path == "/healthz" or path == "/ready" or path:match("^/api/health") ~= nil
end

-- ---- the Multiship API ----

function A:flags(ns)
  local f = self.features[ns]
  if not f then
    f = {}
    for name, enabled in pairs(self.initial_features) do
      f[name] = { enabled = enabled == true, updated_at = self.started_at, evaluations = 0 }
    end
    self.features[ns] = f
  end
  return f
end

function A:provider_status(name)
  local fault = self.sim.faults:provider(name)
  if fault then return fault end
  return self.providers[name] or "healthy"
end

-- Whether orders go to a provider: its flag provider-NAME-enabled, on unless switched off.
function A:provider_enabled(ns, name)
  local f = self:flags(ns)["provider-" .. name .. "-enabled"]
  return not (f and f.enabled == false)
end

-- The provider an order request fails on, or nil: orders spread over the enabled
-- providers, so one that is down fails its share of them; with none enabled, all fail.
function A:provider_failure(ns)
  local enabled, down = 0, {}
  for _, name in ipairs(PROVIDERS) do
    if self:provider_enabled(ns, name) then
      enabled = enabled + 1
      if self:provider_status(name) == "down" then down[#down + 1] = name end
    end
  end
  if enabled == 0 then return "none" end
  if #down > 0 and math.random() < #down / enabled then return down[math.random(#down)] end
  return nil
end

local function reply(status, body, extra)
  local headers = { ["content-type"] = "application/json" }
  for k, v in pairs(extra or {}) do headers[k] = v end
  return status, headers, json.encode(body)
end

local function authorized(self, req)
  local h = req.headers and req.headers["authorization"] or ""
  local token = h:match("^[Bb]earer%s+(.+)$")
  return token ~= nil and token == self.admin_token
end

local SAMPLE_ORDERS = {
  { id = "ord_1001", status = "shipped", provider = "easypost", carrier = "USPS", total = 42.5, currency = "USD" },
  { id = "ord_1002", status = "label_created", provider = "shippo", carrier = "UPS", total = 18.0, currency = "USD" },
  { id = "ord_1003", status = "delivered", provider = "veeqo", carrier = "DHL", total = 129.99, currency = "GBP" },
}

function A:multiship(ctx)
  local path, method, b, version = ctx.path, ctx.method, ctx.behaviour, ctx.version
  local healthy = b.health >= 200 and b.health < 300
  local now = util.timestamp()
  if path == "/health" and (method == "GET" or method == "HEAD") then
    if healthy then return reply(200, { status = "ok", version = version, timestamp = now }) end
    return reply(b.health, { status = "error", version = version, error = "health check failed: database connection pool exhausted" })
  end
  if path == "/api/health/database" then
    if healthy then
      return reply(200, { status = "healthy", database = "postgresql", connected = true, latency_ms = math.random(1, 6),
        pool = { total = 10, idle = math.random(5, 9), waiting = 0 }, version = version })
    end
    return reply(b.health, { status = "unhealthy", database = "postgresql", connected = false,
      error = "timeout acquiring connection from pool", version = version })
  end
  local providers, any_down, any_degraded = {}, false, false
  for _, name in ipairs(PROVIDERS) do
    local st = self:provider_status(name)
    local enabled = self:provider_enabled(ctx.ns, name)
    local p = { status = st, enabled = enabled, latency_ms = BASE_LATENCY_MS[name] + math.random(0, 40) }
    if st == "down" then
      any_down = any_down or enabled
      p.latency_ms, p.error = nil, name .. " API unreachable: connect timeout"
    elseif st == "degraded" then
      any_degraded = any_degraded or enabled
      p.latency_ms = p.latency_ms * 8
    end
    providers[name] = p
  end
  if path == "/api/providers/health" then
    local overall = any_down and "unhealthy" or (any_degraded and "degraded" or "healthy")
    return reply(any_down and 503 or 200, { status = overall, providers = providers, version = version, timestamp = now })
  end
  if path == "/api/health/detailed" then
    local overall = healthy and ((any_down or any_degraded) and "degraded" or "healthy") or "unhealthy"
    return reply(healthy and 200 or b.health, {
      status = overall, version = version, timestamp = now,
      uptime_seconds = ctx.uptime,
      checks = {
        database = { status = healthy and "healthy" or "unhealthy", latency_ms = math.random(1, 6) },
        redis = { status = "healthy", latency_ms = math.random(0, 2) },
        providers = providers,
      },
    })
  end
  if path:match("^/admin/features") then
    if not authorized(self, ctx.req) then
      return reply(401, { error = "unauthorized", message = "a valid admin bearer token is required" },
        { ["www-authenticate"] = 'Bearer realm="multiship-admin"' })
    end
    local flags = self:flags(ctx.ns)
    if path == "/admin/features" and method == "POST" then
      local ok, body = pcall(json.decode, ctx.req.body or "")
      if not ok or type(body) ~= "table" or type(body.feature) ~= "string" or body.feature == ""
        or type(body.enabled) ~= "boolean" then
        return reply(400, { error = "bad_request", message = 'expected {"feature": NAME, "enabled": true|false}' })
      end
      local f = flags[body.feature] or { evaluations = 0 }
      local previous = f.enabled
      f.enabled, f.updated_at = body.enabled, now
      flags[body.feature] = f
      return reply(200, { feature = body.feature, enabled = f.enabled, previous = previous == nil and json.null or previous,
        updated_at = now })
    end
    if path == "/admin/features" and method == "GET" then
      local list = json.array()
      for _, name in ipairs(util.sorted_keys(flags)) do
        list[#list + 1] = { feature = name, enabled = flags[name].enabled, updated_at = flags[name].updated_at }
      end
      return reply(200, { features = list })
    end
    if path == "/admin/features/analytics" and method == "GET" then
      local out = {}
      for name, f in pairs(flags) do
        out[name] = { enabled = f.enabled, evaluations = f.evaluations, enabled_share = f.enabled and 1.0 or 0.0 }
      end
      return reply(200, { features = out, window = "1h" })
    end
    local name = path:match("^/admin/features/([^/]+)$")
    if name and method == "GET" then
      local f = flags[name]
      if not f then return reply(404, { error = "not_found", message = ("feature %q not found"):format(name) }) end
      f.evaluations = f.evaluations + 1
      return reply(200, { feature = name, enabled = f.enabled, updated_at = f.updated_at })
    end
    return reply(405, { error = "method_not_allowed" })
  end
  -- the business endpoints carry the version's error rate
  if path:match("^/api/") and math.random() < b.error_rate then
    return reply(500, { error = "internal_error", message = "unexpected error processing request", version = version })
  end
  local failed = path:match("^/api/orders") and self:provider_failure(ctx.ns)
  if failed == "none" then
    return reply(503, { error = "no_provider", message = "every shipping provider is switched off", version = version })
  elseif failed then
    return reply(502, { error = "provider_error", provider = failed, message = failed .. " API unreachable: connect timeout",
      version = version })
  end
  if path == "/api/orders" and method == "GET" then
    return reply(200, { orders = SAMPLE_ORDERS, total = #SAMPLE_ORDERS, page = 1, version = version })
  end
  if path == "/api/orders" and method == "POST" then
    return reply(201, { id = "ord_" .. math.random(2000, 9999), status = "created", version = version })
  end
  local id = path:match("^/api/orders/([^/]+)$")
  if id and method == "GET" then
    return reply(200, { id = id, status = id == "test" and "ok" or "shipped", version = version })
  end
  return reply(404, { error = "not_found", path = path })
end

function A:generic(ctx)
  local b = ctx.behaviour
  if is_health(ctx.path) then
    local ok = b.health >= 200 and b.health < 300
    return reply(b.health, { status = ok and "ok" or "error", version = ctx.version })
  end
  if math.random() < b.error_rate then
    return reply(500, { error = "internal_error", version = ctx.version })
  end
  return reply(200, { service = ctx.service, version = ctx.version, path = ctx.path, pod = ctx.pod.metadata.name })
end

-- ---- serving ----

-- Serves one request to Service ns/name at path; returns status, headers, body.
function A:serve(ns, name, path, req)
  path = path == "" and "/" or path
  local pods, svc = self:endpoints(ns, name)
  local t0 = util.now()
  if not svc then
    return reply(404, { kind = "Status", apiVersion = "v1", metadata = {}, status = "Failure",
      message = ("services %q not found"):format(name), reason = "NotFound", code = 404 })
  end
  if #pods == 0 then
    self.sim.metrics:observe(ns, name, "", route_of(path), req.method, 503, 0)
    return 503, { ["content-type"] = "text/plain; charset=utf-8" },
      ("no endpoints available for service %q\n"):format(name)
  end
  local pod = pods[math.random(#pods)]
  local version, image = version_of(pod)
  local b = self.sim.faults:behaviour(image, ns .. "/" .. name, self:flags(ns))
  local started = util.parse_time(pod.status and pod.status.startTime) or t0
  local ctx = {
    ns = ns, service = name, path = path, method = req.method, req = req, pod = pod,
    version = version, behaviour = b, uptime = math.floor(t0 - started),
  }
  local delay = sample_latency(b)
  if delay > 0 then task.sleep(delay) end
  local model = self.sim.faults:app_of(image)
  local status, headers, body
  if model == "multiship" then
    status, headers, body = self:multiship(ctx)
  else
    status, headers, body = self:generic(ctx)
  end
  headers["x-served-by"] = pod.metadata.name
  headers["x-version"] = version
  local elapsed = util.now() - t0
  self.served = self.served + 1
  self.sim.metrics:observe(ns, name, version, route_of(path), req.method, status, elapsed)
  self.sim.kubelet:append_log(pod, ("INFO  %s %s %d %dms"):format(req.method, path, status, math.floor(elapsed * 1000 + 0.5)))
  return status, headers, body
end

-- ---- background traffic ----

-- One second's worth of simulated requests for each `traffic` entry: counted in
-- /metrics with the version's error rate and latency, never sent.
function A:tick(carry)
  for i, t in ipairs(self.traffic) do
    local ns = t.namespace or self.sim.namespace
    local pods = self:endpoints(ns, t.service)
    local want = (t.rps or 0) + (carry[i] or 0)
    local n = math.floor(want)
    carry[i] = want - n
    local route = t.route or "/api/orders"
    for _ = 1, n do
      if not pods or #pods == 0 then
        self.sim.metrics:observe(ns, t.service, "", route, "GET", 503, 0)
      else
        local pod = pods[math.random(#pods)]
        local version, image = version_of(pod)
        local b = self.sim.faults:behaviour(image, ns .. "/" .. t.service, self:flags(ns))
        local code = 200
        if is_health(route) then
          code = b.health
        elseif math.random() < b.error_rate then
          code = 500
        elseif route:match("^/api/orders") then
          local failed = self:provider_failure(ns)
          if failed then code = failed == "none" and 503 or 502 end
        end
        self.sim.metrics:observe(ns, t.service, version, route, "GET", code, sample_latency(b))
      end
    end
  end
end

function A:start_traffic()
  if #self.traffic == 0 then return end
  local carry = {}
  local clock = self.sim.clock
  local function again()
    self:tick(carry)
    self.traffic_timer = clock:after(1, again)
  end
  self.traffic_timer = clock:after(1, again)
end

return apps
