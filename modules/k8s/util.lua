-- util.lua (k8s.util): small helpers the Kubernetes module's parts share: copying and
-- comparing decoded JSON objects (keeping json's [] / {} markers), the API's timestamps,
-- label and field selectors as the API's query text, and a few string helpers.

local json = require("json")
local time = require("time")

local util = {}

local null = json.null
local ARRAY_MT = getmetatable(json.array())
local OBJECT_MT = getmetatable(json.object())

function util.is_array(t)
  local mt = getmetatable(t)
  if mt == ARRAY_MT then return true end
  if mt == OBJECT_MT then return false end
  return t[1] ~= nil
end

-- A deep copy that keeps the array/object markers.
function util.copy(v)
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = util.copy(x) end
  return setmetatable(out, getmetatable(v))
end

local function empty(v)
  return v == nil or v == null or (type(v) == "table" and next(v) == nil) or v == ""
end
util.empty = empty

-- Semantic equality the way Kubernetes compares templates: null, "" and empty maps and
-- lists count as absent, numbers compare by value.
function util.equal(a, b)
  if empty(a) and empty(b) then return true end
  if type(a) ~= type(b) then return false end
  if type(a) ~= "table" then return a == b end
  for k, v in pairs(a) do
    if not util.equal(v, b[k]) then return false end
  end
  for k, v in pairs(b) do
    if a[k] == nil and not empty(v) then return false end
  end
  return true
end

-- ---- time ----

local function days_from_civil(y, m, d)
  y = m <= 2 and y - 1 or y
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local doy = (153 * (m + (m > 2 and -3 or 9)) + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  return era * 146097 + doe - 719468
end

-- "2024-05-01T12:00:00Z", "...T12:00:00.123456Z", "...T14:00:00+02:00" -> epoch seconds.
function util.parse_time(text)
  if type(text) ~= "string" then return nil end
  local y, mo, d, h, mi, s, rest = text:match("^(%d%d%d%d)-(%d%d)-(%d%d)[Tt ](%d%d):(%d%d):(%d%d)(.*)$")
  if not y then return nil end
  local frac = 0
  local f, after = rest:match("^%.(%d+)(.*)$")
  if f then frac, rest = tonumber("0." .. f), after end
  local offset = 0
  if rest == "Z" or rest == "z" then
    offset = 0
  else
    local sign, oh, om = rest:match("^([+-])(%d%d):?(%d%d)$")
    if not sign then return nil end
    offset = (tonumber(oh) * 3600 + tonumber(om) * 60) * (sign == "-" and -1 or 1)
  end
  local days = days_from_civil(tonumber(y), tonumber(mo), tonumber(d))
  return days * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(s) + frac - offset
end

-- RFC 3339 in UTC, as metav1.Time writes it.
function util.format_time(t)
  return time.format(t or time.now(), "%Y-%m-%dT%H:%M:%SZ")
end

-- metav1.MicroTime: "2024-05-01T12:00:00.123456Z" (Leases use it).
function util.format_micro(t)
  t = t or time.now()
  local whole = math.floor(t)
  return time.format(whole, "%Y-%m-%dT%H:%M:%S") .. (".%06dZ"):format(math.floor((t - whole) * 1e6))
end

-- ---- selectors ----

local function sorted_pairs(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  return keys
end

-- A selector given as text ("app=api,tier!=db") passes as is; a table { app = "api" }
-- becomes "app=api" (keys sorted); a value of true means "the key exists", false "it
-- does not".
function util.selector_text(sel, what)
  if sel == nil then return nil end
  if type(sel) == "string" then return sel ~= "" and sel or nil end
  if type(sel) ~= "table" then error(("%s must be a string or a table (got %s)"):format(what, type(sel)), 0) end
  local parts = {}
  for _, k in ipairs(sorted_pairs(sel)) do
    local v = sel[k]
    if v == true then
      parts[#parts + 1] = k
    elseif v == false then
      parts[#parts + 1] = "!" .. k
    else
      parts[#parts + 1] = k .. "=" .. tostring(v)
    end
  end
  return #parts > 0 and table.concat(parts, ",") or nil
end

-- A LabelSelector object (matchLabels, matchExpressions) as query text, as kubectl's
-- metav1.LabelSelectorAsSelector renders it.
function util.label_selector_text(sel)
  if sel == nil or sel == null then return "" end
  local parts = {}
  for _, k in ipairs(sorted_pairs(sel.matchLabels ~= null and sel.matchLabels or {})) do
    parts[#parts + 1] = k .. "=" .. tostring(sel.matchLabels[k])
  end
  for _, e in ipairs(sel.matchExpressions ~= null and sel.matchExpressions or {}) do
    local values = {}
    for i, v in ipairs(e.values ~= null and e.values or {}) do values[i] = v end
    table.sort(values)
    if e.operator == "In" then
      parts[#parts + 1] = ("%s in (%s)"):format(e.key, table.concat(values, ","))
    elseif e.operator == "NotIn" then
      parts[#parts + 1] = ("%s notin (%s)"):format(e.key, table.concat(values, ","))
    elseif e.operator == "Exists" then
      parts[#parts + 1] = e.key
    elseif e.operator == "DoesNotExist" then
      parts[#parts + 1] = "!" .. e.key
    end
  end
  return table.concat(parts, ",")
end

-- ---- strings ----

function util.excerpt(text, n)
  n = n or 300
  -- masked before it is cut or its spaces squeezed, which would hide a secret from redaction
  text = require("log").redact(text or ""):gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")
  if #text > n then text = text:sub(1, n) .. "..." end
  return text
end

-- A Kubernetes object name from any text: lowercase alphanumerics and '-', at most 63.
function util.dns_label(text)
  local s = text:lower():gsub("[^a-z0-9%-]+", "-"):gsub("^%-+", ""):gsub("%-+$", "")
  if #s > 63 then s = s:sub(1, 63):gsub("%-+$", "") end
  return s ~= "" and s or "x"
end

return util
