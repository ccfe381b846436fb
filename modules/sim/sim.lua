-- sim.lua: the simulated Kubernetes cluster, the embedded default behind
-- `environments/local.yaml` and what the kubernetes module is tested against.
--
--   local s = sim.start{ port = 0, scenario = "my-scenario.yaml" }
--   exec.run({ "kubectl", "--kubeconfig", s:kubeconfig(path), "get", "pods" })
--   s:fault{ type = "crash_loop", version = "v2.2.1-bad" }
--   s:close()
--
-- One object per simulated cluster, on tug's loop: an object store with a global
-- resourceVersion and watch log (sim.store), the API server over http.server
-- (sim.api, with discovery, Tables, patches and watches), the Deployment and
-- ReplicaSet controllers (sim.controller), the kubelet (sim.kubelet), the simulated
-- applications behind Services (sim.apps), /metrics (sim.metrics) and faults
-- (sim.faults), what `kubectl exec` runs (sim.exec), all driven by one clock task
-- (sim.clock). The scenario (sim.scenario,
-- default sim.default_scenario) says what the cluster holds and how its images behave.

local http = require("http")
local api = require("sim.api")
local apps = require("sim.apps")
local clock = require("sim.clock")
local controller = require("sim.controller")
local events = require("sim.events")
local execs = require("sim.exec")
local faults = require("sim.faults")
local kubelet = require("sim.kubelet")
local metrics = require("sim.metrics")
local patch = require("sim.patch")
local resources = require("sim.resources")
local scenario = require("sim.scenario")
local selectors = require("sim.selectors")
local store = require("sim.store")
local util = require("sim.util")

local sim = {}
local Sim = {}
Sim.__index = Sim

local OPTIONS = { port = true, host = true, scenario = true, timing = true, serve = true }

local SYSTEM_NAMESPACES = { "default", "kube-system", "kube-public", "kube-node-lease" }

local function check_options(opts)
  if opts == nil then return {} end
  if type(opts) ~= "table" then error(("sim.start: opts must be a table (got %s)"):format(type(opts)), 3) end
  for k in pairs(opts) do
    if not OPTIONS[k] then error(("sim.start: unknown option '%s'"):format(tostring(k)), 3) end
  end
  if opts.timing ~= nil and type(opts.timing) ~= "table" then error("sim.start: opts.timing must be a table", 3) end
  return opts
end

-- sim.start{ port = 0, host = "127.0.0.1", scenario = path | yaml text | table,
--            timing = { pod_start = "50ms", ... }, serve = true }
-- Starts a simulated cluster and (unless serve = false) its API server; returns it.
function sim.start(opts)
  opts = check_options(opts)
  local sc = scenario.load(opts.scenario)
  local s = setmetatable({
    namespace = sc.namespace,
    scenario = sc,
    timing = sc.timing,
    closed = false,
  }, Sim)
  if opts.timing then s:set_timing(opts.timing) end
  s.clock = clock.new()
  s.store = store.new({ log_capacity = sc.watch_cache, log_window = sc.watch_cache_window, clock = function() return s.clock:now() end })
  s.recorder = events.new(s.store, { max = sc.events.max, enabled = sc.events.enabled })
  s.faults = faults.new(sc.images, s.clock)
  s.metrics = metrics.new()
  s.kubelet = kubelet.new(s)
  s.controller = controller.new(s)
  s.apps = apps.new(s, sc)
  s.execs = execs.new(s, sc.exec)
  s.faults.on_pod_change = function(f) s.kubelet:refresh(f) end
  s.store.graceful = function(def, obj)
    if def.name ~= "pods" or (s.timing.terminate_after or 0) <= 0 then return nil end
    return math.min(s.timing.terminate_after, obj.spec and obj.spec.terminationGracePeriodSeconds or 30)
  end

  for _, ns in ipairs(SYSTEM_NAMESPACES) do
    s.store:create("namespaces", { metadata = { name = ns } })
  end
  for i, obj in ipairs(sc.objects) do
    local created, err = s:apply(util.copy(obj), sc.namespace)
    if not created then
      error(("sim: scenario object %d (%s %s): %s"):format(i, tostring(obj.kind),
        tostring(obj.metadata and obj.metadata.name), err.message), 0)
    end
  end
  for i, spec in ipairs(sc.faults) do
    local f, err = s.faults:add(spec)
    if not f then error(("sim: scenario fault %d: %s"):format(i, err), 0) end
  end
  if sc.warm_start then
    s.kubelet.instant = true
    s.clock:drain()
    s.kubelet.instant = false
  end
  s.clock:start()
  s.apps:start_traffic()
  if opts.serve ~= false then
    s.server = http.server({ host = opts.host or "127.0.0.1", port = opts.port or 0, handler = api.handler(s) })
    s.port = s.server.port
    s.host = opts.host or "127.0.0.1"
    s.url = ("http://%s:%d"):format(s.host, s.port)
  end
  s.handler = api.handler(s)
  return s
