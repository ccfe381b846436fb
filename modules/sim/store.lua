-- store.lua (sim.store): the simulated cluster's object store, what etcd plus the API
-- server's registry are to a real cluster. One global resourceVersion counter bumped by
-- every write (status writes included); per resource, the objects by "namespace/name",
-- a sorted key cache for lists, an index of dependents by owner uid, and a log of recent
-- events that watches read from (older than the log -> 410 Expired). The log is
-- kube-apiserver's watch cache: it keeps the last `log_window` seconds of a resource's
-- events (75 s, at least 100 events) and never more than `log_capacity` (10,000), so a
-- long-running cluster's memory follows its write rate, not its age.
--
-- The store owns what it holds: a stored object is never changed in place (a write
-- replaces it), so readers may keep references, and an event's object is the object as
-- it was. Callers that want to change an object copy it first (util.copy).
--
-- Operations return the stored object, or nil and a Status (sim.errors) the API server
-- would answer with. Listeners (store:on) hear every write synchronously; the
-- controller's listeners only queue work.

local json = require("json")
local errors = require("sim.errors")
local resources = require("sim.resources")
local util = require("sim.util")

local store = {}
local Store = {}
Store.__index = Store

local DEFAULT_LOG_CAPACITY = 10000
-- kube-apiserver's watch cache sizes itself to hold eventFreshDuration (75 s) of history,
-- and never fewer than lowerBoundCapacity (100) events.
local DEFAULT_LOG_WINDOW = 75
local LOG_FLOOR = 100

function store.new(opts)
  opts = opts or {}
  local s = setmetatable({
    rv = 1,
    resources = {},
    listeners = {},
    log_capacity = opts.log_capacity or DEFAULT_LOG_CAPACITY,
    log_window = opts.log_window or DEFAULT_LOG_WINDOW,
    graceful = nil, -- function(def, obj, opts) -> seconds to terminate, or nil to delete at once
    clock = opts.clock or util.now,
  }, Store)
  for name in pairs(resources.DEFS) do
    s.resources[name] = {
      objects = {},
      count = 0,
      keys = nil, -- sorted keys, rebuilt after a create or delete
      owned = {}, -- owner uid -> { key = true }
      log = {}, -- seq -> entry
      first = 1, -- oldest seq in the log
      last = 0, -- newest seq
      trimmed_rv = 0, -- rv of the newest entry dropped from the log
      signal = task.event(),
    }
  end
  return s
end

local function key_of(ns, name)
  return (ns or "") .. "/" .. name
end
store.key_of = key_of

function Store:state(resource)
  local r = self.resources[resource]
  if not r then error(("sim.store: unknown resource %q"):format(tostring(resource)), 3) end
  return r
end

function Store:current_rv() return self.rv end

-- ---- reading ----

function Store:get(resource, ns, name)
  return self:state(resource).objects[key_of(ns, name)]
end

local function sorted_keys(r)
  if not r.keys then
    local keys, n = {}, 0
    for k in pairs(r.objects) do
      n = n + 1
      keys[n] = k
    end
    table.sort(keys)
    r.keys = keys
  end
  return r.keys
end

-- First index in keys whose key is >= k (binary search).
local function lower_bound(keys, k)
  local lo, hi = 1, #keys + 1
  while lo < hi do
    local mid = (lo + hi) // 2
    if keys[mid] < k then lo = mid + 1 else hi = mid end
  end
  return lo
end

