-- metrics.lua: the public metrics module. One call, metrics.query(provider, expr, opts),
-- reads a number or a set of series from a metrics backend: Prometheus, Datadog, or any
-- JSON endpoint (the "web" provider), or a provider a playbook registers in Lua. The
-- providers live beside this file (metrics.prometheus, metrics.datadog, metrics.web); this
-- file is the policy they share: how a provider is named and configured (inline, with
-- metrics.configure, or in the environment's `metrics:` section), which secrets are kept
-- out of the output, and the one result shape in which a number, NaN, "no data" and several
-- series are distinct outcomes. Failures raise a { kind = "metrics" } error whose `reason`
-- says what went wrong; a missing value is never turned into 0.

local log = require("log")
local time = require("time")

local metrics = {}

local DEFAULT_TIMEOUT = 10

-- Provider types: name -> { query = fn(config, expr, opts), check = fn(config) | nil }.
local types = {}
-- Providers named by metrics.configure: name -> config table.
local configured = {}

local OUTCOMES = { value = true, nan = true, empty = true, many = true, series = true }

-- ---- errors ----

-- Raises a metrics error. reason: "query" (the backend rejected the query), "auth",
-- "unavailable" (cannot reach it, timeout, 5xx), "response" (an answer we cannot read),
-- "config" (the provider is misconfigured), "provider" (a Lua provider failed).
local function fail(reason, message, fields)
  fields = fields or {}
  fields.reason = reason
  error(tug.error.new("metrics", message, fields), 0)
end
metrics.fail = fail

-- ---- values ----

-- Prometheus and friends write numbers as strings: "0.25", "NaN", "+Inf", "-Inf".
function metrics.number(text)
  if type(text) == "number" then return text end
  if type(text) ~= "string" then return nil end
  if text == "NaN" or text == "nan" then return 0 / 0 end
  if text == "+Inf" or text == "Inf" or text == "inf" then return math.huge end
  if text == "-Inf" or text == "-inf" then return -math.huge end
  return tonumber(text)
end

function metrics.is_nan(v) return v ~= v end

-- A value as a person reads it: 0.00042, 512, NaN, +Inf.
function metrics.show(v)
  if v == nil then return "no data" end
  if type(v) ~= "number" then return tostring(v) end
  if v ~= v then return "NaN" end
  if v == math.huge then return "+Inf" end
  if v == -math.huge then return "-Inf" end
  if math.type(v) == "integer" or (v == math.floor(v) and math.abs(v) < 1e15) then
    return string.format("%d", math.tointeger(v) or v)
  end
  return (string.format("%.6g", v))
end

-- ---- results ----

-- Builds the one result shape from what a provider found. `r`:
--   { type = "instant", series = { { labels, value, time }, ... } }  or
--   { type = "range", series = { { labels, points = { { t, v }, ... } }, ... } }
-- and adds `value` (instant, exactly one series), `nan`, `empty` and `outcome`:
--   "value"  one number (finite or infinite) in `value`
--   "nan"    one series whose value is NaN (`value` is NaN)
--   "empty"  no series at all (no data)
--   "many"   an instant query that gave several series (aggregate them to get one value)
--   "series" a range query with data (in `series[i].points`)
function metrics.result(r)
  r.series = r.series or {}
  r.type = r.type or "instant"
  r.empty = #r.series == 0
  if r.empty then
    r.outcome = "empty"
  elseif r.type == "range" then
    r.outcome = "series"
  elseif #r.series == 1 then
    r.value = r.series[1].value
    r.nan = r.value ~= r.value
    r.outcome = r.nan and "nan" or "value"
  else
    r.outcome = "many"
  end
  r.nan = r.nan or false
  return r
end

-- What a Lua provider returned -> a result: a number, nil (no data), or a table for
-- metrics.result.
local function normalize(ret, opts)
  local kind = opts.range and "range" or "instant"
  if ret == nil then return metrics.result({ type = kind, series = {} }) end
  if type(ret) == "number" then
    if kind == "range" then
      fail("provider", "a range query must return series ({ series = { { points = ... } } }), not a number")
    end
    return metrics.result({ type = kind, series = { { labels = {}, value = ret, time = opts.at or time.now() } } })
  end
  if type(ret) == "table" then
    if ret.outcome and OUTCOMES[ret.outcome] then return ret end
    ret.type = ret.type or kind
    return metrics.result(ret)
  end
  fail("provider", "the provider returned a " .. type(ret) .. " (want a number, nil or a result table)")
end

-- ---- providers ----

-- Registers a provider type that playbooks can name: impl.query(config, expr, opts) returns
-- a number, nil (no data), or a result table (see metrics.result); it raises on failure
-- (metrics.fail(reason, message) gives a proper metrics error). impl.check(config), when
-- given, raises on a bad configuration before anything is queried.
function metrics.register(name, impl)
  if type(name) ~= "string" or not name:match("^[%w_%-]+$") then
    error("metrics.register: name must be a word such as \"influx\" (got " .. tostring(name) .. ")", 2)
  end
  if type(impl) == "function" then impl = { query = impl } end
  if type(impl) ~= "table" or type(impl.query) ~= "function" then
    error("metrics.register: impl must be a function or a table with a query function", 2)
  end
  types[name] = impl
end

function metrics.types()
  local names = {}
  for name in pairs(types) do names[#names + 1] = name end
  table.sort(names)
  return names
end

-- The built-in types load on first use.
local BUILTIN = { prometheus = "metrics.prometheus", datadog = "metrics.datadog", web = "metrics.web" }
for name in pairs(BUILTIN) do types[name] = BUILTIN[name] end

local function impl_of(kind)
  local impl = types[kind]
  if type(impl) == "string" then
    impl = require(impl)
    types[kind] = impl
  end
  return impl
end

-- Names providers for this process: metrics.configure{ prometheus = { url = ... } }.
-- A later call adds to (and overrides) the earlier; metrics.configure(nil) forgets them.
function metrics.configure(providers)
  if providers == nil then
    configured = {}
    return
  end
  if type(providers) ~= "table" then
    error("metrics.configure: providers must be a table of name = config (got " .. type(providers) .. ")", 2)
  end
  for name, config in pairs(providers) do
    if type(name) ~= "string" or type(config) ~= "table" then
      error("metrics.configure: each entry must be name = { type = ..., url = ... }", 2)
    end
    configured[name] = config
  end
end

-- The environment of the run in progress, if the engine says which it is.
function metrics.environment()
  local engine = package.loaded["tug.engine"]
  local run = type(engine) == "table" and engine.current or nil
  return type(run) == "table" and run.env or nil
end

local SECRET_FIELDS = { "token", "password", "api_key", "app_key" }

-- Resolves what a caller passed as a provider to { type, name, config, impl }.
-- `env` (optional) is an environment table whose `metrics` section names providers.
function metrics.provider(spec, env)
  if type(spec) == "table" and spec.__metrics_provider then return spec end
  local name, config
  if type(spec) == "string" then
    name = spec
    config = configured[name]
    local env_table = env or metrics.environment()
    if not config and type(env_table) == "table" and type(env_table.metrics) == "table" then
      config = env_table.metrics[name]
    end
    if config == nil then
      local known = {}
      for k in pairs(configured) do known[#known + 1] = k end
      if type(env_table) == "table" and type(env_table.metrics) == "table" then
        for k in pairs(env_table.metrics) do known[#known + 1] = k end
      end
      table.sort(known)
      fail("config", string.format("no metrics provider named '%s'%s (configured: %s); name one under "
        .. "`metrics:` in environments/ENV.yaml, call metrics.configure, or pass { type = \"prometheus\", url = ... }%s",
        name, env_table and env_table.name and (" in environment " .. tostring(env_table.name)) or "",
        #known > 0 and table.concat(known, ", ") or "none",
        env_table == nil and " (no environment is known here: pass env = ctx.env)" or ""))
    end
    if type(config) ~= "table" then
      fail("config", string.format("metrics provider '%s' must be a table of settings (got %s)", name, type(config)))
    end
  elseif type(spec) == "table" then
    config = spec
    name = spec.name
  else
    error("metrics: provider must be a name or a table { type = ..., url = ... } (got " .. type(spec) .. ")", 3)
  end
  local kind = config.type or (name and types[name] and name) or nil
  if kind == nil then
    fail("config", string.format("metrics provider%s has no type (one of %s)",
      name and (" '" .. name .. "'") or "", table.concat(metrics.types(), ", ")))
  end
  local impl = impl_of(kind)
  if not impl then
    fail("config", string.format("unknown metrics provider type '%s' (known: %s; add one with metrics.register)",
      tostring(kind), table.concat(metrics.types(), ", ")))
  end
  for _, field in ipairs(SECRET_FIELDS) do
    if type(config[field]) == "string" and config[field] ~= "" then log.secret(config[field]) end
  end
  if impl.check then impl.check(config) end
  return { __metrics_provider = true, type = kind, name = name or kind, config = config, impl = impl }
end

-- ---- queries ----

local QUERY_OPTIONS = { at = true, range = true, step = true, timeout = true }

local function seconds(value, what)
  if value == nil then return nil end
  if type(value) == "number" then
    if value < 0 then error(("metrics.query: %s must not be negative"):format(what), 4) end
    return value
  end
  if type(value) == "string" then
    local s = time.parse_duration(value)
    if s then return s end
  end
  error(("metrics.query: %s must be seconds or a duration such as \"5m\" (got %s)"):format(what,
    tostring(value)), 4)
end

local function check_options(opts)
  if opts == nil then return {} end
  if type(opts) ~= "table" then error("metrics.query: opts must be a table (got " .. type(opts) .. ")", 3) end
  local out = {}
  for key, value in pairs(opts) do
    if not QUERY_OPTIONS[key] then error("metrics.query: unknown option '" .. tostring(key) .. "'", 3) end
    out[key] = value
  end
  if out.at ~= nil and type(out.at) ~= "number" then
    error("metrics.query: at must be a time in seconds since the epoch (got " .. type(out.at) .. ")", 3)
  end
  out.range = seconds(out.range, "range")
  out.step = seconds(out.step, "step")
  out.timeout = seconds(out.timeout, "timeout")
  if out.range and out.range <= 0 then error("metrics.query: range must be positive", 3) end
  if out.step and not out.range then error("metrics.query: step needs a range", 3) end
  if out.range and not out.step then
    out.step = math.max(1, math.ceil(out.range / 100)) -- about a hundred points
  end
  if out.step and out.step <= 0 then error("metrics.query: step must be positive", 3) end
  return out
end

-- metrics.query(provider, expr [, { at, range, step, timeout }]) -> result.
-- Instant (the default): the value at `at` (default now). With `range` (seconds or "10m"):
-- the series over [at - range, at] every `step`. See metrics.result for the shape.
function metrics.query(provider, expr, opts)
  if type(expr) ~= "string" or expr == "" then
    error("metrics.query: expr must be a non-empty string (got " .. tostring(expr) .. ")", 2)
  end
  opts = check_options(opts)
  local p = metrics.provider(provider)
  opts.timeout = opts.timeout or seconds(p.config.timeout, "timeout") or DEFAULT_TIMEOUT
  local ok, ret = pcall(p.impl.query, p.config, expr, opts)
  if not ok then
    if type(ret) == "table" and (ret.kind == "metrics" or ret.kind == "cancelled") then
      if ret.kind == "metrics" then ret.provider, ret.query = ret.provider or p.name, ret.query or expr end
      error(ret, 0)
    end
    fail("provider", string.format("metrics provider '%s' failed on %s: %s", p.name, expr, tostring(ret)),
      { provider = p.name, query = expr })
  end
  local r = normalize(ret, opts)
  r.provider, r.query = p.name, expr
  r.time = r.time or opts.at
  return r
end

-- ---- helpers for providers ----

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

function metrics.base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local d1, d2, d3, d4 = n >> 18 & 63, n >> 12 & 63, n >> 6 & 63, n & 63
    out[#out + 1] = B64:sub(d1 + 1, d1 + 1) .. B64:sub(d2 + 1, d2 + 1)
      .. (b and B64:sub(d3 + 1, d3 + 1) or "=") .. (c and B64:sub(d4 + 1, d4 + 1) or "=")
  end
  return table.concat(out)
end

-- Headers for a provider's auth: bearer `token`, or basic `username`/`password`; plus
-- the provider's own `headers`. The encoded credentials are secrets too.
function metrics.auth_headers(config)
  local headers = {}
  for k, v in pairs(config.headers or {}) do headers[k] = v end
  if config.token then
    headers["Authorization"] = "Bearer " .. config.token
  elseif config.username or config.password then
    local encoded = metrics.base64((config.username or "") .. ":" .. (config.password or ""))
    log.secret(encoded)
    headers["Authorization"] = "Basic " .. encoded
  end
  return headers
end

-- Turns an http response that is not a success into a metrics error with a reason.
function metrics.http_failure(what, r, detail)
  if r.error then
    fail("unavailable", string.format("%s: %s", what, r.message or r.error), { error = r.error })
  end
  local status = r.status
  local reason = (status == 401 or status == 403) and "auth"
    or (status >= 500 or status == 429) and "unavailable"
    or (status >= 400) and "query" or "response"
  fail(reason, string.format("%s: HTTP %d%s", what, status, detail and detail ~= "" and (": " .. detail) or ""),
    { status = status })
end

function metrics.excerpt(body)
  body = tostring(body or ""):gsub("%s+", " ")
  if #body > 300 then body = body:sub(1, 300) .. "..." end
  return body
end

return metrics
