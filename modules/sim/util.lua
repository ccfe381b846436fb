-- util.lua (sim.util): small helpers the simulator's parts share: copying and comparing
-- Kubernetes objects as decoded JSON (keeping json's array/object markers), the canonical
-- form Kubernetes' semantic equality amounts to, timestamps in the API's formats, names,
-- uids and durations as Kubernetes prints them.

local json = require("json")
local time = require("time")

local util = {}

local null = json.null
local ARRAY_MT = getmetatable(json.array())
local OBJECT_MT = getmetatable(json.object())
util.ARRAY_MT, util.OBJECT_MT = ARRAY_MT, OBJECT_MT

function util.is_array(t)
  local mt = getmetatable(t)
  if mt == ARRAY_MT then return true end
  if mt == OBJECT_MT then return false end
  return t[1] ~= nil
end

-- A deep copy that keeps markers (so [] stays [] and {} stays {}).
local function copy(v)
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = copy(x) end
  local mt = getmetatable(v)
  if mt == ARRAY_MT or mt == OBJECT_MT then setmetatable(out, mt) end
  return out
end
util.copy = copy

-- A copy of t's top level (sub-tables shared), markers kept. Stored objects are never
-- changed in place, so a new version may share the parts it does not change.
function util.shallow(t)
  if t == nil then return nil end
  local out = {}
  for k, v in pairs(t) do out[k] = v end
  local mt = getmetatable(t)
  if mt == ARRAY_MT or mt == OBJECT_MT then setmetatable(out, mt) end
  return out
end

-- Structural equality of decoded JSON values (markers ignored, except that an empty
-- array and an empty object are both "empty").
local function equal(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  for k, x in pairs(a) do
    if not equal(x, b[k]) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end
util.equal = equal

local function is_empty(v)
  return v == nil or v == null or v == "" or (type(v) == "table" and next(v) == nil)
end
util.is_empty = is_empty

-- The value with null, "", {} and [] left out at every level: what Kubernetes' semantic
-- equality sees (Go's zero values and nil/empty collections are the same thing there).
local function canonical(v)
  if type(v) ~= "table" then return v end
  local out = {}
  local array = util.is_array(v)
  if array then
    for i = 1, #v do out[i] = canonical(v[i]) end
    return out
  end
  for k, x in pairs(v) do
    local c = canonical(x)
    if not is_empty(c) then out[k] = c end
  end
  return out
end
util.canonical = canonical

function util.semantic_equal(a, b)
  return equal(canonical(a), canonical(b))
end

-- Null entries removed from objects at every level (a Go struct cannot hold them).
local function prune_nulls(v)
  if type(v) ~= "table" then return v end
  for k, x in pairs(v) do
    if x == null and type(k) == "string" then
      v[k] = nil
    elseif type(x) == "table" then
      prune_nulls(x)
    end
  end
  return v
end
util.prune_nulls = prune_nulls

-- ---- time ----

function util.now() return time.now() end

-- RFC 3339 in seconds, as metav1.Time is written.
function util.timestamp(t)
  return time.format(math.floor(t or time.now()))
end

-- RFC 3339 with microseconds, as metav1.MicroTime (Lease renewTime) is written.
function util.micro_timestamp(t)
  t = t or time.now()
  local whole = math.floor(t)
  return time.format(whole, "%Y-%m-%dT%H:%M:%S") .. string.format(".%06dZ", math.floor((t - whole) * 1e6))
end

-- Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm), for UTC parsing
-- without os.time's local-time interpretation.
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = (153 * mp + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  return era * 146097 + doe - 719468
end

local time_cache, time_cache_size = {}, 0

-- "2026-11-28T22:30:00Z" (with optional fraction and offset) -> epoch seconds, or nil.
function util.parse_time(s)
  if type(s) ~= "string" then return nil end
  local hit = time_cache[s]
  if hit then return hit end
  local y, mo, d, h, mi, sec, rest = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)[Tt ](%d%d):(%d%d):(%d%d)(.*)$")
  if not y then return nil end
  local t = days_from_civil(tonumber(y), tonumber(mo), tonumber(d)) * 86400
    + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(sec)
  local frac, zone = rest:match("^(%.%d+)(.*)$")
  if frac then t = t + tonumber("0" .. frac) else zone = rest end
  if zone ~= "Z" and zone ~= "z" and zone ~= "" then
    local sign, zh, zm = zone:match("^([+-])(%d%d):?(%d%d)$")
    if not sign then return nil end
    local off = tonumber(zh) * 3600 + tonumber(zm) * 60
    t = sign == "+" and t - off or t + off
  end
  if time_cache_size > 10000 then time_cache, time_cache_size = {}, 0 end
  time_cache[s], time_cache_size = t, time_cache_size + 1
  return t
end

-- Kubernetes' duration.HumanDuration, as the AGE column shows it.
function util.human_duration(seconds)
  local s = math.floor(seconds)
  if s < -1 then return "<invalid>" end
  if s < 0 then return "0s" end
  if s < 120 then return s .. "s" end
  local minutes = s // 60
  if minutes < 10 then
    local rem = s % 60
    if rem == 0 then return minutes .. "m" end
    return minutes .. "m" .. rem .. "s"
  end
  if minutes < 180 then return minutes .. "m" end
  local hours = s // 3600
  if hours < 8 then
    local m = minutes % 60
    if m == 0 then return hours .. "h" end
    return hours .. "h" .. m .. "m"
  end
  if hours < 48 then return hours .. "h" end
  if hours < 24 * 8 then
    local h = hours % 24
    if h == 0 then return (hours // 24) .. "d" end
    return (hours // 24) .. "d" .. h .. "h"
  end
  if hours < 24 * 365 * 2 then return (hours // 24) .. "d" end
  if hours < 24 * 365 * 8 then
    local dy = (hours // 24) % 365
    if dy == 0 then return (hours // 24 // 365) .. "y" end
    return (hours // 24 // 365) .. "y" .. dy .. "d"
  end
  return (hours // 24 // 365) .. "y"
end

function util.age(ts, now)
  local t = util.parse_time(ts)
  if not t then return "<unknown>" end
  return util.human_duration((now or time.now()) - t)
end

-- Seconds from a scenario value: a number or a duration string ("250ms", "2s").
function util.seconds(v, what)
  if v == nil then return nil end
  local s, err = time.parse_duration(v)
  if s == nil then error(("%s: %s"):format(what or "duration", err), 3) end
  return s
end

-- ---- names ----

-- The alphabet of Kubernetes' rand.String and SafeEncodeString: no vowels, no 0/1/3.
local ALPHANUMS = "bcdfghjklmnpqrstvwxz2456789"
util.ALPHANUMS = ALPHANUMS

function util.random_suffix(n)
  local out = {}
  for i = 1, n or 5 do
    local k = math.random(#ALPHANUMS)
    out[i] = ALPHANUMS:sub(k, k)
  end
  return table.concat(out)
end

-- rand.SafeEncodeString: each byte mapped into ALPHANUMS.
function util.safe_encode(s)
  local out = {}
  for i = 1, #s do
    local k = s:byte(i) % #ALPHANUMS + 1
    out[i] = ALPHANUMS:sub(k, k)
  end
  return table.concat(out)
end

function util.uid()
  local random = math.random
  return string.format("%08x-%04x-4%03x-%04x-%06x%06x", random(0, 0xffffffff), random(0, 0xffff),
    random(0, 0xfff), random(0x8000, 0xbfff), random(0, 0xffffff), random(0, 0xffffff))
end

-- ---- odds and ends ----

function util.sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  return keys
end

-- "app=api,colour=blue" from a map of labels, keys sorted (as kubectl prints selectors).
function util.format_labels(map)
  if map == nil or next(map) == nil then return "" end
  local parts = {}
  for _, k in ipairs(util.sorted_keys(map)) do parts[#parts + 1] = k .. "=" .. tostring(map[k]) end
  return table.concat(parts, ",")
end

-- A LabelSelector ({ matchLabels, matchExpressions }) as selector text.
function util.format_selector(sel)
  if sel == nil then return "" end
  local parts = {}
  local labels = util.format_labels(sel.matchLabels)
  if labels ~= "" then parts[1] = labels end
  for _, e in ipairs(sel.matchExpressions or {}) do
    local op = e.operator
    if op == "In" or op == "NotIn" then
      local values = {}
      for i, v in ipairs(e.values or {}) do values[i] = v end
      table.sort(values)
      parts[#parts + 1] = ("%s %s (%s)"):format(e.key, op == "In" and "in" or "notin", table.concat(values, ","))
    elseif op == "Exists" then
      parts[#parts + 1] = e.key
    elseif op == "DoesNotExist" then
      parts[#parts + 1] = "!" .. e.key
    end
  end
  return table.concat(parts, ",")
end

-- The tag of an image reference ("multiship/api:v2.1.0" -> "multiship/api", "v2.1.0").
function util.split_image(image)
  if type(image) ~= "string" then return "", "" end
  local ref = image:gsub("@.*$", "")
  local repo, tag = ref:match("^(.*):([^/:]+)$")
  if not repo then return ref, "latest" end
  return repo, tag
end

function util.int(v)
  if type(v) == "number" then return math.tointeger(v) or math.floor(v) end
  return nil
end

return util
