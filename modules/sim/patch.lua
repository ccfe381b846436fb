-- patch.lua (sim.patch): the three patch formats the API server takes.
--
--   json_merge(doc, patch)              application/merge-patch+json, RFC 7386
--   json_patch(doc, ops)                application/json-patch+json, RFC 6902
--   strategic(resource, doc, patch)     application/strategic-merge-patch+json: maps merge,
--                                       lists of maps merge by their key where the Go
--                                       types say so (containers by name, ports by
--                                       containerPort, ...), other lists are replaced;
--                                       directives $patch (replace, delete, merge),
--                                       $retainKeys, $setElementOrder/F,
--                                       $deleteFromPrimitiveList/F
--
-- Each returns the patched document (doc may be changed; pass a copy), or nil and a
-- message (the caller answers 422, or 400 for a malformed patch).

local json = require("json")
local util = require("sim.util")

local patch = {}

local null = json.null
local copy = util.copy

local function is_object(v) return type(v) == "table" and not util.is_array(v) end
local function is_list(v) return type(v) == "table" and util.is_array(v) end

-- ---- RFC 7386 ----

local function merge(target, p)
  if not is_object(p) then return copy(p) end
  if not is_object(target) then target = json.object() end
  for k, v in pairs(p) do
    if v == null then
      target[k] = nil
    else
      target[k] = merge(target[k], v)
    end
  end
  return target
end

function patch.json_merge(doc, p)
  if not is_object(p) then return nil, "a merge patch must be a JSON object" end
  return merge(doc, p)
end

-- ---- RFC 6902 ----

