-- controller.lua (sim.controller): the Deployment and ReplicaSet controllers of the
-- simulated cluster, written after kube-controller-manager's (pkg/controller/deployment
-- and pkg/controller/replicaset) so that what clients observe matches a real cluster:
--
--   * a ReplicaSet per pod template, named DEPLOYMENT-HASH, the hash (pod-template-hash)
--     an FNV-32a of the template, in its name, labels and selector, with a controller
--     ownerReference to the Deployment;
--   * revisions: deployment.kubernetes.io/revision on the Deployment and its
--     ReplicaSets, max+1 for a new or revived template, the old number kept in
--     deployment.kubernetes.io/revision-history (so `kubectl rollout undo` works), the
--     Deployment's annotations (kubernetes.io/change-cause) copied to its new ReplicaSet,
--     old ReplicaSets beyond revisionHistoryLimit deleted once scaled to zero;
--   * RollingUpdate within maxSurge (rounded up) and maxUnavailable (rounded down), old
--     pods that are not available removed first; Recreate (old pods gone before new ones
--     start); proportional scaling of a rollout in progress; paused Deployments;
--   * status: observedGeneration, replicas, updatedReplicas, readyReplicas,
--     availableReplicas, unavailableReplicas, and the Available and Progressing
--     conditions with their reasons, ProgressDeadlineExceeded after
--     progressDeadlineSeconds without progress.
--
-- Both controllers are level-based: a write to a Deployment, a ReplicaSet or a pod
-- queues its controller's key; each sync reads the store afresh and writes what differs.

local json = require("json")
local core = require("sim.core")
local util = require("sim.util")
local resources = require("sim.resources")

local controller = {}
local C = {}
C.__index = C

local REVISION = "deployment.kubernetes.io/revision"
local REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
local DESIRED = "deployment.kubernetes.io/desired-replicas"
local MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
local HASH_LABEL = "pod-template-hash"
local MAX_REV_HISTORY_CHARS = 2000
local SLOW_START_BURST = 500

controller.REVISION = REVISION
controller.REVISION_HISTORY = REVISION_HISTORY

local SKIP_COPY = {
  ["kubectl.kubernetes.io/last-applied-configuration"] = true,
  [REVISION] = true, [REVISION_HISTORY] = true, [DESIRED] = true, [MAX_REPLICAS] = true,
  ["deprecated.deployment.rollback.to"] = true,
}

local function key_of(obj) return (obj.metadata.namespace or "") .. "/" .. obj.metadata.name end
local function split_key(key) return key:match("^([^/]*)/(.*)$") end

local function controller_ref(obj, kind)
  for _, ref in ipairs(obj.metadata.ownerReferences or {}) do
    if ref.controller and (kind == nil or ref.kind == kind) then return ref end
  end
  return nil
end

function controller.new(sim)
  local c = setmetatable({
    sim = sim,
    store = sim.store,
    clock = sim.clock,
    recorder = sim.recorder,
    queued_d = {},
    queued_rs = {},
    stuck_timers = {}, -- deployment key -> timer
    avail_timers = {}, -- rs key -> timer
    syncs = 0,
  }, C)
  local store = sim.store
  store:on("deployments", function(kind, obj)
    if kind ~= "DELETED" then c:enqueue_deployment(key_of(obj)) end
  end)
  store:on("replicasets", function(kind, obj)
    if kind ~= "DELETED" then c:enqueue_rs(key_of(obj)) end
    local ref = controller_ref(obj, "Deployment")
    if ref then c:enqueue_deployment((obj.metadata.namespace or "") .. "/" .. ref.name) end
  end)
  store:on("pods", function(kind, obj)
    local ref = controller_ref(obj, "ReplicaSet")
    if ref then c:enqueue_rs((obj.metadata.namespace or "") .. "/" .. ref.name) end
  end)
  return c
end

function C:enqueue_deployment(key)
  if self.queued_d[key] then return end
  self.queued_d[key] = true
  self.clock:defer(function()
    self.queued_d[key] = nil
    self:sync_deployment(key)
  end)
end

function C:enqueue_rs(key)
  if self.queued_rs[key] then return end
  self.queued_rs[key] = true
  self.clock:defer(function()
    self.queued_rs[key] = nil
    self:sync_replicaset(key)
  end)
end

function C:enqueue_deployment_after(key, seconds)
  local old = self.stuck_timers[key]
  if old then old.cancel() end
  self.stuck_timers[key] = self.clock:after(seconds, function()
    self.stuck_timers[key] = nil
    self:enqueue_deployment(key)
  end)
end

-- ---- templates and hashes ----

-- A template's identity, pod-template-hash left out, empty values ignored: what
-- EqualIgnoreHash compares. Stored templates never change, so it is cached.
local signatures = setmetatable({}, { __mode = "k" })

local function template_signature(t)
  local sig = signatures[t]
  if sig then return sig end
  local c = util.canonical(t or {})
  if c.metadata and c.metadata.labels then
    c.metadata.labels[HASH_LABEL] = nil
    if next(c.metadata.labels) == nil then c.metadata.labels = nil end
    if next(c.metadata) == nil then c.metadata = nil end
  end
  sig = json.encode(c)
  signatures[t] = sig
  return sig
end
controller.template_signature = template_signature

local function equal_ignore_hash(a, b)
  return template_signature(a) == template_signature(b)
end

