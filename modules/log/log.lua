-- log.lua: levelled, structured logging. Lines go to stderr, redacted (log.core).
--
--   log.info("rollout finished", { deployment = "api", seconds = 42 })
--   2026-11-28T22:30:00.123Z INFO rollout finished deployment=api seconds=42
--
-- TUG_LOG_LEVEL (debug, info, warn, error) and TUG_LOG_FORMAT (text, json) set the
-- defaults; log.set_level and log.set_format change them.

local core = require("log.core")

local log = {}

local levels = { debug = 10, info = 20, warn = 30, error = 40 }
local labels = { debug = "DEBUG", info = "INFO", warn = "WARN", error = "ERROR" }

local function check_level(name, where)
  if levels[name] == nil then
    error(string.format("%s: unknown log level '%s' (debug, info, warn, error)", where,
      tostring(name)), 3)
  end
  return name
end

local threshold = levels[check_level(os.getenv("TUG_LOG_LEVEL") or "info", "TUG_LOG_LEVEL")]
local format = os.getenv("TUG_LOG_FORMAT") or "text"
if format ~= "text" and format ~= "json" then
  error("TUG_LOG_FORMAT: unknown log format '" .. format .. "' (text, json)")
end
local sink = nil -- a function(record) that replaces the default output

log.secret = core.secret

-- A table with every string in it masked: a copy (keeping metatables, so json.array stays
-- an array) when something changed, the table itself when nothing did.
local function redact_table(t, seen)
  if seen[t] then return t end -- a cycle: json.encode reports it
  seen[t] = true
  local changes
  for k, v in pairs(t) do
    local nk = type(k) == "string" and core.redact(k) or k
    local nv = type(v) == "string" and core.redact(v) or type(v) == "table" and redact_table(v, seen) or v
    if nk ~= k or nv ~= v then
      changes = changes or {}
      changes[#changes + 1] = { k, nk, nv }
    end
  end
  seen[t] = nil
  if not changes then return t end
  local copy = {}
  for k, v in pairs(t) do copy[k] = v end
  for _, c in ipairs(changes) do
    copy[c[1]] = nil
    copy[c[2]] = c[3]
  end
  return setmetatable(copy, getmetatable(t))
end

-- log.redact(text) masks every secret in text; log.redact(table) gives the table with every
-- string in it masked (before it is encoded: JSON escapes inside a string that is escaped
-- again are masked this way); any other value is returned as it is.
function log.redact(value)
  local kind = type(value)
  if kind == "string" or kind == "number" then return core.redact(value) end
  if kind == "table" then return redact_table(value, {}) end
  return value
end

function log.set_level(name)
  threshold = levels[check_level(name, "log.set_level")]
end

function log.level()
  for name, value in pairs(levels) do
    if value == threshold then return name end
  end
end

function log.set_format(name)
  if name ~= "text" and name ~= "json" then
    error("log.set_format: unknown format '" .. tostring(name) .. "' (text, json)", 2)
  end
  format = name
end

-- Sends records to fn(record) instead of stderr (the engine's live view uses it);
-- nil restores stderr. Records are { time, level, message, fields }.
function log.set_sink(fn)
  sink = fn
end

local function format_value(v)
  if type(v) == "string" then
    if v == "" or v:find("[%s=\"]") then return string.format("%q", v) end
    return v
  elseif type(v) == "table" then
    local ok, text = pcall(require("json").encode, v)
    return ok and text or tostring(v)
  end
  return tostring(v)
end

local function timestamp()
  local now = require("time").now()
  return require("time").format(now) :gsub("Z$", string.format(".%03dZ", math.floor(now % 1 * 1000)))
end

local function emit(level, message, fields)
  if levels[level] < threshold then return end
  if type(message) ~= "string" then message = tostring(message) end
  if fields ~= nil and type(fields) ~= "table" then
    error("log." .. level .. ": fields must be a table, not a " .. type(fields), 3)
  end
  local record = { time = timestamp(), level = level, message = message, fields = fields or {} }
  if sink then return sink(record) end
  local line
  if format == "json" then
    local out = { time = record.time, level = level, msg = message }
    for k, v in pairs(record.fields) do
      if out[k] == nil then out[k] = v end
    end
    line = require("json").encode(out)
  else
    local keys = {}
    for k in pairs(record.fields) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    local parts = { record.time, labels[level], message }
    for _, k in ipairs(keys) do
      parts[#parts + 1] = k .. "=" .. format_value(record.fields[k])
    end
    line = table.concat(parts, " ")
  end
  core.write("stderr", line .. "\n")
end

for level in pairs(levels) do
  log[level] = function(message, fields) return emit(level, message, fields) end
end

-- A logger that adds the same fields to every line: log.with{ run = id }.info("...")
function log.with(bound)
  local child = setmetatable({}, { __index = log })
  for level in pairs(levels) do
    child[level] = function(message, fields)
      local merged = {}
      for k, v in pairs(bound) do merged[k] = v end
      for k, v in pairs(fields or {}) do merged[k] = v end
      return emit(level, message, merged)
    end
  end
  return child
end

return log
