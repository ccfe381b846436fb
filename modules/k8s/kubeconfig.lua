-- kubeconfig.lua (k8s.kubeconfig): where the Kubernetes module finds its cluster, read the
-- way kubectl (client-go's clientcmd) reads it, so that `tug` and `kubectl` on the same
-- machine talk to the same cluster as the same user.
--
--   files(opts)     the kubeconfig files in force: opts.kubeconfig (like --kubeconfig: that
--                   one file, which must exist), else $KUBECONFIG (a ':'-separated list;
--                   missing files skipped), else ~/.kube/config (may be missing)
--   load(opts)      those files merged in kubectl's order: for clusters, users and contexts
--                   the first file to define a name wins (the whole entry, not field by
--                   field); current-context comes from the first file that sets it.
--                   Relative paths in a file are relative to that file's directory.
--   resolve(opts)   the connection for opts.context (or current-context), with
--                   opts.namespace, opts.cluster and opts.user overriding the context's:
--                   { server, namespace, tls = { ca, cert, key, insecure }, token,
--                   token_file, exec, username, password, proxy, impersonate, ... }
--   in_cluster(o)   the service-account connection a pod gets (KUBERNETES_SERVICE_HOST)
--
-- Certificate and key "-data" fields are base64 PEM; they are decoded here and handed to
-- the http client as PEM text (it sets them as in-memory blobs), so no key material is
-- ever written to disk. Tokens, passwords and private keys are registered as secrets.

local yaml = require("yaml")
local log = require("log")

local M = {}

local SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

local function fail(fmt, ...)
  error(tug.error.new("k8s", "kubeconfig: " .. fmt:format(...), { reason = "Config" }), 0)
end

-- ---- base64 (the -data fields) ----

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local B64_INDEX = {}
for i = 1, 64 do B64_INDEX[B64:byte(i)] = i - 1 end
B64_INDEX[("-"):byte()] = 62 -- the URL-safe alphabet decodes too
B64_INDEX[("_"):byte()] = 63

-- Decodes standard or URL-safe base64, padded or not, ignoring whitespace; nil when the text
-- is not base64.
function M.base64_decode(text)
  text = text:gsub("%s", ""):gsub("=+$", "")
  if #text % 4 == 1 then return nil end
  local out, n, bits, acc = {}, 0, 0, 0
  for i = 1, #text do
    local v = B64_INDEX[text:byte(i)]
    if v == nil then return nil end
    acc = (acc << 6) | v
    bits = bits + 6
    if bits >= 8 then
      bits = bits - 8
      n = n + 1
      out[n] = string.char((acc >> bits) & 0xff)
    end
  end
  return table.concat(out)
end

function M.base64_encode(data)
  local out = {}
  for i = 1, #data, 3 do
    local a, b, c = data:byte(i, i + 2)
    local v = (a << 16) | ((b or 0) << 8) | (c or 0)
    local s = {}
    for j = 3, 0, -1 do
      local idx = (v >> (6 * j)) & 63
      s[#s + 1] = B64:sub(idx + 1, idx + 1)
    end
    if not b then s[3], s[4] = "=", "=" elseif not c then s[4] = "=" end
    out[#out + 1] = table.concat(s)
  end
  return table.concat(out)
end

-- ---- files ----

local function exists(path)
  local f = io.open(path, "r")
  if f then f:close() return true end
  return false
end

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local text = f:read("a")
  f:close()
  return text
end

local function dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

local function absolute(path, base_dir)
  if path == nil or path == "" or path:sub(1, 1) == "/" then return path end
  return base_dir .. "/" .. path
end

local function getenv(opts, name)
  if opts.getenv then return opts.getenv(name) end
  return os.getenv(name)
end

-- The files kubectl would read, in merge order, and whether they came from an explicit path.
function M.files(opts)
  opts = opts or {}
  if opts.kubeconfig then
    local list = type(opts.kubeconfig) == "table" and opts.kubeconfig or { opts.kubeconfig }
    for _, path in ipairs(list) do
      if not exists(path) then fail("%s: no such file (given as kubeconfig)", path) end
    end
    return list, true
  end
  local env = getenv(opts, "KUBECONFIG")
  if env and env ~= "" then
    local list, seen = {}, {}
    for path in env:gmatch("[^:]+") do
      if not seen[path] and exists(path) then
        list[#list + 1] = path
      end
      seen[path] = true
    end
    return list, false
  end
  local home = opts.home or getenv(opts, "HOME")
  if home and home ~= "" then
    local path = home .. "/.kube/config"
    if exists(path) then return { path }, false end
  end
  return {}, false
end

-- kubeconfig lists [{ name, cluster = {...} }] -> { name = { entry, file, dir } }. A name
-- twice in one file is an error, as in client-go.
local function named(doc, key, field, path)
  local out = {}
  local list = doc[key]
  if list == nil or list == yaml.null then return out end
  if type(list) ~= "table" then fail("%s: %s must be a list", path, key) end
  for i, item in ipairs(list) do
    if type(item) ~= "table" or type(item.name) ~= "string" then
      fail("%s: %s[%d] has no name", path, key, i)
    end
    if out[item.name] then fail("%s: %s: duplicate name %q", path, key, item.name) end
    local entry = item[field]
    if entry == yaml.null or entry == nil then entry = {} end
    if type(entry) ~= "table" then fail("%s: %s[%d].%s must be a mapping", path, key, i, field) end
    out[item.name] = { entry = entry, file = path, dir = dirname(path) }
  end
  return out
end

-- Merges the files: the first file to define a name wins; current-context from the first
-- file that sets one.
function M.load(opts)
  opts = opts or {}
  local files, explicit = M.files(opts)
  local merged = { clusters = {}, users = {}, contexts = {}, files = files, explicit = explicit }
  for _, path in ipairs(files) do
    local text, err = read_file(path)
    if not text then fail("%s: %s", path, err) end
    local ok, doc = pcall(yaml.decode, text, { name = path })
    if not ok then fail("%s", tostring(doc)) end
    if doc ~= nil and doc ~= yaml.null then
      if type(doc) ~= "table" then fail("%s: not a kubeconfig (a mapping is expected)", path) end
      for key, field in pairs({ clusters = "cluster", users = "user", contexts = "context" }) do
        for name, entry in pairs(named(doc, key, field, path)) do
          if merged[key][name] == nil then merged[key][name] = entry end
        end
      end
      local current = doc["current-context"]
      if merged.current_context == nil and type(current) == "string" and current ~= "" then
        merged.current_context = current
        merged.current_context_file = path
      end
    end
  end
  return merged
end

-- ---- resolving a context ----

-- A field that must be a string (a number is taken as its text, as YAML readers do);
-- nil when it is absent or empty; a mapping or a list there is an error naming the field.
local function str(entry, key)
  local v = entry[key]
  if v == nil or v == yaml.null or v == "" then return nil end
  if type(v) == "table" then fail("%q must be a string, not a %s", key, #v > 0 and "list" or "mapping") end
  if type(v) ~= "string" then return tostring(v) end
  return v
end

local function pem_data(value, what)
  local decoded = M.base64_decode(value)
  if not decoded then fail("%s is not valid base64", what) end
  return decoded
end

-- The exec credential plugin's settings, with the command resolved as client-go does: a
-- relative command containing a '/' is relative to the kubeconfig's directory.
local function exec_config(e, dir, user_name)
  if type(e) ~= "table" then fail("user %q: exec must be a mapping", user_name) end
  local command = str(e, "command")
  if not command then fail("user %q: exec has no command", user_name) end
  if command:find("/", 1, true) then command = absolute(command, dir) end
  local api_version = str(e, "apiVersion")
  if api_version ~= "client.authentication.k8s.io/v1" and api_version ~= "client.authentication.k8s.io/v1beta1" then
    fail("user %q: exec plugin: apiVersion %s is not supported (use client.authentication.k8s.io/v1 or v1beta1)",
      user_name, tostring(api_version))
  end
  local args = {}
  for i, a in ipairs(e.args ~= yaml.null and e.args or {}) do args[i] = tostring(a) end
  local env = {}
  for _, item in ipairs(e.env ~= yaml.null and e.env or {}) do
    if type(item) == "table" and type(item.name) == "string" then env[item.name] = tostring(item.value or "") end
  end
  local mode = str(e, "interactiveMode")
  if api_version == "client.authentication.k8s.io/v1" and mode == nil then
    fail("user %q: interactiveMode must be specified for %s to use exec authentication plugin",
      user_name, api_version)
  end
  return {
    api_version = api_version, command = command, args = args, env = env,
    install_hint = str(e, "installHint"), provide_cluster_info = e.provideClusterInfo == true,
    interactive_mode = mode or "IfAvailable", user = user_name,
  }
end

local function find(merged, key, name, what)
  local found = merged[key][name]
  if not found then
    local where = #merged.files > 0 and table.concat(merged.files, ", ") or "no kubeconfig file"
    fail("%s %q does not exist (read %s)", what, name, where)
  end
  return found
end

-- The connection for one context: what the REST client needs and nothing else.
function M.resolve(opts)
  opts = opts or {}
  local merged = opts.merged or M.load(opts)
  local context_name = opts.context or merged.current_context
  local ctx = { entry = {}, dir = "." }
  if context_name then
    ctx = find(merged, "contexts", context_name, "context")
  elseif not (opts.cluster and opts.user) then
    if #merged.files == 0 then
      fail("no kubeconfig found (looked at %s) and no context given",
        getenv(opts, "KUBECONFIG") and "$KUBECONFIG" or "~/.kube/config")
    end
    fail("current-context is not set in %s and no context was given", table.concat(merged.files, ", "))
  end
  local cluster_name = opts.cluster or str(ctx.entry, "cluster")
  local user_name = opts.user or str(ctx.entry, "user")
  if not cluster_name then fail("context %q names no cluster", context_name) end
  local cluster = find(merged, "clusters", cluster_name, "cluster")
  local c = cluster.entry
  local server = str(c, "server")
  if not server then fail("cluster %q has no server", cluster_name) end
  server = server:gsub("/+$", "")
  if not server:match("^https?://") then server = "https://" .. server end

  local tls = {}
  if str(c, "certificate-authority-data") then
    tls.ca = pem_data(str(c, "certificate-authority-data"), ("cluster %q: certificate-authority-data"):format(cluster_name))
  elseif str(c, "certificate-authority") then
    tls.ca = absolute(str(c, "certificate-authority"), cluster.dir)
  end
  if c["insecure-skip-tls-verify"] == true then tls.insecure = true end

  local conn = {
    context = context_name, cluster = cluster_name, user = user_name, server = server,
    namespace = opts.namespace or str(ctx.entry, "namespace") or "default",
    proxy = str(c, "proxy-url"), tls_server_name = str(c, "tls-server-name"),
    tls = tls, files = merged.files,
  }

  if user_name then
    local user = merged.users[user_name]
    -- kubectl goes on without credentials when the context names a user nobody defines
    local u = user and user.entry or {}
    local dir = user and user.dir or "."
    if str(u, "client-certificate-data") then
      tls.cert = pem_data(str(u, "client-certificate-data"), ("user %q: client-certificate-data"):format(user_name))
    elseif str(u, "client-certificate") then
      tls.cert = absolute(str(u, "client-certificate"), dir)
    end
    if str(u, "client-key-data") then
      log.secret(str(u, "client-key-data"))
      tls.key = log.secret(pem_data(str(u, "client-key-data"), ("user %q: client-key-data"):format(user_name)))
    elseif str(u, "client-key") then
      tls.key = absolute(str(u, "client-key"), dir)
    end
    if (tls.cert == nil) ~= (tls.key == nil) then
      fail("user %q: client certificate and key must both be given", user_name)
    end
    if str(u, "token") then
      conn.token = log.secret(str(u, "token"))
    elseif str(u, "tokenFile") then
      conn.token_file = absolute(str(u, "tokenFile"), dir)
    end
    if str(u, "username") then
      conn.username = str(u, "username")
      conn.password = str(u, "password") and log.secret(str(u, "password")) or ""
    end
    if u.exec ~= nil and u.exec ~= yaml.null then conn.exec = exec_config(u.exec, dir, user_name) end
    if u["auth-provider"] ~= nil and u["auth-provider"] ~= yaml.null then
      fail("user %q: auth-provider plugins are not supported (kubectl removed them too); use an exec plugin",
        user_name)
    end
    if str(u, "as") or type(u["as-groups"]) == "table" then
      conn.impersonate = { user = str(u, "as"), groups = u["as-groups"], uid = str(u, "as-uid") }
    end
  end
  if conn.exec and conn.exec.provide_cluster_info then
    conn.exec.cluster = {
      server = server, ["certificate-authority-data"] = str(c, "certificate-authority-data")
        or (str(c, "certificate-authority") and M.base64_encode(read_file(tls.ca) or "")) or nil,
      ["insecure-skip-tls-verify"] = tls.insecure or nil, ["proxy-url"] = conn.proxy,
      ["tls-server-name"] = conn.tls_server_name,
    }
  end
  if next(tls) == nil then conn.tls = nil end
  return conn
end

-- ---- in-cluster ----

-- True when a pod's service-account environment is there.
function M.in_cluster_available(opts)
  opts = opts or {}
  local host = getenv(opts, "KUBERNETES_SERVICE_HOST")
  return host ~= nil and host ~= ""
end

-- The connection a pod's service account gives: the API at KUBERNETES_SERVICE_HOST:PORT,
-- the mounted CA, the token file (reread, as it rotates) and the pod's namespace.
function M.in_cluster(opts)
  opts = opts or {}
  local host = getenv(opts, "KUBERNETES_SERVICE_HOST")
  local port = getenv(opts, "KUBERNETES_SERVICE_PORT")
  if not host or host == "" or not port or port == "" then
    fail("not running in a cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be set")
  end
  local dir = opts.service_account_dir or SERVICE_ACCOUNT_DIR
  local token_file = dir .. "/token"
  if not exists(token_file) then fail("in-cluster: %s: no such file", token_file) end
  if host:find(":", 1, true) then host = "[" .. host .. "]" end -- IPv6
  local conn = {
    context = "in-cluster", server = ("https://%s:%s"):format(host, port),
    token_file = token_file, in_cluster = true,
  }
  if exists(dir .. "/ca.crt") then conn.tls = { ca = dir .. "/ca.crt" } end
  local ns = (read_file(dir .. "/namespace") or ""):gsub("%s+$", "")
  conn.namespace = opts.namespace or (ns ~= "" and ns) or "default"
  return conn
end

return M
