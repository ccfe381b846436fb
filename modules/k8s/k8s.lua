-- k8s.lua: the public Kubernetes module. Natively, without kubectl: kubeconfig as kubectl
-- reads it (k8s.kubeconfig, k8s.auth), a REST client over the http module with discovery,
-- retries and structured errors (k8s.client), watches (k8s.watch), kubectl's rollout verbs
-- (k8s.verbs), exec over WebSocket (k8s.exec) and leases with the engine's lock backend
-- (k8s.lease). The C half
-- (k8s.core) holds the one primitive the waiting verbs need.
--
--   local c = k8s.connect(ctx.env.kubernetes)     -- { context, namespace } or { simulate = true }
--   c:set_image("api", { api = "multiship/api:v2.2.0" })
--   c:rollout_status("api", { timeout = "5m" })
--
-- Every client method is also a module function acting on the default client: the last
-- one k8s.connect made, else the environment given to k8s.set_environment, else the
-- kubeconfig's current context (in a pod: its service account).

local log = require("log")
local kubeconfig = require("k8s.kubeconfig")
local client = require("k8s.client")
require("k8s.watch")
require("k8s.verbs")
require("k8s.exec")
local lease = require("k8s.lease")

local k8s = {}

local CONNECT_OPTIONS = {
  context = true, namespace = true, kubeconfig = true, cluster = true, user = true,
  simulate = true, scenario = true, timing = true, in_cluster = true, service_account_dir = true,
  server = true, token = true, ca = true, insecure = true,
  retries = true, backoff = true, timeout = true, field_manager = true,
  lock_ttl = true, lock_namespace = true,
}

local default_client, default_config
local simulator -- the embedded cluster simulate = true starts, one per process

-- The cluster simulate = true connects to: started on first use, on an ephemeral port of
-- 127.0.0.1, in this process (it serves from tug's own loop).
local function embedded_simulator(cfg)
  if simulator and not simulator.closed then return simulator end
  local opts = { port = 0, scenario = cfg.scenario }
  if cfg.timing then opts.timing = cfg.timing end
  -- it serves the whole process, not the run whose step first needed it: outside the
  -- run's scope, so the run's end does not close it (the CLI does, when the command ends)
  local outer = tug.scope_set(0)
  local ok, started = pcall(require("sim").start, opts)
  tug.scope_set(outer)
  if not ok then error(started, 0) end
  simulator = started
  return simulator
end

local function connection(cfg)
  if cfg.simulate then
    local s = embedded_simulator(cfg)
    return { server = s.url, namespace = cfg.namespace or s.namespace or "default", context = "simulated" }, s
  end
  if cfg.server then
    local conn = { server = cfg.server:gsub("/+$", ""), namespace = cfg.namespace or "default",
      context = cfg.context or "direct" }
    if cfg.token then conn.token = log.secret(cfg.token) end
    if cfg.ca or cfg.insecure then conn.tls = { ca = cfg.ca, insecure = cfg.insecure or nil } end
    return conn
  end
  local explicit = cfg.kubeconfig or cfg.context or cfg.cluster
  if cfg.in_cluster or (not explicit and kubeconfig.in_cluster_available(cfg)
      and #kubeconfig.files(cfg) == 0) then
    return kubeconfig.in_cluster(cfg)
  end
  return kubeconfig.resolve(cfg)
end

-- k8s.connect(cfg) -> client. cfg is an environment's `kubernetes:` block:
--   { context = "multiship-staging", namespace = "multiship-staging" }    kubeconfig
--   { kubeconfig = "path", context = ..., namespace = ... }               that file only
--   { simulate = true, namespace = "multiship", scenario = ... }          embedded simulator
--   { in_cluster = true }                       the pod's service account (also chosen
--                                               when KUBERNETES_SERVICE_HOST is set and no
--                                               kubeconfig exists)
--   { server = "http://127.0.0.1:6443", token = ..., ca = ..., insecure = ... }
-- plus retries (5), backoff (0.2 s), timeout (30 s per request), field_manager ("tug").
-- The new client becomes the default for the module functions, unless
-- opts.default = false.
function k8s.connect(cfg, opts)
  if cfg ~= nil and type(cfg) ~= "table" then
    error(("k8s.connect: cfg must be a table (got %s)"):format(type(cfg)), 2)
  end
  cfg = cfg or {}
  for key in pairs(cfg) do
    if not CONNECT_OPTIONS[key] then error(("k8s.connect: unknown option '%s'"):format(tostring(key)), 2) end
  end
  local conn, sim = connection(cfg)
  local c = client.new(conn, cfg)
  c.sim = sim
  if not (opts and opts.default == false) then default_client = c end
  return c
end

-- Makes cfg (an environment's kubernetes block, or the environment itself) the default
-- for the module functions, connecting on first use. The engine calls this when a run
-- starts, so a playbook's k8s.get acts on the run's environment.
function k8s.set_environment(env)
  local cfg = env
  if type(env) == "table" and type(env.kubernetes) == "table" then cfg = env.kubernetes end
  default_config, default_client = cfg, nil
end

-- The default client (connecting if need be).
function k8s.client()
  if not default_client then
    local c = k8s.connect(default_config or {})
    default_client = c
  end
  return default_client
end

-- Sets the default client; returns the previous one.
function k8s.use(c)
  local previous = default_client
  default_client = c
  return previous
end

-- The simulator simulate = true started in this process, if any.
function k8s.simulator() return simulator end

local METHODS = {
  "get", "list", "create", "replace", "patch", "delete", "watch", "update", "resource", "discovery",
  "set_image", "rollout_status", "rollout_history", "rollout_undo", "restart", "scale",
  "patch_service_selector", "wait", "logs", "exec", "lease_acquire", "lease_inspect",
}
for _, name in ipairs(METHODS) do
  k8s[name] = function(...)
    local c = k8s.client()
    return c[name](c, ...)
  end
end

k8s.kubeconfig = kubeconfig
k8s.deployment_status = require("k8s.verbs").deployment_status
k8s.lock_backend = lease.lock_backend(k8s)
k8s.Client = client.Client

return k8s
