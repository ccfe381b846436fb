-- aws/client.lua: what every AWS call shares. Settings (aws.configure, the call's options,
-- the environment variables, the profile), endpoints, SigV4 signing over aws.core, sending
-- over the http module, plan mode for writes, and the structured errors that say which call
-- failed and why (AWS's error code and message, and a hint for the usual causes).

local core = require("aws.core")
local credentials = require("aws.credentials")
local http = require("http")
local json = require("json")
local xml = require("aws.xml")

local M = {}

-- Settings a call may carry beside its own options, and what aws.configure keeps.
M.SETTINGS = {
  region = true, endpoint_url = true, profile = true, credentials = true, path_style = true,
  retries = true, timeout = true,
}

local defaults = {}

local DEFAULT_RETRIES = 2
local RETRY_ON = { "connect", "timeout", 500, 502, 503, 504 }
local EXCERPT = 300

-- Per-service endpoint variables, as the AWS SDKs name them (AWS_ENDPOINT_URL_<ID>).
local ENDPOINT_IDS = {
  s3 = "S3", secretsmanager = "SECRETS_MANAGER", ecr = "ECR", cloudfront = "CLOUDFRONT",
  sts = "STS",
}

-- Services with one global endpoint, signed for us-east-1.
local GLOBAL = { cloudfront = "cloudfront.amazonaws.com" }

-- Host names that differ from SERVICE.REGION.amazonaws.com.
local HOSTS = { ecr = "api.ecr" }

-- ---- settings ----

local function check_settings(t, caller)
  if t.region ~= nil and (type(t.region) ~= "string" or not t.region:match("^[%w%-]+$")) then
    error(("%s: region must be a region name such as \"eu-west-1\" (got %s)"):format(caller,
      tostring(t.region)), 0)
  end
  local eu = t.endpoint_url
  if eu ~= nil and type(eu) ~= "string" and type(eu) ~= "table" then
    error(("%s: endpoint_url must be a URL or a table service -> URL (got %s)"):format(caller,
      type(eu)), 0)
  end
  if t.profile ~= nil and type(t.profile) ~= "string" then
    error(("%s: profile must be a string (got %s)"):format(caller, type(t.profile)), 0)
  end
  if t.retries ~= nil and (math.type(t.retries) ~= "integer" or t.retries < 0) then
    error(("%s: retries must be a non-negative integer (got %s)"):format(caller, tostring(t.retries)), 0)
  end
end

-- aws.configure(opts): the settings every later call starts from (a playbook passes
-- ctx.env.aws). Replaces what an earlier call set. Keys other than the settings (a bucket
-- name, a distribution id kept in the environment file) are ignored.
function M.configure(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error(("aws.configure: opts must be a table (got %s)"):format(type(opts)), 2)
  end
  local ok, err = pcall(check_settings, opts or {}, "aws.configure")
  if not ok then error(err, 2) end
  defaults = {}
  for k, v in pairs(opts or {}) do
    if M.SETTINGS[k] then defaults[k] = v end
  end
  if defaults.credentials then credentials.resolve(defaults) end -- registers the secret now
  local copy = {}
  for k, v in pairs(defaults) do copy[k] = v end
  return copy
end

-- The settings for one call: aws.configure's, overridden by the call's options. Checks the
-- option names against `allowed` (the verb's own) plus the settings.
function M.settings(opts, allowed, caller)
  if opts ~= nil and type(opts) ~= "table" then
    error(("%s: opts must be a table (got %s)"):format(caller, type(opts)), 0)
  end
  local s = {}
  for k, v in pairs(defaults) do s[k] = v end
  for k, v in pairs(opts or {}) do
    if M.SETTINGS[k] then
      s[k] = v
    elseif not (allowed and allowed[k]) then
      error(("%s: unknown option '%s'"):format(caller, tostring(k)), 0)
    end
  end
  check_settings(s, caller)
  return s
end

local function getenv(name)
  local v = os.getenv(name)
  if v == "" then return nil end
  return v
end

-- The region for a call: the call's or aws.configure's, AWS_REGION, AWS_DEFAULT_REGION, the
-- profile's. Global services ignore it. A custom endpoint defaults to us-east-1 (S3-alikes
-- such as MinIO do not care).
function M.region(settings, service, custom_endpoint)
  if GLOBAL[service] then return "us-east-1" end
  local r = settings.region or getenv("AWS_REGION") or getenv("AWS_DEFAULT_REGION")
    or credentials.profile_region(settings)
  if r then return r end
  if custom_endpoint then return "us-east-1" end
  error(tug.error.new("aws", "aws " .. service .. ": no AWS region: set aws.region in the "
    .. "environment file (environments/NAME.yaml), AWS_REGION, or region in the AWS profile",
    { service = service, code = "NoRegion" }), 0)
end

-- The endpoint for a service: base URL (no trailing slash) and whether it is custom.
function M.endpoint(service, settings)
  local eu = settings.endpoint_url
  if type(eu) == "table" then eu = eu[service] end
  local id = ENDPOINT_IDS[service] or service:upper():gsub("[^%w]", "_")
  eu = eu or getenv("AWS_ENDPOINT_URL_" .. id) or getenv("AWS_ENDPOINT_URL")
    or credentials.profile_setting(settings, "endpoint_url")
  if eu then
    if not eu:match("^[hH][tT][tT][pP][sS]?://[^/]") then
      error(("aws %s: endpoint_url must be an http:// or https:// URL (got '%s')"):format(service, eu), 0)
    end
    return (eu:gsub("/+$", "")), true
  end
  if GLOBAL[service] then return "https://" .. GLOBAL[service], false end
  local region = M.region(settings, service, false)
  local suffix = region:match("^cn%-") and "amazonaws.com.cn" or "amazonaws.com"
  return ("https://%s.%s.%s"):format(HOSTS[service] or service, region, suffix), false
end

-- ---- URLs ----

-- "https://h:1/p?q" -> scheme, authority, host, path, query (path "" when absent).
function M.parse_url(url)
  local scheme, authority, rest = url:match("^(%a[%w+.-]*)://([^/?#]*)(.*)$")
  if not scheme then return nil end
  rest = rest:gsub("#.*$", "")
  local path, query = rest:match("^([^?]*)%??(.*)$")
  local host = authority:gsub("^.*@", "")
  host = host:match("^(%b[])") or host:gsub(":%d*$", "")
  return scheme:lower(), authority, host, path, query
end

function M.is_ip_or_localhost(host)
  host = host:lower()
  return host == "localhost" or host:match("%.localhost$") ~= nil
    or host:match("^%d+%.%d+%.%d+%.%d+$") ~= nil or host:sub(1, 1) == "["
end

-- The Host header an HTTP client sends: the authority without userinfo and default port.
local function host_header(scheme, authority)
  authority = authority:gsub("^.*@", "")
  if (scheme == "http" and authority:match(":80$")) or (scheme == "https" and authority:match(":443$")) then
    authority = authority:gsub(":%d+$", "")
  end
  return authority
end

-- Bytes that may not appear raw in a URL path are percent-encoded; existing %XX are kept.
local function wire_path(path)
  return (path:gsub("[^%w%-%._~/%%!%$&'%(%)%*%+,;=:@]", function(c)
    return ("%%%02X"):format(c:byte())
  end))
end

-- A query string as decoded { name, value } pairs ('+' is a plus, not a space, as in AWS).
local function query_pairs(query)
  local pairs_ = {}
  if query == nil or query == "" then return pairs_ end
  for part in query:gmatch("[^&]+") do
    local k, eq, v = part:match("^([^=]*)(=?)(.*)$")
    pairs_[#pairs_ + 1] = { core.uri_decode(k), eq ~= "" and core.uri_decode(v) or "" }
  end
  return pairs_
end

local function add_query_table(list, t, caller)
  if t == nil then return end
  if type(t) ~= "table" then error(("%s: query must be a table (got %s)"):format(caller, type(t)), 0) end
  for k, v in pairs(t) do
    if type(k) ~= "string" then error(("%s: query keys must be strings"):format(caller), 0) end
    if type(v) == "table" then
      for _, item in ipairs(v) do list[#list + 1] = { k, tostring(item) } end
    elseif v ~= false and v ~= nil then
      list[#list + 1] = { k, v == true and "" or tostring(v) }
    end
  end
end

-- ---- signing ----

local function amz_date(t)
  if t == nil then return os.date("!%Y%m%dT%H%M%SZ") end
  if type(t) == "string" and t:match("^%d%d%d%d%d%d%d%dT%d%d%d%d%d%dZ$") then return t end
  if type(t) == "number" then return os.date("!%Y%m%dT%H%M%SZ", math.floor(t)) end
  error("aws.sign: time must be seconds since the epoch or \"YYYYMMDDTHHMMSSZ\" (got "
    .. tostring(t) .. ")", 0)
end

local function header_names(headers)
  local lower = {}
  for k in pairs(headers) do lower[k:lower()] = k end
  return lower
end

-- Headers an HTTP client or proxy may change on the way: never signed (as in botocore).
local UNSIGNED_HEADERS = { expect = true, ["user-agent"] = true, ["x-amzn-trace-id"] = true,
  authorization = true, ["content-length"] = true }

-- M.sign{ method, url, headers, body, query, service, region, time, credentials,
--   payload_hash, presign = seconds } -> { url, headers, authorization, signature, ... }
-- The returned url carries the canonical (sorted, encoded) query string, so what is sent is
-- exactly what was signed; the returned headers are the request's plus the signing ones.
function M.sign(opts, caller)
  caller = caller or "aws.sign"
  local method = (opts.method or "GET"):upper()
  if type(opts.url) ~= "string" then error(caller .. ": url must be a string", 0) end
  local scheme, authority, _, path, query = M.parse_url(opts.url)
  if not scheme then error(("%s: url must be an absolute URL (got '%s')"):format(caller, opts.url), 0) end
  local service = opts.service
  if type(service) ~= "string" or service == "" then error(caller .. ": service must be a string such as \"s3\"", 0) end
  local region = opts.region
  if type(region) ~= "string" or region == "" then error(caller .. ": region must be a string", 0) end
  local creds = opts.credentials
  if type(creds) ~= "table" or type(creds.access_key_id) ~= "string" or type(creds.secret_access_key) ~= "string" then
    error(caller .. ": credentials must be { access_key_id =, secret_access_key = [, session_token =] }", 0)
  end
  local body = opts.body or ""
  if type(body) ~= "string" then error(caller .. ": body must be a string", 0) end
  local s3 = service == "s3"

  local qlist = query_pairs(query)
  add_query_table(qlist, opts.query, caller)

  local headers = {}
  for k, v in pairs(opts.headers or {}) do
    if type(k) ~= "string" then error(caller .. ": header names must be strings", 0) end
    headers[k] = tostring(v)
  end
  local names = header_names(headers)
  local function set(name, value)
    local existing = names[name:lower()]
    if existing then headers[existing] = nil end
    headers[name] = value
    names[name:lower()] = name
  end
  if names.authorization then headers[names.authorization] = nil; names.authorization = nil end
  local date = amz_date(opts.time)
  set("Host", host_header(scheme, authority))

  local payload_hash = opts.payload_hash
  if names["x-amz-content-sha256"] and not payload_hash then
    payload_hash = headers[names["x-amz-content-sha256"]]
  end

  local to_sign = {}
  local presign = opts.presign
  if presign then
    local scope = table.concat({ creds.access_key_id, date:sub(1, 8), region, service, "aws4_request" }, "/")
    for k, v in pairs(headers) do
      if not UNSIGNED_HEADERS[k:lower()] then to_sign[k] = v end
    end
    local signed = {}
    for k in pairs(to_sign) do signed[#signed + 1] = k:lower() end
    table.sort(signed)
    qlist[#qlist + 1] = { "X-Amz-Algorithm", "AWS4-HMAC-SHA256" }
    qlist[#qlist + 1] = { "X-Amz-Credential", scope }
    qlist[#qlist + 1] = { "X-Amz-Date", date }
    qlist[#qlist + 1] = { "X-Amz-Expires", tostring(math.floor(presign)) }
    qlist[#qlist + 1] = { "X-Amz-SignedHeaders", table.concat(signed, ";") }
    if creds.session_token then qlist[#qlist + 1] = { "X-Amz-Security-Token", creds.session_token } end
    payload_hash = payload_hash or (s3 and "UNSIGNED-PAYLOAD" or core.digest("sha256", body))
  else
    set("X-Amz-Date", date)
    if creds.session_token and creds.session_token ~= "" then set("X-Amz-Security-Token", creds.session_token) end
    payload_hash = payload_hash or core.digest("sha256", body)
    if s3 then set("X-Amz-Content-SHA256", payload_hash) end
    for k, v in pairs(headers) do
      if not UNSIGNED_HEADERS[k:lower()] then to_sign[k] = v end
    end
  end

  local path_on_wire = wire_path(path)
  local r = core.sign({
    method = method, path = path_on_wire, query = qlist, headers = to_sign,
    payload_hash = payload_hash, service = service, region = region, date = date,
    access_key = creds.access_key_id, secret_key = creds.secret_access_key, s3 = s3,
  })
  local url = scheme .. "://" .. authority .. (path_on_wire == "" and "/" or path_on_wire)
  if presign then
    url = url .. "?" .. r.canonical_query .. (r.canonical_query ~= "" and "&" or "") .. "X-Amz-Signature=" .. r.signature
  else
    if r.canonical_query ~= "" then url = url .. "?" .. r.canonical_query end
    headers.Authorization = r.authorization
  end
  return {
    url = url, headers = headers, authorization = not presign and r.authorization or nil,
    signature = r.signature, signed_headers = r.signed_headers, canonical_request = r.canonical_request,
    string_to_sign = r.string_to_sign, date = date, payload_hash = payload_hash,
  }
end

-- ---- errors ----

local function excerpt(text)
  -- masked before it is cut or its spaces squeezed, which would hide a secret from redaction
  text = require("log").redact(text or ""):gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")
  if #text > EXCERPT then text = text:sub(1, EXCERPT) .. "..." end
  return text
end

local STATUS_CODES = {
  [301] = "PermanentRedirect", [304] = "NotModified", [400] = "BadRequest", [403] = "Forbidden",
  [404] = "NotFound", [405] = "MethodNotAllowed", [409] = "Conflict", [412] = "PreconditionFailed",
  [429] = "TooManyRequests", [500] = "InternalError", [503] = "ServiceUnavailable",
}

-- The AWS error code, message and request id of a failed response.
function M.parse_error(r)
  local body = r.body or ""
  local code, message
  local first = body:match("^%s*(.)")
  if first == "<" then
    local root = xml.parse(body)
    if root then
      local e = root.name == "Error" and root or xml.child(root, "Error")
      if e then code, message = xml.text(e, "Code"), xml.text(e, "Message") end
    end
  elseif first == "{" then
    local ok, doc = pcall(json.decode, body)
    if ok and type(doc) == "table" then
      code = doc.__type or doc.code or doc.Code
      message = doc.message or doc.Message
      if type(code) == "string" then code = code:match("#(.*)$") or code end
    end
  end
  local header_type = r.headers and r.headers["x-amzn-errortype"]
  if not code and header_type then code = header_type:match("^([^:]+)") end
  code = code or STATUS_CODES[r.status] or ("HTTP" .. tostring(r.status))
  if type(message) ~= "string" then message = excerpt(body) end
  local request_id = r.headers and (r.headers["x-amz-request-id"] or r.headers["x-amzn-requestid"])
  return code, message, request_id
end

local function hint(code, creds)
  local who = creds and ("access key id %s (from %s)"):format(creds.access_key_id, creds.source or "?") or "the credentials"
  if code == "SignatureDoesNotMatch" or code == "InvalidSignatureException" then
    return "check the secret access key for " .. who
  elseif code == "InvalidAccessKeyId" or code == "UnrecognizedClientException" then
    return who .. " is not known to this endpoint"
  elseif code == "ExpiredToken" or code == "ExpiredTokenException" or code == "TokenRefreshRequired" then
    return "the session token has expired: refresh the credentials"
  elseif code == "RequestTimeTooSkewed" then
    return "this machine's clock is off: sync it (NTP)"
  elseif code == "AccessDenied" or code == "AccessDeniedException" then
    return "the policy of " .. who .. " does not allow this"
  end
end

-- Raises the aws error for a failed response (or a transport failure) of `what`.
function M.fail(what, r, fields, creds)
  fields = fields or {}
  local message
  if r.error then
    fields.code = r.error
    message = ("aws %s: %s"):format(what, r.message or r.error)
  else
    local code, msg, request_id = M.parse_error(r)
    fields.status, fields.code, fields.request_id = r.status, code, request_id
    message = ("aws %s: HTTP %d %s"):format(what, r.status, code)
    if msg and msg ~= "" then message = message .. ": " .. msg end
    local h = hint(code, creds)
    if h then message = message .. " (" .. h .. ")" end
  end
  fields.operation = what
  error(tug.error.new("aws", message, fields), 0)
end

-- ---- sending ----

local SAFE = { GET = true, HEAD = true }

-- M.send{ service, what, method, url | (path), query, headers, body, settings, write,
--   plan = { summary, detail }, expect = { [status] = true }, on_chunk, timeout }
-- -> the http response (2xx or an expected status), or { planned = true } for a write in
-- plan mode. Failures raise aws errors naming `what`.
function M.send(req)
  local settings = req.settings
  local method = req.method or "GET"
  if req.write == nil then req.write = not SAFE[method] end
  if req.write and tug.plan.active() then
    tug.plan.record("aws", req.plan_summary or (method .. " " .. req.what), req.plan_detail)
    return { planned = true, status = 200, headers = {}, body = "" }
  end
  local url = req.url
  local custom = true
  if not url then
    local base
    base, custom = M.endpoint(req.service, settings)
    url = base .. (req.path or "/")
  end
  local region = req.region or M.region(settings, req.service, custom)
  local creds = credentials.resolve(settings)
  local signed = M.sign({
    method = method, url = url, query = req.query, headers = req.headers, body = req.body,
    service = req.service, region = region, credentials = creds,
  }, "aws " .. req.what)
  local retries = req.retries or settings.retries or DEFAULT_RETRIES
  local r = http.request({
    method = method, url = signed.url, headers = signed.headers, body = req.body,
    timeout = req.timeout or settings.timeout, retries = retries,
    retry_on = (SAFE[method] or method == "PUT" or method == "DELETE" or not req.write) and RETRY_ON or {},
    read_only = not req.write, on_chunk = req.on_chunk,
  })
  if r.error then M.fail(req.what, r, req.fields, creds) end
  if (r.status >= 200 and r.status < 300) or (req.expect and req.expect[r.status]) then return r end
  M.fail(req.what, r, req.fields, creds)
end

-- A JSON-protocol call (Secrets Manager, ECR): POST / with X-Amz-Target. Returns the
-- decoded answer.
function M.json_call(req)
  local r = M.send({
    service = req.service, what = req.what, method = "POST", path = "/",
    headers = {
      ["Content-Type"] = "application/x-amz-json-1.1",
      ["X-Amz-Target"] = req.target,
    },
    body = json.encode(req.body), settings = req.settings, write = req.write,
    plan_summary = req.plan_summary, plan_detail = req.plan_detail, fields = req.fields,
  })
  if r.planned then return nil, r end
  if r.body == "" then return {}, r end
  local ok, doc = pcall(json.decode, r.body)
  if not ok then
    error(tug.error.new("aws", ("aws %s: the answer is not JSON: %s"):format(req.what, excerpt(r.body)),
      { status = r.status, operation = req.what }), 0)
  end
  return doc, r
end

-- What aws.request returns for a write in plan mode: shaped like an http response.
function M.planned_response(method, url)
  return {
    planned = true, method = method, url = url, status = 200, headers = {}, body = "",
    ok = function() return true end,
    raise = function(self) return self end,
    json = function() return {} end,
  }
end

-- ---- aws.request: signed calls to services the module does not wrap ----

local REQUEST_OPTIONS = {
  service = true, method = true, url = true, path = true, query = true, headers = true,
  body = true, read_only = true,
}

function M.request(opts)
  if type(opts) ~= "table" then error(("aws.request: opts must be a table (got %s)"):format(type(opts)), 0) end
  local settings = M.settings(opts, REQUEST_OPTIONS, "aws.request")
  if type(opts.service) ~= "string" then error("aws.request: service must be a string such as \"sts\"", 0) end
  if opts.url == nil and opts.path == nil then error("aws.request: give url or path", 0) end
  if opts.path ~= nil and (type(opts.path) ~= "string" or opts.path:sub(1, 1) ~= "/") then
    error("aws.request: path must start with /", 0)
  end
  local method = (opts.method or "GET"):upper()
  local write = not SAFE[method] and not opts.read_only
  local url = opts.url
  local custom = true
  if not url then
    local base
    base, custom = M.endpoint(opts.service, settings)
    url = base .. opts.path
  end
  if write and tug.plan.active() then
    tug.plan.record("aws", method .. " " .. url, opts.body and excerpt(opts.body) or nil)
    return M.planned_response(method, url)
  end
  local creds = credentials.resolve(settings)
  local signed = M.sign({
    method = method, url = url, query = opts.query, headers = opts.headers, body = opts.body,
    service = opts.service, region = M.region(settings, opts.service, custom), credentials = creds,
  }, "aws.request")
  return http.request({
    method = method, url = signed.url, headers = signed.headers, body = opts.body,
    timeout = settings.timeout, retries = settings.retries or 0, read_only = true,
  })
end

M.credentials = credentials.resolve

return M