local function parse_pointer(ptr)
  if ptr == "" then return {} end
  if type(ptr) ~= "string" or ptr:sub(1, 1) ~= "/" then return nil end
  local parts = {}
  for token in (ptr:sub(2) .. "/"):gmatch("(.-)/") do
    parts[#parts + 1] = token:gsub("~1", "/"):gsub("~0", "~")
  end
  return parts
end

-- The container holding the last token, and that token (a number for arrays).
local function resolve_parent(doc, parts, ptr, op)
  local node = doc
  for i = 1, #parts - 1 do
    local tok = parts[i]
    if is_list(node) then
      local idx = tonumber(tok)
      node = idx and node[idx + 1]
    elseif type(node) == "table" then
      node = node[tok]
    else
      node = nil
    end
    if node == nil or type(node) ~= "table" then
      return nil, ("%s operation does not apply: doc is missing path: %q"):format(op, ptr)
    end
  end
  return node, parts[#parts]
end

local function array_index(node, tok, allow_end)
  if tok == "-" and allow_end then return #node + 1 end
  if not tok:match("^%d+$") or (#tok > 1 and tok:sub(1, 1) == "0") then return nil end
  local idx = tonumber(tok) + 1
  local max = allow_end and #node + 1 or #node
  if idx < 1 or idx > max then return nil end
  return idx
end

local function get_at(doc, ptr)
  local parts = parse_pointer(ptr)
  if not parts then return nil end
  local node = doc
  for _, tok in ipairs(parts) do
    if is_list(node) then
      local idx = array_index(node, tok, false)
      node = idx and node[idx]
    elseif type(node) == "table" then
      node = node[tok]
    else
      return nil
    end
    if node == nil then return nil end
  end
  return node
end

local function remove_at(doc, ptr, op)
  local parts = parse_pointer(ptr)
  if not parts or #parts == 0 then return nil, ("%s operation does not apply: invalid path %q"):format(op, tostring(ptr)) end
  local parent, tok = resolve_parent(doc, parts, ptr, op)
  if not parent then return nil, tok end
  if is_list(parent) then
    local idx = array_index(parent, tok, false)
    if not idx then return nil, ("%s operation does not apply: doc is missing key: %s"):format(op, ptr) end
    return table.remove(parent, idx)
  end
  local v = parent[tok]
  if v == nil then return nil, ("%s operation does not apply: doc is missing key: %s"):format(op, ptr) end
  parent[tok] = nil
  return v
end

-- Returns the new document (the root may be replaced).
local function add_at(doc, ptr, value, op)
  local parts = parse_pointer(ptr)
  if not parts then return nil, ("%s operation does not apply: invalid path %q"):format(op, tostring(ptr)) end
  if #parts == 0 then return value end
  local parent, tok = resolve_parent(doc, parts, ptr, op)
  if not parent then return nil, tok end
  if is_list(parent) then
    local idx = array_index(parent, tok, true)
    if not idx then return nil, ("%s operation does not apply: index out of bounds: %s"):format(op, ptr) end
    table.insert(parent, idx, value)
  else
    parent[tok] = value
  end
  return doc
end

function patch.json_patch(doc, ops)
  if not is_list(ops) then return nil, "json patch must be an array of operations", true end
  for i, o in ipairs(ops) do
    if not is_object(o) or type(o.op) ~= "string" then
      return nil, ("operation %d is not an object with an op"):format(i - 1), true
    end
    local op, path = o.op, o.path
    if type(path) ~= "string" then return nil, ("operation %d (%s) has no path"):format(i - 1, op), true end
    local err
    if op == "add" then
      if o.value == nil then return nil, ("operation %d (add) has no value"):format(i - 1), true end
      doc, err = add_at(doc, path, copy(o.value), op)
    elseif op == "remove" then
      local v
      v, err = remove_at(doc, path, op)
      if v == nil then doc = nil end
    elseif op == "replace" then
      if o.value == nil then return nil, ("operation %d (replace) has no value"):format(i - 1), true end
      if path == "" then
        doc = copy(o.value)
      else
        local v
        v, err = remove_at(doc, path, op)
        if v == nil then
          doc = nil
        else
          doc, err = add_at(doc, path, copy(o.value), op)
        end
      end
    elseif op == "move" or op == "copy" then
      local from = o.from
      if type(from) ~= "string" then return nil, ("operation %d (%s) has no from"):format(i - 1, op), true end
      local v
      if op == "move" then
        v, err = remove_at(doc, from, op)
      else
        v = get_at(doc, from)
        if v == nil then err = ("copy operation does not apply: doc is missing from path: %s"):format(from) end
        v = copy(v)
      end
      if v == nil then
        doc = nil
      else
        doc, err = add_at(doc, path, v, op)
      end
    elseif op == "test" then
      local v = get_at(doc, path)
      if v == nil and o.value ~= null then
        err = ("testing value %s failed: doc is missing path"):format(path)
      elseif not util.equal(v == nil and null or v, o.value) then
        err = ("testing value %s failed"):format(path)
      end
    else
      return nil, ("Unexpected kind: %s"):format(op), true
    end
    if err or doc == nil then return nil, err or "the patch removed the whole document" end
  end
  return doc
end

-- ---- strategic merge patch ----

-- Merge keys of lists (patchMergeKey in the Go types) by path from the object's root,
-- lists of scalars merged as sets (patchStrategy=merge without a key) marked `set`.
local POD_SPEC_LISTS = {
  containers = "name", initContainers = "name", ephemeralContainers = "name", volumes = "name",
  imagePullSecrets = "name", hostAliases = "ip", topologySpreadConstraints = "topologyKey",
  resourceClaims = "name", schedulingGates = "name",
}
local CONTAINER_LISTS = { ports = "containerPort", env = "name", volumeMounts = "mountPath", volumeDevices = "devicePath" }

local function add_pod_spec(rules, prefix)
  for field, key in pairs(POD_SPEC_LISTS) do rules[prefix .. "." .. field] = key end
  for _, c in ipairs({ "containers", "initContainers", "ephemeralContainers" }) do
    for field, key in pairs(CONTAINER_LISTS) do rules[prefix .. "." .. c .. "." .. field] = key end
  end
end

local function add_meta(rules, prefix)
  rules[prefix .. "ownerReferences"] = "uid"
  rules[prefix .. "finalizers"] = "set"
end

local RULES = {}
for _, r in ipairs({ "namespaces", "pods", "services", "configmaps", "events", "deployments", "replicasets", "leases" }) do
  RULES[r] = {}
  add_meta(RULES[r], "metadata.")
end
add_pod_spec(RULES.pods, "spec")
RULES.pods["status.conditions"] = "type"
for _, r in ipairs({ "deployments", "replicasets" }) do
  add_pod_spec(RULES[r], "spec.template.spec")
  add_meta(RULES[r], "spec.template.metadata.")
  RULES[r]["status.conditions"] = "type"
end
RULES.services["spec.ports"] = "port"
RULES.namespaces["spec.finalizers"] = "set"
patch.RULES = RULES

local function only_directive(x)
  if not is_object(x) or x["$patch"] == nil then return false end
  for k in pairs(x) do
    if k ~= "$patch" then return false end
  end
  return true
end

local function strip_directives(v)
  if type(v) ~= "table" then return v end
  if is_list(v) then
    local out = json.array()
    for _, x in ipairs(v) do
      if not only_directive(x) then
        out[#out + 1] = strip_directives(x)
      end
    end
    return out
  end
  local out = json.object()
  for k, x in pairs(v) do
    if type(k) ~= "string" or k:sub(1, 1) ~= "$" then
      if x ~= null then out[k] = strip_directives(x) end
    end
  end
  return out
end

local merge_map -- forward

local function item_key(item, key)
  if not is_object(item) then return nil end
  local v = item[key]
  if v == nil then return nil end
  return tostring(v)
end

-- Puts items listed in `order` first, in that order; the rest follow as they were.
local function apply_order(list, order, key)
  if not is_list(list) or not is_list(order) then return list end
  local rank = {}
  for i, o in ipairs(order) do
    local k = key and item_key(o, key) or tostring(o)
    if k then rank[k] = i end
  end
  local ranked, rest = {}, {}
  for _, item in ipairs(list) do
    local k = key and item_key(item, key) or tostring(item)
    if k and rank[k] then ranked[#ranked + 1] = item else rest[#rest + 1] = item end
  end
  table.sort(ranked, function(a, b)
    return rank[key and item_key(a, key) or tostring(a)] < rank[key and item_key(b, key) or tostring(b)]
  end)
  local out = json.array()
  for _, x in ipairs(ranked) do out[#out + 1] = x end
  for _, x in ipairs(rest) do out[#out + 1] = x end
  return out
end

local function merge_list(rules, path, original, p)
  local key = rules[path]
  if key == nil then return strip_directives(p) end
  if key == "set" then
    local out, seen = json.array(), {}
    for _, x in ipairs(is_list(original) and original or {}) do
      out[#out + 1] = x
      seen[tostring(x)] = true
    end
    for _, x in ipairs(p) do
      if type(x) ~= "table" and not seen[tostring(x)] then
        out[#out + 1] = x
        seen[tostring(x)] = true
      end
    end
    return out
  end
  -- a { "$patch": "replace" } item replaces the whole list with the others
  for _, item in ipairs(p) do
    if is_object(item) and item["$patch"] == "replace" then
      local out = json.array()
      for _, x in ipairs(p) do
        if not (is_object(x) and x["$patch"] == "replace") then out[#out + 1] = strip_directives(x) end
      end
      return out
    end
  end
  local out = json.array()
  for _, x in ipairs(is_list(original) and original or {}) do out[#out + 1] = x end
  for _, item in ipairs(p) do
    if not is_object(item) then
      return nil, ("%s: list items must be objects with the merge key %q"):format(path, key)
    end
    local k = item_key(item, key)
    if k == nil then
      return nil, ("map: %s does not contain declared merge key: %s"):format(json.encode(item), key)
    end
    local found
    for i, x in ipairs(out) do
      if item_key(x, key) == k then
        found = i
        break
      end
    end
    if item["$patch"] == "delete" then
      if found then table.remove(out, found) end
    elseif found then
      local merged, err = merge_map(rules, path, out[found], item)
      if err then return nil, err end
      out[found] = merged
    else
      local merged, err = merge_map(rules, path, json.object(), item)
      if err then return nil, err end
      out[#out + 1] = merged
    end
  end
  return out
end

merge_map = function(rules, path, original, p)
  local directive = p["$patch"]
  if directive == "replace" then return strip_directives(p) end
  if directive == "delete" then return nil end
  if directive ~= nil and directive ~= "merge" then
    return nil, ("unknown patch type: %s in map: %s"):format(tostring(directive), json.encode(p))
  end
  if not is_object(original) then original = json.object() end
  local prefix = path == "" and "" or (path .. ".")
  local orders, deletions = {}, {}
  for k, v in pairs(p) do
    if type(k) == "string" and k:sub(1, 1) == "$" then
      local f = k:match("^%$setElementOrder/(.+)$")
      if f then orders[f] = v end
      f = k:match("^%$deleteFromPrimitiveList/(.+)$")
      if f then deletions[f] = v end
    elseif v == null then
      original[k] = nil
    elseif is_object(v) then
      local merged, err = merge_map(rules, prefix .. k, original[k], v)
      if err then return nil, err end
      original[k] = merged
    elseif is_list(v) then
      local merged, err = merge_list(rules, prefix .. k, original[k], v)
      if err then return nil, err end
      original[k] = merged
    else
      original[k] = v
    end
  end
  for f, values in pairs(deletions) do
    local list = original[f]
    if is_list(list) and is_list(values) then
      local drop = {}
      for _, v in ipairs(values) do drop[tostring(v)] = true end
      local out = json.array()
      for _, x in ipairs(list) do if not drop[tostring(x)] then out[#out + 1] = x end end
      original[f] = out
    end
  end
  for f, order in pairs(orders) do
    local key = rules[prefix .. f]
    if key == "set" then key = nil end
    original[f] = apply_order(original[f], order, key)
  end
  local retain = p["$retainKeys"]
  if is_list(retain) then
    local keep = {}
    for _, k in ipairs(retain) do keep[k] = true end
    for k in pairs(original) do
      if not keep[k] then original[k] = nil end
    end
  end
  return original
end

function patch.strategic(resource, doc, p)
  if not is_object(p) then return nil, "a strategic merge patch must be a JSON object" end
  local rules = RULES[resource] or {}
  local out, err = merge_map(rules, "", doc, p)
  if err then return nil, err end
  if out == nil then return nil, "the patch deleted the whole object" end
  return out
end

return patch
