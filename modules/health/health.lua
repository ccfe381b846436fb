-- health.lua: the public health module: is a service up (health.check), how does it hold up
-- under load (health.load), and does a result meet the deployment's thresholds
-- (health.gate). The C half (health.core, health.c) holds the latency histogram and the
-- native load generator; this file is the policy an SRE may want to read or change: the
-- defaults (the seed's P95 < 500 ms and error rate < 0.1%), what counts as a failed probe or
-- a failed request, how long to keep probing, what plan mode does, and how a verdict is
-- worded.
--
--   local r = health.check{ "http://api/health",
--     { url = "http://api/health/detailed", expect_json = { ["checks.database.status"] = "ok" } },
--     within = "2m", interval = "2s" }
--   local load = health.load{ url = "http://api/health", duration = "30s", concurrency = 50 }
--   assert(health.gate(load, { p95_ms = 500, error_rate = 0.001 }))

local core = require("health.core")
local http = require("http")
local json = require("json")
local task = require("task")
local time = require("time")

local health = {}

-- The seed's post-deployment thresholds.
health.defaults = { p95_ms = 500, error_rate = 0.001 }

local CHECK_OPTIONS = {
  url = true, expect_status = true, expect_json = true, expect_body = true, headers = true,
  timeout = true, tls = true, within = true, interval = true,
}
local SPEC_OPTIONS = {
  url = true, expect_status = true, expect_json = true, expect_body = true, headers = true,
  timeout = true, tls = true, name = true,
}
local LOAD_OPTIONS = {
  url = true, duration = true, concurrency = true, rate = true, method = true, headers = true,
  body = true, timeout = true, ok_status = true, max_connections = true, engine = true,
  tls = true,
}
local CHECK_DEFAULTS = { within = 120, interval = 2, timeout = 10, expect_status = 200 }
local LOAD_DEFAULTS = { duration = 30, concurrency = 50, timeout = 10, max_connections = 1000 }
local EXCERPT = 120 -- bytes of a body quoted in a reason

-- ---- small helpers ----

local function fail(caller, fmt, ...)
  error(caller .. ": " .. fmt:format(...), 0)
end

local function seconds(value, what, caller)
  if type(value) == "number" then
    if value < 0 or value ~= value then fail(caller, "%s must not be negative", what) end
    return value
  end
  if type(value) == "string" then
    local s = time.parse_duration(value)
    if s then return s end
    fail(caller, "%s: '%s' is not a duration (try \"30s\", \"500ms\")", what, value)
  end
  fail(caller, "%s must be seconds or a duration string (got %s)", what, type(value))
end

local function excerpt(text)
  -- masked before it is cut or its spaces squeezed, which would hide a secret from redaction
  text = require("log").redact(text or ""):gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")
  if #text > EXCERPT then text = text:sub(1, EXCERPT) .. "..." end
  return text
end

-- A URL as it may appear in a report: no user:password@.
local function safe_url(url)
  return (url:gsub("^(%a[%w+.-]*://)[^/@]*@", "%1"))
end

local function fmt_duration(s)
  return time.format_duration(math.floor(s * 1000 + 0.5) / 1000)
end

-- 0.2345 -> "235 ms", 0.0213 -> "21.3 ms", 0.00081 -> "0.81 ms"
local function fmt_ms(s)
  local ms = s * 1000
  if ms >= 100 then return ("%d ms"):format(math.floor(ms + 0.5)) end
  if ms >= 1 then return ("%.1f ms"):format(ms) end
  return ("%.2f ms"):format(ms)
end

-- 0.001 -> "0.1%", 0.1023 -> "10.23%", 0 -> "0%"
local function fmt_percent(rate)
  local s = ("%.3f"):format(rate * 100):gsub("0+$", ""):gsub("%.$", "")
  return s .. "%"
end

local function fmt_count(n)
  local s = tostring(math.floor(n))
  repeat
    local k
    s, k = s:gsub("^(%d+)(%d%d%d)", "%1,%2")
  until k == 0
  return s
end

local function quote(v)
  if type(v) == "string" then return ("%q"):format(v) end
  if v == json.null then return "null" end
  if type(v) == "table" then
    local ok, text = pcall(json.encode, v)
    if ok then return text end
  end
  return tostring(v)
end

-- ---- expect_json paths: "status", "checks.database.status", "providers[0].name" ----

local function parse_path(path, caller)
  local steps = {}
  local pos = 1
  while pos <= #path do
    local name, next_pos = path:match("^([^.%[%]]+)()", pos)
    if name then
      steps[#steps + 1] = name
      pos = next_pos
    end
    while path:sub(pos, pos) == "[" do
      local index, after = path:match("^%[(%d+)%]()", pos)
      if not index then fail(caller, "expect_json: bad index in path '%s'", path) end
      steps[#steps + 1] = tonumber(index) + 1 -- paths count from 0, as in jq and JavaScript
      pos = after
    end
    if pos <= #path then
      if path:sub(pos, pos) ~= "." or pos == #path then
        fail(caller, "expect_json: bad path '%s' (try \"a.b\" or \"list[0].name\")", path)
      end
      pos = pos + 1
    end
  end
  if #steps == 0 then fail(caller, "expect_json: empty path") end
  return steps
end

local function deep_equal(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  for k, v in pairs(a) do
    if not deep_equal(v, b[k]) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

-- The value at the path's steps in doc, or nil when some part is missing.
local function lookup(doc, steps)
  local value = doc
  for _, step in ipairs(steps) do
    if type(value) ~= "table" then return nil end
    value = value[step]
    if value == nil then return nil end
  end
  return value
end

-- ---- health.check ----

local function check_status_option(value, caller)
  if math.type(value) == "integer" then return { value } end
  if type(value) == "table" and #value > 0 then
    for _, s in ipairs(value) do
      if math.type(s) ~= "integer" then
        fail(caller, "expect_status must be a status or a list of statuses (got %s)", tostring(s))
      end
    end
    return value
  end
  fail(caller, "expect_status must be a status or a list of statuses (got %s)", tostring(value))
end

-- One spec (a URL or a table) with the top-level options as defaults -> a checked probe.
local function make_probe(spec, defaults, caller)
  if type(spec) == "string" then spec = { url = spec } end
  if type(spec) ~= "table" then
    fail(caller, "a check must be a URL or a table (got %s)", type(spec))
  end
  for key in pairs(spec) do
    if not SPEC_OPTIONS[key] and key ~= 1 then fail(caller, "unknown check option '%s'", tostring(key)) end
  end
  local url = spec.url or spec[1]
  if type(url) ~= "string" or not url:match("^[hH][tT][tT][pP][sS]?://") then
    fail(caller, "a check's url must be an http:// or https:// URL (got %s)", tostring(url))
  end
  local probe = { url = url, name = spec.name or safe_url(url) }
  local function pick(key)
    if spec[key] ~= nil then return spec[key] end
    return defaults[key]
  end
  probe.expect_status = check_status_option(pick("expect_status") or CHECK_DEFAULTS.expect_status, caller)
  local expect_body = pick("expect_body")
  if expect_body ~= nil and type(expect_body) ~= "string" then
    fail(caller, "expect_body must be a Lua pattern string (got %s)", type(expect_body))
  end
  if expect_body then
    local ok, err = pcall(string.find, "", expect_body)
    if not ok then fail(caller, "expect_body: bad pattern '%s': %s", expect_body, err) end
  end
  probe.expect_body = expect_body
  local expect_json = pick("expect_json")
  if expect_json ~= nil then
    if type(expect_json) ~= "table" then
      fail(caller, "expect_json must be a table of path = value (got %s)", type(expect_json))
    end
    local paths = {}
    for path, value in pairs(expect_json) do
      if type(path) ~= "string" then fail(caller, "expect_json keys must be paths (strings)") end
      paths[#paths + 1] = { path = path, steps = parse_path(path, caller), value = value }
    end
    table.sort(paths, function(a, b) return a.path < b.path end)
    probe.expect_json = paths
  end
  local headers = pick("headers")
  if headers ~= nil and type(headers) ~= "table" then
    fail(caller, "headers must be a table (got %s)", type(headers))
  end
  probe.headers = headers
  local tls = pick("tls")
  if tls ~= nil and type(tls) ~= "table" then fail(caller, "tls must be a table (got %s)", type(tls)) end
  probe.tls = tls
  probe.timeout = seconds(pick("timeout") or CHECK_DEFAULTS.timeout, "timeout", caller)
  return probe
end

-- nil when the response passes; otherwise the reason, one line.
local function evaluate(probe, r)
  if r.error then
    return (r.message or r.error):gsub("^%u+ %S+: ", "") -- the URL is named by the caller
  end
  local status_ok = false
  for _, s in ipairs(probe.expect_status) do
    if r.status == s then status_ok = true end
  end
  if not status_ok then
    local want = #probe.expect_status == 1 and tostring(probe.expect_status[1])
      or "one of " .. table.concat(probe.expect_status, ", ")
    local body = excerpt(r.body)
    return ("status %d, expected %s%s"):format(r.status, want, body ~= "" and ": " .. body or "")
  end
  if probe.expect_body and not r.body:find(probe.expect_body) then
    return ("the body does not match %q: %s"):format(probe.expect_body, quote(excerpt(r.body)))
  end
  if probe.expect_json then
    local ok, doc = pcall(json.decode, r.body)
    if not ok then
      return ("the body is not JSON (%s): %s"):format(tostring(doc):gsub("^json%.decode: ", ""),
        quote(excerpt(r.body)))
    end
    for _, want in ipairs(probe.expect_json) do
      local got = lookup(doc, want.steps)
      if got == nil then
        return ("JSON %s is missing, expected %s"):format(want.path, quote(want.value))
      end
      if not deep_equal(got, want.value) then
        return ("JSON %s is %s, expected %s"):format(want.path, quote(got), quote(want.value))
      end
    end
  end
  return nil
end

-- Probes until it passes or the deadline comes; returns the check's result.
local function run_probe(probe, deadline, interval)
  local result = { url = safe_url(probe.url), name = probe.name, ok = false, attempts = 0 }
  while true do
    local started = time.monotonic()
    local remaining = deadline - started
    result.attempts = result.attempts + 1
    local r = http.request {
      url = probe.url, headers = probe.headers, tls = probe.tls, read_only = true,
      timeout = math.max(math.min(probe.timeout, remaining), 0.001),
    }
    local reason = evaluate(probe, r)
    result.status = r.status
    result.error = r.error
    result.latency = (r.timings and r.timings.total and r.timings.total > 0)
      and r.timings.total or (time.monotonic() - started)
    result.reason = reason
    if not reason then
      result.ok = true
      return result
    end
    local next_at = started + interval
    if next_at >= deadline then return result end
    local wait = next_at - time.monotonic()
    if wait > 0 then task.sleep(wait) end
  end
end

-- health.check{ URL or specs..., url =, expect_status =, expect_json =, expect_body =,
-- headers =, timeout =, within = "2m", interval = "2s" } -> { ok, checks, reason, duration }
function health.check(opts)
  local caller = "health.check"
  if type(opts) == "string" then opts = { opts } end
  if type(opts) ~= "table" then
    error(("%s: opts must be a URL or a table (got %s)"):format(caller, type(opts)), 2)
  end
  local ok, probes, within, interval = pcall(function()
    for key in pairs(opts) do
      if math.type(key) ~= "integer" and not CHECK_OPTIONS[key] then
        fail(caller, "unknown option '%s'", tostring(key))
      end
    end
    local list = {}
    if opts.url ~= nil then list[#list + 1] = make_probe(opts.url, opts, caller) end
    for _, spec in ipairs(opts) do list[#list + 1] = make_probe(spec, opts, caller) end
    if #list == 0 then fail(caller, "give a url or a list of checks") end
    local w = seconds(opts.within or CHECK_DEFAULTS.within, "within", caller)
    local i = seconds(opts.interval or CHECK_DEFAULTS.interval, "interval", caller)
    if i <= 0 then fail(caller, "interval must be more than 0") end
    return list, w, i
  end)
  if not ok then error(probes, 2) end

  local started = time.monotonic()
  local deadline = started + within
  local fns = {}
  for i, probe in ipairs(probes) do
    fns[i] = function() return run_probe(probe, deadline, interval) end
  end
  local checks = { task.parallel(fns) }
  local result = { ok = true, checks = checks, duration = time.monotonic() - started }
  local failed = {}
  for _, c in ipairs(checks) do
    if not c.ok then
      result.ok = false
      failed[#failed + 1] = ("%s: %s (%d attempt%s)"):format(c.name, c.reason, c.attempts,
        c.attempts == 1 and "" or "s")
    end
  end
  if not result.ok then
    if #checks == 1 then
      result.reason = ("health check failed within %s: %s"):format(fmt_duration(within), failed[1])
    else
      result.reason = ("%d of %d health checks failed within %s: %s"):format(#failed, #checks,
        fmt_duration(within), table.concat(failed, "; "))
    end
  end
  return result
end

-- ---- health.load ----

-- "http://host:port/path?q" -> scheme, host (no brackets), port, target ("/path?q"), Host value
local function split_url(url, caller)
  local scheme, authority, rest = url:match("^(%a+)://([^/?#]*)([^#]*)")
  if not scheme then fail(caller, "url must be an http:// or https:// URL (got '%s')", url) end
  scheme = scheme:lower()
  if scheme ~= "http" and scheme ~= "https" then
    fail(caller, "url must be an http:// or https:// URL (got '%s')", safe_url(url))
  end
  if authority:find("@", 1, true) then
    fail(caller, "credentials in the URL are not supported; send an Authorization header")
  end
  local host, port = authority:match("^%[([^%]]+)%]:?(%d*)$")
  if not host then host, port = authority:match("^([^:]+):?(%d*)$") end
  if not host or host == "" then fail(caller, "url has no host: '%s'", url) end
  port = tonumber(port) or (scheme == "https" and 443 or 80)
  if port < 1 or port > 65535 then fail(caller, "url has a bad port: '%s'", url) end
  if rest == "" or rest:sub(1, 1) == "?" then rest = "/" .. rest end
  return scheme, host, port, rest, authority
end

-- The request as bytes on the wire, built once and sent as is by every connection.
local function build_request(method, target, authority, headers, body, caller)
  local lines = { ("%s %s HTTP/1.1"):format(method, target) }
  local given = {}
  local names = {}
  for name in pairs(headers or {}) do
    if type(name) ~= "string" or not name:match("^[!#$%%&'*+.^_`|~%w-]+$") then
      fail(caller, "headers: '%s' is not a valid header name", tostring(name))
    end
    names[#names + 1] = name
  end
  table.sort(names)
  for _, name in ipairs(names) do
    local value = headers[name]
    if type(value) == "number" or type(value) == "boolean" then value = tostring(value) end
    if type(value) ~= "string" then
      fail(caller, "headers.%s must be a string (got %s)", name, type(value))
    end
    if value:find("[\r\n%z]") then fail(caller, "headers.%s contains a line break or NUL byte", name) end
    given[name:lower()] = true
    lines[#lines + 1] = name .. ": " .. value
  end
  if given["content-length"] or given["transfer-encoding"] then
    fail(caller, "headers: Content-Length and Transfer-Encoding are set from the body")
  end
  if not given.host then lines[#lines + 1] = "Host: " .. authority end
  if not given["user-agent"] then lines[#lines + 1] = "User-Agent: tug/" .. tug.version end
  if not given.accept then lines[#lines + 1] = "Accept: */*" end
  if body or method == "POST" or method == "PUT" or method == "PATCH" then
    lines[#lines + 1] = "Content-Length: " .. #(body or "")
  end
  return table.concat(lines, "\r\n") .. "\r\n\r\n" .. (body or "")
end

local function check_load_options(opts, caller)
  if type(opts) ~= "table" then fail(caller, "opts must be a table (got %s)", type(opts)) end
  for key in pairs(opts) do
    if not LOAD_OPTIONS[key] then fail(caller, "unknown option '%s'", tostring(key)) end
  end
  local o = {}
  if type(opts.url) ~= "string" then fail(caller, "url must be a string (got %s)", type(opts.url)) end
  o.url = opts.url
  o.scheme, o.host, o.port, o.target, o.authority = split_url(opts.url, caller)
  o.duration = seconds(opts.duration or LOAD_DEFAULTS.duration, "duration", caller)
  if o.duration <= 0 then fail(caller, "duration must be more than 0") end
  o.timeout = seconds(opts.timeout or LOAD_DEFAULTS.timeout, "timeout", caller)
  if o.timeout <= 0 then fail(caller, "timeout must be more than 0") end
  if opts.concurrency ~= nil and opts.rate ~= nil then
    fail(caller, "give concurrency (closed-loop) or rate (open-loop), not both")
  end
  if opts.rate ~= nil then
    if type(opts.rate) ~= "number" or opts.rate <= 0 then
      fail(caller, "rate must be a number of requests a second above 0 (got %s)", tostring(opts.rate))
    end
    o.rate = opts.rate
  else
    local c = opts.concurrency or LOAD_DEFAULTS.concurrency
    if math.type(c) ~= "integer" or c < 1 or c > 100000 then
      fail(caller, "concurrency must be an integer from 1 to 100000 (got %s)", tostring(c))
    end
    o.concurrency = c
  end
  local mc = opts.max_connections or LOAD_DEFAULTS.max_connections
  if math.type(mc) ~= "integer" or mc < 1 or mc > 100000 then
    fail(caller, "max_connections must be an integer from 1 to 100000 (got %s)", tostring(mc))
  end
  o.max_connections = mc
  local method = opts.method or "GET"
  if type(method) ~= "string" or not method:match("^%a+$") then
    fail(caller, "method must be a word such as \"GET\" (got %s)", tostring(method))
  end
  o.method = method:upper()
  if opts.body ~= nil and type(opts.body) ~= "string" then
    fail(caller, "body must be a string (got %s)", type(opts.body))
  end
  o.body = opts.body
  if opts.headers ~= nil and type(opts.headers) ~= "table" then
    fail(caller, "headers must be a table (got %s)", type(opts.headers))
  end
  o.headers = opts.headers
  if opts.tls ~= nil and type(opts.tls) ~= "table" then
    fail(caller, "tls must be a table (got %s)", type(opts.tls))
  end
  o.tls = opts.tls
  if opts.ok_status ~= nil then
    local list = opts.ok_status
    if math.type(list) == "integer" then list = { list } end
    if type(list) ~= "table" or #list == 0 then
      fail(caller, "ok_status must be a status or a list of statuses")
    end
    o.ok_status = {}
    for _, s in ipairs(list) do
      if math.type(s) ~= "integer" then fail(caller, "ok_status: %s is not a status", tostring(s)) end
      o.ok_status[s] = true
    end
  end
  local engine = opts.engine or (o.scheme == "https" and "http" or "native")
  if engine ~= "native" and engine ~= "http" then
    fail(caller, "engine must be \"native\" or \"http\" (got %s)", tostring(engine))
  end
  if engine == "native" and o.scheme == "https" then
    fail(caller, "the native engine speaks plain HTTP only; https goes through engine = \"http\"")
  end
  if engine == "native" and o.tls then
    fail(caller, "tls applies to https URLs (engine = \"http\") only")
  end
  o.engine = engine
  if engine == "native" then
    o.request = build_request(o.method, o.target, o.authority, o.headers, o.body, caller)
  end
  return o
end

local function is_ok_status(o, status)
  if o.ok_status then return o.ok_status[status] == true end
  return status >= 200 and status < 300
end

-- The native engine: everything between start and end runs in C (health.c).
local function load_native(o)
  local raw = core.load {
    host = o.host, port = o.port, request = o.request, head = o.method == "HEAD",
    duration = o.duration, concurrency = o.concurrency, rate = o.rate,
    max_connections = o.max_connections, timeout = o.timeout,
  }
  return raw
end

-- The http engine: requests through the http client (libcurl), for https. Slower than the
-- native engine (a Lua task and a curl transfer per request) but it speaks TLS and HTTP/2.
local function load_http(o)
  local hist = core.histogram()
  local raw = {
    statuses = {}, responses = 0, connects = 0, bytes = 0, scheduled = 0, histogram = hist,
    transport_errors = { connect = 0, timeout = 0, closed = 0, protocol = 0 },
  }
  local previous = http.configure().max_host_connections
  local wanted = o.concurrency or o.max_connections
  if wanted > previous then http.configure { max_host_connections = wanted } end
  local function one(started_at)
    local r = http.request {
      method = o.method, url = o.url, headers = o.headers, body = o.body, timeout = o.timeout,
      tls = o.tls, read_only = true,
    }
    if r.error then
      local kind = r.error
      if raw.transport_errors[kind] == nil then kind = kind == "dns" and "connect" or "protocol" end
      raw.transport_errors[kind] = raw.transport_errors[kind] + 1
      raw.first_error = raw.first_error or (r.message or kind):gsub("^%u+ %S+: ", "")
    else
      hist:record(math.max(time.monotonic() - started_at, 0))
      raw.statuses[r.status] = (raw.statuses[r.status] or 0) + 1
      raw.responses = raw.responses + 1
      raw.bytes = raw.bytes + #r.body
    end
  end
  local start = time.monotonic()
  local stop = start + o.duration
  local ok, err = pcall(function()
    if o.concurrency then
      local fns = {}
      for i = 1, o.concurrency do
        fns[i] = function()
          while time.monotonic() < stop do one(time.monotonic()) end
        end
      end
      task.parallel(fns)
    else
      local in_flight, k = 0, 0
      local tasks = {}
      while true do
        local at = start + k / o.rate
        if at >= stop then break end
        local wait = at - time.monotonic()
        if wait > 0.0005 then task.sleep(wait) end
        while in_flight >= o.max_connections do task.sleep(0.001) end
        k = k + 1
        in_flight = in_flight + 1
        tasks[#tasks + 1] = task.spawn(function()
          one(at)
          in_flight = in_flight - 1
        end)
        if #tasks > 4096 then
          local keep = {}
          for _, t in ipairs(tasks) do
            if t:status() ~= "done" then keep[#keep + 1] = t end
          end
          tasks = keep
        end
      end
      for _, t in ipairs(tasks) do t:wait() end
      raw.scheduled = k
    end
  end)
  if wanted > previous then http.configure { max_host_connections = previous } end
  if not ok then error(err, 0) end
  raw.elapsed = time.monotonic() - start
  return raw
end

-- Describes what went wrong: "102 x status 500, 3 x connect (connection refused)".
local function error_summary(o, raw)
  local parts = {}
  local statuses = {}
  for status in pairs(raw.statuses) do
    if not is_ok_status(o, status) then statuses[#statuses + 1] = status end
  end
  table.sort(statuses)
  for _, status in ipairs(statuses) do
    parts[#parts + 1] = ("%s x status %d"):format(fmt_count(raw.statuses[status]), status)
  end
  for _, kind in ipairs({ "connect", "timeout", "closed", "protocol" }) do
    local n = raw.transport_errors[kind] or 0
    if n > 0 then parts[#parts + 1] = ("%s x %s"):format(fmt_count(n), kind) end
  end
  local text = table.concat(parts, ", ")
  if raw.first_error then text = text .. " (first: " .. raw.first_error .. ")" end
  return text
end

-- health.load{ url, duration = "30s", concurrency = 50 | rate = N, method, headers, body,
-- timeout = "10s", ok_status, max_connections = 1000, engine } -> figures
function health.load(opts)
  local caller = "health.load"
  local ok, o = pcall(check_load_options, opts, caller)
  if not ok then error(o, 2) end

  local result = {
    url = safe_url(o.url), method = o.method, duration = o.duration,
    mode = o.concurrency and "closed" or "open", concurrency = o.concurrency, rate = o.rate,
    engine = o.engine,
  }
  if tug.plan.active() then
    -- a load check against production is heavy: plan mode says what it would do
    local summary
    if o.rate then
      result.would_send = math.floor(o.rate * o.duration + 0.5)
      summary = ("%s %s: would send %s requests (%s a second for %s, open-loop)"):format(o.method,
        result.url, fmt_count(result.would_send), tostring(o.rate), fmt_duration(o.duration))
    else
      summary = ("%s %s: would send requests for %s from %d connections (closed-loop)"):format(
        o.method, result.url, fmt_duration(o.duration), o.concurrency)
    end
    tug.plan.record("health", summary, nil)
    result.planned = true
    result.summary = summary
    result.count, result.errors, result.error_rate, result.rps = 0, 0, 0, 0
    return result
  end

  local raw = o.engine == "native" and load_native(o) or load_http(o)
  if raw.fatal then
    result.error = "dns"
    result.message = raw.fatal
  end
  local transport = 0
  for _, n in pairs(raw.transport_errors) do transport = transport + n end
  local bad_status = 0
  for status, n in pairs(raw.statuses) do
    if not is_ok_status(o, status) then bad_status = bad_status + n end
  end
  local hist = raw.histogram
  result.count = raw.responses + transport
  result.responses = raw.responses
  result.errors = bad_status + transport
  result.error_rate = result.count > 0 and result.errors / result.count or 0
  result.statuses = raw.statuses
  result.transport_errors = raw.transport_errors
  result.elapsed = raw.elapsed
  result.rps = raw.elapsed > 0 and result.count / raw.elapsed or 0
  result.connects = raw.connects
  result.bytes = raw.bytes
  if o.rate then result.scheduled = raw.scheduled end
  result.histogram = hist
  result.p50 = hist:percentile(50)
  result.p90 = hist:percentile(90)
  result.p95 = hist:percentile(95)
  result.p99 = hist:percentile(99)
  result.max = hist:max()
  result.min = hist:min()
  result.mean = hist:mean()
  if result.errors > 0 then result.error_summary = error_summary(o, raw) end
  if result.error then result.error_summary = result.message end
  return result
end

-- ---- health.gate ----

local LATENCY_LIMITS = {
  { key = "p50_ms", field = "p50", label = "p50" },
  { key = "p90_ms", field = "p90", label = "p90" },
  { key = "p95_ms", field = "p95", label = "p95" },
  { key = "p99_ms", field = "p99", label = "p99" },
  { key = "max_ms", field = "max", label = "the slowest request" },
  { key = "mean_ms", field = "mean", label = "the mean latency" },
}
local GATE_OPTIONS = { error_rate = true, min_rps = true, min_count = true }
for _, l in ipairs(LATENCY_LIMITS) do GATE_OPTIONS[l.key] = true end

local function fmt_number(n)
  if math.type(n) == "integer" or n == math.floor(n) then return fmt_count(n) end
  return ("%.1f"):format(n)
end

local function gate_load(result, limits)
  local failures, passes = {}, {}
  if result.error then
    return false, ("the load check could not run: %s"):format(result.message or result.error)
  end
  if (result.count or 0) == 0 then
    return false, ("the load check got no responses from %s"):format(result.url or "the target")
  end
  for _, l in ipairs(LATENCY_LIMITS) do
    local limit = limits[l.key]
    local value = result[l.field]
    if limit ~= nil and value ~= nil then
      local ms = value * 1000
      if ms > limit then
        local over = ms - limit
        failures[#failures + 1] = ("%s %s is over the %s ms limit by %s (%s%%)"):format(l.label,
          fmt_ms(value), fmt_number(limit), fmt_ms(over / 1000),
          fmt_number(math.floor(over / limit * 100 + 0.5)))
      else
        passes[#passes + 1] = ("%s %s is within the %s ms limit"):format(l.label, fmt_ms(value),
          fmt_number(limit))
      end
    end
  end
  if limits.error_rate ~= nil then
    local rate = result.error_rate
    local counts = ("%s of %s requests"):format(fmt_count(result.errors), fmt_count(result.count))
    if rate > limits.error_rate then
      local detail = result.error_summary and ": " .. result.error_summary or ""
      failures[#failures + 1] = ("error rate %s (%s%s) is over the %s limit by %s percentage points")
        :format(fmt_percent(rate), counts, detail, fmt_percent(limits.error_rate),
          (fmt_percent(rate - limits.error_rate):gsub("%%$", "")))
    else
      passes[#passes + 1] = ("error rate %s (%s) is within the %s limit"):format(fmt_percent(rate),
        counts, fmt_percent(limits.error_rate))
    end
  end
  if limits.min_rps ~= nil then
    if result.rps < limits.min_rps then
      local short = limits.min_rps - result.rps
      failures[#failures + 1] = ("throughput %s requests/s is under the %s requests/s floor by %s (%s%%)")
        :format(fmt_number(result.rps), fmt_number(limits.min_rps), fmt_number(short),
          fmt_number(math.floor(short / limits.min_rps * 100 + 0.5)))
    else
      passes[#passes + 1] = ("throughput %s requests/s meets the %s requests/s floor"):format(
        fmt_number(result.rps), fmt_number(limits.min_rps))
    end
  end
  if limits.min_count ~= nil then
    if result.count < limits.min_count then
      failures[#failures + 1] = ("only %s requests completed, fewer than the %s needed"):format(
        fmt_count(result.count), fmt_count(limits.min_count))
    end
  end
  if #failures > 0 then return false, table.concat(failures, "; ") end
  return true, table.concat(passes, "; ")
end

local function gate_check(result)
  if result.ok then
    local slowest = 0
    for _, c in ipairs(result.checks) do slowest = math.max(slowest, c.latency or 0) end
    local n = #result.checks
    return true, ("%s passed (slowest answer %s)"):format(
      n == 1 and "the health check" or ("all %d health checks"):format(n), fmt_ms(slowest))
  end
  return false, result.reason
end

-- health.gate(result, limits) -> ok, sentence. For a health.load result, limits are upper
-- bounds on latency (p50_ms, p90_ms, p95_ms, p99_ms, max_ms, mean_ms) and error_rate, and
-- floors (min_rps, min_count); by default the seed's p95_ms = 500 and error_rate = 0.001.
-- For a health.check result, every check must have passed. assert(health.gate(r)) raises
-- with the sentence.
function health.gate(result, limits)
  if type(result) ~= "table" then
    error(("health.gate: result must be a health.check or health.load result (got %s)"):format(
      type(result)), 2)
  end
  if limits ~= nil and type(limits) ~= "table" then
    error(("health.gate: limits must be a table (got %s)"):format(type(limits)), 2)
  end
  for key, value in pairs(limits or {}) do
    if not GATE_OPTIONS[key] then
      error(("health.gate: unknown limit '%s'"):format(tostring(key)), 2)
    end
    if value ~= false and (type(value) ~= "number" or value < 0) then
      error(("health.gate: limit %s must be a number >= 0, or false to drop it (got %s)"):format(
        key, tostring(value)), 2)
    end
  end
  if result.planned then
    return true, ("planned, not measured: %s"):format(result.summary or "")
  end
  if result.checks ~= nil then return gate_check(result) end
  if result.error_rate == nil and result.error == nil then
    error("health.gate: result must be a health.check or health.load result", 2)
  end
  local effective = {}
  for key, value in pairs(health.defaults) do effective[key] = value end
  for key, value in pairs(limits or {}) do effective[key] = value or nil end
  return gate_load(result, effective)
end

-- A latency histogram (log-linear buckets, 0.4% relative error): h:record(seconds),
-- h:percentile(p), h:count(), h:min(), h:max(), h:mean(), h:merge(other).
health.histogram = core.histogram

return health
