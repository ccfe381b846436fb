-- ws.lua: the public ws module, WebSocket connections for tasks. The C half (ws.core) holds
-- the mechanism, libwebsockets on tug's loop; this file is the policy: URLs, options, the
-- errors a failed connection raises, and ws.upgrade, the server side inside an
-- http.server handler.
--
--   local conn <close> = ws.connect("wss://host/path", { protocols = { "v5.channel.k8s.io" },
--     headers = { Authorization = "Bearer ..." }, tls = { ca = "/path/ca.crt" }, timeout = 10 })
--   conn:send("\0hello", true)
--   local data, kind = conn:recv()       -- nil, { code, reason } once closed
--
-- Waiting (connect, recv, a send to a slow peer) suspends only the calling task.

local core = require("ws.core")

local ws = {}

local CONNECT_OPTIONS = {
  protocols = true, headers = true, tls = true, timeout = true, origin = true, max_message = true,
}
local TLS_OPTIONS = { ca = true, cert = true, key = true, insecure = true }
local UPGRADE_OPTIONS = { protocols = true, max_message = true }
local DEFAULT_TIMEOUT = 30
-- Request headers the handshake owns.
local RESERVED = {
  host = true, upgrade = true, connection = true, ["sec-websocket-key"] = true,
  ["sec-websocket-version"] = true, ["sec-websocket-protocol"] = true,
  ["sec-websocket-extensions"] = true, origin = true,
}

local function usage(caller, fmt, ...)
  error(("%s: " .. fmt):format(caller, ...), 3)
end

-- "wss://user:pw@host:443/path?q" -> { tls, host, port, path, shown } (shown has no
-- credentials and is what messages name).
local function parse_url(url, caller)
  if type(url) ~= "string" then usage(caller, "url must be a string (got %s)", type(url)) end
  local scheme, rest = url:match("^(%a[%w+.-]*)://(.*)$")
  scheme = scheme and scheme:lower()
  local tls
  if scheme == "wss" or scheme == "https" then
    tls = true
  elseif scheme == "ws" or scheme == "http" then
    tls = false
  else
    usage(caller, "url must start with ws://, wss://, http:// or https:// (got %q)", url:gsub("//[^/@]*@", "//"))
  end
  local authority, path = rest:match("^([^/?#]*)(.*)$")
  authority = authority:gsub("^.*@", "") -- credentials go in headers, never in a URL we show
  path = path:gsub("#.*$", "")
  if path == "" then path = "/" elseif path:sub(1, 1) == "?" then path = "/" .. path end
  local host, port = authority:match("^%[([^%]]+)%]:?(%d*)$")
  if not host then host, port = authority:match("^([^:]+):?(%d*)$") end
  if not host or host == "" then usage(caller, "url has no host (%q)", url:gsub("//[^/@]*@", "//")) end
  port = tonumber(port) or (tls and 443 or 80)
  if port < 1 or port > 65535 then usage(caller, "url has a bad port (%d)", port) end
  local default_port = (tls and port == 443) or (not tls and port == 80)
  local host_header = (host:find(":", 1, true) and "[" .. host .. "]" or host) .. (default_port and "" or ":" .. port)
  local shown = (tls and "wss://" or "ws://") .. host_header .. path:gsub("%?.*$", "")
  return { tls = tls, host = host, port = port, path = path, host_header = host_header, shown = shown }
end
ws.parse_url = parse_url

local function check_protocols(list, caller)
  if list == nil then return nil end
  if type(list) == "string" then list = { list } end
  if type(list) ~= "table" then usage(caller, "protocols must be a list of names (got %s)", type(list)) end
  for i, name in ipairs(list) do
    if type(name) ~= "string" or not name:match("^[%w!#$%%&'*+.^_`|~-]+$") then
      usage(caller, "protocols[%d] is not a valid subprotocol name", i)
    end
  end
  if #list > 16 then usage(caller, "at most 16 protocols") end
  return list
end

