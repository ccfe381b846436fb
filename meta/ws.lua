---@meta ws
-- ws: WebSocket client and server on libwebsockets (modules/ws/README.md).

---@class tug.ws.ConnectOptions
---@field protocols? string[] subprotocols offered, in order of preference
---@field headers? table<string, string> added to the upgrade request
---@field tls? tug.http.TLS
---@field timeout? tug.Duration resolving, connecting and the handshake (default 30 s)
---@field origin? string the Origin header (default: the host)
---@field max_message? integer a larger incoming message closes with 1009 (default 64 MiB)

---@class tug.ws.UpgradeOptions
---@field protocols? string[]
---@field max_message? integer

---@class tug.ws.Closed
---@field code integer? the peer's close code
---@field reason string?
---@field by_peer boolean?
---@field error string? "closed" when it broke, "timeout" when recv timed out
---@field message string?

---@class tug.ws.Connection
---@field protocol string? the subprotocol chosen
---@field state "open"|"closing"|"closed"
---@field buffered integer bytes queued to send
local Connection = {}

---Queues a text (default) or binary message; false and a message once closed.
---@param data string
---@param binary? boolean
---@return boolean ok
---@return string? message
function Connection:send(data, binary) end

---The next message: data and "text" or "binary"; nil and why once closed or on timeout.
---@param timeout? tug.Duration
---@return string? data
---@return "text"|"binary"|tug.ws.Closed kind_or_closed
function Connection:recv(timeout) end

---Sends what is queued, then the close frame (default code 1000); returns at once.
---@param code? integer
---@param reason? string
function Connection:close(code, reason) end

---@class tug.ws
ws = {}

---Connects to a `ws://` or `wss://` URL; failures raise `{ kind = "ws", error = "dns"|"connect"|"tls"|"handshake"|"protocol"|"timeout", ... }`.
---@param url string
---@param opts? tug.ws.ConnectOptions
---@return tug.ws.Connection
function ws.connect(url, opts) end

---Inside an http.server handler: answers the WebSocket handshake and takes the connection;
---or nil, a status and a message when the request is not an acceptable upgrade.
---@param req tug.http.Request
---@param opts? tug.ws.UpgradeOptions
---@return tug.ws.Connection? conn
---@return integer? status
---@return string? message
function ws.upgrade(req, opts) end

---Whether the request asks for a WebSocket upgrade.
---@param req tug.http.Request
---@return boolean
function ws.is_upgrade(req) end

---The subprotocols the request offers.
---@param req tug.http.Request
---@return string[]
function ws.offered_protocols(req) end

---`{ connections }`: connections not yet freed (for specs).
---@return { connections: integer }
function ws.stats() end

return ws
