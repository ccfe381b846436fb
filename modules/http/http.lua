-- http.lua: the public http module. The C half (http.core, client.c) runs one attempt of one
-- request on the loop through libcurl. This file is the policy a playbook author may want
-- to read: option names and defaults, how query strings and bodies are encoded, which
-- failures are retried and how long to wait between attempts, what plan mode does, how
-- streamed lines reach on_line, and what a response offers (ok, raise, json).

local core = require("http.core")
local json = require("json")
local task = require("task")
local time = require("time")

local http = {}

local OPTIONS = {
  method = true, url = true, headers = true, query = true, body = true, json = true,
  form = true, timeout = true, connect_timeout = true, retries = true, retry_on = true,
  backoff = true, follow = true, tls = true, proxy = true, unix_socket = true,
  max_body = true, on_line = true, on_chunk = true, read_only = true,
}
local TLS_OPTIONS = { ca = true, cert = true, key = true, insecure = true }

-- Methods that plan mode lets through, and those retried by default.
local SAFE = { GET = true, HEAD = true, OPTIONS = true }
local IDEMPOTENT = { GET = true, HEAD = true, OPTIONS = true, PUT = true, DELETE = true, TRACE = true }

local DEFAULT_RETRY_ON = { connect = true, timeout = true, [502] = true, [503] = true, [504] = true }
local BACKOFF_BASE = 0.5   -- seconds before the first retry; doubles each time
local BACKOFF_MAX = 30     -- no single wait is longer
local RETRY_AFTER_MAX = 60 -- a server's Retry-After is honoured up to this
local EXCERPT = 300        -- bytes of a body quoted in errors and plan records

local ERROR_KINDS = {
  timeout = true, connect = true, dns = true, tls = true, too_large = true, cancelled = true,
  protocol = true,
}

-- ---- responses ----

local Response = {}
Response.__index = Response

-- Header lookup ignores case: the names are stored lowercased.
local headers_mt = {
  __index = function(headers, name)
    if type(name) == "string" then return rawget(headers, name:lower()) end
  end,
}

local function excerpt(text)
  -- masked before it is cut or its spaces squeezed, which would hide a secret from redaction
  text = require("log").redact(text or ""):gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")
  if #text > EXCERPT then text = text:sub(1, EXCERPT) .. "..." end
  return text
end

-- true for a 2xx response and for a planned request.
function Response:ok()
  if self.planned then return true end
  return self.status ~= nil and self.status >= 200 and self.status < 300
end

-- Raises a structured http error for a transport failure or a non-2xx status; returns the
-- response otherwise, so calls chain: http.get(url):raise():json().
function Response:raise()
  if self:ok() then return self end
  local fields = { url = self.url, method = self.method, status = self.status, error = self.error }
  local message
  if self.error then
    message = self.message
  else
    local body = excerpt(self.body)
    fields.body = body
    message = ("%s %s: HTTP %d%s"):format(self.method, self.url, self.status,
      self.reason and self.reason ~= "" and " " .. self.reason or "")
    if body ~= "" then message = message .. ": " .. body end
  end
  error(tug.error.new("http", message, fields), 2)
end

-- The body decoded as JSON; a clear http error when it is not JSON.
function Response:json()
  if self.planned then return json.object and json.object() or {} end
  if self.error then self:raise() end
  local ok, value = pcall(json.decode, self.body)
  if ok then return value end
  local message = ("%s %s: the response is not JSON (status %d, content-type %s): %s"):format(
    self.method, self.url, self.status, self.headers["content-type"] or "none",
    tostring(value))
  error(tug.error.new("http", message, {
    url = self.url, method = self.method, status = self.status, body = excerpt(self.body),
  }), 2)
end

-- ---- building the request ----

-- Option mistakes are raised without a position here; http.request adds the caller's line.
local function fail(caller, fmt, ...)
  error(caller .. ": " .. fmt:format(...), 0)
end

local function scalar(value, what, caller)
  local t = type(value)
  if t == "string" then return value end
  if t == "number" or t == "boolean" then return tostring(value) end
  fail(caller, "%s must be a string, number or boolean (got %s)", what, t)
end

