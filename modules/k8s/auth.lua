-- auth.lua (k8s.auth): the credentials a connection sends, in client-go's order of
-- precedence: a static token, a token file (reread once a minute, as service-account
-- tokens rotate), an exec credential plugin, basic auth; client certificates go in the
-- TLS settings.
--
-- Exec plugins (client.authentication.k8s.io/v1 and v1beta1, how EKS, GKE and AKS users
-- log in) run as kubectl runs them: the command with its args and env, plus
-- KUBERNETES_EXEC_INFO holding an ExecCredential with spec.interactive = false (tug
-- never hands a plugin its terminal) and spec.cluster when provideClusterInfo is set.
-- Their answer is cached until status.expirationTimestamp (for ever without one), and
-- thrown away on a 401, as client-go does; concurrent requests share one plugin run.

local exec = require("exec")
local json = require("json")
local log = require("log")
local task = require("task")
local time = require("time")
local util = require("k8s.util")

local auth = {}
local Auth = {}
Auth.__index = Auth

local TOKEN_FILE_TTL = 60      -- seconds a token file's content is trusted
local PLUGIN_TIMEOUT = 120     -- a plugin that has not answered by then has failed

local function fail(fmt, ...)
  error(tug.error.new("k8s", fmt:format(...), { reason = "Unauthorized" }), 0)
end

function auth.new(conn)
  return setmetatable({ conn = conn }, Auth)
end

-- ---- token file ----

function Auth:file_token()
  local now = time.monotonic()
  if self.token and self.token_read_at and now - self.token_read_at < TOKEN_FILE_TTL then
    return self.token
  end
  local f, err = io.open(self.conn.token_file, "rb")
  if not f then
    if self.token then return self.token end -- keep the last good one, as client-go does
    fail("cannot read token file %s", err)
  end
  local token = f:read("a"):gsub("%s+$", "")
  f:close()
  if token == "" then fail("token file %s is empty", self.conn.token_file) end
  self.token, self.token_read_at = log.secret(token), now
  return token
end

-- ---- exec plugin ----

local function plugin_info(e)
  local info = { apiVersion = e.api_version, kind = "ExecCredential", spec = { interactive = false } }
  if e.cluster then
    local cluster = {}
    for k, v in pairs(e.cluster) do
      -- certificate-authority-data -> certificateAuthorityData
      local key = k:gsub("%-(%a)", function(c) return c:upper() end)
      cluster[key] = v
    end
    info.spec.cluster = cluster
  end
  return json.encode(info)
end

local function run_plugin(e)
  if e.interactive_mode == "Always" then
    fail("exec plugin cannot support interactive mode: standard input is not a terminal")
  end
  local argv = { e.command }
  for _, a in ipairs(e.args) do argv[#argv + 1] = a end
  local env = { KUBERNETES_EXEC_INFO = plugin_info(e) }
  for k, v in pairs(e.env) do env[k] = v end
  local ok, r = pcall(exec.run, argv, { env = env, timeout = PLUGIN_TIMEOUT, read_only = true })
  if not ok then
    local message = type(r) == "table" and r.message or tostring(r)
    if message:find("not found", 1, true) then
      fail("exec: executable %s not found%s", e.command, e.install_hint and ("\n\n" .. e.install_hint) or "")
    end
    fail("exec: executable %s: %s", e.command, message)
  end
  local stderr = (r.stderr or ""):gsub("%s+$", "")
  if r.code ~= 0 then
    fail("exec: executable %s failed with exit code %s%s", e.command, tostring(r.code or r.signal),
      stderr ~= "" and (": " .. util.excerpt(stderr, 500)) or "")
  end
  if stderr ~= "" then log.info("exec credential plugin: " .. util.excerpt(stderr, 500), { command = e.command }) end
  local okj, cred = pcall(json.decode, r.stdout)
  if not okj or type(cred) ~= "table" then
    fail("exec plugin %s: decoding stdout: the output is not an ExecCredential (%s)", e.command,
      util.excerpt(r.stdout, 80))
  end
  if cred.kind ~= "ExecCredential" then
    fail("exec plugin %s: the output has kind %s, want ExecCredential", e.command, tostring(cred.kind))
  end
  if cred.apiVersion ~= e.api_version then
    fail("exec plugin is configured to use API version %s, plugin returned version %s", e.api_version,
      tostring(cred.apiVersion))
  end
  local status = cred.status
  if type(status) ~= "table" then fail("exec plugin didn't return a status field") end
  local token = type(status.token) == "string" and status.token ~= "" and status.token or nil
  local cert = type(status.clientCertificateData) == "string" and status.clientCertificateData ~= ""
    and status.clientCertificateData or nil
  local key = type(status.clientKeyData) == "string" and status.clientKeyData ~= "" and status.clientKeyData or nil
  if (cert == nil) ~= (key == nil) then
    fail("exec plugin returned only certificate or key, not both")
  end
  if not token and not cert then fail("exec plugin didn't return a token or cert/key pair") end
  local expires
  if status.expirationTimestamp ~= nil and status.expirationTimestamp ~= json.null then
    expires = util.parse_time(status.expirationTimestamp)
    if not expires then
      fail("exec plugin returned an expirationTimestamp that is not a time: %s", tostring(status.expirationTimestamp))
    end
  end
  if token then log.secret(token) end
  if key then log.secret(key) end
  return { token = token, cert = cert, key = key, expires = expires }
end

-- The plugin's credential, from the cache while it has not expired.
function Auth:exec_credential()
  local cred = self.cred
  if cred and (cred.expires == nil or time.now() < cred.expires) then return cred end
  if not self.pending then
    local e = self.conn.exec
    self.pending = task.spawn(function()
      local ok, result = pcall(run_plugin, e)
      self.pending = nil
      if not ok then error(result, 0) end
      self.cred = result
      self.runs = (self.runs or 0) + 1
      return result
    end)
  end
  return self.pending:wait()
end

-- ---- per request ----

-- Adds the Authorization (and impersonation) headers to `headers`; returns the TLS settings
-- for the request (the connection's, with a plugin's client certificate when it gave one).
function Auth:apply(headers)
  local conn = self.conn
  local tls = conn.tls
  if conn.token then
    headers.Authorization = "Bearer " .. conn.token
  elseif conn.token_file then
    headers.Authorization = "Bearer " .. self:file_token()
  elseif conn.exec then
    local cred = self:exec_credential()
    if cred.token then headers.Authorization = "Bearer " .. cred.token end
    if cred.cert and not (tls and tls.cert) then
      local t = {}
      for k, v in pairs(tls or {}) do t[k] = v end
      t.cert, t.key = cred.cert, cred.key
      tls = t
    end
  elseif conn.username then
    local basic = require("k8s.kubeconfig").base64_encode(conn.username .. ":" .. (conn.password or ""))
    headers.Authorization = "Basic " .. log.secret(basic)
  end
  local imp = conn.impersonate
  if imp then
    if imp.user then headers["Impersonate-User"] = imp.user end
    if imp.uid then headers["Impersonate-Uid"] = imp.uid end
    if type(imp.groups) == "table" and #imp.groups > 0 then
      if #imp.groups > 1 then fail("impersonating more than one group is not supported") end
      headers["Impersonate-Group"] = imp.groups[1]
    end
  end
  return tls
end

-- After a 401: forget what can be fetched again. True when a retry may now succeed.
function Auth:unauthorized()
  if self.conn.exec and self.cred then
    self.cred = nil
    return true
  end
  if self.conn.token_file and self.token_read_at then
    self.token_read_at = nil
    return true
  end
  return false
end

return auth
