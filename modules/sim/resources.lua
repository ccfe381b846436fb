-- resources.lua (sim.resources): the kinds the simulated API server serves, and what the
-- API server itself does to each before storing it: defaulting (the values a real
-- cluster fills in, so objects read back look like a real cluster's), validation (422
-- Invalid with field causes), what an update may change, and when `generation` moves.
-- Discovery documents and Tables are built from these entries elsewhere.

local json = require("json")
local util = require("sim.util")

local resources = {}

local ALL_VERBS = { "create", "delete", "deletecollection", "get", "list", "patch", "update", "watch" }
local SUB_VERBS = { "get", "patch", "update" }

-- name -> definition. `status`/`scale`/`log` name the subresources each one has.
local DEFS = {
  namespaces = {
    kind = "Namespace", group = "", version = "v1", namespaced = false, short = { "ns" },
    verbs = { "create", "delete", "get", "list", "patch", "update", "watch" },
    subresources = { status = true, finalize = true },
  },
  pods = {
    kind = "Pod", group = "", version = "v1", namespaced = true, short = { "po" },
    categories = { "all" }, subresources = { status = true, log = true, exec = true },
  },
  services = {
    kind = "Service", group = "", version = "v1", namespaced = true, short = { "svc" },
    categories = { "all" }, subresources = { status = true, proxy = true },
    verbs = { "create", "delete", "deletecollection", "get", "list", "patch", "update", "watch" },
  },
  configmaps = {
    kind = "ConfigMap", group = "", version = "v1", namespaced = true, short = { "cm" },
  },
  events = {
    kind = "Event", group = "", version = "v1", namespaced = true, short = { "ev" },
  },
  deployments = {
    kind = "Deployment", group = "apps", version = "v1", namespaced = true, short = { "deploy" },
    categories = { "all" }, subresources = { status = true, scale = true }, generation = true,
    annotations_bump_generation = true,
  },
  replicasets = {
    kind = "ReplicaSet", group = "apps", version = "v1", namespaced = true, short = { "rs" },
    categories = { "all" }, subresources = { status = true, scale = true }, generation = true,
  },
  leases = {
    kind = "Lease", group = "coordination.k8s.io", version = "v1", namespaced = true, short = {},
  },
}

for name, def in pairs(DEFS) do
  def.name = name
  def.singular = def.kind:lower()
  def.verbs = def.verbs or ALL_VERBS
  def.short = def.short or {}
  def.categories = def.categories or {}
  def.subresources = def.subresources or {}
  def.api_version = def.group == "" and def.version or (def.group .. "/" .. def.version)
  -- "deployments.apps", as errors name a resource
  def.qualified = def.group == "" and name or (name .. "." .. def.group)
  def.list_kind = def.kind .. "List"
end

resources.DEFS = DEFS
resources.SUB_VERBS = SUB_VERBS

-- The groups, in the order discovery lists them ("" is the core group).
resources.GROUPS = {
  { name = "", version = "v1", resources = { "namespaces", "pods", "services", "configmaps", "events" } },
  { name = "apps", version = "v1", resources = { "deployments", "replicasets" } },
  { name = "coordination.k8s.io", version = "v1", resources = { "leases" } },
}

function resources.get(name) return DEFS[name] end

-- The definition for a group/version/resource as it appears in a URL, or nil.
function resources.lookup(group, version, name)
  local def = DEFS[name]
  if def and def.group == group and def.version == version then return def end
  return nil
end

function resources.by_kind(api_version, kind)
  for _, def in pairs(DEFS) do
    if def.kind == kind and def.api_version == api_version then return def end
  end
  return nil
end

-- ---- field errors ----

local function show_value(v)
  if type(v) == "string" then return string.format("%q", v) end
  if type(v) == "table" then
    local ok, text = pcall(json.encode, v)
    return ok and text or "{...}"
  end
  return tostring(v)
end

local ERR = {}
function ERR.required(field, detail)
  return { field = field, reason = "FieldValueRequired",
    message = "Required value" .. (detail and (": " .. detail) or "") }
end
function ERR.invalid(field, value, detail)
  return { field = field, reason = "FieldValueInvalid",
    message = ("Invalid value: %s: %s"):format(show_value(value), detail) }
