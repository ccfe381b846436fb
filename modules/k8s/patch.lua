-- patch.lua (k8s.patch): the patch formats applied locally, so that plan mode can show
-- what a patch would change without sending it.
--
--   merge      RFC 7386 JSON merge patch: maps merge, null deletes, lists are replaced
--   json       RFC 6902 JSON patch: add, remove, replace, move, copy, test
--   strategic  Kubernetes' strategic merge patch: as merge, but lists of objects merge by
--              their key where the Go types say so (containers, env, volumes by name,
--              volumeMounts by mountPath, ports by containerPort or port, conditions by
--              type), `$patch: delete|replace` items, `$setElementOrder` and
--              `$retainKeys` directives dropped
--   apply      server-side apply, approximated as a strategic merge of the applied
--              configuration (the server also tracks field ownership; a plan does not)
--
-- apply(type, doc, patch, resource) -> the patched copy, or nil and a message.

local json = require("json")
local util = require("k8s.util")

local M = {}

local null = json.null

local function is_map(v) return type(v) == "table" and not util.is_array(v) end

local MERGE_KEYS = {
  containers = "name", initContainers = "name", ephemeralContainers = "name", env = "name",
  volumes = "name", imagePullSecrets = "name", volumeMounts = "mountPath", volumeDevices = "devicePath",
  conditions = "type", hostAliases = "ip", ownerReferences = "uid",
  topologySpreadConstraints = "topologyKey",
}

local function merge(doc, patch)
  if not is_map(patch) then return util.copy(patch) end
  local out = is_map(doc) and util.copy(doc) or json.object()
  for k, v in pairs(patch) do
    if v == null then
      out[k] = nil
    else
      out[k] = merge(out[k], v)
    end
  end
  return out
end

local strategic

local function list_key(field, items)
  if field == "ports" then
    for _, item in ipairs(items) do
      if is_map(item) and item.containerPort ~= nil then return "containerPort" end
    end
    return "port"
  end
  return MERGE_KEYS[field]
end