-- ws.connect(url, opts) -> connection. Raises { kind = "ws", error = "connect" | "dns" |
-- "tls" | "handshake" | "protocol" | "timeout", message, url, status (the server's HTTP
-- status when it refused the upgrade) } when no connection could be made.
function ws.connect(url, opts)
  local caller = "ws.connect"
  local u = parse_url(url, caller)
  if opts ~= nil and type(opts) ~= "table" then usage(caller, "opts must be a table (got %s)", type(opts)) end
  opts = opts or {}
  for key in pairs(opts) do
    if not CONNECT_OPTIONS[key] then usage(caller, "unknown option '%s'", tostring(key)) end
  end
  local headers = {}
  if opts.headers ~= nil then
    if type(opts.headers) ~= "table" then usage(caller, "headers must be a table (got %s)", type(opts.headers)) end
    for name, value in pairs(opts.headers) do
      if type(name) ~= "string" or not name:match("^[%w!#$%%&'*+.^_`|~-]+$") then
        usage(caller, "header name %s is not valid", tostring(name))
      end
      if RESERVED[name:lower()] then usage(caller, "header %s belongs to the handshake", name) end
      if type(value) == "number" then value = tostring(value) end
      if type(value) ~= "string" or value:find("[\r\n%z]") then
        usage(caller, "header %s must be a string without line breaks", name)
      end
      headers[#headers + 1] = name:lower() .. ":"
      headers[#headers + 1] = value
    end
  end
  local tls = opts.tls or {}
  if type(tls) ~= "table" then usage(caller, "tls must be a table (got %s)", type(tls)) end
  for key, value in pairs(tls) do
    if not TLS_OPTIONS[key] then usage(caller, "unknown tls option '%s'", tostring(key)) end
    if key ~= "insecure" and type(value) ~= "string" then usage(caller, "tls.%s must be a file name or PEM text", key) end
  end
  if (tls.cert == nil) ~= (tls.key == nil) then usage(caller, "tls.cert and tls.key go together") end
  local timeout = opts.timeout
  if timeout == nil then timeout = DEFAULT_TIMEOUT end
  if type(timeout) == "string" then
    local s = require("time").parse_duration(timeout)
    if not s then usage(caller, "timeout must be seconds or a duration (got %q)", timeout) end
    timeout = s
  elseif type(timeout) ~= "number" or timeout < 0 then
    usage(caller, "timeout must be seconds or a duration")
  end
  if opts.origin ~= nil and type(opts.origin) ~= "string" then usage(caller, "origin must be a string") end
  if opts.max_message ~= nil and (math.type(opts.max_message) ~= "integer" or opts.max_message < 1) then
    usage(caller, "max_message must be a positive integer (bytes)")
  end
  local conn, kind, message, status = core.connect({
    host = u.host, port = u.port, path = u.path, tls = u.tls, host_header = u.host_header,
    origin = opts.origin, protocols = check_protocols(opts.protocols, caller), headers = headers,
    ca = tls.ca, cert = tls.cert, key = tls.key, insecure = tls.insecure and true or false,
    timeout = timeout, max_message = opts.max_message,
  })
  if conn then return conn end
  -- a name that does not resolve is about the host, not the URL ("ws: cannot resolve
  -- api.example.internal: Name or service not known"); err.url still says which
  local text = kind == "dns" and "ws: " .. message or ("ws: %s: %s"):format(u.shown, message)
  error(tug.error.new("ws", text, { error = kind, url = u.shown, status = status }), 2)
end

-- ---- the server side ----

local function header_tokens(value)
  local out = {}
  for token in (value or ""):gmatch("[^,%s]+") do out[#out + 1] = token end
  return out
end

-- What a request offers: is it a WebSocket upgrade, and which subprotocols.
function ws.is_upgrade(req)
  local h = req.headers or {}
  local connection_upgrade = false
  for _, t in ipairs(header_tokens(h.connection)) do
    if t:lower() == "upgrade" then connection_upgrade = true end
  end
  return connection_upgrade and (h.upgrade or ""):lower() == "websocket" and req.method == "GET"
end

function ws.offered_protocols(req)
  return header_tokens((req.headers or {})["sec-websocket-protocol"])
end

-- ws.upgrade(req, { protocols = { ... } }) -> connection, or nil, status, message. Inside
-- an http.server handler: answers the request's WebSocket handshake and takes its
-- connection over from the HTTP server. The subprotocol is the client's first offer that
-- is in `protocols`. When the request is not an upgrade or offers none of them, nothing is
-- taken over and the handler answers (400, message) itself.
function ws.upgrade(req, opts)
  local caller = "ws.upgrade"
  if type(req) ~= "table" or type(req.take_connection) ~= "function" then
    usage(caller, "req must be the request an http.server handler received")
  end
  opts = opts or {}
  for key in pairs(opts) do
    if not UPGRADE_OPTIONS[key] then usage(caller, "unknown option '%s'", tostring(key)) end
  end
  local protocols = check_protocols(opts.protocols, caller)
  if not ws.is_upgrade(req) then
    return nil, 400, "this endpoint takes a WebSocket upgrade (GET with Upgrade: websocket)"
  end
  if (req.headers["sec-websocket-version"] or "") ~= "13" then
    return nil, 400, "Sec-WebSocket-Version must be 13"
  end
  if protocols then
    local offered = ws.offered_protocols(req)
    local ok = false
    for _, o in ipairs(offered) do
      for _, p in ipairs(protocols) do if o == p then ok = true end end
    end
    if not ok then
      return nil, 400, ("requested protocol(s) are not supported: [%s]; supports [%s]"):format(
        table.concat(offered, " "), table.concat(protocols, " "))
    end
  end
  local fd, head = req:take_connection()
  if not fd then return nil, 499, "the client went away" end
  local conn, kind, message = core.accept(fd, head, { protocols = protocols, max_message = opts.max_message })
  if conn then return conn end
  return nil, 400, ("WebSocket handshake failed (%s): %s"):format(tostring(kind), tostring(message))
end

-- Connections whose teardown is not finished (for specs).
ws.stats = core.stats

return ws