end

function Sim:close()
  if self.closed then return end
  self.closed = true
  self.clock:stop()
  if self.server then self.server:close() end
end
Sim.__close = Sim.close

function Sim:__tostring()
  return ("sim.cluster(%s, rv %d%s)"):format(self.url or "not serving", self.store.rv, self.closed and ", closed" or "")
end

-- ---- timing ----

-- Changes timings at run time: { pod_start = "100ms", ready_after = 0.2, ... }.
function Sim:set_timing(t)
  local new = {}
  for k, v in pairs(self.timing) do new[k] = v end
  for k, v in pairs(t) do
    if scenario.TIMING_DEFAULTS[k] == nil then
      error(("sim: unknown timing %q (known: %s)"):format(tostring(k),
        table.concat(util.sorted_keys(scenario.TIMING_DEFAULTS), ", ")), 2)
    end
    new[k] = util.seconds(v, "timing." .. k)
  end
  for k, v in pairs(new) do self.timing[k] = v end
  return self.timing
end

function Sim:pause() self.clock:pause() end
function Sim:resume() self.clock:resume() end

-- ---- objects, as a client of the API would see them (copies) ----

local function def_for(resource)
  local def = resources.get(resource)
  if not def then error(("sim: unknown resource %q"):format(tostring(resource)), 3) end
  return def
end

function Sim:get(resource, ns, name)
  def_for(resource)
  local obj = self.store:get(resource, ns, name)
  return obj and util.copy(obj) or nil
end

-- list(resource, ns, { label = "app=api", field = "status.phase=Running" }) -> items
function Sim:list(resource, ns, opts)
  local def = def_for(resource)
  opts = opts or {}
  local label, field
  if opts.label then label = assert(selectors.parse_labels(opts.label)) end
  if opts.field then field = assert(selectors.parse_fields(def.name, opts.field)) end
  local items = self.store:list(resource, ns, { label = label, field = field })
  local out = {}
  for i, obj in ipairs(items) do out[i] = util.copy(obj) end
  return out
end

local function resource_of(obj)
  local def = resources.by_kind(obj.apiVersion, obj.kind)
  if not def then return nil end
  return def.name
end

-- create(obj) -> obj | nil, Status. The resource comes from apiVersion and kind.
function Sim:create(obj, ns)
  local resource = resource_of(obj)
  if not resource then error(("sim: cannot create %s %s"):format(tostring(obj.apiVersion), tostring(obj.kind)), 2) end
  obj = util.copy(obj)
  obj.metadata = obj.metadata or {}
  if resources.get(resource).namespaced then
    obj.metadata.namespace = obj.metadata.namespace or ns or self.namespace
  end
  local out, err = self.store:create(resource, obj)
  if not out then return nil, err end
  return util.copy(out)
end

-- update(obj[, subresource]) -> obj | nil, Status (409 when metadata.resourceVersion is stale).
function Sim:update(obj, subresource)
  local resource = resource_of(obj)
  if not resource then error(("sim: cannot update %s %s"):format(tostring(obj.apiVersion), tostring(obj.kind)), 2) end
  local out, err = self.store:update(resource, util.copy(obj), { subresource = subresource })
  if not out then return nil, err end
  return util.copy(out)
