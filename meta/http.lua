---@meta http
-- http: HTTP client on libcurl, and a small HTTP/1.1 server (modules/http/README.md).

---@class tug.http.TLS
---@field ca? string a CA bundle: a file name or PEM text
---@field cert? string a client certificate (chain): a file name or PEM text
---@field key? string the client certificate's key: a file name or PEM text
---@field insecure? boolean accept any server certificate

---@class tug.http.Options
---@field method? string "GET" by default; case does not matter
---@field url? string required for http.request
---@field headers? table<string, string|number|boolean> `false` removes a header curl would add
---@field query? table<string, string|number|boolean|string[]> added to the URL's query string (sorted, encoded; a list repeats the key)
---@field body? string the request body
---@field json? any a value sent as JSON with Content-Type: application/json
---@field form? table sent as application/x-www-form-urlencoded
---@field timeout? tug.Duration|false the whole attempt (default 30 s); 0 or false for no limit
---@field connect_timeout? tug.Duration to connect, TCP and TLS (default 10 s)
---@field retries? integer attempts after the first (default 0)
---@field retry_on? (integer|string)[] statuses and failure kinds retried (default { "connect", "timeout", 502, 503, 504 })
---@field backoff? tug.Duration before the first retry (default 0.5 s); doubles each time
---@field follow? boolean follow redirects, at most 10
---@field tls? tug.http.TLS
---@field proxy? string a proxy URL; "" turns proxies off
---@field unix_socket? string connect to this unix socket instead of the URL's host
---@field max_body? integer the largest response body kept in memory (default 64 MiB)
---@field on_line? fun(line: string): boolean? stream the body line by line; return false to stop
---@field on_chunk? fun(chunk: string): boolean? stream the body as it arrives; return false to stop
---@field read_only? boolean under `tug plan`, send this request even though its method writes

---@class tug.http.Timings
---@field dns number
---@field connect number
---@field tls number
---@field ttfb number
---@field total number

---@alias tug.http.ErrorKind "timeout"|"connect"|"dns"|"tls"|"too_large"|"cancelled"|"protocol"

---A response. A failure to get one is a value: no `status`, and `error`/`message` set.
---@class tug.http.Response
---@field status integer? the HTTP status; nil when the request failed
---@field reason string? the reason phrase, when the server sent one
---@field headers table<string, string|string[]> lookup ignores case; `set-cookie` is a list
---@field body string
---@field url string the effective URL, without credentials
---@field method string
---@field http_version string "1.0", "1.1" or "2"
---@field timings tug.http.Timings
---@field attempts integer
---@field stopped boolean? a streaming callback returned false
---@field planned boolean? under `tug plan`: recorded, not sent
---@field error tug.http.ErrorKind? why the request failed
---@field message string? what was tried and what failed
local Response = {}

---true for a 2xx status (and for a planned request).
---@return boolean
function Response:ok() end

---Returns the response when ok(); otherwise raises `{ kind = "http", message, method, url, status, error, body }`.
---@return tug.http.Response
function Response:raise() end

---The body decoded as JSON; raises an `http` error when it is not JSON.
---@return any
function Response:json() end

---@class tug.http.ServerOptions
---@field handler fun(req: tug.http.Request): ... required: run in a new task per request
---@field host? string an IP address to listen on (default "127.0.0.1")
---@field port? integer 0 (the default) picks a free port
---@field max_body? integer bigger request bodies get 413 (default 16 MiB)
---@field idle_timeout? tug.Duration default 60 s; 0 turns it off

---A request as a server handler sees it.
---@class tug.http.Request
---@field method string
---@field path string as sent, not percent-decoded
---@field query table<string, string> decoded; a repeated key keeps its last value
---@field raw_query string
---@field url string the request target as sent
---@field headers table<string, string> names lower-cased
---@field body string
---@field remote_addr string
---@field remote_port integer
---@field version "1.1"|"1.0"
local Request = {}

---Takes the connection over from the server (protocol upgrades; see ws.upgrade).
---@return integer fd
---@return string head the request as it was read
function Request:take_connection() end

---A listening server (`http.server`); `local srv <close> = http.server{...}` closes it at scope end.
---@class tug.http.Server
---@field port integer
---@field host string
---@field url string "http://127.0.0.1:PORT"
---@field connections integer open connections now
---@field requests integer requests received so far
---@field closed boolean
local Server = {}

---Stops listening. Without `grace` in-flight handlers are cancelled at once; with it they
---get that long to finish. Idempotent.
---@param grace? tug.Duration
function Server:close(grace) end

---@class tug.http.Settings
---@field max_host_connections? integer connections open at once to one host (default 16)
---@field max_body? integer the default max_body of each request (default 64 MiB)

---@class tug.http
http = {}

---Sends a request (with retries, plan mode and streaming as `opts` say).
---@param opts tug.http.Options
---@return tug.http.Response
function http.request(opts) end

---@param url string
---@param opts? tug.http.Options
---@return tug.http.Response
function http.get(url, opts) end

---@param url string
---@param opts? tug.http.Options
---@return tug.http.Response
function http.head(url, opts) end

---@param url string
---@param opts? tug.http.Options
---@return tug.http.Response
function http.post(url, opts) end

---@param url string
---@param opts? tug.http.Options
---@return tug.http.Response
function http.put(url, opts) end

---@param url string
---@param opts? tug.http.Options
---@return tug.http.Response
function http.patch(url, opts) end

---@param url string
---@param opts? tug.http.Options
---@return tug.http.Response
function http.delete(url, opts) end

---Process-wide settings; returns those in force (no argument: just read them).
---@param opts? tug.http.Settings
---@return tug.http.Settings
function http.configure(opts) end

---Starts an HTTP/1.1 server on tug's loop.
---@param opts tug.http.ServerOptions
---@return tug.http.Server
function http.server(opts) end

return http