local function hex(s) return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end)) end
local function unhex(s)
  if not s:match("^%x*$") or #s % 2 == 1 then return nil end
  return (s:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
end

-- Objects of resource in namespace ns (nil: every namespace), in key order, filtered by
-- opts.label (matcher of labels) and opts.field (matcher of the object); opts.limit and
-- opts.continue page through them (later pages show the objects as they are then, not as
-- they were at the first page's resourceVersion). Returns items, resourceVersion,
-- continue token, remaining count; or nil, Status.
function Store:list(resource, ns, opts)
  opts = opts or {}
  local r = self:state(resource)
  local keys = sorted_keys(r)
  local prefix = ns and (ns .. "/") or nil
  local start = 1
  local list_rv = self.rv
  if opts.continue and opts.continue ~= "" then
    local rv, k = opts.continue:match("^(%d+)%.(%x*)$")
    local after = k and unhex(k)
    if not after then return nil, errors.bad_request("continue key is not valid: illegal base64 data") end
    list_rv = tonumber(rv)
    start = lower_bound(keys, after .. "\0")
  elseif prefix then
    start = lower_bound(keys, prefix)
  end
  local label, field, limit = opts.label, opts.field, opts.limit
  if limit and limit <= 0 then limit = nil end
  local items, n = {}, 0
  local objects = r.objects
  local i, nkeys = start, #keys
  local cont, remaining
  while i <= nkeys do
    local k = keys[i]
    if prefix and k:sub(1, #prefix) ~= prefix then break end
    local obj = objects[k]
    if obj and (not label or label(obj.metadata.labels)) and (not field or field(obj)) then
      if limit and n >= limit then
        cont = true
        -- how many more would match (remainingItemCount is exact only without selectors)
        if not label and not field then
          remaining = 0
          for j = i, nkeys do
            if prefix and keys[j]:sub(1, #prefix) ~= prefix then break end
            remaining = remaining + 1
          end
        end
        break
      end
      n = n + 1
      items[n] = obj
    end
    i = i + 1
  end
  if cont then
    -- the token names the last key returned
    local last = items[n]
    cont = list_rv .. "." .. hex(key_of(last.metadata.namespace, last.metadata.name))
  end
  return items, list_rv, cont, remaining
end

function Store:count(resource) return self:state(resource).count end

-- Objects of resource whose ownerReferences name uid (only controller refs when
-- controller_only).
function Store:owned(resource, uid, controller_only)
  local r = self:state(resource)
  local set = r.owned[uid]
  local out = {}
  if not set then return out end
  for k in pairs(set) do
    local obj = r.objects[k]
    if obj then
      if not controller_only then
        out[#out + 1] = obj
      else
        for _, ref in ipairs(obj.metadata.ownerReferences or {}) do
          if ref.uid == uid and ref.controller then
            out[#out + 1] = obj
            break
          end
        end
      end
    end
  end
  return out
end

-- ---- the log and listeners ----

function Store:on(resource, fn)
  local list = self.listeners[resource] or {}
  self.listeners[resource] = list
  list[#list + 1] = fn
end

local function index_owners(r, key, obj, add)
  local refs = obj.metadata.ownerReferences
  if not refs then return end
  for _, ref in ipairs(refs) do
    local uid = ref.uid
    if uid then
      local set = r.owned[uid]
      if add then
        if not set then
          set = {}
          r.owned[uid] = set
        end
        set[key] = true
      elseif set then
        set[key] = nil
        if next(set) == nil then r.owned[uid] = nil end
      end
    end
  end
end

-- Records a write: the object in place (or gone), an entry in the log, a wake-up for
-- watches, and the listeners.
function Store:commit(resource, kind, obj, old)
  local r = self.resources[resource]
  local key = key_of(obj.metadata.namespace, obj.metadata.name)
  if old then index_owners(r, key, old, false) end
  if kind == "DELETED" then
    r.objects[key] = nil
    r.count = r.count - 1
    r.keys = nil
  else
    r.objects[key] = obj
    index_owners(r, key, obj, true)
    if kind == "ADDED" then
      r.count = r.count + 1
      r.keys = nil
    end
  end
  local seq = r.last + 1
  r.last = seq
  local now = self.clock()
  r.log[seq] = { seq = seq, rv = tonumber(obj.metadata.resourceVersion), type = kind, obj = obj, old = old, key = key,
    at = now }
  -- the oldest events go when the log is full, or when they are older than the window
  -- and the floor is kept
  local floor = math.min(LOG_FLOOR, self.log_capacity)
  local stale = now - self.log_window
  while seq - r.first >= self.log_capacity or (seq - r.first >= floor and r.log[r.first].at < stale) do
    r.trimmed_rv = r.log[r.first].rv
    r.log[r.first] = nil
    r.first = r.first + 1
  end
  r.signal:notify()
  local listeners = self.listeners[resource]
  if listeners then
    for i = 1, #listeners do listeners[i](kind, obj, old) end
  end
end

-- The seq of the first log entry newer than rv, or nil and a Status when the log no
-- longer reaches back that far.
function Store:cursor_after(resource, rv)
  local r = self:state(resource)
  if rv < r.trimmed_rv then
    return nil, errors.expired(("too old resource version: %d (%d)"):format(rv, r.trimmed_rv + 1))
  end
  local lo, hi = r.first, r.last + 1
  while lo < hi do
    local mid = (lo + hi) // 2
    if r.log[mid].rv <= rv then lo = mid + 1 else hi = mid end
  end
  return lo
end

-- Entry at seq (nil when not yet written); "expired" when it has been dropped.
function Store:entry(resource, seq)
  local r = self.resources[resource]
  if seq < r.first then return "expired" end
  return r.log[seq]
end

function Store:signal(resource) return self:state(resource).signal end

-- ---- writing ----

local function next_rv(self)
  self.rv = self.rv + 1
  return self.rv
end

local function namespaced_check(self, def, obj)
  if not def.namespaced then
    obj.metadata.namespace = nil
    return true
  end
  local ns = obj.metadata.namespace
  if ns == nil or ns == "" then
    return nil, errors.bad_request("the server could not find the requested resource: a namespace is required")
  end
  if not self.resources.namespaces.objects[key_of(nil, ns)] then
    return nil, errors.namespace_not_found(ns)
  end
  return true
end

local function invalid(def, obj, errs)
  return nil, errors.invalid(def, obj.metadata and obj.metadata.name, errs)
end

-- Creates obj (the store takes it; callers pass a copy). opts.dry_run validates only.
function Store:create(resource, obj, opts)
  opts = opts or {}
  local def = resources.get(resource)
  if type(obj) ~= "table" then return nil, errors.bad_request("the body of the request is not an object") end
  if not opts.internal then util.prune_nulls(obj) end
  obj.metadata = obj.metadata or {}
  local meta = obj.metadata
  if (meta.name == nil or meta.name == "") and type(meta.generateName) == "string" and meta.generateName ~= "" then
    meta.name = meta.generateName .. util.random_suffix(5)
  end
  local ok, err = namespaced_check(self, def, obj)
  if not ok then return nil, err end
  obj.kind, obj.apiVersion = def.kind, def.api_version
  resources.default(def, obj)
  if not opts.internal then
    local errs = resources.validate(def, obj, nil)
    if #errs > 0 then return invalid(def, obj, errs) end
  end
  local key = key_of(meta.namespace, meta.name)
  local r = self.resources[resource]
  if r.objects[key] then return nil, errors.already_exists(def, meta.name) end
  if opts.dry_run then return obj end
  meta.uid = util.uid()
  meta.creationTimestamp = util.timestamp(self.clock())
  meta.resourceVersion = tostring(next_rv(self))
  meta.deletionTimestamp, meta.deletionGracePeriodSeconds = nil, nil
  meta.selfLink, meta.managedFields = nil, nil
  if def.generation then meta.generation = 1 else meta.generation = nil end
  if def.name == "services" and obj.spec and obj.spec.type ~= "ExternalName" and obj.spec.clusterIP == nil then
    obj.spec.clusterIP = self:allocate_cluster_ip()
    obj.spec.clusterIPs = json.array({ obj.spec.clusterIP })
  end
  self:commit(resource, "ADDED", obj, nil)
  return obj
end

function Store:allocate_cluster_ip()
  self.next_ip = (self.next_ip or 10) + 1
  local n = self.next_ip
  return ("10.96.%d.%d"):format(n // 250, n % 250 + 1)
end

-- Metadata a client cannot change with an update.
local SYSTEM_META = { "uid", "creationTimestamp", "generation", "deletionTimestamp", "deletionGracePeriodSeconds" }

-- Replaces the stored object with obj (the store takes obj and its metadata table; other
-- parts may be shared with the stored version, which is never changed in place).
-- opts.subresource = "status" changes only the status (and annotations); otherwise the
-- status is kept. A non-empty metadata.resourceVersion that is not the stored one is a
-- 409 Conflict. An update that changes nothing writes nothing (no new resourceVersion,
-- no event). opts.internal: a write by the simulated control plane, trusted as valid.
function Store:update(resource, obj, opts)
  opts = opts or {}
  local def = resources.get(resource)
  if type(obj) ~= "table" or type(obj.metadata) ~= "table" then
    return nil, errors.bad_request("the body of the request is not an object with metadata")
  end
  if not opts.internal then util.prune_nulls(obj) end
  local meta = obj.metadata
  if not def.namespaced then meta.namespace = nil end
  local key = key_of(meta.namespace, meta.name or "")
  local r = self.resources[resource]
  local old = r.objects[key]
  if not old then return nil, errors.not_found(def, meta.name or "") end
  local rv = meta.resourceVersion
  if rv ~= nil and rv ~= "" and rv ~= old.metadata.resourceVersion then
    return nil, errors.conflict(def, meta.name)
  end
  if meta.uid ~= nil and meta.uid ~= "" and meta.uid ~= old.metadata.uid then
    return nil, errors.conflict(def, meta.name, ("Precondition failed: UID in precondition: %s, UID in object meta: %s")
      :format(meta.uid, old.metadata.uid))
  end
  obj.kind, obj.apiVersion = def.kind, def.api_version
  for _, f in ipairs(SYSTEM_META) do meta[f] = old.metadata[f] end
  local status_only = opts.subresource == "status"
  if opts.binding then
    -- the scheduler's binding and the kubelet's first status in one write (the control
    -- plane's own): spec and status as given
    assert(opts.internal, "a binding write is the control plane's own")
  elseif status_only then
    if not def.subresources.status then return nil, errors.page_not_found() end
    obj.spec = old.spec
    meta.labels = old.metadata.labels
    meta.ownerReferences = old.metadata.ownerReferences
  elseif def.subresources.status then
    obj.status = old.status
  end
  resources.carry_allocated(def, obj, old)
  if not status_only and not opts.binding then
    resources.default(def, obj)
    -- the system's own writes (a pod bound to its node) skip the rules for clients
    if not (opts.system or opts.internal) then
      local errs = resources.validate(def, obj, old)
      if #errs > 0 then return invalid(def, obj, errs) end
    end
  end
  if not status_only and resources.bumps_generation(def, obj, old, opts.internal) then
    meta.generation = (old.metadata.generation or 0) + 1
  end
  meta.managedFields, meta.selfLink = nil, nil
  meta.resourceVersion = old.metadata.resourceVersion
  local same
  if status_only then
    same = util.equal(obj.status, old.status) and util.equal(meta, old.metadata)
  else
    same = util.equal(obj, old)
  end
  if same then return old end
  if opts.dry_run then return obj end
  -- the last finalizer removed from an object being deleted: it goes now
  if old.metadata.deletionTimestamp and not util.is_empty(old.metadata.finalizers) and util.is_empty(meta.finalizers)
    and (old.metadata.deletionGracePeriodSeconds or 0) == 0 then
    meta.resourceVersion = tostring(next_rv(self))
    self:commit(resource, "DELETED", obj, old)
    return obj
  end
  meta.resourceVersion = tostring(next_rv(self))
  self:commit(resource, "MODIFIED", obj, old)
  return obj
end

-- ---- deleting ----

local function delete_now(self, resource, obj)
  local gone = util.shallow(obj)
  gone.metadata = util.shallow(obj.metadata)
  gone.metadata.resourceVersion = tostring(next_rv(self))
  self:commit(resource, "DELETED", gone, obj)
  return gone
end

-- Every object in any resource that names uid in its ownerReferences.
function Store:dependents(uid)
  local out = {}
  for name, r in pairs(self.resources) do
    if r.owned[uid] then
      for _, obj in ipairs(self:owned(name, uid, false)) do out[#out + 1] = { name, obj } end
    end
  end
  table.sort(out, function(a, b) return a[1] < b[1] end)
  return out
end

-- Deletes ns/name. opts: propagation ("Background" default, "Foreground", "Orphan"),
-- rv and uid preconditions, grace (seconds; 0 = now), dry_run. Returns the object as it
-- was deleted (or as it is now, terminating), and whether it is gone already.
function Store:delete(resource, ns, name, opts)
  opts = opts or {}
  local def = resources.get(resource)
  local key = key_of(def.namespaced and ns or nil, name)
  local r = self.resources[resource]
  local obj = r.objects[key]
  if not obj then return nil, errors.not_found(def, name) end
  if opts.rv and opts.rv ~= "" and opts.rv ~= obj.metadata.resourceVersion then
    return nil, errors.conflict(def, name, ("Precondition failed: ResourceVersion in precondition: %s, ResourceVersion in object meta: %s")
      :format(opts.rv, obj.metadata.resourceVersion))
  end
  if opts.uid and opts.uid ~= "" and opts.uid ~= obj.metadata.uid then
    return nil, errors.conflict(def, name, ("Precondition failed: UID in precondition: %s, UID in object meta: %s")
      :format(opts.uid, obj.metadata.uid))
  end
  if opts.dry_run then return obj, true end
  local uid = obj.metadata.uid
  local policy = opts.propagation or "Background"

  if resource == "namespaces" then
    for name2, rr in pairs(self.resources) do
      if resources.get(name2).namespaced then
        local prefix = name .. "/"
        local victims = {}
        for k, o in pairs(rr.objects) do
          if k:sub(1, #prefix) == prefix then victims[#victims + 1] = o end
        end
        for _, o in ipairs(victims) do
          if rr.objects[key_of(o.metadata.namespace, o.metadata.name)] then delete_now(self, name2, o) end
        end
      end
    end
    return delete_now(self, resource, obj), true
  end

  -- graceful termination (pods) and finalizers: the object stays, marked, for a while
  local grace = opts.grace
  if grace == nil and self.graceful then grace = self.graceful(def, obj, opts) end
  local finalizers = obj.metadata.finalizers
  if policy == "Foreground" and not obj.metadata.deletionTimestamp then
    local marked = util.copy(obj)
    marked.metadata.deletionTimestamp = util.timestamp(self.clock())
    marked.metadata.deletionGracePeriodSeconds = 0
    local f = marked.metadata.finalizers or json.array()
    f[#f + 1] = "foregroundDeletion"
    marked.metadata.finalizers = f
    marked.metadata.resourceVersion = tostring(next_rv(self))
    self:commit(resource, "MODIFIED", marked, obj)
    for _, dep in ipairs(self:dependents(uid)) do
      local still = self:get(dep[1], dep[2].metadata.namespace, dep[2].metadata.name)
      if still then self:delete(dep[1], still.metadata.namespace, still.metadata.name, { propagation = "Foreground", grace = 0 }) end
    end
    obj = r.objects[key]
    local rest = json.array()
    for _, f2 in ipairs(obj.metadata.finalizers or {}) do
      if f2 ~= "foregroundDeletion" then rest[#rest + 1] = f2 end
    end
    if #rest > 0 then
      local keep = util.copy(obj)
      keep.metadata.finalizers = rest
      keep.metadata.resourceVersion = tostring(next_rv(self))
      self:commit(resource, "MODIFIED", keep, obj)
      return keep, false
    end
    return delete_now(self, resource, obj), true
  end

  if policy == "Orphan" then
    for _, dep in ipairs(self:dependents(uid)) do
      local d = util.copy(dep[2])
      local refs = json.array()
      for _, ref in ipairs(d.metadata.ownerReferences or {}) do
        if ref.uid ~= uid then refs[#refs + 1] = ref end
      end
      d.metadata.ownerReferences = #refs > 0 and refs or nil
      d.metadata.resourceVersion = nil
      self:update(dep[1], d)
    end
  end

  if (grace and grace > 0) or not util.is_empty(finalizers) then
    if obj.metadata.deletionTimestamp then return obj, false end
    local marked = util.copy(obj)
    marked.metadata.deletionTimestamp = util.timestamp(self.clock() + (grace or 0))
    marked.metadata.deletionGracePeriodSeconds = math.ceil(grace or 0)
    marked.metadata.resourceVersion = tostring(next_rv(self))
    self:commit(resource, "MODIFIED", marked, obj)
    if policy == "Background" then self:collect(uid) end
    return marked, false
  end

  local gone = delete_now(self, resource, obj)
  if policy == "Background" then self:collect(uid) end
  return gone, true
end

-- The garbage collector's work for one deleted owner: its dependents go too (each
-- taking its own dependents with it).
function Store:collect(uid)
  for _, dep in ipairs(self:dependents(uid)) do
    local still = self:get(dep[1], dep[2].metadata.namespace, dep[2].metadata.name)
    if still then
      -- a dependent with other live owners stays (only this reference goes)
      local others = false
      for _, ref in ipairs(still.metadata.ownerReferences or {}) do
        if ref.uid ~= uid then others = true end
      end
      if others then
        local d = util.copy(still)
        local refs = json.array()
        for _, ref in ipairs(d.metadata.ownerReferences) do
          if ref.uid ~= uid then refs[#refs + 1] = ref end
        end
        d.metadata.ownerReferences = refs
        d.metadata.resourceVersion = nil
        self:update(dep[1], d)
      else
        self:delete(dep[1], still.metadata.namespace, still.metadata.name, { propagation = "Background" })
      end
    end
  end
end

return store