end

-- Creates obj, or replaces the object of that name (keeping what the server owns).
function Sim:apply(obj, ns)
  local resource = resource_of(obj)
  if not resource then
    return nil, { message = ("unknown kind %s/%s"):format(tostring(obj.apiVersion), tostring(obj.kind)) }
  end
  obj.metadata = obj.metadata or {}
  if resources.get(resource).namespaced then obj.metadata.namespace = obj.metadata.namespace or ns or self.namespace end
  local current = self.store:get(resource, obj.metadata.namespace, obj.metadata.name or "")
  if not current then return self:create(obj) end
  obj.metadata.resourceVersion = nil
  return self:update(obj)
end

-- patch(resource, ns, name, "strategic" | "merge" | "json", patch) -> obj | nil, Status
function Sim:patch(resource, ns, name, kind, p)
  local def = def_for(resource)
  local current = self.store:get(resource, ns, name)
  if not current then return nil, require("sim.errors").not_found(def, name) end
  local out, err
  if kind == "json" then
    out, err = patch.json_patch(util.copy(current), p)
  elseif kind == "merge" then
    out, err = patch.json_merge(util.copy(current), p)
  elseif kind == "strategic" then
    out, err = patch.strategic(resource, util.copy(current), p)
  else
    error(("sim: patch type must be strategic, merge or json (got %s)"):format(tostring(kind)), 2)
  end
  if not out then return nil, require("sim.errors").unprocessable(err) end
  local obj, serr = self.store:update(resource, out)
  if not obj then return nil, serr end
  return util.copy(obj)
end

-- delete(resource, ns, name[, { propagation = "Foreground", grace = 0 }]) -> obj | nil, Status
function Sim:delete(resource, ns, name, opts)
  def_for(resource)
  local obj, err = self.store:delete(resource, ns, name, opts or {})
  if not obj then return nil, err end
  return util.copy(obj)
end

-- ---- faults ----

-- fault{ type = ..., ... } -> id (see sim.faults); raises on a bad fault.
function Sim:fault(spec)
  local f, err = self.faults:add(spec)
  if not f then error("sim: " .. err, 2) end
  return f.id
end

-- clear_faults() removes every fault; clear_faults(id) one. Returns how many went.
function Sim:clear_faults(id)
  if id then return self.faults:remove(id) and 1 or 0 end
  return self.faults:clear()
end

function Sim:list_faults() return self.faults:describe() end

-- ---- exec ----

-- set_exec(rule) -> id: what a command run with `kubectl exec` / k8s.exec does (see
-- sim.exec): { argv | prefix, pod, labels, container, namespace } to match, and
-- { stdout, stderr, code } or run = fn(req) or local = true | { command, env, cwd, timeout }.
-- The newest rule is checked first. Raises on a bad rule.
function Sim:set_exec(rule)
  local id, err = self.execs:add(rule)
  if not id then error("sim: set_exec: " .. err, 2) end
  return id
end

-- clear_exec() removes every rule (the scenario's too); clear_exec(id) one. Returns how many.
function Sim:clear_exec(id) return self.execs:clear(id) end

-- ---- waiting ----

-- Waits until fn() returns a true value (checked after every write to the store and at
-- least every 50 ms), at most timeout seconds (default 30); returns that value, or nil,
-- "timeout".
function Sim:wait_for(fn, timeout)
  local deadline = util.now() + (timeout or 30)
  local signal = task.event()
  while true do
    local v = fn()
    if v then return v end
    local left = deadline - util.now()
    if left <= 0 then return nil, "timeout" end
    signal:wait(math.min(left, 0.05))
  end
end

-- Waits for a Deployment's rollout to end: "complete" (what `kubectl rollout status`
-- reports as success), or "failed" (ProgressDeadlineExceeded); nil, "timeout" otherwise.
function Sim:wait_rollout(ns, name, timeout)
  return self:wait_for(function()
    local d = self.store:get("deployments", ns or self.namespace, name)
    if not d then return nil end
    local st = d.status or {}
    for _, c in ipairs(st.conditions or {}) do
      if c.type == "Progressing" and c.reason == "ProgressDeadlineExceeded" then return "failed" end
    end
    if (st.observedGeneration or 0) < (d.metadata.generation or 0) then return nil end
    if (st.updatedReplicas or 0) < (d.spec.replicas or 0) then return nil end
    if (st.replicas or 0) > (st.updatedReplicas or 0) then return nil end
    if (st.availableReplicas or 0) < (st.updatedReplicas or 0) then return nil end
    return "complete"
  end, timeout)