end
function ERR.forbidden(field, detail)
  return { field = field, reason = "FieldValueForbidden", message = "Forbidden: " .. detail }
end
function ERR.not_supported(field, value, supported)
  local quoted = {}
  for i, s in ipairs(supported) do quoted[i] = string.format("%q", s) end
  return { field = field, reason = "FieldValueNotSupported",
    message = ("Unsupported value: %s: supported values: %s"):format(show_value(value), table.concat(quoted, ", ")) }
end
function ERR.duplicate(field, value)
  return { field = field, reason = "FieldValueDuplicate", message = "Duplicate value: " .. show_value(value) }
end
resources.ERR = ERR

local DNS1123_SUBDOMAIN_MSG = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
  .. "characters, '-' or '.', and must start and end with an alphanumeric character (e.g. "
  .. "'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
local DNS1123_LABEL_MSG = "a lowercase RFC 1123 label must consist of lower case alphanumeric "
  .. "characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  "
  .. "or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
local DNS1035_LABEL_MSG = "a DNS-1035 label must consist of lower case alphanumeric characters or "
  .. "'-', start with an alphabetic character, and end with an alphanumeric character (e.g. "
  .. "'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"

local function is_label(s)
  return #s <= 63 and s:match("^[a-z0-9]$") ~= nil or (#s <= 63 and s:match("^[a-z0-9][-a-z0-9]*[a-z0-9]$") ~= nil)
end

local function is_subdomain(s)
  if #s > 253 or s == "" then return false end
  for part in (s .. "."):gmatch("([^.]*)%.") do
    if not is_label(part) then return false end
  end
  return true
end