local function sorted_keys(t, what, caller)
  local keys = {}
  for k in pairs(t) do
    if type(k) ~= "string" then fail(caller, "%s keys must be strings (got %s)", what, type(k)) end
    keys[#keys + 1] = k
  end
  table.sort(keys)
  return keys
end

-- { b = 2, a = { "x", "y" } } -> "a=x&a=y&b=2": sorted keys, each part percent-encoded.
local function urlencode(t, what, caller)
  local parts = {}
  for _, key in ipairs(sorted_keys(t, what, caller)) do
    local value = t[key]
    local name = core.escape(key)
    if type(value) == "table" then
      for i, v in ipairs(value) do
        parts[#parts + 1] = name .. "=" .. core.escape(scalar(v, ("%s.%s[%d]"):format(what, key, i), caller))
      end
    else
      parts[#parts + 1] = name .. "=" .. core.escape(scalar(value, what .. "." .. key, caller))
    end
  end
  return table.concat(parts, "&")
end

local function add_query(url, query, caller)
  if type(query) ~= "table" then fail(caller, "query must be a table (got %s)", type(query)) end
  local encoded = urlencode(query, "query", caller)
  if encoded == "" then return url end
  local base, fragment = url:match("^([^#]*)(#.*)$")
  base, fragment = base or url, fragment or ""
  local sep = base:find("?", 1, true) and (base:sub(-1) == "?" and "" or "&") or "?"
  return base .. sep .. encoded .. fragment
end

-- headers table -> { "Name: value" } for curl, and the lowercased names given.
-- A value of false removes a header curl would add by itself.
local function header_lines(headers, caller)
  local lines, names = {}, {}
  if headers == nil then return lines, names end
  if type(headers) ~= "table" then fail(caller, "headers must be a table (got %s)", type(headers)) end
  for _, name in ipairs(sorted_keys(headers, "headers", caller)) do
    local value = headers[name]
    if not name:match("^[!#$%%&'*+.^_`|~%w-]+$") then
      fail(caller, "headers: '%s' is not a valid header name", name)
    end
    if value == false then
      lines[#lines + 1] = name .. ":"
    else
      value = scalar(value, "headers." .. name, caller)
      if value:find("[\r\n%z]") then
        fail(caller, "headers.%s contains a line break or NUL byte", name)
      end
      lines[#lines + 1] = value == "" and name .. ";" or name .. ": " .. value
    end
    names[name:lower()] = true
  end
  return lines, names
end

local function check_seconds(value, what, caller)
  if value == nil then return nil end
  if type(value) == "number" then
    if value < 0 then fail(caller, "%s must not be negative", what) end
    return value
  end
  if type(value) == "string" then
    local seconds = time.parse_duration(value)
    if seconds then return seconds end
    fail(caller, "%s: '%s' is not a duration (try \"30s\", \"500ms\")", what, value)
  end
  fail(caller, "%s must be seconds or a duration string (got %s)", what, type(value))
end

local function retry_set(retry_on, caller)
  if type(retry_on) ~= "table" then
    fail(caller, "retry_on must be a list of statuses and failure kinds (got %s)", type(retry_on))
  end
  local set = {}
  for _, v in ipairs(retry_on) do
    if math.type(v) == "integer" or (type(v) == "string" and ERROR_KINDS[v]) then
      set[v] = true
    else
      fail(caller, "retry_on: %s is neither a status nor one of timeout, connect, dns, tls, "
        .. "too_large, protocol", tostring(v))
    end
  end
  return set
end

-- Checks opts and returns the options for core.start plus the policy (retries, callbacks).
local function prepare(opts, caller)
  if type(opts) ~= "table" then fail(caller, "opts must be a table (got %s)", type(opts)) end
  for key in pairs(opts) do
    if not OPTIONS[key] then fail(caller, "unknown option '%s'", tostring(key)) end
  end
  local method = opts.method or "GET"
  if type(method) ~= "string" or not method:match("^%a+$") then
    fail(caller, "method must be a word such as \"GET\" (got %s)", tostring(method))
  end
  method = method:upper()
  local url = opts.url
  if type(url) ~= "string" then fail(caller, "url must be a string (got %s)", type(url)) end
  if not url:match("^[hH][tT][tT][pP][sS]?://") then
    fail(caller, "url must start with http:// or https:// (got '%s')", core.strip_credentials(url))
  end
  if opts.query ~= nil then url = add_query(url, opts.query, caller) end

  local lines, names = header_lines(opts.headers, caller)
  local body, content_type
  local given = (opts.body ~= nil and 1 or 0) + (opts.json ~= nil and 1 or 0) + (opts.form ~= nil and 1 or 0)
  if given > 1 then fail(caller, "give only one of body, json and form") end
  if opts.body ~= nil then
    if type(opts.body) ~= "string" then fail(caller, "body must be a string (got %s)", type(opts.body)) end
    body = opts.body
  elseif opts.json ~= nil then
    body, content_type = json.encode(opts.json), "application/json"
  elseif opts.form ~= nil then
    if type(opts.form) ~= "table" then fail(caller, "form must be a table (got %s)", type(opts.form)) end
    body, content_type = urlencode(opts.form, "form", caller), "application/x-www-form-urlencoded"
  end
  if body and not names["content-type"] then
    -- with no content type of our own, none is sent (curl would claim a form)
    lines[#lines + 1] = content_type and "Content-Type: " .. content_type or "Content-Type:"
  end
  if not names["expect"] then lines[#lines + 1] = "Expect:" end -- no 1 s wait for 100-continue

  local tls = opts.tls
  if tls ~= nil then
    if type(tls) ~= "table" then fail(caller, "tls must be a table (got %s)", type(tls)) end
    for key in pairs(tls) do
      if not TLS_OPTIONS[key] then fail(caller, "unknown tls option '%s'", tostring(key)) end
    end
  end
  if opts.on_line ~= nil and type(opts.on_line) ~= "function" then
    fail(caller, "on_line must be a function (got %s)", type(opts.on_line))
  end
  if opts.on_chunk ~= nil and type(opts.on_chunk) ~= "function" then
    fail(caller, "on_chunk must be a function (got %s)", type(opts.on_chunk))
  end
  if opts.on_line and opts.on_chunk then fail(caller, "give only one of on_line and on_chunk") end

  local retries = opts.retries or 0
  if math.type(retries) ~= "integer" or retries < 0 then
    fail(caller, "retries must be a non-negative integer (got %s)", tostring(retries))
  end
  local retry_on
  if opts.retry_on ~= nil then
    retry_on = retry_set(opts.retry_on, caller)
  elseif IDEMPOTENT[method] then
    retry_on = DEFAULT_RETRY_ON
  else
    retry_on = {} -- a POST or PATCH may have had its effect: retry only when asked to
  end
  local backoff = check_seconds(opts.backoff, "backoff", caller) or BACKOFF_BASE
  for _, name in ipairs({ "timeout", "connect_timeout" }) do
    if opts[name] ~= false then check_seconds(opts[name], name, caller) end
  end
  if opts.max_body ~= nil and (math.type(opts.max_body) ~= "integer" or opts.max_body < 1) then
    fail(caller, "max_body must be a positive integer (got %s)", tostring(opts.max_body))
  end
  for _, name in ipairs({ "proxy", "unix_socket" }) do
    if opts[name] ~= nil and type(opts[name]) ~= "string" then
      fail(caller, "%s must be a string (got %s)", name, type(opts[name]))
    end
  end

  local copts = {
    method = method, url = url, headers = lines, body = body,
    timeout = opts.timeout, connect_timeout = opts.connect_timeout, follow = opts.follow,
    tls = tls, proxy = opts.proxy, unix_socket = opts.unix_socket, max_body = opts.max_body,
    stream = opts.on_line and "lines" or opts.on_chunk and "chunks" or nil,
  }
  return copts, {
    retries = retries, retry_on = retry_on, backoff = backoff,
    on_line = opts.on_line, on_chunk = opts.on_chunk, read_only = opts.read_only,
  }
end

-- ---- running it ----

-- prepare has checked the options, so what core.start raises is passed on as it is.
local function start(copts)
  local ok, req = pcall(core.start, copts)
  if ok then return req end
  error(req, 0)
end

-- One attempt. Streamed data goes to the callback in this task, batch by batch; a callback
-- returning false stops the stream. If a callback raises or the task is cancelled, the
-- request is closed (the transfer removed, its connection dropped) on the way out.
local function attempt(copts, policy)
  local req <close> = start(copts)
  local delivered, stopped = false, false
  if policy.on_line then
    local on_line = policy.on_line
    while not stopped do
      local lines = req:next()
      if lines == nil then break end
      for i = 1, #lines do
        delivered = true
        if on_line(lines[i]) == false then
          stopped = true
          break
        end
      end
    end
  elseif policy.on_chunk then
    local on_chunk = policy.on_chunk
    while not stopped do
      local chunk = req:next()
      if chunk == nil then break end
      if chunk ~= "" then
        delivered = true
        stopped = on_chunk(chunk) == false
      end
    end
  end
  if stopped then req:stop() end
  local r = req:wait()
  setmetatable(r.headers, headers_mt)
  return setmetatable(r, Response), delivered
end

-- Seconds to wait before attempt n + 1: Retry-After when the server sent one with a 429 or
-- 503, otherwise backoff * 2^(n-1) with +-25% jitter.
local function retry_delay(r, n, base)
  if r.status == 429 or r.status == 503 then
    local after = r.headers["retry-after"]
    local seconds = after and tonumber(after)
    if not seconds and after then
      -- an HTTP date: "Wed, 21 Oct 2015 07:28:00 GMT"
      local d, mon, y, H, M, S = after:match("%a+, (%d+) (%a+) (%d+) (%d+):(%d+):(%d+) GMT")
      local months = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7, Aug = 8,
        Sep = 9, Oct = 10, Nov = 11, Dec = 12 }
      if d and months[mon] then
        local t = os.time({ year = tonumber(y), month = months[mon], day = tonumber(d),
          hour = tonumber(H), min = tonumber(M), sec = tonumber(S) })
        -- os.time reads the table as local time; os.time of the epoch's UTC fields corrects it
        seconds = t - os.time(os.date("!*t", 0)) - time.now()
      end
    end
    if seconds then return math.min(math.max(seconds, 0), RETRY_AFTER_MAX) end
  end
  local delay = base * 2 ^ (n - 1) * (0.75 + 0.5 * math.random())
  return math.min(delay, BACKOFF_MAX)
end

local function run(copts, policy)
  local n = 0
  while true do
    n = n + 1
    local r, delivered = attempt(copts, policy)
    r.attempts = n
    local retry = n <= policy.retries and not delivered and not r.stopped
      and policy.retry_on[r.error or r.status]
    if not retry then return r end
    task.sleep(retry_delay(r, n, policy.backoff))
  end
end

local function planned(copts)
  local summary = copts.method .. " " .. core.strip_credentials(copts.url)
  local detail = copts.body and copts.body ~= "" and excerpt(copts.body) or nil
  tug.plan.record("http", summary, detail)
  return setmetatable({
    planned = true, method = copts.method, url = core.strip_credentials(copts.url),
    headers = setmetatable({}, headers_mt), body = "",
  }, Response)
end

-- In plan mode a write is recorded instead of sent.
local function dispatch(copts, policy)
  if tug.plan.active() and not SAFE[copts.method] and not policy.read_only then
    return planned(copts)
  end
  return run(copts, policy)
end

-- http.request{ method, url, ... } -> response. Transport failures are values (r.error,
-- r.message); mistakes in the options raise.
function http.request(opts)
  local ok, copts, policy = pcall(prepare, opts, "http.request")
  if not ok then error(copts, 2) end
  return dispatch(copts, policy)
end

local function shortcut(method)
  local caller = "http." .. method:lower()
  return function(url, opts)
    if opts ~= nil and type(opts) ~= "table" then
      error(("%s: opts must be a table (got %s)"):format(caller, type(opts)), 2)
    end
    local copy = {}
    for k, v in pairs(opts or {}) do copy[k] = v end
    copy.method, copy.url = method, url
    local ok, copts, policy = pcall(prepare, copy, caller)
    if not ok then error(copts, 2) end
    return dispatch(copts, policy)
  end
end

http.get = shortcut("GET")
http.head = shortcut("HEAD")
http.post = shortcut("POST")
http.put = shortcut("PUT")
http.patch = shortcut("PATCH")
http.delete = shortcut("DELETE")

-- http.configure{ max_host_connections, max_body } -> the settings now in force.
function http.configure(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error(("http.configure: opts must be a table (got %s)"):format(type(opts)), 2)
  end
  opts = opts or {}
  for key in pairs(opts) do
    if key ~= "max_host_connections" and key ~= "max_body" then
      error(("http.configure: unknown option '%s'"):format(tostring(key)), 2)
    end
  end
  local ok, settings = pcall(core.configure, opts)
  if not ok then error(settings, 2) end
  return settings
end

function http.server(opts) return require("http.server").start(opts) end

return http