end

-- ---- logs, requests, state ----

function Sim:logs(ns, pod_name, opts)
  local pod = self.store:get("pods", ns or self.namespace, pod_name)
  if not pod then return nil, require("sim.errors").not_found(def_for("pods"), pod_name) end
  return self.kubelet:logs(pod, opts or {})
end

-- request{ method = "GET", path = "/svc/multiship/api-service/health", headers, body }
-- -> status, headers, body: the API and the applications without a socket.
function Sim:request(req)
  local path, raw = req.path:match("^([^?]*)%??(.*)$")
  local r = {
    method = req.method or "GET", path = path, raw_query = raw,
    query = require("http.server").decode_query(raw), headers = {}, body = req.body or "",
  }
  for k, v in pairs(req.headers or {}) do r.headers[k:lower()] = v end
  local out = self.handler(r)
  if type(out) == "table" then return out.status, out.headers, out.body end
  return out
end

function Sim:state()
  local counts = {}
  for name in pairs(resources.DEFS) do counts[name] = self.store:count(name) end
  local deferred, timers = self.clock:pending()
  -- what the cluster holds that grows with use, each with its bound: the watch cache
  -- (watch_cache, watch_cache_window), the timers (cancelled ones included), the
  -- containers' logs (2,000 lines each); the Lua heap counts garbage not yet collected
  local cached, log_lines = 0, 0
  for name in pairs(resources.DEFS) do
    local r = self.store:state(name)
    cached = cached + (r.last - r.first + 1)
  end
  for _, pod in pairs(self.kubelet.pods) do
    for _, lines in pairs(pod.logs) do log_lines = log_lines + #lines end
    for _, lines in pairs(pod.previous or {}) do log_lines = log_lines + #lines end
  end
  return {
    memory = {
      lua_heap_kb = math.floor(collectgarbage("count")), watch_cache_events = cached, timers = self.clock.n,
      container_log_lines = log_lines,
    },
    url = self.url, resourceVersion = self.store.rv, objects = counts,
    pending = { deferred = deferred, timers = timers }, paused = self.clock.paused,
    controller_syncs = self.controller.syncs, controller_errors = self.clock.errors,
    faults = #self.faults.list, requests_served = self.apps.served,
    execs = { websocket = self.execs.stats.websocket, refused = self.execs.stats.refused },
  }
end

-- ---- kubeconfig ----

-- The kubeconfig for this cluster as text; written to path when given (returns path).
function Sim:kubeconfig(path, opts)
  opts = opts or {}
  local name = opts.name or "tug-sim"
  local text = table.concat({
    "apiVersion: v1",
    "kind: Config",
    "clusters:",
    "  - name: " .. name,
    "    cluster:",
    "      server: " .. assert(self.url, "sim: this cluster is not serving HTTP"),
    "contexts:",
    "  - name: " .. name,
    "    context:",
    "      cluster: " .. name,
    "      user: " .. name,
    "      namespace: " .. (opts.namespace or self.namespace),
    "current-context: " .. name,
    "preferences: {}",
    "users:",
    "  - name: " .. name,
    "    user:",
    "      token: tug-sim",
    "",
  }, "\n")
  if not path then return text end
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  return path
end

sim.scenario = scenario
sim.util = util

return sim
