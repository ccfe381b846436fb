-- diff.lua (k8s.diff): what a write would change, for plan mode: the changed fields of an
-- object as a short path list, one line each,
--
--   ~ spec.template.spec.containers[api].image: "shop/api:v1" -> "shop/api:v2"
--   + spec.template.metadata.annotations["kubectl.kubernetes.io/restartedAt"]: "2025-..."
--   - spec.selector.color: "blue"
--
-- Lists of objects with a name (containers, env, ports...) are matched by name, other
-- lists by position. Bookkeeping the server owns (resourceVersion, managedFields,
-- generation, uid, creationTimestamp, status) is left out.

local json = require("json")
local util = require("k8s.util")

local diff = {}

local MAX_LINES = 40
local MAX_VALUE = 120

local IGNORED = {
  ["metadata.resourceVersion"] = true, ["metadata.managedFields"] = true,
  ["metadata.generation"] = true, ["metadata.uid"] = true, ["metadata.creationTimestamp"] = true,
  ["metadata.selfLink"] = true, ["status"] = true, ["planned"] = true,
}

local function show(v)
  local ok, text = pcall(json.encode, v)
  text = ok and text or tostring(v)
  if #text > MAX_VALUE then text = text:sub(1, MAX_VALUE) .. "..." end
  return text
end

local function key_path(path, key)
  if type(key) == "string" and key:match("^[%a_][%w_%-]*$") then
    return path == "" and key or path .. "." .. key
  end
  return path .. "[" .. show(key) .. "]"
end

local function is_list(v) return type(v) == "table" and util.is_array(v) end
local function is_map(v) return type(v) == "table" and not util.is_array(v) end

-- The key that identifies each item of a list of objects, when every item has one.
local function merge_key(a, b)
  for _, key in ipairs({ "name", "containerPort", "port", "mountPath", "type", "ip" }) do
    local ok = true
    for _, list in ipairs({ a, b }) do
      for _, item in ipairs(list) do
        if not is_map(item) or item[key] == nil then ok = false break end
      end
      if not ok then break end
    end
    if ok and (#a > 0 or #b > 0) then return key end
  end
end

local function walk(lines, path, a, b)
  if IGNORED[path] then return end
  if util.empty(a) and util.empty(b) then return end
  if util.empty(a) then
    lines[#lines + 1] = ("+ %s: %s"):format(path, show(b))
    return
  end
  if util.empty(b) then
    lines[#lines + 1] = ("- %s: %s"):format(path, show(a))
    return
  end
  if is_map(a) and is_map(b) then
    local keys = {}
    for k in pairs(a) do keys[#keys + 1] = k end
    for k in pairs(b) do if a[k] == nil then keys[#keys + 1] = k end end
    table.sort(keys, function(x, y) return tostring(x) < tostring(y) end)
    for _, k in ipairs(keys) do walk(lines, key_path(path, k), a[k], b[k]) end
    return
  end
  if is_list(a) and is_list(b) then
    local key = merge_key(a, b)
    if key then
      local seen = {}
      for _, x in ipairs(a) do
        local match
        for _, y in ipairs(b) do if y[key] == x[key] then match = y break end end
        seen[x[key]] = true
        walk(lines, ("%s[%s]"):format(path, tostring(x[key])), x, match)
      end
      for _, y in ipairs(b) do
        if not seen[y[key]] then walk(lines, ("%s[%s]"):format(path, tostring(y[key])), nil, y) end
      end
    else
      local n = math.max(#a, #b)
      for i = 1, n do walk(lines, ("%s[%d]"):format(path, i - 1), a[i], b[i]) end
    end
    return
  end
  if not util.equal(a, b) then
    lines[#lines + 1] = ("~ %s: %s -> %s"):format(path, show(a), show(b))
  end
end

-- The changed paths between two objects, as a list of lines.
function diff.lines(before, after)
  local lines = {}
  if before == nil and after ~= nil then
    local keys = {}
    for k in pairs(after) do keys[#keys + 1] = k end
    table.sort(keys, function(x, y) return tostring(x) < tostring(y) end)
    for _, k in ipairs(keys) do walk(lines, key_path("", k), nil, after[k]) end
  elseif after == nil and before ~= nil then
    lines[1] = "- (the whole object)"
  else
    walk(lines, "", before, after)
  end
  return lines
end

-- The same, as one text of at most MAX_LINES lines.
function diff.render(before, after)
  local lines = diff.lines(before, after)
  if #lines > MAX_LINES then
    local n = #lines
    lines = { table.unpack(lines, 1, MAX_LINES) }
    lines[#lines + 1] = ("... and %d more"):format(n - MAX_LINES)
  end
  return table.concat(lines, "\n")
end

return diff
