-- server.lua: http.server, a small HTTP/1.1 server on tug's one loop, for the cluster
-- simulator, webhook receivers and test fixtures. The C half (server.c, in http.core) owns
-- the mechanism: sockets, parsing, keep-alive, pipelining, timeouts, back-pressure. This
-- file is the policy: the options, what a handler may return and how it becomes a
-- response, what a failing handler answers and where the failure is logged.
--
--   local srv = http.server{ port = 0, handler = function(req)
--     return 200, { ["content-type"] = "text/plain" }, "hello " .. (req.query.name or "")
--   end }
--   print(srv.url)   -- http://127.0.0.1:PORT
--   srv:close()
--
-- Each request runs handler(req) in its own task, so a handler may wait (task.sleep,
-- exec.run, http.get) without holding up other requests.

local core = require("http.core")
local json = require("json")
local log = require("log")
local task = require("task")

local server = {}

local OPTIONS = { host = true, port = true, handler = true, max_body = true, idle_timeout = true }
local DEFAULT_MAX_BODY = 16 * 1024 * 1024
local DEFAULT_IDLE_TIMEOUT = 60

local ERROR_BODY = "internal server error\n"

-- ---- requests ----

local function unescape(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(hex) return string.char(tonumber(hex, 16)) end))
end

-- "a=1&b=x%20y&a=2&flag" -> { a = "2", b = "x y", flag = "" }: the last value of a repeated
-- key wins (req.raw_query keeps them all).
local function decode_query(raw)
  local query = {}
  for pair in raw:gmatch("[^&]+") do
    local key, value = pair:match("^([^=]*)=?(.*)$")
    query[unescape(key)] = unescape(value)
  end
  return query
end

-- ---- responses ----

local function has_header(headers, name)
  for key in pairs(headers) do
    if type(key) == "string" and key:lower() == name then return true end
  end
  return false
end

-- headers with name = value added unless the handler set it (in any case); the handler's
-- table is copied, never changed.
local function with_default(headers, name, value)
  if headers ~= nil and type(headers) ~= "table" then
    error(("handler returned headers of type %s (want a table)"):format(type(headers)), 0)
  end
  if headers ~= nil and has_header(headers, name) then return headers end
  local copy = {}
  for key, v in pairs(headers or {}) do copy[key] = v end
  copy[name] = value
  return copy
end

-- What a handler returned -> status, headers, body (a string, a stream function or nil).
-- Accepted: `status, headers, body`; `{ status =, headers =, body = }`;
-- `{ status =, headers =, json = value }`; `{ status =, headers =, stream = fn }`;
-- a body that is a function streams. Nothing at all is 204 No Content.
local function normalize(status, headers, body)
  if type(status) == "table" then
    local r = status
    status, headers, body = r.status or 200, r.headers, r.body
    if r.json ~= nil then
      body = json.encode(r.json)
      headers = with_default(headers, "content-type", "application/json")
    end
    if r.stream ~= nil then body = r.stream end
  elseif status == nil then
    return 204, headers, nil
  end
  local code = math.tointeger(status)
  if code == nil or code < 200 or code > 599 then
    error(("handler returned status %s (want an integer from 200 to 599)"):format(
      tostring(status)), 0)
  end
  if type(body) == "number" then body = tostring(body) end
  local kind = type(body)
  if body ~= nil and kind ~= "string" and kind ~= "function" then
    error(("handler returned a body of type %s (want a string, a function to stream, "
      .. "or { json = value })"):format(kind), 0)
  end
  if kind == "function" or (kind == "string" and body ~= "") then
    headers = with_default(headers, "content-type", "text/plain; charset=utf-8")
  end
  return code, headers, body
end

local function is_cancelled(err)
  return type(err) == "table" and err.kind == "cancelled"
end

-- Runs in the request's own task (spawned by the C side for each request).
local function dispatch(ex, handler)
  local req = ex:request()
  req.query = decode_query(req.raw_query)
  -- req:take_connection() -> fd, head: see the README (protocol upgrades, e.g. ws.upgrade).
  function req.take_connection() return ex:take_connection() end

  local function serve()
    local results = table.pack(handler(req))
    if ex:state() == "detached" then return end -- the connection belongs to another protocol now
    local status, headers, body = normalize(table.unpack(results, 1, results.n))
    if type(body) ~= "function" then
      ex:respond(status, headers, body)
      return
    end
    ex:start_stream(status, headers)
    local function write(chunk)
      if type(chunk) ~= "string" then
        error(("write: chunk must be a string (got %s)"):format(type(chunk)), 2)
      end
      return ex:write(chunk)
    end
    body(write)
    ex:finish()
  end

  local ok, failure = xpcall(serve, function(err)
    return { value = err, traceback = debug.traceback(tostring(err), 2) }
  end)
  if ok then return end
  if is_cancelled(failure.value) then
    error(failure.value, 0) -- the server closed: the C side closes the connection
  end
  log.error("http.server: handler failed", {
    method = req.method, path = req.path, error = tostring(failure.value),
  })
  log.debug("http.server: handler failed", { traceback = failure.traceback })
  local state = ex:state()
  if state == "detached" then return end
  if state == "pending" then
    ex:respond(500, { ["content-type"] = "text/plain; charset=utf-8" }, ERROR_BODY)
  else
    ex:abort() -- a stream failed half-way: the client sees it cut short
  end
end

-- The server's own task: gives every request its task until the server has closed.
local function serve(srv)
  while core.server_accept(srv) do end
end

-- ---- options ----

local function check_options(opts)
  if type(opts) ~= "table" then
    error(("http.server: opts must be a table (got %s)"):format(type(opts)), 3)
  end
  for key in pairs(opts) do
    if not OPTIONS[key] then
      error(("http.server: unknown option '%s'"):format(tostring(key)), 3)
    end
  end
  if type(opts.handler) ~= "function" then
    error("http.server: opts.handler must be a function(req)", 3)
  end
  local host = opts.host or "127.0.0.1"
  if type(host) ~= "string" then error("http.server: opts.host must be a string", 3) end
  local port = opts.port or 0
  if math.tointeger(port) == nil or port < 0 or port > 65535 then
    error("http.server: opts.port must be an integer from 0 to 65535 (0 picks a free port)", 3)
  end
  local max_body = opts.max_body or DEFAULT_MAX_BODY
  if math.tointeger(max_body) == nil or max_body < 0 then
    error("http.server: opts.max_body must be a non-negative integer (bytes)", 3)
  end
  return host, math.tointeger(port), math.tointeger(max_body),
    opts.idle_timeout or DEFAULT_IDLE_TIMEOUT
end

-- server.start(opts) -> server: listens at once; `server.port` is the bound port.
function server.start(opts)
  local host, port, max_body, idle_timeout = check_options(opts)
  local ok, srv = pcall(core.server_listen, host, port, opts.handler, dispatch, max_body,
    idle_timeout)
  if not ok then error(srv, type(srv) == "string" and 2 or 0) end
  core.server_serve_task(srv, task.spawn(serve, srv))
  return srv
end

-- For specs and the simulator.
server.decode_query = decode_query

return server
