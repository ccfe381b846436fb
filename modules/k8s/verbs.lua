-- verbs.lua (k8s.verbs): the verbs the Multiship procedures use, with kubectl's semantics
-- (kubectl 1.32, staging/src/k8s.io/kubectl/pkg/polymorphichelpers and cmd/rollout):
--
--   set_image(deploy, { container = image })   strategic merge patch of the containers
--   rollout_status(deploy, { timeout })       kubectl rollout status's verdict, on a watch
--   rollout_history(deploy)                   revisions from the Deployment's ReplicaSets
--   rollout_undo(deploy, { to_revision })     the ReplicaSet's template back (JSON patch)
--   restart(deploy)                           kubectl.kubernetes.io/restartedAt
--   scale(deploy, n)                          the scale subresource
--   patch_service_selector(svc, selector)     spec.selector, merged key by key
--   wait(target, condition, timeout)          kubectl wait --for=...
--   logs(target, { tail, since, grep })       a pod's logs, or every pod of a Deployment
--
-- A deploy argument is a name in the client's namespace ("api" or "deployment/api"), or
-- an object read earlier; opts.namespace overrides the namespace. Failures raise k8s
-- errors that say what was being done: "rollout status deployment multiship/api: ...".

local json = require("json")
local log = require("log")
local time = require("time")
local client = require("k8s.client")
local util = require("k8s.util")
local watch = require("k8s.watch")

local M = {}
local Client = client.Client

local REVISION = "deployment.kubernetes.io/revision"
local CHANGE_CAUSE = "kubernetes.io/change-cause"
local HASH_LABEL = "pod-template-hash"
local RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
local DEFAULT_CONTAINER = "kubectl.kubernetes.io/default-container"
-- Annotations kubectl's rollback keeps from the Deployment rather than the ReplicaSet.
local SKIP_ANNOTATIONS = {
  ["kubectl.kubernetes.io/last-applied-configuration"] = true,
  [REVISION] = true,
  ["deployment.kubernetes.io/revision-history"] = true,
  ["deployment.kubernetes.io/desired-replicas"] = true,
  ["deployment.kubernetes.io/max-replicas"] = true,
  ["deprecated.deployment.rollback.to"] = true,
}

local fail = function(what, message, fields)
  fields = fields or {}
  fields.what = what
  error(client.error(what .. ": " .. message, fields), 0)
end

local function seconds_of(v, caller)
  if v == nil then return nil end
  if type(v) == "number" then return v end
  local s = type(v) == "string" and time.parse_duration(v)
  if not s then error(("k8s.%s: timeout must be seconds or a duration (got %s)"):format(caller, tostring(v)), 3) end
  return s
end

-- "api", "deployment/api", "deploy/api" or an object -> name, namespace
local function deployment_ref(self, ref, opts, caller)
  if type(ref) == "table" then
    local m = ref.metadata
    if type(m) ~= "table" or type(m.name) ~= "string" then
      error(("k8s.%s: the deployment must be a name or an object with metadata.name"):format(caller), 3)
    end
    return m.name, opts.namespace or m.namespace or self.namespace
  end
  if type(ref) ~= "string" or ref == "" then
    error(("k8s.%s: the deployment must be a name or an object (got %s)"):format(caller, type(ref)), 3)
  end
  local kind, name = ref:match("^([^/]+)/([^/]+)$")
  if kind then
    local k = kind:lower()
    if k ~= "deployment" and k ~= "deployments" and k ~= "deploy" and k ~= "deployments.apps" then
      error(("k8s.%s: %s is not a deployment"):format(caller, ref), 3)
    end
    ref = name
  end
  return ref, opts.namespace or self.namespace
end

local function annotations(obj)
  local a = obj.metadata and obj.metadata.annotations
  return type(a) == "table" and a or {}
end

local function revision_of(obj)
  return tonumber(annotations(obj)[REVISION])
end

-- ---- errors say which verb failed ----

