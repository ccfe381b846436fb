-- selectors.lua (sim.selectors): label selectors (the text form of ?labelSelector= and
-- the LabelSelector objects of Deployments and ReplicaSets) and field selectors
-- (?fieldSelector=), parsed into matchers the way the API server reads them.

local selectors = {}

-- ---- label selectors ----

local function trim(s) return (s:gsub("^%s+", ""):gsub("%s+$", "")) end

-- Splits on commas that are not inside parentheses.
local function split_requirements(text)
  local parts, depth, start = {}, 0, 1
  for i = 1, #text do
    local c = text:sub(i, i)
    if c == "(" then
      depth = depth + 1
    elseif c == ")" then
      depth = depth - 1
    elseif c == "," and depth == 0 then
      parts[#parts + 1] = text:sub(start, i - 1)
      start = i + 1
    end
  end
  parts[#parts + 1] = text:sub(start)
  return parts
end

local KEY = "^[%w][%w%._%-/]*$"

local function valid_key(k) return k ~= "" and k:match(KEY) ~= nil end

-- One requirement -> { key, op, values } or nil, message.
local function parse_requirement(text)
  local t = trim(text)
  if t == "" then return nil, "found '', expected: identifier" end
  local key = t:match("^!%s*(.-)$")
  if key then
    if not valid_key(key) then return nil, ("found '%s', expected: identifier after '!'"):format(key) end
    return { key = key, op = "!" }
  end
  local k, op, rest = t:match("^([^%s=!<>]+)%s+(notin)%s*(%b())$")
  if not k then k, op, rest = t:match("^([^%s=!<>]+)%s+(in)%s*(%b())$") end
  if k then
    if not valid_key(k) then return nil, ("invalid label key %q"):format(k) end
    local values = {}
    for v in rest:sub(2, -2):gmatch("[^,]+") do values[#values + 1] = trim(v) end
    if #values == 0 then return nil, "for 'in', 'notin' operators, values set can't be empty" end
    return { key = k, op = op, values = values }
  end
  for _, o in ipairs({ "==", "!=", "=", ">", "<" }) do
    local a, b = t:match("^(.-)%s*" .. o:gsub("[%=%!%<%>]", "%%%0") .. "%s*(.*)$")
    if a and a ~= "" and not a:find("[=!<>]") then
      a = trim(a)
      if not valid_key(a) then return nil, ("invalid label key %q"):format(a) end
      if b:find("[%s,()]") then return nil, ("invalid label value %q"):format(b) end
      if (o == ">" or o == "<") and not tonumber(b) then
        return nil, ("for 'Gt', 'Lt' operators, the value must be an integer: %q"):format(b)
      end
      return { key = a, op = o == "==" and "=" or o, values = { b } }
    end
  end
  if valid_key(t) then return { key = t, op = "exists" } end
  return nil, ("found '%s', expected: identifier"):format(t)
end

local function requirement_matches(r, labels)
  local v = labels and labels[r.key]
  local op = r.op
  if op == "exists" then return v ~= nil end
  if op == "!" then return v == nil end
  if op == "=" then return v == r.values[1] end
  if op == "!=" then return v ~= r.values[1] end
  if op == "in" then
    if v == nil then return false end
    for _, x in ipairs(r.values) do if x == v then return true end end
    return false
  end
  if op == "notin" then
    if v == nil then return true end
    for _, x in ipairs(r.values) do if x == v then return false end end
    return true
  end
  if op == ">" or op == "<" then
    local n, want = tonumber(v), tonumber(r.values[1])
    if n == nil then return false end
    if op == ">" then return n > want end
    return n < want
  end
  return false
end

-- Selector text -> matcher(labels) -> bool; or nil, message. Empty text matches everything.
function selectors.parse_labels(text)
  if text == nil or trim(text) == "" then
    return function() return true end
  end
  local reqs = {}
  for _, part in ipairs(split_requirements(text)) do
    local r, err = parse_requirement(part)
    if not r then return nil, "unable to parse requirement: " .. err end
    reqs[#reqs + 1] = r
  end
  return function(labels)
    for i = 1, #reqs do
      if not requirement_matches(reqs[i], labels) then return false end
    end
    return true
  end
end

-- A LabelSelector object -> matcher(labels). nil or {} selects nothing (as a controller's
-- selector does) unless everything is true (as a Service's absent selector does not).
function selectors.from_object(sel)
  if sel == nil then return function() return false end end
  local reqs = {}
  for k, v in pairs(sel.matchLabels or {}) do
    reqs[#reqs + 1] = { key = k, op = "=", values = { v } }
  end
  for _, e in ipairs(sel.matchExpressions or {}) do
    local op = ({ In = "in", NotIn = "notin", Exists = "exists", DoesNotExist = "!" })[e.operator]
    reqs[#reqs + 1] = { key = e.key, op = op or "never", values = e.values or {} }
  end
  if #reqs == 0 then return function() return false end end
  return function(labels)
    for i = 1, #reqs do
      if not requirement_matches(reqs[i], labels) then return false end
    end
    return true
  end
end

-- A map selector (a Service's spec.selector) -> matcher. Empty or absent matches nothing.
function selectors.from_map(map)
  if map == nil or next(map) == nil then return function() return false end end
  return function(labels)
    if labels == nil then return false end
    for k, v in pairs(map) do
      if labels[k] ~= v then return false end
    end
    return true
  end
end

-- ---- field selectors ----

-- Fields each resource can be selected by, beyond metadata.name and metadata.namespace.
local FIELDS = {
  pods = {
    ["spec.nodeName"] = function(o) return o.spec and o.spec.nodeName end,
    ["spec.restartPolicy"] = function(o) return o.spec and o.spec.restartPolicy end,
    ["spec.schedulerName"] = function(o) return o.spec and o.spec.schedulerName end,
    ["spec.serviceAccountName"] = function(o) return o.spec and o.spec.serviceAccountName end,
    ["status.phase"] = function(o) return o.status and o.status.phase end,
    ["status.podIP"] = function(o) return o.status and o.status.podIP end,
    ["status.nominatedNodeName"] = function(o) return o.status and o.status.nominatedNodeName end,
  },
  events = {
    ["involvedObject.kind"] = function(o) return o.involvedObject and o.involvedObject.kind end,
    ["involvedObject.namespace"] = function(o) return o.involvedObject and o.involvedObject.namespace end,
    ["involvedObject.name"] = function(o) return o.involvedObject and o.involvedObject.name end,
    ["involvedObject.uid"] = function(o) return o.involvedObject and o.involvedObject.uid end,
    ["involvedObject.apiVersion"] = function(o) return o.involvedObject and o.involvedObject.apiVersion end,
    ["involvedObject.resourceVersion"] = function(o) return o.involvedObject and o.involvedObject.resourceVersion end,
    ["involvedObject.fieldPath"] = function(o) return o.involvedObject and o.involvedObject.fieldPath end,
    reason = function(o) return o.reason end,
    reportingComponent = function(o) return o.reportingComponent end,
    source = function(o) return o.source and o.source.component end,
    type = function(o) return o.type end,
  },
  namespaces = {
    ["status.phase"] = function(o) return o.status and o.status.phase end,
  },
  replicasets = {
    ["status.replicas"] = function(o) return tostring(o.status and o.status.replicas or 0) end,
  },
}

local function field_value(resource, field, obj)
  if field == "metadata.name" then return obj.metadata.name end
  if field == "metadata.namespace" then return obj.metadata.namespace or "" end
  local f = FIELDS[resource] and FIELDS[resource][field]
  local v = f and f(obj)
  if v == nil then return "" end
  return tostring(v)
end

-- Field selector text -> matcher(obj) -> bool, plus the value it pins metadata.name to
-- (if any); or nil, message (the API server answers 400 BadRequest).
function selectors.parse_fields(resource, text)
  if text == nil or trim(text) == "" then return function() return true end end
  local reqs = {}
  local name
  for part in text:gmatch("[^,]+") do
    local f, op, v = part:match("^%s*([^=!%s]+)%s*([=!]=?)%s*(.-)%s*$")
    if not f or op == "!" then return nil, ("invalid selector: '%s'; can't understand '%s'"):format(text, part) end
    if f ~= "metadata.name" and f ~= "metadata.namespace"
      and not (FIELDS[resource] and FIELDS[resource][f]) then
      return nil, ("field label not supported: %s"):format(f)
    end
    local negate = op == "!="
    reqs[#reqs + 1] = { field = f, value = v, negate = negate }
    if f == "metadata.name" and not negate then name = v end
  end
  return function(obj)
    for i = 1, #reqs do
      local r = reqs[i]
      local eq = field_value(resource, r.field, obj) == r.value
      if eq == r.negate then return false end
    end
    return true
  end, name
end

return selectors