local NAME_RULES = {
  namespaces = { check = is_label, msg = DNS1123_LABEL_MSG },
  services = { check = function(s) return #s <= 63 and s:match("^[a-z]$") ~= nil or (#s <= 63 and s:match("^[a-z][-a-z0-9]*[a-z0-9]$") ~= nil) end, msg = DNS1035_LABEL_MSG },
}

local function validate_meta(def, obj, errs)
  local meta = obj.metadata
  local name = meta.name
  if name == nil or name == "" then
    errs[#errs + 1] = ERR.required("metadata.name", "name or generateName is required")
    return
  end
  local rule = NAME_RULES[def.name] or { check = is_subdomain, msg = DNS1123_SUBDOMAIN_MSG }
  if not rule.check(name) then errs[#errs + 1] = ERR.invalid("metadata.name", name, rule.msg) end
  for _, field in ipairs({ "labels", "annotations" }) do
    local m = meta[field]
    if m ~= nil then
      if type(m) ~= "table" then
        errs[#errs + 1] = ERR.invalid("metadata." .. field, m, "must be a map of strings")
      else
        for k, v in pairs(m) do
          if type(v) ~= "string" then
            errs[#errs + 1] = ERR.invalid(("metadata.%s.%s"):format(field, k), v, "must be a string")
          end
        end
      end
    end
  end
end

-- ---- int-or-string (maxSurge, maxUnavailable, targetPort) ----

-- "25%" or 2 -> number of pods out of total; round up for surge, down for unavailable:
-- intstr.GetScaledValueFromIntOrPercent.
function resources.scaled_value(v, total, round_up)
  if v == nil then return 0 end
  if math.type(v) == "integer" then return v end
  if type(v) == "number" then return math.floor(v) end
  local pct = tonumber((tostring(v):match("^(%d+)%%$")))
  if not pct then
    local n = tonumber(v)
    if n then return math.floor(n) end
    return nil
  end
  local x = pct * total / 100
  if round_up then return math.ceil(x) end
  return math.floor(x)
end

local function check_int_or_percent(field, v, errs)
  if v == nil then return end
  if math.type(v) == "integer" then
    if v < 0 then errs[#errs + 1] = ERR.invalid(field, v, "must be greater than or equal to 0") end
    return
  end
  if type(v) ~= "string" or not v:match("^%d+%%$") then
    errs[#errs + 1] = ERR.invalid(field, v, "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')")
    return
  end
  if tonumber(v:sub(1, -2)) > 100 then errs[#errs + 1] = ERR.invalid(field, v, "must not be greater than 100%") end
end

local function is_zero(v)
  if v == nil then return true end
  if type(v) == "number" then return v == 0 end
  return tostring(v):match("^0+%%$") ~= nil
end

-- ---- defaults ----

local function default_probe(p)
  if type(p) ~= "table" then return end
  p.timeoutSeconds = p.timeoutSeconds or 1
  p.periodSeconds = p.periodSeconds or 10
  p.successThreshold = p.successThreshold or 1
  p.failureThreshold = p.failureThreshold or 3
  if type(p.httpGet) == "table" then p.httpGet.scheme = p.httpGet.scheme or "HTTP" end
end

local function default_container(c)
  if type(c) ~= "table" then return end
  c.terminationMessagePath = c.terminationMessagePath or "/dev/termination-log"
  c.terminationMessagePolicy = c.terminationMessagePolicy or "File"
  if c.imagePullPolicy == nil then
    local _, tag = util.split_image(c.image)
    c.imagePullPolicy = (tag == "latest") and "Always" or "IfNotPresent"
  end
  c.resources = c.resources or {}
  for _, p in ipairs(c.ports or {}) do
    if type(p) == "table" then p.protocol = p.protocol or "TCP" end
  end
  default_probe(c.readinessProbe)
  default_probe(c.livenessProbe)
  default_probe(c.startupProbe)
end

local function default_pod_spec(spec)
  if type(spec) ~= "table" then return end
  spec.restartPolicy = spec.restartPolicy or "Always"
  spec.terminationGracePeriodSeconds = spec.terminationGracePeriodSeconds or 30
  spec.dnsPolicy = spec.dnsPolicy or "ClusterFirst"
  spec.securityContext = spec.securityContext or {}
  spec.schedulerName = spec.schedulerName or "default-scheduler"
  for _, c in ipairs(spec.containers or {}) do default_container(c) end
  for _, c in ipairs(spec.initContainers or {}) do default_container(c) end
end

local function default_template(t)
  if type(t) ~= "table" then return end
  t.metadata = t.metadata or {}
  default_pod_spec(t.spec)
end

local DEFAULTS = {}

function DEFAULTS.deployments(obj)
  local spec = obj.spec
  if spec.replicas == nil then spec.replicas = 1 end
  spec.strategy = spec.strategy or {}
  local s = spec.strategy
  s.type = s.type or "RollingUpdate"
  if s.type == "RollingUpdate" then
    s.rollingUpdate = s.rollingUpdate or {}
    if s.rollingUpdate.maxSurge == nil then s.rollingUpdate.maxSurge = "25%" end
    if s.rollingUpdate.maxUnavailable == nil then s.rollingUpdate.maxUnavailable = "25%" end
  end
  if spec.revisionHistoryLimit == nil then spec.revisionHistoryLimit = 10 end
  if spec.progressDeadlineSeconds == nil then spec.progressDeadlineSeconds = 600 end
  default_template(spec.template)
end

function DEFAULTS.replicasets(obj)
  if obj.spec.replicas == nil then obj.spec.replicas = 1 end
  default_template(obj.spec.template)
end

function DEFAULTS.pods(obj)
  default_pod_spec(obj.spec)
  local spec = obj.spec
  if type(spec) == "table" then
    spec.serviceAccountName = spec.serviceAccountName or "default"
    spec.serviceAccount = spec.serviceAccount or spec.serviceAccountName
    spec.priority = spec.priority or 0
    spec.enableServiceLinks = spec.enableServiceLinks == nil and true or spec.enableServiceLinks
    spec.preemptionPolicy = spec.preemptionPolicy or "PreemptLowerPriority"
    if spec.tolerations == nil then
      spec.tolerations = {
        { key = "node.kubernetes.io/not-ready", operator = "Exists", effect = "NoExecute", tolerationSeconds = 300 },
        { key = "node.kubernetes.io/unreachable", operator = "Exists", effect = "NoExecute", tolerationSeconds = 300 },
      }
    end
  end
end

function DEFAULTS.services(obj)
  local spec = obj.spec
  spec.type = spec.type or "ClusterIP"
  spec.sessionAffinity = spec.sessionAffinity or "None"
  for _, p in ipairs(spec.ports or {}) do
    if type(p) == "table" then
      p.protocol = p.protocol or "TCP"
      if p.targetPort == nil then p.targetPort = p.port end
    end
  end
  if spec.type ~= "ExternalName" then
    spec.ipFamilies = spec.ipFamilies or json.array({ "IPv4" })
    spec.ipFamilyPolicy = spec.ipFamilyPolicy or "SingleStack"
    spec.internalTrafficPolicy = spec.internalTrafficPolicy or "Cluster"
  end
  obj.status = obj.status or { loadBalancer = {} }
end

function DEFAULTS.namespaces(obj)
  obj.spec = obj.spec or {}
  obj.spec.finalizers = obj.spec.finalizers or json.array({ "kubernetes" })
  obj.status = obj.status or {}
  obj.status.phase = obj.status.phase or "Active"
  obj.metadata.labels = obj.metadata.labels or {}
  obj.metadata.labels["kubernetes.io/metadata.name"] = obj.metadata.name
end

-- Applies the API server's defaults to obj (in place), after `spec` exists.
function resources.default(def, obj)
  local needs_spec = { deployments = true, replicasets = true, pods = true, services = true }
  if needs_spec[def.name] and type(obj.spec) ~= "table" then return end
  local f = DEFAULTS[def.name]
  if f then f(obj) end
end

-- ---- validation ----

local function validate_containers(path, containers, errs, required)
  if containers == nil or (type(containers) == "table" and #containers == 0) then
    if required then errs[#errs + 1] = ERR.required(path) end
    return
  end
  if type(containers) ~= "table" then
    errs[#errs + 1] = ERR.invalid(path, containers, "must be a list of containers")
    return
  end
  local seen = {}
  for i, c in ipairs(containers) do
    local p = ("%s[%d]"):format(path, i - 1)
    if type(c) ~= "table" then
      errs[#errs + 1] = ERR.invalid(p, c, "must be a container")
    else
      if c.name == nil or c.name == "" then
        errs[#errs + 1] = ERR.required(p .. ".name")
      elseif not is_label(c.name) then
        errs[#errs + 1] = ERR.invalid(p .. ".name", c.name, DNS1123_LABEL_MSG)
      elseif seen[c.name] then
        errs[#errs + 1] = ERR.duplicate(p .. ".name", c.name)
      end
      if c.name then seen[c.name] = true end
      if c.image == nil or c.image == "" then errs[#errs + 1] = ERR.required(p .. ".image") end
      for j, port in ipairs(c.ports or {}) do
        local pp = ("%s.ports[%d].containerPort"):format(p, j - 1)
        if math.type(port.containerPort) ~= "integer" then
          errs[#errs + 1] = ERR.required(pp)
        elseif port.containerPort < 1 or port.containerPort > 65535 then
          errs[#errs + 1] = ERR.invalid(pp, port.containerPort, "must be between 1 and 65535, inclusive")
        end
      end
    end
  end
end

local function validate_pod_spec(path, spec, errs, template)
  if type(spec) ~= "table" then
    errs[#errs + 1] = ERR.required(path)
    return
  end
  validate_containers(path .. ".containers", spec.containers, errs, true)
  validate_containers(path .. ".initContainers", spec.initContainers, errs, false)
  local rp = spec.restartPolicy
  if template and rp ~= "Always" then
    errs[#errs + 1] = ERR.not_supported(path .. ".restartPolicy", rp, { "Always" })
  elseif rp ~= "Always" and rp ~= "OnFailure" and rp ~= "Never" then
    errs[#errs + 1] = ERR.not_supported(path .. ".restartPolicy", rp, { "Always", "OnFailure", "Never" })
  end
end

local function validate_selector_and_template(obj, errs, kind_word)
  local spec = obj.spec
  local sel = spec.selector
  if sel == nil then
    errs[#errs + 1] = ERR.required("spec.selector")
  elseif type(sel) ~= "table" or (util.is_empty(sel.matchLabels) and util.is_empty(sel.matchExpressions)) then
    errs[#errs + 1] = ERR.invalid("spec.selector", sel, "empty selector is invalid for " .. kind_word)
  end
  local t = spec.template
  if type(t) ~= "table" then
    errs[#errs + 1] = ERR.required("spec.template")
    return
  end
  local labels = t.metadata and t.metadata.labels or {}
  if sel and type(sel) == "table" and not util.is_empty(sel.matchLabels or sel.matchExpressions) then
    local matches = require("sim.selectors").from_object(sel)
    if not matches(labels) then
      errs[#errs + 1] = ERR.invalid("spec.template.metadata.labels", labels, "`selector` does not match template `labels`")
    end
  end
  validate_pod_spec("spec.template.spec", t.spec, errs, true)
end

local function validate_replicas(obj, errs)
  local r = obj.spec.replicas
  if math.type(r) ~= "integer" then
    errs[#errs + 1] = ERR.invalid("spec.replicas", r, "must be an integer")
  elseif r < 0 then
    errs[#errs + 1] = ERR.invalid("spec.replicas", r, "must be greater than or equal to 0")
  end
end

local VALIDATE = {}

function VALIDATE.deployments(obj, old, errs)
  if type(obj.spec) ~= "table" then
    errs[#errs + 1] = ERR.required("spec")
    return
  end
  validate_replicas(obj, errs)
  validate_selector_and_template(obj, errs, "deployment")
  local s = obj.spec.strategy or {}
  if s.type ~= "RollingUpdate" and s.type ~= "Recreate" then
    errs[#errs + 1] = ERR.not_supported("spec.strategy.type", s.type, { "Recreate", "RollingUpdate" })
  elseif s.type == "Recreate" and s.rollingUpdate ~= nil then
    errs[#errs + 1] = ERR.forbidden("spec.strategy.rollingUpdate", "may not be specified when strategy `type` is 'Recreate'")
  elseif s.type == "RollingUpdate" then
    local ru = s.rollingUpdate or {}
    check_int_or_percent("spec.strategy.rollingUpdate.maxSurge", ru.maxSurge, errs)
    check_int_or_percent("spec.strategy.rollingUpdate.maxUnavailable", ru.maxUnavailable, errs)
    if is_zero(ru.maxSurge) and is_zero(ru.maxUnavailable) then
      errs[#errs + 1] = ERR.invalid("spec.strategy.rollingUpdate.maxUnavailable", ru.maxUnavailable,
        "may not be 0 when `maxSurge` is 0")
    end
  end
  local pds, mrs = obj.spec.progressDeadlineSeconds, obj.spec.minReadySeconds or 0
  if pds ~= nil and (math.type(pds) ~= "integer" or pds <= mrs) then
    errs[#errs + 1] = ERR.invalid("spec.progressDeadlineSeconds", pds, "must be greater than minReadySeconds")
  end
  local rhl = obj.spec.revisionHistoryLimit
  if rhl ~= nil and (math.type(rhl) ~= "integer" or rhl < 0) then
    errs[#errs + 1] = ERR.invalid("spec.revisionHistoryLimit", rhl, "must be greater than or equal to 0")
  end
  if old and not util.semantic_equal(old.spec.selector, obj.spec.selector) then
    errs[#errs + 1] = ERR.invalid("spec.selector", obj.spec.selector, "field is immutable")
  end
end

function VALIDATE.replicasets(obj, old, errs)
  if type(obj.spec) ~= "table" then
    errs[#errs + 1] = ERR.required("spec")
    return
  end
  validate_replicas(obj, errs)
  validate_selector_and_template(obj, errs, "replicaset")
  if old and not util.semantic_equal(old.spec.selector, obj.spec.selector) then
    errs[#errs + 1] = ERR.invalid("spec.selector", obj.spec.selector, "field is immutable")
  end
end

-- What a running pod's spec may change (ValidatePodUpdate), images aside.
local function pod_spec_without_images(spec)
  local c = util.copy(spec)
  for _, list in ipairs({ c.containers or {}, c.initContainers or {} }) do
    for _, ctr in ipairs(list) do ctr.image = nil end
  end
  c.activeDeadlineSeconds, c.tolerations, c.terminationGracePeriodSeconds = nil, nil, nil
  return c
end

function VALIDATE.pods(obj, old, errs)
  validate_pod_spec("spec", obj.spec, errs, false)
  if old and #errs == 0 and not util.semantic_equal(pod_spec_without_images(old.spec), pod_spec_without_images(obj.spec)) then
    errs[#errs + 1] = ERR.forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`,"
      .. "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),"
      .. "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)")
  end
end

function VALIDATE.services(obj, old, errs)
  local spec = obj.spec
  if type(spec) ~= "table" then
    errs[#errs + 1] = ERR.required("spec")
    return
  end
  local types = { ClusterIP = true, NodePort = true, LoadBalancer = true, ExternalName = true }
  if not types[spec.type] then
    errs[#errs + 1] = ERR.not_supported("spec.type", spec.type, { "ClusterIP", "ExternalName", "LoadBalancer", "NodePort" })
  end
  local ports = spec.ports or {}
  if #ports == 0 and spec.type ~= "ExternalName" and spec.clusterIP ~= "None" then
    errs[#errs + 1] = ERR.required("spec.ports")
  end
  local names = {}
  for i, p in ipairs(ports) do
    local path = ("spec.ports[%d]"):format(i - 1)
    if math.type(p.port) ~= "integer" or p.port < 1 or p.port > 65535 then
      errs[#errs + 1] = ERR.invalid(path .. ".port", p.port, "must be between 1 and 65535, inclusive")
    end
    if #ports > 1 and (p.name == nil or p.name == "") then
      errs[#errs + 1] = ERR.required(path .. ".name")
    elseif p.name and names[p.name] then
      errs[#errs + 1] = ERR.duplicate(path .. ".name", p.name)
    end
    if p.name then names[p.name] = true end
  end
  if spec.selector ~= nil then
    if type(spec.selector) ~= "table" then
      errs[#errs + 1] = ERR.invalid("spec.selector", spec.selector, "must be a map of strings")
    else
      for k, v in pairs(spec.selector) do
        if type(v) ~= "string" then errs[#errs + 1] = ERR.invalid("spec.selector." .. k, v, "must be a string") end
      end
    end
  end
  if old and old.spec.clusterIP and spec.clusterIP ~= old.spec.clusterIP then
    errs[#errs + 1] = ERR.invalid("spec.clusterIPs[0]", json.array({ spec.clusterIP }), "may not change once set")
  end
end

function VALIDATE.configmaps(obj, old, errs)
  for _, field in ipairs({ "data", "binaryData" }) do
    for k, v in pairs(obj[field] or {}) do
      if type(k) ~= "string" or not k:match("^[-._%w]+$") then
        errs[#errs + 1] = ERR.invalid(field, k, "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')")
      elseif field == "data" and type(v) ~= "string" then
        errs[#errs + 1] = ERR.invalid(field .. "." .. k, v, "must be a string")
      end
    end
  end
end

function VALIDATE.leases(obj, old, errs)
  local spec = obj.spec
  if spec == nil then return end
  local d = spec.leaseDurationSeconds
  if d ~= nil and (math.type(d) ~= "integer" or d <= 0) then
    errs[#errs + 1] = ERR.invalid("spec.leaseDurationSeconds", d, "must be greater than 0")
  end
  local t = spec.leaseTransitions
  if t ~= nil and (math.type(t) ~= "integer" or t < 0) then
    errs[#errs + 1] = ERR.invalid("spec.leaseTransitions", t, "must be greater than or equal to 0")
  end
end

-- Returns a list of field errors (empty when obj is valid). old is the stored object on
-- update, nil on create.
function resources.validate(def, obj, old)
  local errs = {}
  validate_meta(def, obj, errs)
  local f = VALIDATE[def.name]
  if f then f(obj, old, errs) end
  return errs
end

-- ---- what moves generation ----

-- trusted: a write by the simulated control plane, whose changes are never only an empty
-- value added or removed, so plain inequality is enough.
function resources.bumps_generation(def, new, old, trusted)
  if not def.generation then return false end
  -- plain equality first: cheap when the new version shares its spec with the old
  if not util.equal(new.spec, old.spec) and (trusted or not util.semantic_equal(new.spec, old.spec)) then
    return true
  end
  if def.annotations_bump_generation and not util.equal(new.metadata.annotations, old.metadata.annotations) then
    return not util.semantic_equal(new.metadata.annotations, old.metadata.annotations)
  end
  return false
end

-- Values a Service keeps from its stored self when an update leaves them out
-- (patchAllocatedValues): the cluster IP the API server allocated.
function resources.carry_allocated(def, new, old)
  if def.name == "services" and type(new.spec) == "table" and old.spec then
    if new.spec.clusterIP == nil or new.spec.clusterIP == "" then
      new.spec.clusterIP = old.spec.clusterIP
      new.spec.clusterIPs = util.copy(old.spec.clusterIPs)
    end
  end
end

return resources
