-- lease.lua (k8s.lease): coordination.k8s.io/v1 Leases as locks, and the engine's
-- `kubernetes` lock backend on top of them.
--
-- lease_acquire(name, { holder, ttl }) creates the Lease, or takes it over when it is
-- free (no holder) or expired (renewTime + leaseDurationSeconds has passed), or renews
-- it when `holder` already holds it; every write carries the resourceVersion read, so of
-- two contenders exactly one wins (the other gets 409 Conflict and reports the Lease
-- held). While held, a background task renews it every ttl/3; release() stops that task
-- and clears holderIdentity (as client-go's leader election does on release), so the
-- next contender need not wait for the expiry.
--
-- Expiry is judged with this machine's clock against the Lease's renewTime; clocks more
-- than a few seconds apart across machines shorten or lengthen the wait for an expired
-- lease by that much.

local json = require("json")
local log = require("log")
local task = require("task")
local time = require("time")
local client = require("k8s.client")
local util = require("k8s.util")

local M = {}
local Client = client.Client

local DEFAULT_TTL = 30
local HOLDER_ANNOTATION = "tug.dev/lock-holder"

local Lease = {}
Lease.__index = Lease

local function seconds(v, what)
  if v == nil then return nil end
  if type(v) == "number" then return v end
  local s = type(v) == "string" and time.parse_duration(v)
  if not s then error(("k8s.lease_acquire: %s must be seconds or a duration (got %s)"):format(what, tostring(v)), 3) end
  return s
end

local function is_conflict(err)
  return type(err) == "table" and err.kind == "k8s" and err.status == 409
end

-- What a Lease says about its holder: { holder, renew_time, expires, held, lease }.
local function describe(lease, now)
  local spec = lease.spec ~= json.null and lease.spec or {}
  local holder = spec.holderIdentity
  if holder == json.null or holder == "" then holder = nil end
  local renew = util.parse_time(spec.renewTime ~= json.null and spec.renewTime or nil)
    or util.parse_time(spec.acquireTime ~= json.null and spec.acquireTime or nil)
  local duration = tonumber(spec.leaseDurationSeconds) or 0
  local expires = renew and renew + duration
  return {
    holder = holder, renew_time = renew, expires = expires, lease = lease,
    held = holder ~= nil and expires ~= nil and expires >= (now or time.now()),
    transitions = spec.leaseTransitions,
  }
end
M.describe = describe

local function with_annotations(obj, annotations)
  if not annotations then return end
  obj.metadata.annotations = obj.metadata.annotations ~= json.null and obj.metadata.annotations or json.object()
  for k, v in pairs(annotations) do obj.metadata.annotations[k] = v end
end

-- lease_acquire(name, opts) -> lease, or nil, info (see describe), "held". opts: holder
-- (default HOST-PID), ttl (seconds or a duration, default 30), namespace, annotations,
-- renew (default true: renew in the background while held), force (take it even from a
-- live holder), on_lost = fn(lease) when a renewal finds it taken or it expired unrenewed.
function Client:lease_acquire(name, opts)
  opts = opts or {}
  if type(name) ~= "string" or name == "" then error("k8s.lease_acquire: name must be a non-empty string", 2) end
  local holder = opts.holder or (tug.sys.hostname() .. "-" .. tug.sys.pid())
  local ttl = math.max(1, math.ceil(seconds(opts.ttl, "ttl") or DEFAULT_TTL))
  local ns = opts.namespace or self.namespace
  local info
  for _ = 1, 3 do
    local current = self:get("leases", name, { namespace = ns, optional = true })
    local now = time.now()
    local stamp = util.format_micro(now)
    if not current then
      local obj = {
        apiVersion = "coordination.k8s.io/v1", kind = "Lease",
        metadata = { name = name, namespace = ns },
        spec = { holderIdentity = holder, leaseDurationSeconds = ttl, acquireTime = stamp, renewTime = stamp,
          leaseTransitions = 0 },
      }
      with_annotations(obj, opts.annotations)
      local ok, out = pcall(self.create, self, "leases", obj, { namespace = ns })
      if ok then return M.hold(self, out, holder, ttl, opts) end
      if not is_conflict(out) then error(out, 0) end
    else
      info = describe(current, now)
      if info.holder == holder or not info.held or opts.force then
        local obj = util.copy(current)
        obj.spec = obj.spec ~= json.null and obj.spec or json.object()
        if info.holder ~= holder then
          obj.spec.leaseTransitions = (tonumber(obj.spec.leaseTransitions) or 0) + 1
          obj.spec.acquireTime = stamp
        end
        obj.spec.holderIdentity = holder
        obj.spec.renewTime = stamp
        obj.spec.leaseDurationSeconds = ttl
        with_annotations(obj, opts.annotations)
        local ok, out = pcall(self.replace, self, "leases", obj, { namespace = ns })
        if ok then return M.hold(self, out, holder, ttl, opts) end
        if not is_conflict(out) then error(out, 0) end
      else
        return nil, info, "held"
      end
    end
  end
  -- three lost races in a row: someone else is busy taking it
  local latest = self:get("leases", name, { namespace = ns, optional = true })
  return nil, latest and describe(latest) or info or {}, "held"
end

-- lease_inspect(name, opts) -> info (see describe) when the Lease is held, else nil.
function Client:lease_inspect(name, opts)
  opts = opts or {}
  local lease = self:get("leases", name, { namespace = opts.namespace or self.namespace, optional = true })
  if not lease then return nil end
  local info = describe(lease)
  return info.held and info or nil
end

-- ---- a held lease ----

function M.hold(c, obj, holder, ttl, opts)
  local l = setmetatable({
    client = c, name = obj.metadata.name, namespace = obj.metadata.namespace, holder = holder, ttl = ttl,
    lease = obj, renewed_at = time.now(), renewals = 0, on_lost = opts.on_lost,
    planned = obj.planned,
  }, Lease)
  if opts.renew ~= false and not obj.planned then
    l.task = task.spawn(function() l:renew_loop() end)
  end
  return l
end

function Lease:__tostring()
  local state = self.released and "released" or self.lost and "lost" or "held"
  return ("k8s.lease %s/%s (%s by %s)"):format(self.namespace, self.name, state, self.holder)
end

function Lease:held() return not self.lost and not self.released end

-- One renewal: renewTime moves on, with the resourceVersion last written; on a conflict
-- the Lease is read again and renewed if it is still ours. Marks the lease lost when
-- someone else holds it.
function Lease:renew()
  local c = self.client
  for _ = 1, 2 do
    local obj = util.copy(self.lease)
    obj.spec.renewTime = util.format_micro()
    obj.spec.holderIdentity = self.holder
    local ok, out = pcall(c.replace, c, "leases", obj, { namespace = self.namespace })
    if ok then
      self.lease, self.renewed_at, self.renewals = out, time.now(), self.renewals + 1
      return true
    end
    if not is_conflict(out) then error(out, 0) end
    local current = c:get("leases", self.name, { namespace = self.namespace, optional = true })
    if not current or describe(current).holder ~= self.holder then
      self.lost = true
      return false
    end
    self.lease = current
  end
  return false
end

function Lease:lose(reason)
  if self.lost and self.lost_reported then return end
  self.lost, self.lost_reported = true, true
  log.error("lease lost: " .. reason, { lease = self.namespace .. "/" .. self.name, holder = self.holder })
  if self.on_lost then self.on_lost(self) end
end

function Lease:renew_loop()
  while not self.released do
    task.sleep(self.ttl / 3)
    if self.released then return end
    local ok, err = pcall(self.renew, self)
    if not ok then
      if type(err) == "table" and err.kind == "cancelled" then error(err, 0) end
      log.warn("could not renew lease: " .. tostring(err), { lease = self.namespace .. "/" .. self.name })
      if time.now() > self.renewed_at + self.ttl then
        self:lose("not renewed within its ttl")
        return
      end
    elseif self.lost then
      self:lose("another holder took it")
      return
    end
  end
end

-- release() -> true when the Lease was ours and is now free. Stops renewing either way.
function Lease:release()
  if self.released then return false end
  self.released = true
  if self.task then
    self.task:cancel()
    self.task = nil
  end
  if self.lost or self.planned then return false end
  local c = self.client
  for _ = 1, 3 do
    local current = c:get("leases", self.name, { namespace = self.namespace, optional = true })
    if not current or describe(current).holder ~= self.holder then return false end
    local obj = util.copy(current)
    obj.spec.holderIdentity = nil
    obj.spec.leaseDurationSeconds = 1
    obj.spec.renewTime = util.format_micro()
    local ok, out = pcall(c.replace, c, "leases", obj, { namespace = self.namespace })
    if ok then return true end
    if not is_conflict(out) then error(out, 0) end
  end
  return false
end
Lease.__close = function(self) self:release() end

-- ---- the engine's lock backend ----

-- The same three functions as runtime/lua/lock.lua's file backend, on a Lease named
-- tug-lock-ENV-NAME in the environment's namespace (kubernetes.lock_namespace to change
-- it), held for kubernetes.lock_ttl seconds (default 60) and renewed while the run lives.
-- holderIdentity is the run id; the holder's details (host, pid, playbook, since) are a
-- JSON annotation, so `lock.describe` can name them. A holder on this host whose process
-- is gone is reported "dead" and taken over with --break-lock; anywhere else, a dead
-- holder's Lease simply expires.
function M.lock_backend(k8s)
  local backend = {}
  local clients = {}

  local function environment(req_env, env_doc)
    if type(env_doc) == "table" then return env_doc end
    return require("tug.environment").load(req_env)
  end

  local function client_for(env_name, env_doc)
    local env = environment(env_name, env_doc)
    local cfg = env.kubernetes
    if type(cfg) ~= "table" then
      error(tug.error.new("lock", ("environment %s has no kubernetes block: the kubernetes lock backend needs one")
        :format(env_name)), 0)
    end
    local c = clients[env_name]
    if not c then
      c = k8s.connect(cfg, { default = false })
      clients[env_name] = c
    end
    return c, cfg
  end

  local function lease_name(env, name) return util.dns_label("tug-lock-" .. env .. "-" .. name) end

  local function holder_of(info)
    local ann = info.lease and info.lease.metadata.annotations
    local text = type(ann) == "table" and ann[HOLDER_ANNOTATION]
    local ok, holder = pcall(json.decode, text or "")
    if ok and type(holder) == "table" then return holder end
    return { run_id = info.holder, playbook = "?", pid = "?", host = "?", since = "?" }
  end

  -- acquire(req) -> handle, or nil, holder, "held" | "dead". req: env, name, run_id,
  -- playbook, break_lock, environment (the environment's document, else loaded by name).
  function backend.acquire(req)
    local c, cfg = client_for(req.env, req.environment)
    local me = {
      host = tug.sys.hostname(), pid = tug.sys.pid(), run_id = req.run_id, playbook = req.playbook,
      since = time.format(), lock = req.name, env = req.env,
    }
    local opts = {
      holder = tostring(req.run_id), ttl = cfg.lock_ttl or 60, namespace = cfg.lock_namespace,
      annotations = { [HOLDER_ANNOTATION] = json.encode(me) },
    }
    local name = lease_name(req.env, req.name)
    local l, info = c:lease_acquire(name, opts)
    if l then return { lease = l, holder = me } end
    local holder = holder_of(info)
    local dead = holder.host == me.host and math.type(holder.pid) == "integer" and not tug.sys.pid_alive(holder.pid)
    if dead and req.break_lock then
      opts.force = true
      l, info = c:lease_acquire(name, opts)
      if l then return { lease = l, holder = me } end
      holder = holder_of(info)
    end
    return nil, holder, dead and "dead" or "held"
  end

  function backend.release(handle)
    handle.lease:release()
  end

  -- inspect(env, name) -> the holder, or nil when the lock is free.
  function backend.inspect(env, name)
    local c, cfg = client_for(env)
    local info = c:lease_inspect(lease_name(env, name), { namespace = cfg.lock_namespace })
    return info and holder_of(info) or nil
  end

  return backend
end

return M