-- An error from a step inside a verb, restated as the verb's: "rollout status deployment
-- shop/api: deployments.apps "api" not found (NotFound 404)". The step's own action stays in
-- the message unless it was a read (whose API message names the object anyway), and in
-- the error's `step` field.
local function restate(what, err)
  if type(err) ~= "table" or err.kind ~= "k8s" or err.what == what then return err end
  local inner, message = err.what, err.message
  if inner and message:sub(1, #inner + 2) == inner .. ": " and inner:match("^get ") then
    message = message:sub(#inner + 3)
  end
  local fields = {}
  for k, v in pairs(err) do fields[k] = v end
  fields.message, fields.kind = nil, nil
  fields.what, fields.step = what, inner
  return client.error(what .. ": " .. message, fields)
end

local function guarded(what, fn, ...)
  local results = table.pack(pcall(fn, ...))
  if results[1] then return table.unpack(results, 2, results.n) end
  error(restate(what, results[2]), 0)
end

-- ---- set_image ----

-- set_image(deploy, { container = image, ... }, opts) -> the patched Deployment. "*" sets
-- every container. opts: namespace, change_cause (recorded as kubernetes.io/change-cause,
-- which rollout_history shows).
function Client:set_image(ref, images, opts)
  opts = opts or {}
  local name, ns = deployment_ref(self, ref, opts, "set_image")
  if type(images) ~= "table" or next(images) == nil then
    error("k8s.set_image: images must be a table { container = image }", 2)
  end
  local names = {}
  for cname, image in pairs(images) do
    if type(image) ~= "string" or image == "" then
      error(("k8s.set_image: the image for %s must be a non-empty string"):format(tostring(cname)), 2)
    end
    names[#names + 1] = cname
  end
  table.sort(names)
  local what = "set image deployment " .. ns .. "/" .. name
  return guarded(what, function()
    local obj = self:get("deployments", name, { namespace = ns })
    local spec = obj.spec.template.spec
    local patch_containers, patch_init = json.array(), json.array()
    local function set(list, into, cname, image)
      for _, c in ipairs(list ~= json.null and list or {}) do
        if cname == "*" or c.name == cname then
          into[#into + 1] = { name = c.name, image = image }
          if cname ~= "*" then return true end
        end
      end
      return cname == "*"
    end
    for _, cname in ipairs(names) do
      local image = images[cname]
      local found = set(spec.containers, patch_containers, cname, image)
      found = set(spec.initContainers, patch_init, cname, image) or found
      if not found then fail(what, ("unable to find container named %q"):format(cname), { reason = "NotFound" }) end
    end
    local pspec = {}
    if #patch_containers > 0 then pspec.containers = patch_containers end
    if #patch_init > 0 then pspec.initContainers = patch_init end
    local patch = { spec = { template = { spec = pspec } } }
    if opts.change_cause then patch.metadata = { annotations = { [CHANGE_CAUSE] = opts.change_cause } } end
    return self:patch("deployments", name, patch, { namespace = ns })
  end)
end

-- ---- rollout status ----

-- kubectl's DeploymentStatusViewer: message, done, error.
function M.deployment_status(d, revision)
  local name = d.metadata.name
  if revision and revision > 0 then
    local rev = revision_of(d)
    if not rev then return nil, false, ("cannot get the revision of deployment %q"):format(name) end
    if rev ~= revision then
      return nil, false, ("desired revision (%d) is different from the running revision (%d)"):format(revision, rev)
    end
  end
  local st = d.status ~= json.null and d.status or {}
  local generation = d.metadata.generation or 0
  if generation <= (st.observedGeneration or 0) then
    for _, c in ipairs(st.conditions ~= json.null and st.conditions or {}) do
      if c.type == "Progressing" and c.reason == "ProgressDeadlineExceeded" then
        return nil, false, ("deployment %q exceeded its progress deadline"):format(name), "ProgressDeadlineExceeded"
      end
    end
    local replicas = d.spec.replicas
    local updated, total, available = st.updatedReplicas or 0, st.replicas or 0, st.availableReplicas or 0
    if replicas ~= nil and replicas ~= json.null and updated < replicas then
      return ("Waiting for deployment %q rollout to finish: %d out of %d new replicas have been updated...")
        :format(name, updated, replicas), false
    end
    if total > updated then
      return ("Waiting for deployment %q rollout to finish: %d old replicas are pending termination...")
        :format(name, total - updated), false
    end
    if available < updated then
      return ("Waiting for deployment %q rollout to finish: %d of %d updated replicas are available...")
        :format(name, available, updated), false
    end
    return ("deployment %q successfully rolled out"):format(name), true
  end
  return "Waiting for deployment spec update to be observed...", false
end

-- Waits, on the namespace's shared watch, until check(obj) says done (-> message) or
-- fails (-> nil, message, reason). Raises when the object goes away or time runs out.
local function wait_on(self, res, ns, name, what, deadline, check, on_message)
  local sub <close> = self:subscribe(res, ns, name)
  local obj = self:get(res, name, { namespace = ns })
  local uid = obj.metadata.uid
  local last
  while true do
    local message, done, err, reason = check(obj)
    if err then fail(what, err, { reason = reason or "Failed", object = obj }) end
    if done then return obj, message end
    if message and message ~= last then
      last = message
      if on_message then on_message(message, obj) end
    end
    local remaining = deadline and deadline - time.monotonic()
    if remaining and remaining <= 0 then
      fail(what, "timed out waiting for the condition" .. (last and (" (" .. last .. ")") or ""),
        { reason = "Timeout", object = obj })
    end
    for _, ev in ipairs(sub:next(remaining)) do
      local o = ev.object
      if o.metadata.uid == uid then
        if ev.type == "DELETED" then fail(what, "object has been deleted", { reason = "NotFound" }) end
        if watch.newer(o.metadata.resourceVersion, obj.metadata.resourceVersion) then obj = o end
      end
    end
  end
end

-- rollout_status(deploy, opts) -> { message, deployment, revision }. Waits until the
-- rollout is complete by kubectl's rules; raises on ProgressDeadlineExceeded, when
-- opts.timeout passes ("timed out waiting for the condition") and when the Deployment
-- does not exist or is deleted. opts: namespace, timeout, revision, quiet (no progress
-- log lines), on_progress = fn(message, deployment).
function Client:rollout_status(ref, opts)
  opts = opts or {}
  local name, ns = deployment_ref(self, ref, opts, "rollout_status")
  local timeout = seconds_of(opts.timeout, "rollout_status")
  local deadline = timeout and timeout > 0 and time.monotonic() + timeout or nil
  local what = "rollout status deployment " .. ns .. "/" .. name
  return guarded(what, function()
    local res = self:resource("deployments")
    local obj, message = wait_on(self, res, ns, name, what, deadline, function(d)
      return M.deployment_status(d, opts.revision)
    end, function(message, d)
      if not opts.quiet then log.info(message, { deployment = ns .. "/" .. name }) end
      if opts.on_progress then opts.on_progress(message, d) end
    end)
    return { message = message, deployment = obj, revision = revision_of(obj) }
  end)
end

-- ---- history and undo ----

-- The Deployment's ReplicaSets, as kubectl finds them: matching its selector and
-- controlled by it (ownerReferences with controller = true and its uid).
local function replica_sets(self, d, ns)
  local selector = util.label_selector_text(d.spec.selector)
  local list = self:list("replicasets", { namespace = ns, labels = selector ~= "" and selector or nil })
  local out = {}
  for _, rs in ipairs(list.items) do
    for _, ref in ipairs(rs.metadata.ownerReferences ~= json.null and rs.metadata.ownerReferences or {}) do
      if ref.controller == true and ref.uid == d.metadata.uid then
        out[#out + 1] = rs
        break
      end
    end
  end
  return out
end

-- rollout_history(deploy, opts) -> { { revision, change_cause, replicaset, template,
-- created }, ... } by revision, oldest first: what `kubectl rollout history` lists.
function Client:rollout_history(ref, opts)
  opts = opts or {}
  local name, ns = deployment_ref(self, ref, opts, "rollout_history")
  return guarded("rollout history deployment " .. ns .. "/" .. name, function()
    local d = self:get("deployments", name, { namespace = ns })
    local out = {}
    for _, rs in ipairs(replica_sets(self, d, ns)) do
      local rev = revision_of(rs)
      if rev then
        out[#out + 1] = {
          revision = rev, change_cause = annotations(rs)[CHANGE_CAUSE], replicaset = rs.metadata.name,
          template = rs.spec.template, created = rs.metadata.creationTimestamp,
        }
      end
    end
    table.sort(out, function(a, b) return a.revision < b.revision end)
    return out
  end)
end

local function without_hash(template)
  local t = util.copy(template)
  if t.metadata and type(t.metadata.labels) == "table" then
    t.metadata.labels[HASH_LABEL] = nil
    if next(t.metadata.labels) == nil then t.metadata.labels = nil end
  end
  return t
end

-- rollout_undo(deploy, opts) -> { rolled_back, skipped, revision, message }. As kubectl:
-- the previous revision (or opts.to_revision); when its template already is the
-- Deployment's, nothing is sent ("skipped rollback", logged as a warning); otherwise a
-- JSON patch puts the ReplicaSet's pod template (without pod-template-hash) and its
-- annotations back, and the controller makes that ReplicaSet the newest revision.
function Client:rollout_undo(ref, opts)
  opts = opts or {}
  local name, ns = deployment_ref(self, ref, opts, "rollout_undo")
  local to = opts.to_revision or 0
  if math.type(to) ~= "integer" or to < 0 then
    error("k8s.rollout_undo: to_revision must be a non-negative integer", 2)
  end
  local what = "rollout undo deployment " .. ns .. "/" .. name
  return guarded(what, function()
    local d = self:get("deployments", name, { namespace = ns })
    if d.spec.paused == true then
      fail(what, "you cannot rollback a paused deployment; resume it first with 'kubectl rollout resume' and try again",
        { reason = "Paused" })
    end
    local target
    local latest, latest_rev, previous, previous_rev = nil, -1, nil, -1
    for _, rs in ipairs(replica_sets(self, d, ns)) do
      local v = revision_of(rs)
      if v then
        if to == 0 then
          if latest_rev < v then
            previous, previous_rev = latest, latest_rev
            latest, latest_rev = rs, v
          elseif previous_rev < v then
            previous, previous_rev = rs, v
          end
        elseif v == to then
          target = rs
        end
      end
    end
    if to > 0 and not target then
      fail(what, ("unable to find specified revision %d in history"):format(to), { reason = "NotFound" })
    end
    if to == 0 then
      if not previous then
        fail(what, ("no rollout history found for deployment %q"):format(name), { reason = "NotFound" })
      end
      target, to = previous, previous_rev
    end
    local template = without_hash(target.spec.template)
    if util.equal(template, without_hash(d.spec.template)) then
      local message = ("skipped rollback (current template already matches revision %d)"):format(to)
      log.warn(message, { deployment = ns .. "/" .. name })
      return { rolled_back = false, skipped = true, revision = to, message = message }
    end
    local ann = json.object()
    for k in pairs(SKIP_ANNOTATIONS) do
      local v = annotations(d)[k]
      if v ~= nil then ann[k] = v end
    end
    for k, v in pairs(annotations(target)) do
      if not SKIP_ANNOTATIONS[k] then ann[k] = v end
    end
    local ok, patched = pcall(self.patch, self, "deployments", name, json.array({
      { op = "replace", path = "/spec/template", value = template },
      { op = "replace", path = "/metadata/annotations", value = ann },
    }), { namespace = ns, type = "json" })
    if not ok then
      local err = patched
      if type(err) ~= "table" or err.kind ~= "k8s" then error(err, 0) end
      fail(what, ("failed restoring revision %d: %s"):format(to, err.api_message or err.message),
        { reason = err.reason or "Failed", status = err.status })
    end
    return { rolled_back = true, skipped = false, revision = to, message = "rolled back", deployment = patched }
  end)
end

-- ---- restart, scale, service selector ----

-- restart(deploy, opts) -> the patched Deployment: kubectl rollout restart's annotation.
function Client:restart(ref, opts)
  opts = opts or {}
  local name, ns = deployment_ref(self, ref, opts, "restart")
  local what = "restart deployment " .. ns .. "/" .. name
  return guarded(what, function()
    local d = self:get("deployments", name, { namespace = ns })
    if d.spec.paused == true then
      fail(what, "can't restart paused deployment (run rollout resume first)", { reason = "Paused" })
    end
    return self:patch("deployments", name, {
      spec = { template = { metadata = { annotations = { [RESTARTED_AT] = util.format_time() } } } },
    }, { namespace = ns })
  end)
end

-- scale(deploy, n, opts) -> the Scale. A merge patch on the scale subresource, as kubectl;
-- with opts.current_replicas, a read and a PUT with its resourceVersion (409 when the
-- Deployment changed in between) after checking the current count.
function Client:scale(ref, n, opts)
  opts = opts or {}
  local name, ns = deployment_ref(self, ref, opts, "scale")
  if math.type(n) ~= "integer" or n < 0 then error("k8s.scale: replicas must be a non-negative integer", 2) end
  local what = "scale deployment " .. ns .. "/" .. name
  return guarded(what, function()
    if opts.current_replicas then
      local sc = self:get("deployments", name, { namespace = ns, subresource = "scale" })
      if sc.spec.replicas ~= opts.current_replicas then
        fail(what, ("Expected replicas to be %d, was %d"):format(opts.current_replicas, sc.spec.replicas or 0),
          { reason = "Precondition" })
      end
      sc.spec.replicas = n
      return self:replace("deployments", sc, { namespace = ns, subresource = "scale" })
    end
    return self:patch("deployments", name, { spec = { replicas = n } },
      { namespace = ns, type = "merge", subresource = "scale" })
  end)
end

-- patch_service_selector(svc, selector, opts) -> the Service. Merges key by key, as
-- `kubectl patch` does; opts.exact = true makes the selector exactly `selector` (keys not
-- in it are removed).
function Client:patch_service_selector(svc, selector, opts)
  opts = opts or {}
  local name = type(svc) == "table" and svc.metadata and svc.metadata.name or svc
  if type(name) ~= "string" then error("k8s.patch_service_selector: svc must be a name or an object", 2) end
  name = name:gsub("^services?/", ""):gsub("^svc/", "")
  if type(selector) ~= "table" or next(selector) == nil then
    error("k8s.patch_service_selector: selector must be a non-empty table", 2)
  end
  local ns = opts.namespace or (type(svc) == "table" and svc.metadata.namespace) or self.namespace
  local sel = json.object()
  for k, v in pairs(selector) do sel[k] = tostring(v) end
  if opts.exact then
    local current = self:get("services", name, { namespace = ns })
    for k in pairs(current.spec.selector ~= json.null and current.spec.selector or {}) do
      if sel[k] == nil then sel[k] = json.null end
    end
    return self:patch("services", name, { spec = { selector = sel } }, { namespace = ns, type = "merge" })
  end
  return self:patch("services", name, { spec = { selector = sel } }, { namespace = ns })
end

-- ---- wait ----

-- A path like ".status.phase" or "{.status.conditions[0].type}" into obj.
local function jsonpath(obj, path)
  path = path:gsub("^{", ""):gsub("}$", ""):gsub("^%.", "")
  local v = obj
  for part in path:gmatch("[^%.]+") do
    local key, idx = part:match("^([^%[]*)%[(%d+)%]$")
    if key then
      if key ~= "" then v = type(v) == "table" and v[key] or nil end
      v = type(v) == "table" and v[tonumber(idx) + 1] or nil
    else
      v = type(v) == "table" and v[part] or nil
    end
    if v == nil then return nil end
  end
  return v
end

-- kubectl wait's condition check, observedGeneration included.
local function condition_met(obj, cname, cstatus)
  local st = obj.status ~= json.null and obj.status or {}
  for _, c in ipairs(st.conditions ~= json.null and st.conditions or {}) do
    if type(c.type) == "string" and c.type:lower() == cname:lower() then
      local gen = obj.metadata.generation
      local observed = c.observedGeneration or st.observedGeneration
      if gen and observed and observed < gen then return false end
      return tostring(c.status):lower() == cstatus:lower()
    end
  end
  return false
end

-- target -> resource entry, name, namespace
local function wait_target(self, target, opts)
  if type(target) == "table" then
    local m = target.metadata
    if type(m) ~= "table" or not m.name then error("k8s.wait: target must be an object or \"kind/name\"", 3) end
    local res = self:resource(target.kind and target or "deployments")
    return res, m.name, self:namespace_for(res, opts, target)
  end
  if type(target) ~= "string" then error("k8s.wait: target must be an object or \"kind/name\"", 3) end
  local kind, name = target:match("^(.+)/([^/]+)$")
  if not kind then error("k8s.wait: target must be \"kind/name\" (got " .. target .. ")", 3) end
  local res = self:resource(kind)
  return res, name, self:namespace_for(res, opts)
end

-- wait(target, condition, timeout, opts) -> the object (nil for "delete"). condition:
-- "Available" or "condition=Available[=True]", "delete", "jsonpath={.status.phase}=Running",
-- or fn(obj) -> true when done. Raises "timed out waiting for the condition on KIND/NAME".
function Client:wait(target, condition, timeout, opts)
  if type(timeout) == "table" and opts == nil then opts, timeout = timeout, timeout.timeout end
  opts = opts or {}
  local res, name, ns = wait_target(self, target, opts)
  local seconds = seconds_of(timeout, "wait") or 30
  local deadline = time.monotonic() + seconds
  local what = ("wait for %s on %s"):format(type(condition) == "function" and "a condition" or tostring(condition),
    client.describe(res, ns, name))
  local check
  if type(condition) == "function" then
    check = function(obj) return nil, condition(obj) and true or false end
  elseif condition == "delete" then
    local sub <close> = self:subscribe(res, ns, name)
    local obj = self:get(res, name, { namespace = ns, optional = true })
    if not obj then return nil end
    local uid = obj.metadata.uid
    while true do
      local remaining = deadline - time.monotonic()
      if remaining <= 0 then
        fail(what, ("timed out waiting for the condition on %s/%s"):format(res.resource, name), { reason = "Timeout" })
      end
      for _, ev in ipairs(sub:next(remaining)) do
        if ev.type == "DELETED" and ev.object.metadata.uid == uid then return nil end
      end
    end
  elseif type(condition) == "string" and condition:match("^jsonpath=") then
    local path, want = condition:match("^jsonpath=(.-)=(.*)$")
    if not path then path = condition:match("^jsonpath=(.*)$") end
    check = function(obj)
      local v = jsonpath(obj, path)
      if want == nil then return nil, v ~= nil and v ~= json.null end
      return nil, v ~= nil and tostring(v) == want
    end
  elseif type(condition) == "string" then
    local spec = condition:gsub("^condition=", "")
    local cname, cstatus = spec:match("^([^=]+)=(.*)$")
    cname, cstatus = cname or spec, cstatus or "True"
    check = function(obj) return nil, condition_met(obj, cname, cstatus) end
  else
    error("k8s.wait: condition must be a string or a function", 2)
  end
  local ok, obj = pcall(wait_on, self, res, ns, name, what, deadline, check)
  if not ok then
    if type(obj) == "table" and obj.reason == "Timeout" then
      fail(what, ("timed out waiting for the condition on %s/%s"):format(res.resource, name), { reason = "Timeout" })
    end
    error(obj, 0)
  end
  return obj
end

-- ---- logs ----

local function default_container(pod)
  local ann = annotations(pod)[DEFAULT_CONTAINER]
  if ann then return ann end
  local c = pod.spec.containers and pod.spec.containers[1]
  return c and c.name
end

local function matcher(grep)
  if grep == nil then return nil end
  if type(grep) == "function" then return grep end
  if type(grep) == "string" then return function(line) return line:find(grep) ~= nil end end
  error("k8s.logs: grep must be a Lua pattern or a function", 3)
end

-- logs(target, opts) -> { lines = { { pod, container, text }, ... }, text }. target: a pod
-- name, "pod/NAME", "deployment/NAME" (every pod of the Deployment, in name order) or an
-- object. opts: namespace, container, all_containers, tail (lines per container), since
-- (a duration), previous, grep (a Lua pattern or fn(line) -> true), timestamps.
function Client:logs(target, opts)
  opts = opts or {}
  local kind, name
  if type(target) == "table" then
    kind, name = target.kind or "Pod", target.metadata and target.metadata.name
  elseif type(target) == "string" then
    kind, name = target:match("^(.+)/([^/]+)$")
    if not kind then kind, name = "pod", target end
  end
  if type(name) ~= "string" then error("k8s.logs: target must be a pod name, \"kind/name\" or an object", 2) end
  local res = self:resource(kind)
  local ns = self:namespace_for(res, opts, type(target) == "table" and target or nil)
  local what = "logs " .. client.describe(res, ns, name)
  local pods
  local single = res.resource == "pods"
  if single then
    pods = { self:get("pods", name, { namespace = ns }) }
  else
    local owner = self:get(res, name, { namespace = ns })
    local selector = owner.spec and owner.spec.selector
    if type(selector) ~= "table" then fail(what, "it has no pod selector", { reason = "BadRequest" }) end
    local text = (selector.matchLabels ~= nil or selector.matchExpressions ~= nil)
      and util.label_selector_text(selector) or util.selector_text(selector, "selector")
    pods = self:list("pods", { namespace = ns, labels = text }).items
    table.sort(pods, function(a, b) return a.metadata.name < b.metadata.name end)
  end
  local since = seconds_of(opts.since, "logs")
  local cutoff = since and time.now() - since
  local keep = matcher(opts.grep)
  local lines, skipped = {}, {}
  for _, pod in ipairs(pods) do
    local containers = {}
    if opts.all_containers then
      for _, c in ipairs(pod.spec.containers) do containers[#containers + 1] = c.name end
    else
      containers[1] = opts.container or default_container(pod)
    end
    for _, cname in ipairs(containers) do
      local q = { container = cname, timestamps = (cutoff or opts.timestamps) and "true" or nil }
      if opts.tail then q.tailLines = tostring(opts.tail) end
      if since then q.sinceSeconds = tostring(math.ceil(since)) end
      if opts.previous then q.previous = "true" end
      local r = self:request({ path = self:path(self:resource("pods"), ns, pod.metadata.name, "log"), query = q,
        accept = "text/plain, */*" })
      if r.error or r.status ~= 200 then
        local err = client.response_error(("logs pod %s/%s (%s)"):format(ns, pod.metadata.name, cname), r)
        if single then error(err, 0) end
        skipped[#skipped + 1] = err.message
      else
        for line in r.body:gmatch("([^\n]*)\n?") do
          if line ~= "" then
            local text = line
            if cutoff or opts.timestamps then
              local stamp, rest = line:match("^(%S+) (.*)$")
              local t = stamp and util.parse_time(stamp)
              if t then
                if not opts.timestamps then text = rest end
                if cutoff and t < cutoff then text = nil end
              end
            end
            if text and (not keep or keep(text)) then
              lines[#lines + 1] = { pod = pod.metadata.name, container = cname, text = text }
            end
          end
        end
      end
    end
  end
  local parts = {}
  for i, l in ipairs(lines) do
    parts[i] = single and not opts.all_containers and l.text or ("[pod/%s/%s] %s"):format(l.pod, l.container, l.text)
  end
  return { lines = lines, text = table.concat(parts, "\n"), pods = #pods, skipped = skipped }
end

return M