local function merge_list(field, current, items)
  local key = list_key(field, items)
  local all_maps = true
  for _, item in ipairs(items) do if not is_map(item) then all_maps = false end end
  if not key or not all_maps or type(current) ~= "table" then
    local out = json.array()
    for _, item in ipairs(items) do
      if not (is_map(item) and item["$patch"] ~= nil) then out[#out + 1] = util.copy(item) end
    end
    return out
  end
  local out = json.array()
  for i, item in ipairs(current) do out[i] = util.copy(item) end
  for _, item in ipairs(items) do
    if item["$patch"] == "replace" then
      out = json.array()
    else
      local idx
      for i, existing in ipairs(out) do
        if is_map(existing) and existing[key] == item[key] then idx = i break end
      end
      if item["$patch"] == "delete" then
        if idx then table.remove(out, idx) end
      elseif idx then
        out[idx] = strategic(out[idx], item)
      else
        out[#out + 1] = strategic(nil, item)
      end
    end
  end
  return out
end

strategic = function(doc, patch)
  if not is_map(patch) then return util.copy(patch) end
  if patch["$patch"] == "replace" then
    local out = util.copy(patch)
    out["$patch"] = nil
    return out
  end
  if patch["$patch"] == "delete" then return nil end
  local out = is_map(doc) and util.copy(doc) or json.object()
  for k, v in pairs(patch) do
    if type(k) == "string" and k:sub(1, 1) == "$" then
      local field = k:match("^%$deleteFromPrimitiveList/(.+)$")
      if field and type(out[field]) == "table" and type(v) == "table" then
        local drop = {}
        for _, x in ipairs(v) do drop[x] = true end
        local kept = json.array()
        for _, x in ipairs(out[field]) do if not drop[x] then kept[#kept + 1] = x end end
        out[field] = kept
      end
    elseif v == null then
      out[k] = nil
    elseif type(v) == "table" and util.is_array(v) then
      out[k] = merge_list(k, out[k], v)
    else
      out[k] = strategic(out[k], v)
    end
  end
  return out
end

-- ---- RFC 6902 ----

local function pointer(path)
  if path == "" then return {} end
  if path:sub(1, 1) ~= "/" then return nil end
  local parts = {}
  for part in (path:sub(2) .. "/"):gmatch("(.-)/") do
    parts[#parts + 1] = part:gsub("~1", "/"):gsub("~0", "~")
  end
  return parts
end

-- The container of the last path element, and that element (a key or a 1-based index,
-- or "-" for the end of a list).
local function locate(doc, path)
  local parts = pointer(path)
  if not parts then return nil, nil, ("invalid JSON pointer %q"):format(path) end
  if #parts == 0 then return nil, nil, "operating on the whole document is not supported" end
  local node = doc
  for i = 1, #parts - 1 do
    local p = parts[i]
    if type(node) ~= "table" then return nil, nil, ("path %s does not exist"):format(path) end
    if util.is_array(node) then node = node[tonumber(p) and tonumber(p) + 1] else node = node[p] end
    if node == nil then return nil, nil, ("path %s does not exist"):format(path) end
  end
  if type(node) ~= "table" then return nil, nil, ("path %s does not exist"):format(path) end
  local last = parts[#parts]
  if util.is_array(node) then
    if last == "-" then return node, #node + 1 end
    local n = tonumber(last)
    if not n or n < 0 or n > #node then return nil, nil, ("index %s out of range in %s"):format(last, path) end
    return node, n + 1, nil, true
  end
  return node, last
end

local function get(doc, path)
  local parent, key, err = locate(doc, path)
  if not parent then return nil, err end
  local v = parent[key]
  if v == nil then return nil, ("path %s does not exist"):format(path) end
  return v
end

local function add(doc, path, value)
  local parent, key, err, indexed = locate(doc, path)
  if not parent then return err end
  if indexed or (util.is_array(parent) and key == #parent + 1) then
    table.insert(parent, key, util.copy(value))
  else
    parent[key] = util.copy(value)
  end
end

local function remove(doc, path)
  local parent, key, err = locate(doc, path)
  if not parent then return err end
  if parent[key] == nil then return ("path %s does not exist"):format(path) end
  if util.is_array(parent) then table.remove(parent, key) else parent[key] = nil end
end

local function json_patch(doc, ops)
  if not util.is_array(ops) then return nil, "a JSON patch must be a list of operations" end
  doc = util.copy(doc)
  for i, op in ipairs(ops) do
    local err
    if op.op == "add" then
      err = add(doc, op.path, op.value)
    elseif op.op == "remove" then
      err = remove(doc, op.path)
    elseif op.op == "replace" then
      local parent, key, lerr = locate(doc, op.path)
      if not parent then
        err = lerr
      elseif parent[key] == nil then
        err = ("path %s does not exist"):format(op.path)
      else
        parent[key] = util.copy(op.value)
      end
    elseif op.op == "move" or op.op == "copy" then
      local v, gerr = get(doc, op.from)
      if v == nil then
        err = gerr
      else
        if op.op == "move" then err = remove(doc, op.from) end
        err = err or add(doc, op.path, v)
      end
    elseif op.op == "test" then
      local v, gerr = get(doc, op.path)
      if v == nil then
        err = gerr
      elseif not util.equal(v, op.value) then
        err = ("test failed at %s"):format(op.path)
      end
    else
      err = ("unknown operation %q"):format(tostring(op.op))
    end
    if err then return nil, ("operation %d (%s %s): %s"):format(i, tostring(op.op), tostring(op.path), err) end
  end
  return doc
end

function M.apply(ptype, doc, patch, resource)
  if ptype == "merge" then return merge(doc, patch) end
  if ptype == "json" then return json_patch(doc, patch) end
  if ptype == "strategic" or ptype == "apply" then return strategic(doc, patch) end
  return nil, "unknown patch type " .. tostring(ptype)
end

M.merge, M.strategic, M.json = merge, strategic, json_patch

return M