-- controller.ComputeHash: FNV-32a over the template (here its canonical JSON) and the
-- collision count, printed in decimal and mapped through SafeEncodeString.
function controller.compute_hash(template, collision_count)
  local text = json.encode(util.canonical(template))
  if collision_count and collision_count > 0 then text = text .. string.pack("<I8", collision_count) end
  return util.safe_encode(tostring(core.fnv32a(text)))
end

-- ---- small helpers (pkg/controller/deployment/util) ----

local function replicas(rs) return rs.spec.replicas or 0 end

local function revision(obj)
  local v = obj.metadata.annotations and obj.metadata.annotations[REVISION]
  return tonumber(v) or 0
end
controller.revision = revision

local function sum(list, f)
  local n = 0
  for _, rs in ipairs(list) do
    if rs then n = n + f(rs) end
  end
  return n
end

local function spec_count(list) return sum(list, replicas) end
local function actual_count(list) return sum(list, function(rs) return rs.status and rs.status.replicas or 0 end) end
local function ready_count(list) return sum(list, function(rs) return rs.status and rs.status.readyReplicas or 0 end) end
local function available_count(list) return sum(list, function(rs) return rs.status and rs.status.availableReplicas or 0 end) end

local function active(list)
  local out = {}
  for _, rs in ipairs(list) do
    if rs and replicas(rs) > 0 then out[#out + 1] = rs end
  end
  return out
end

local function by_creation(a, b)
  local ta, tb = util.parse_time(a.metadata.creationTimestamp) or 0, util.parse_time(b.metadata.creationTimestamp) or 0
  if ta ~= tb then return ta < tb end
  return a.metadata.name < b.metadata.name
end

local function sorted(list, cmp)
  local out = {}
  for i, x in ipairs(list) do out[i] = x end
  table.sort(out, cmp)
  return out
end

local function is_rolling(d) return d.spec.strategy and d.spec.strategy.type == "RollingUpdate" end

local function fenceposts(d)
  local ru = d.spec.strategy.rollingUpdate or {}
  local desired = d.spec.replicas or 0
  local surge = resources.scaled_value(ru.maxSurge or 0, desired, true) or 0
  local unavailable = resources.scaled_value(ru.maxUnavailable or 0, desired, false) or 0
  if surge == 0 and unavailable == 0 then unavailable = 1 end
  return surge, unavailable
end

function controller.max_unavailable(d)
  if not is_rolling(d) or (d.spec.replicas or 0) == 0 then return 0 end
  local _, u = fenceposts(d)
  return math.min(u, d.spec.replicas)
end

function controller.max_surge(d)
  if not is_rolling(d) then return 0 end
  local s = fenceposts(d)
  return s
end

local max_unavailable, max_surge = controller.max_unavailable, controller.max_surge

local function has_progress_deadline(d)
  local p = d.spec.progressDeadlineSeconds
  return p ~= nil and p ~= 2147483647
end

local function get_condition(status, typ)
  for _, c in ipairs(status.conditions or {}) do
    if c.type == typ then return c end
  end
  return nil
end

local function new_condition(typ, status, reason, message, now)
  local ts = util.timestamp(now)
  return { type = typ, status = status, lastUpdateTime = ts, lastTransitionTime = ts, reason = reason, message = message }
end

local function remove_condition(status, typ)
  local out = json.array()
  for _, c in ipairs(status.conditions or {}) do
    if c.type ~= typ then out[#out + 1] = c end
  end
  status.conditions = out
end

-- SetDeploymentCondition: same status and reason is no change; the same status keeps
-- its lastTransitionTime; the new condition goes last.
local function set_condition(status, cond)
  local cur = get_condition(status, cond.type)
  if cur and cur.status == cond.status and cur.reason == cond.reason then return end
  if cur and cur.status == cond.status then cond.lastTransitionTime = cur.lastTransitionTime end
  remove_condition(status, cond.type)
  status.conditions[#status.conditions + 1] = cond
end

local function desired_annotation(rs)
  local v = rs.metadata.annotations and rs.metadata.annotations[DESIRED]
  return tonumber(v)
end

local function max_replicas_annotation(rs)
  local v = rs.metadata.annotations and rs.metadata.annotations[MAX_REPLICAS]
  return tonumber(v)
end

local function set_replicas_annotations(rs, desired, max)
  rs.metadata.annotations = rs.metadata.annotations or {}
  local a = rs.metadata.annotations
  local changed = false
  if a[DESIRED] ~= tostring(desired) then
    a[DESIRED] = tostring(desired)
    changed = true
  end
  if a[MAX_REPLICAS] ~= tostring(max) then
    a[MAX_REPLICAS] = tostring(max)
    changed = true
  end
  return changed
end

local function replicas_annotations_need_update(rs, desired, max)
  local a = rs.metadata.annotations or {}
  return a[DESIRED] ~= tostring(desired) or a[MAX_REPLICAS] ~= tostring(max)
end

local function copy_annotations_to_rs(d, rs)
  rs.metadata.annotations = rs.metadata.annotations or {}
  local changed = false
  for k, v in pairs(d.metadata.annotations or {}) do
    if not SKIP_COPY[k] and rs.metadata.annotations[k] ~= v then
      rs.metadata.annotations[k] = v
      changed = true
    end
  end
  return changed
end

-- SetNewReplicaSetAnnotations
local function set_new_rs_annotations(d, rs, new_revision, exists)
  local changed = copy_annotations_to_rs(d, rs)
  local a = rs.metadata.annotations
  local old_revision = a[REVISION]
  local old_int = tonumber(old_revision or "0")
  if old_int == nil then return false end
  if old_int < new_revision then
    a[REVISION] = tostring(new_revision)
    changed = true
  end
  if old_revision ~= nil and old_int < new_revision then
    local history = a[REVISION_HISTORY]
    if history == nil or history == "" then
      a[REVISION_HISTORY] = old_revision
    else
      local olds = {}
      for part in history:gmatch("[^,]+") do olds[#olds + 1] = part end
      local total = #history + #old_revision + 1
      local start = 1
      while total > MAX_REV_HISTORY_CHARS and start <= #olds do
        total = total - #olds[start] - 1
        start = start + 1
      end
      if total <= MAX_REV_HISTORY_CHARS then
        local keep = {}
        for i = start, #olds do keep[#keep + 1] = olds[i] end
        keep[#keep + 1] = old_revision
        a[REVISION_HISTORY] = table.concat(keep, ",")
      end
    end
  end
  if not exists and set_replicas_annotations(rs, d.spec.replicas, d.spec.replicas + max_surge(d)) then
    changed = true
  end
  return changed
end

-- ---- writes ----

-- A version of obj to hand to the store: its own top level and metadata (the store sets
-- metadata fields), the rest shared with the stored object it came from.
local function writable(obj)
  local copy = util.shallow(obj)
  copy.metadata = util.shallow(obj.metadata)
  if obj.metadata.annotations then copy.metadata.annotations = util.shallow(obj.metadata.annotations) end
  copy.metadata.resourceVersion = nil
  return copy
end

function C:update_status(d)
  local copy = writable(d)
  copy.status = util.copy(d.status)
  local out, err = self.store:update("deployments", copy, { subresource = "status", internal = true })
  if not out then error(("updating the status of deployment %s: %s"):format(d.metadata.name, err.message), 0) end
  return out
end

-- scaleReplicaSet: the size and the desired/max annotations; an event when the size moves.
function C:scale_rs(rs, new_scale, d, op)
  local size_changes = replicas(rs) ~= new_scale
  local max = d.spec.replicas + max_surge(d)
  if not size_changes and not replicas_annotations_need_update(rs, d.spec.replicas, max) then
    return false, rs
  end
  local old_scale = replicas(rs)
  local copy = writable(rs)
  copy.spec = util.shallow(rs.spec)
  copy.spec.replicas = new_scale
  set_replicas_annotations(copy, d.spec.replicas, max)
  local out, err = self.store:update("replicasets", copy, { internal = true })
  if not out then error(("scaling replica set %s: %s"):format(rs.metadata.name, err.message), 0) end
  if size_changes then
    op = op or (old_scale < new_scale and "up" or "down")
    self.recorder:record(d, "Normal", "ScalingReplicaSet",
      ("Scaled %s replica set %s from %d to %d"):format(op, rs.metadata.name, old_scale, new_scale), "deployment-controller")
  end
  return size_changes, out
end

function C:scale_rs_and_record(rs, new_scale, d)
  if replicas(rs) == new_scale then return false, rs end
  return self:scale_rs(rs, new_scale, d)
end

-- ---- new and old replica sets ----

-- NewRSNewReplicas
local function new_rs_new_replicas(d, all, new_rs)
  if is_rolling(d) then
    local ru = d.spec.strategy.rollingUpdate or {}
    local surge = resources.scaled_value(ru.maxSurge or 0, d.spec.replicas, true) or 0
    local current = spec_count(all)
    local max_total = d.spec.replicas + surge
    if current >= max_total then return replicas(new_rs) end
    local up = max_total - current
    up = math.min(up, d.spec.replicas - replicas(new_rs))
    return replicas(new_rs) + up
  end
  return d.spec.replicas
end

-- getAllReplicaSetsAndSyncRevision: the new ReplicaSet (created when create is true and
-- it does not exist) and the old ones. d is updated in place (revision, conditions).
function C:all_rs_and_sync_revision(d, rs_list, create)
  local new_rs
  for _, rs in ipairs(sorted(rs_list, by_creation)) do
    if equal_ignore_hash(rs.spec.template, d.spec.template) then
      new_rs = rs
      break
    end
  end
  local old = {}
  for _, rs in ipairs(rs_list) do
    if rs ~= new_rs then old[#old + 1] = rs end
  end
  new_rs = self:get_new_rs(d, rs_list, old, new_rs, create)
  return new_rs, old
end

function C:get_new_rs(d, rs_list, old, existing, create)
  local max_old = 0
  for _, rs in ipairs(old) do max_old = math.max(max_old, revision(rs)) end
  local new_revision = max_old + 1
  local now = self.clock:now()

  if existing then
    local copy = writable(existing)
    copy.spec = util.shallow(existing.spec)
    local updated = set_new_rs_annotations(d, copy, new_revision, true)
    local mrs = d.spec.minReadySeconds or 0
    if updated or (copy.spec.minReadySeconds or 0) ~= mrs then
      copy.spec.minReadySeconds = d.spec.minReadySeconds
      local out, err = self.store:update("replicasets", copy, { internal = true })
      if not out then error(("updating replica set %s: %s"):format(copy.metadata.name, err.message), 0) end
      return out
    end
    local needs = false
    d.metadata.annotations = d.metadata.annotations or {}
    local rev = copy.metadata.annotations and copy.metadata.annotations[REVISION]
    if rev and d.metadata.annotations[REVISION] ~= rev then
      d.metadata.annotations[REVISION] = rev
      needs = true
    end
    d.status = d.status or {}
    if has_progress_deadline(d) and get_condition(d.status, "Progressing") == nil then
      set_condition(d.status, new_condition("Progressing", "True", "FoundNewReplicaSet",
        ("Found new replica set %q"):format(copy.metadata.name), now))
      needs = true
    end
    if needs then self:update_status(d) end
    return existing
  end

  if not create then return nil end

  local template = util.copy(d.spec.template)
  local collision = d.status and d.status.collisionCount or 0
  local hash = controller.compute_hash(d.spec.template, collision)
  template.metadata = template.metadata or {}
  template.metadata.labels = util.copy(template.metadata.labels or {})
  template.metadata.labels[HASH_LABEL] = hash
  local selector = util.copy(d.spec.selector)
  selector.matchLabels = selector.matchLabels or {}
  selector.matchLabels[HASH_LABEL] = hash
  local rs = {
    apiVersion = "apps/v1", kind = "ReplicaSet",
    metadata = {
      name = d.metadata.name .. "-" .. hash,
      namespace = d.metadata.namespace,
      labels = util.copy(template.metadata.labels),
      ownerReferences = json.array({ {
        apiVersion = "apps/v1", kind = "Deployment", name = d.metadata.name, uid = d.metadata.uid,
        controller = true, blockOwnerDeletion = true,
      } }),
    },
    spec = {
      replicas = 0, minReadySeconds = d.spec.minReadySeconds, selector = selector, template = template,
    },
  }
  local all = {}
  for _, o in ipairs(old) do all[#all + 1] = o end
  all[#all + 1] = rs
  rs.spec.replicas = new_rs_new_replicas(d, all, rs)
  set_new_rs_annotations(d, rs, new_revision, false)
  local created, err = self.store:create("replicasets", rs, { internal = true })
  local already = false
  if not created then
    if err.reason == "AlreadyExists" then
      -- a ReplicaSet of that name with another template: a hash collision
      local other = self.store:get("replicasets", d.metadata.namespace, rs.metadata.name)
      local ours = other and controller_ref(other, "Deployment")
      if ours and ours.uid == d.metadata.uid and equal_ignore_hash(other.spec.template, d.spec.template) then
        created, already = other, true
      else
        d.status = d.status or {}
        d.status.collisionCount = (d.status.collisionCount or 0) + 1
        self:update_status(d)
        error(("hash collision for replica set %s: retrying"):format(rs.metadata.name), 0)
      end
    else
      error(("creating replica set %s: %s"):format(rs.metadata.name, err.message), 0)
    end
  end
  if not already and replicas(created) > 0 then
    self.recorder:record(d, "Normal", "ScalingReplicaSet",
      ("Scaled up replica set %s from 0 to %d"):format(created.metadata.name, replicas(created)), "deployment-controller")
  end
  d.metadata.annotations = d.metadata.annotations or {}
  local needs = false
  if d.metadata.annotations[REVISION] ~= tostring(new_revision) then
    d.metadata.annotations[REVISION] = tostring(new_revision)
    needs = true
  end
  if not already and has_progress_deadline(d) then
    d.status = d.status or {}
    set_condition(d.status, new_condition("Progressing", "True", "NewReplicaSetCreated",
      ("Created new replica set %q"):format(created.metadata.name), now))
    needs = true
  end
  if needs then self:update_status(d) end
  return created
end

-- ---- status ----

local function deployment_complete(d, st)
  local r = d.spec.replicas or 0
  return (st.updatedReplicas or 0) == r and (st.replicas or 0) == r and (st.availableReplicas or 0) == r
    and (st.observedGeneration or 0) >= (d.metadata.generation or 0)
end
controller.deployment_complete = deployment_complete

local function deployment_progressing(d, st)
  local old = d.status or {}
  local old_old = (old.replicas or 0) - (old.updatedReplicas or 0)
  local new_old = (st.replicas or 0) - (st.updatedReplicas or 0)
  return (st.updatedReplicas or 0) > (old.updatedReplicas or 0) or new_old < old_old
    or (st.readyReplicas or 0) > (old.readyReplicas or 0) or (st.availableReplicas or 0) > (old.availableReplicas or 0)
end

local function deployment_timed_out(d, st, now)
  if not has_progress_deadline(d) then return false end
  local cond = get_condition(st, "Progressing")
  if not cond then return false end
  if cond.reason == "NewReplicaSetAvailable" then return false end
  if cond.reason == "ProgressDeadlineExceeded" then return true end
  local from = util.parse_time(cond.lastUpdateTime) or now
  return from + d.spec.progressDeadlineSeconds < now
end

-- Zero counts are left out, as the API's omitempty fields are.
local function omit_zero(st)
  for _, f in ipairs({ "replicas", "updatedReplicas", "readyReplicas", "availableReplicas", "unavailableReplicas", "collisionCount" }) do
    if st[f] == 0 then st[f] = nil end
  end
  return st
end

function C:calculate_status(all, new_rs, d)
  local available = available_count(all)
  local total = spec_count(all)
  local unavailable = math.max(total - available, 0)
  local old = d.status or {}
  local st = {
    observedGeneration = d.metadata.generation,
    replicas = actual_count(all),
    updatedReplicas = new_rs and actual_count({ new_rs }) or 0,
    readyReplicas = ready_count(all),
    availableReplicas = available,
    unavailableReplicas = unavailable,
    collisionCount = old.collisionCount,
    conditions = json.array(),
  }
  for i, c in ipairs(old.conditions or {}) do st.conditions[i] = util.copy(c) end
  local now = self.clock:now()
  if available >= (d.spec.replicas or 0) - max_unavailable(d) then
    set_condition(st, new_condition("Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability.", now))
  else
    set_condition(st, new_condition("Available", "False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.", now))
  end
  return st
end

local function status_equal(a, b)
  return util.equal(omit_zero(util.copy(a or {})), omit_zero(util.copy(b or {})))
end

function C:write_status_if_changed(d, st)
  omit_zero(st)
  if status_equal(d.status, st) then return false end
  d.status = st
  self:update_status(d)
  return true
end

-- syncRolloutStatus
function C:sync_rollout_status(all, new_rs, d)
  local st = self:calculate_status(all, new_rs, d)
  local now = self.clock:now()
  if not has_progress_deadline(d) then remove_condition(st, "Progressing") end
  local cur = get_condition(d.status or {}, "Progressing")
  local complete_before = (st.replicas or 0) == (st.updatedReplicas or 0) and cur ~= nil and cur.reason == "NewReplicaSetAvailable"
  if has_progress_deadline(d) and not complete_before then
    if deployment_complete(d, st) then
      local msg = ("Deployment %q has successfully progressed."):format(d.metadata.name)
      if new_rs then msg = ("ReplicaSet %q has successfully progressed."):format(new_rs.metadata.name) end
      set_condition(st, new_condition("Progressing", "True", "NewReplicaSetAvailable", msg, now))
    elseif deployment_progressing(d, st) then
      local msg = ("Deployment %q is progressing."):format(d.metadata.name)
      if new_rs then msg = ("ReplicaSet %q is progressing."):format(new_rs.metadata.name) end
      local cond = new_condition("Progressing", "True", "ReplicaSetUpdated", msg, now)
      if cur then
        if cur.status == "True" then cond.lastTransitionTime = cur.lastTransitionTime end
        remove_condition(st, "Progressing")
      end
      set_condition(st, cond)
    elseif deployment_timed_out(d, st, now) then
      local msg = ("Deployment %q has timed out progressing."):format(d.metadata.name)
      if new_rs then msg = ("ReplicaSet %q has timed out progressing."):format(new_rs.metadata.name) end
      set_condition(st, new_condition("Progressing", "False", "ProgressDeadlineExceeded", msg, now))
    end
  end
  remove_condition(st, "ReplicaFailure")
  omit_zero(st)
  if status_equal(d.status, st) then
    self:requeue_stuck(d, st)
    return
  end
  d.status = st
  self:update_status(d)
end

-- requeueStuckDeployment: look again once the progress deadline has passed.
function C:requeue_stuck(d, st)
  local cur = get_condition(d.status or {}, "Progressing")
  if not has_progress_deadline(d) or cur == nil then return end
  if deployment_complete(d, st) or cur.reason == "ProgressDeadlineExceeded" then return end
  local from = util.parse_time(cur.lastUpdateTime) or self.clock:now()
  local after = from + d.spec.progressDeadlineSeconds - self.clock:now()
  if after < 1 then
    self:enqueue_deployment_after(key_of(d), 0.05)
  else
    self:enqueue_deployment_after(key_of(d), after + 1)
  end
end

-- syncDeploymentStatus (scaling and paused deployments)
function C:sync_deployment_status(all, new_rs, d)
  local st = self:calculate_status(all, new_rs, d)
  self:write_status_if_changed(d, st)
end

-- ---- scaling (sync) ----

local function proportion(rs, d, to_add, added)
  if rs == nil or replicas(rs) == 0 or to_add == 0 or to_add == added then return 0 end
  local fraction
  if (d.spec.replicas or 0) == 0 then
    fraction = -replicas(rs)
  else
    local max_now = d.spec.replicas + max_surge(d)
    local before = max_replicas_annotation(rs)
    if not before or before == 0 then before = d.status and d.status.replicas or 0 end
    local size = replicas(rs) * max_now / before
    fraction = math.floor(size + 0.5) - replicas(rs)
  end
  local allowed = to_add - added
  if to_add > 0 then return math.min(fraction, allowed) end
  return math.max(fraction, allowed)
end

local function find_active_or_latest(new_rs, old)
  if new_rs == nil and #old == 0 then return nil end
  local olds = sorted(old, function(a, b) return by_creation(b, a) end)
  local all = {}
  for _, rs in ipairs(olds) do all[#all + 1] = rs end
  if new_rs then all[#all + 1] = new_rs end
  local act = active(all)
  if #act == 0 then
    if new_rs then return new_rs end
    return olds[1]
  elseif #act == 1 then
    return act[1]
  end
  return nil
end

local function is_saturated(d, rs)
  if rs == nil then return false end
  local desired = desired_annotation(rs)
  return replicas(rs) == d.spec.replicas and desired == d.spec.replicas
    and (rs.status and rs.status.availableReplicas or 0) == d.spec.replicas
end

function C:scale(d, new_rs, old)
  local one = find_active_or_latest(new_rs, old)
  if one then
    if replicas(one) == d.spec.replicas then return end
    self:scale_rs_and_record(one, d.spec.replicas, d)
    return
  end
  if is_saturated(d, new_rs) then
    for _, rs in ipairs(active(old)) do self:scale_rs_and_record(rs, 0, d) end
    return
  end
  if is_rolling(d) then
    local all = {}
    for _, rs in ipairs(old) do all[#all + 1] = rs end
    if new_rs then all[#all + 1] = new_rs end
    all = active(all)
    local all_replicas = spec_count(all)
    local allowed = 0
    if (d.spec.replicas or 0) > 0 then allowed = d.spec.replicas + max_surge(d) end
    local to_add = allowed - all_replicas
    local op
    if to_add > 0 then
      -- bigger first; among equals, newer first
      table.sort(all, function(a, b)
        if replicas(a) ~= replicas(b) then return replicas(a) > replicas(b) end
        return by_creation(b, a)
      end)
      op = "up"
    elseif to_add < 0 then
      -- bigger first; among equals, older first
      table.sort(all, function(a, b)
        if replicas(a) ~= replicas(b) then return replicas(a) > replicas(b) end
        return by_creation(a, b)
      end)
      op = "down"
    end
    local added = 0
    local sizes = {}
    for i, rs in ipairs(all) do
      if to_add ~= 0 then
        local p = proportion(rs, d, to_add, added)
        sizes[i] = replicas(rs) + p
        added = added + p
      else
        sizes[i] = replicas(rs)
      end
    end
    for i, rs in ipairs(all) do
      if i == 1 and to_add ~= 0 then
        sizes[i] = math.max(sizes[i] + (to_add - added), 0)
      end
      self:scale_rs(rs, sizes[i], d, op)
    end
  end
end

function C:cleanup(old, d)
  local limit = d.spec.revisionHistoryLimit
  if limit == nil then return end
  local alive = {}
  for _, rs in ipairs(old) do
    if rs and not rs.metadata.deletionTimestamp then alive[#alive + 1] = rs end
  end
  local diff = #alive - limit
  if diff <= 0 then return end
  table.sort(alive, function(a, b)
    local ra, rb = revision(a), revision(b)
    if ra ~= rb then return ra < rb end
    return by_creation(a, b)
  end)
  for i = 1, diff do
    local rs = alive[i]
    local st = rs.status or {}
    if (st.replicas or 0) == 0 and replicas(rs) == 0 and (rs.metadata.generation or 0) <= (st.observedGeneration or 0) then
      self.store:delete("replicasets", rs.metadata.namespace, rs.metadata.name, { propagation = "Background" })
    end
  end
end

function C:sync(d, rs_list)
  local new_rs, old = self:all_rs_and_sync_revision(d, rs_list, false)
  self:scale(d, new_rs, old)
  if d.spec.paused then
    -- the list may have moved: read it again for the cleanup and the status
    rs_list = self:replica_sets_of(d)
    new_rs, old = self:all_rs_and_sync_revision(d, rs_list, false)
    self:cleanup(old, d)
  end
  rs_list = self:replica_sets_of(d)
  new_rs, old = self:all_rs_and_sync_revision(d, rs_list, false)
  local all = {}
  for _, rs in ipairs(old) do all[#all + 1] = rs end
  if new_rs then all[#all + 1] = new_rs end
  self:sync_deployment_status(all, new_rs, d)
end

function C:is_scaling_event(d, rs_list)
  local new_rs, old = self:all_rs_and_sync_revision(d, rs_list, false)
  local all = {}
  for _, rs in ipairs(old) do all[#all + 1] = rs end
  if new_rs then all[#all + 1] = new_rs end
  for _, rs in ipairs(active(all)) do
    local desired = desired_annotation(rs)
    if desired and desired ~= d.spec.replicas then return true end
  end
  return false
end

function C:check_paused_conditions(d)
  if not has_progress_deadline(d) then return end
  d.status = d.status or {}
  local cond = get_condition(d.status, "Progressing")
  if cond and cond.reason == "ProgressDeadlineExceeded" then return end
  local paused_exists = cond ~= nil and cond.reason == "DeploymentPaused"
  local now = self.clock:now()
  if d.spec.paused and not paused_exists then
    set_condition(d.status, new_condition("Progressing", "Unknown", "DeploymentPaused", "Deployment is paused", now))
    self:update_status(d)
  elseif not d.spec.paused and paused_exists then
    set_condition(d.status, new_condition("Progressing", "Unknown", "DeploymentResumed", "Deployment is resumed", now))
    self:update_status(d)
  end
end

-- ---- rolling update ----

function C:reconcile_new_rs(all, new_rs, d)
  if replicas(new_rs) == d.spec.replicas then return false end
  if replicas(new_rs) > d.spec.replicas then
    return (self:scale_rs_and_record(new_rs, d.spec.replicas, d))
  end
  local count = new_rs_new_replicas(d, all, new_rs)
  return (self:scale_rs_and_record(new_rs, count, d))
end

function C:cleanup_unhealthy(old, d, max_cleanup)
  old = sorted(old, by_creation)
  local total = 0
  for i, rs in ipairs(old) do
    if total >= max_cleanup then break end
    local avail = rs.status and rs.status.availableReplicas or 0
    if replicas(rs) ~= 0 and replicas(rs) ~= avail then
      local down = math.min(max_cleanup - total, replicas(rs) - avail)
      local _, updated = self:scale_rs_and_record(rs, replicas(rs) - down, d)
      total = total + down
      old[i] = updated
    end
  end
  return old, total
end

function C:scale_down_old_for_rolling(all, old, d)
  local min_available = d.spec.replicas - max_unavailable(d)
  local available = available_count(all)
  if available <= min_available then return 0 end
  old = sorted(old, by_creation)
  local total, target = 0, available - min_available
  for _, rs in ipairs(old) do
    if total >= target then break end
    if replicas(rs) ~= 0 then
      local down = math.min(replicas(rs), target - total)
      self:scale_rs_and_record(rs, replicas(rs) - down, d)
      total = total + down
    end
  end
  return total
end

function C:reconcile_old_rss(all, old, new_rs, d)
  local old_pods = spec_count(old)
  if old_pods == 0 then return false end
  local all_pods = spec_count(all)
  local min_available = d.spec.replicas - max_unavailable(d)
  local new_unavailable = replicas(new_rs) - (new_rs.status and new_rs.status.availableReplicas or 0)
  local max_scaled_down = all_pods - min_available - new_unavailable
  if max_scaled_down <= 0 then return false end
  local cleaned
  old, cleaned = self:cleanup_unhealthy(old, d, max_scaled_down)
  local all2 = {}
  for _, rs in ipairs(old) do all2[#all2 + 1] = rs end
  all2[#all2 + 1] = new_rs
  local scaled = self:scale_down_old_for_rolling(all2, old, d)
  return cleaned + scaled > 0
end

function C:rollout_rolling(d, rs_list)
  local new_rs, old = self:all_rs_and_sync_revision(d, rs_list, true)
  local all = {}
  for _, rs in ipairs(old) do all[#all + 1] = rs end
  all[#all + 1] = new_rs
  if self:reconcile_new_rs(all, new_rs, d) then
    return self:sync_rollout_status(self:refresh(all), self:refresh_one(new_rs), d)
  end
  if self:reconcile_old_rss(all, active(old), new_rs, d) then
    return self:sync_rollout_status(self:refresh(all), self:refresh_one(new_rs), d)
  end
  if deployment_complete(d, d.status or {}) then self:cleanup(old, d) end
  return self:sync_rollout_status(self:refresh(all), self:refresh_one(new_rs), d)
end

-- ---- recreate ----

function C:old_pods_running(new_rs, old)
  if actual_count(old) > 0 then return true end
  for _, rs in ipairs(old) do
    for _, pod in ipairs(self.store:owned("pods", rs.metadata.uid, true)) do
      local phase = pod.status and pod.status.phase
      if phase ~= "Failed" and phase ~= "Succeeded" then return true end
    end
  end
  return false
end

function C:rollout_recreate(d, rs_list)
  local new_rs, old = self:all_rs_and_sync_revision(d, rs_list, false)
  local all = {}
  for _, rs in ipairs(old) do all[#all + 1] = rs end
  if new_rs then all[#all + 1] = new_rs end
  local scaled = false
  for _, rs in ipairs(active(old)) do
    if self:scale_rs_and_record(rs, 0, d) then scaled = true end
  end
  if scaled then return self:sync_rollout_status(self:refresh(all), self:refresh_one(new_rs), d) end
  if self:old_pods_running(new_rs, self:refresh(old)) then
    return self:sync_rollout_status(self:refresh(all), self:refresh_one(new_rs), d)
  end
  if not new_rs then
    new_rs, old = self:all_rs_and_sync_revision(d, rs_list, true)
    all = {}
    for _, rs in ipairs(old) do all[#all + 1] = rs end
    all[#all + 1] = new_rs
  end
  self:scale_rs_and_record(new_rs, d.spec.replicas, d)
  if deployment_complete(d, d.status or {}) then self:cleanup(old, d) end
  return self:sync_rollout_status(self:refresh(all), self:refresh_one(new_rs), d)
end

-- The stored versions of replica sets this sync may have written meanwhile.
function C:refresh_one(rs)
  if rs == nil then return nil end
  return self.store:get("replicasets", rs.metadata.namespace, rs.metadata.name) or rs
end

function C:refresh(list)
  local out = {}
  for _, rs in ipairs(list) do
    local r = self:refresh_one(rs)
    if r and self.store:get("replicasets", r.metadata.namespace, r.metadata.name) then out[#out + 1] = r end
  end
  return out
end

function C:replica_sets_of(d)
  local list = {}
  for _, rs in ipairs(self.store:owned("replicasets", d.metadata.uid, true)) do
    local ref = controller_ref(rs, "Deployment")
    if ref and ref.uid == d.metadata.uid then list[#list + 1] = rs end
  end
  return list
end

-- ---- the deployment sync ----

function C:sync_deployment(key)
  local ns, name = split_key(key)
  local stored = self.store:get("deployments", ns, name)
  if not stored then return end
  self.syncs = self.syncs + 1
  -- the sync's working copy: spec is only read, metadata and status are changed
  local d = writable(stored)
  d.status = util.copy(stored.status)
  local sel = d.spec.selector
  if sel == nil or (util.is_empty(sel.matchLabels) and util.is_empty(sel.matchExpressions)) then
    self.recorder:record(d, "Warning", "SelectingAll", "This deployment is selecting all pods. A non-empty selector is required.",
      "deployment-controller")
    return
  end
  local rs_list = self:replica_sets_of(d)
  if d.metadata.deletionTimestamp then
    local new_rs, old = self:all_rs_and_sync_revision(d, rs_list, false)
    local all = {}
    for _, rs in ipairs(old) do all[#all + 1] = rs end
    if new_rs then all[#all + 1] = new_rs end
    return self:sync_deployment_status(all, new_rs, d)
  end
  self:check_paused_conditions(d)
  if d.spec.paused then return self:sync(d, rs_list) end
  if self:is_scaling_event(d, rs_list) then return self:sync(d, self:replica_sets_of(d)) end
  rs_list = self:replica_sets_of(d)
  if d.spec.strategy.type == "Recreate" then return self:rollout_recreate(d, rs_list) end
  return self:rollout_rolling(d, rs_list)
end

-- ---- the replica set controller ----

local function pod_ready(pod)
  for _, c in ipairs(pod.status and pod.status.conditions or {}) do
    if c.type == "Ready" then return c.status == "True", c end
  end
  return false
end
controller.pod_ready = pod_ready

local function is_active(pod)
  local phase = pod.status and pod.status.phase
  return not pod.metadata.deletionTimestamp and phase ~= "Succeeded" and phase ~= "Failed"
end

local PHASE_RANK = { Pending = 0, Unknown = 1, Running = 2 }

-- ActivePodsWithRanks: the pods to delete first come first.
local function deletion_order(a, b)
  local an, bn = (a.spec.nodeName or "") ~= "", (b.spec.nodeName or "") ~= ""
  if an ~= bn then return not an end
  local ap, bp = PHASE_RANK[a.status and a.status.phase] or 0, PHASE_RANK[b.status and b.status.phase] or 0
  if ap ~= bp then return ap < bp end
  local ar, ac = pod_ready(a)
  local br, bc = pod_ready(b)
  if ar ~= br then return not ar end
  if ar and br then
    local at, bt = util.parse_time(ac.lastTransitionTime) or 0, util.parse_time(bc.lastTransitionTime) or 0
    if at ~= bt then return at > bt end
  end
  local function restarts(p)
    local n = 0
    for _, cs in ipairs(p.status and p.status.containerStatuses or {}) do n = math.max(n, cs.restartCount or 0) end
    return n
  end
  local ra, rb = restarts(a), restarts(b)
  if ra ~= rb then return ra > rb end
  local ta, tb = util.parse_time(a.metadata.creationTimestamp) or 0, util.parse_time(b.metadata.creationTimestamp) or 0
  if ta ~= tb then return ta > tb end
  return a.metadata.name > b.metadata.name
end

function C:create_pod(rs)
  local t = rs.spec.template
  local meta = t.metadata or {}
  local name
  for _ = 1, 10 do
    name = rs.metadata.name .. "-" .. util.random_suffix(5)
    if not self.store:get("pods", rs.metadata.namespace, name) then break end
  end
  local pod = {
    apiVersion = "v1", kind = "Pod",
    metadata = {
      name = name, generateName = rs.metadata.name .. "-", namespace = rs.metadata.namespace,
      labels = util.copy(meta.labels), annotations = util.copy(meta.annotations),
      ownerReferences = json.array({ {
        apiVersion = "apps/v1", kind = "ReplicaSet", name = rs.metadata.name, uid = rs.metadata.uid,
        controller = true, blockOwnerDeletion = true,
      } }),
    },
    spec = util.copy(t.spec),
    status = { phase = "Pending", qosClass = "BestEffort" },
  }
  local created, err = self.store:create("pods", pod, { internal = true })
  if not created then
    self.recorder:record(rs, "Warning", "FailedCreate", "Error creating: " .. err.message, "replicaset-controller")
    return nil
  end
  self.recorder:record(rs, "Normal", "SuccessfulCreate", "Created pod: " .. name, "replicaset-controller")
  return created
end

function C:sync_replicaset(key)
  local ns, name = split_key(key)
  local rs = self.store:get("replicasets", ns, name)
  if not rs then return end
  self.syncs = self.syncs + 1
  local pods = self.store:owned("pods", rs.metadata.uid, true)
  local live = {}
  for _, p in ipairs(pods) do
    if is_active(p) then live[#live + 1] = p end
  end
  if not rs.metadata.deletionTimestamp then
    local diff = #live - replicas(rs)
    if diff < 0 then
      for _ = 1, math.min(-diff, SLOW_START_BURST) do
        local p = self:create_pod(rs)
        if p then live[#live + 1] = p end
      end
      if -diff > SLOW_START_BURST then self:enqueue_rs(key) end
    elseif diff > 0 then
      table.sort(live, deletion_order)
      for i = 1, diff do
        local p = live[i]
        local ok = self.store:delete("pods", p.metadata.namespace, p.metadata.name, {})
        if ok then
          self.recorder:record(rs, "Normal", "SuccessfulDelete", "Deleted pod: " .. p.metadata.name, "replicaset-controller")
        end
      end
    end
  end
  -- status, from what the pods are now
  local now = self.clock:now()
  local count, ready, available, labelled = 0, 0, 0, 0
  local min_ready = rs.spec.minReadySeconds or 0
  local next_check
  local template_labels = rs.spec.template and rs.spec.template.metadata and rs.spec.template.metadata.labels or {}
  for _, p in ipairs(self.store:owned("pods", rs.metadata.uid, true)) do
    if is_active(p) then
      count = count + 1
      local full = true
      for k, v in pairs(template_labels) do
        if (p.metadata.labels or {})[k] ~= v then full = false end
      end
      if full then labelled = labelled + 1 end
      local r, c = pod_ready(p)
      if r then
        ready = ready + 1
        local since = util.parse_time(c.lastTransitionTime) or now
        if min_ready <= 0 or since + min_ready <= now then
          available = available + 1
        else
          local at = since + min_ready - now
          if not next_check or at < next_check then next_check = at end
        end
      end
    end
  end
  if next_check then
    local old = self.avail_timers[key]
    if old then old.cancel() end
    self.avail_timers[key] = self.clock:after(next_check + 0.01, function()
      self.avail_timers[key] = nil
      self:enqueue_rs(key)
    end)
  end
  local st = {
    replicas = count, fullyLabeledReplicas = labelled, readyReplicas = ready, availableReplicas = available,
    observedGeneration = rs.metadata.generation,
  }
  for _, f in ipairs({ "fullyLabeledReplicas", "readyReplicas", "availableReplicas" }) do
    if st[f] == 0 then st[f] = nil end
  end
  if not util.equal(st, rs.status or {}) then
    local copy = writable(rs)
    copy.status = st
    self.store:update("replicasets", copy, { subresource = "status", internal = true })
  end
end

return controller
