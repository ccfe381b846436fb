-- k8s_kubeconfig_spec.lua: how the k8s module finds and authenticates to its cluster.
-- kubeconfig resolution is held to what the real kubectl resolves from the same files
-- (`kubectl config view --minify --raw`); credentials are exercised against the simulated
-- cluster behind a real nginx that terminates TLS (with a server CA and a client CA made
-- here by openssl) and checks them: /cert/... requires a verified client certificate,
-- /token/... and /api... a bearer token starting with "good-", /open/... nothing. Exec
-- credential plugins are small shell scripts that count their runs in a file.

package.path = "spec/support/?.lua;" .. package.path

local exec = require("exec")
local json = require("json")
local log = require("log")
local time = require("time")
local k8s = require("k8s")
local kubeconfig = require("k8s.kubeconfig")
local nginx = require("nginx")
local child = require("child")
local fixture = require("fixture")
local simtest = dofile("spec/support/sim.lua")

local dir      -- a private directory for the files written here
local cluster  -- the simulated cluster (in this process)
local proxy    -- nginx, TLS, in front of it

local function write(path, text, mode)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  if mode then exec.run({ "chmod", mode, path }) end
  return path
end

local read = fixture.read

-- A client CA and a client certificate it signed (what a cluster's CA gives a user).
local function client_pki()
  fixture.client_pki(dir, "/CN=alice/O=system:masters")
end

local UNAUTHORIZED = [[{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}]]

local function locations(sim_port)
  local pass = ("proxy_pass http://127.0.0.1:%d/; proxy_http_version 1.1; proxy_set_header Connection \"\"; "
    .. "proxy_buffering off; proxy_read_timeout 3600s;"):format(sim_port)
  local pass_api = pass:gsub("proxy_pass (http://[^;]-)/;", "proxy_pass %1;")
  local deny = ("return 401 '%s';"):format(UNAUTHORIZED)
  return table.concat({
    ("ssl_client_certificate %s/client-ca.crt;"):format(dir),
    "ssl_verify_client optional;",
    ("location /open/ { %s }"):format(pass),
    ("location /cert/ { default_type application/json; if ($ssl_client_verify != SUCCESS) { %s } %s }"):format(deny, pass),
    ("location /token/ { default_type application/json; if ($http_authorization !~ \"^Bearer good-\") { %s } %s }"):format(deny, pass),
    -- in-cluster clients talk to the root of the server
    ("location /api { default_type application/json; if ($http_authorization !~ \"^Bearer good-\") { %s } %s }"):format(deny, pass_api),
  }, "\n    ")
end

local function b64file(path) return kubeconfig.base64_encode(read(path)) end

-- A kubeconfig with one context "test" for cluster and user fields given as tables.
local function config(cluster_fields, user_fields, extra)
  local doc = {
    apiVersion = "v1", kind = "Config", ["current-context"] = "test",
    clusters = { { name = "c", cluster = cluster_fields } },
    contexts = { { name = "test", context = { cluster = "c", user = "u", namespace = "multiship" } } },
    users = { { name = "u", user = user_fields or {} } },
  }
  for k, v in pairs(extra or {}) do doc[k] = v end
  return json.encode(doc)
end

local counter = 0
local function kubeconfig_file(text)
  counter = counter + 1
  return write(("%s/kubeconfig-%d"):format(dir, counter), text)
end

-- Connects with a kubeconfig and reads a Deployment through it.
local function read_through(text, opts)
  opts = opts or {}
  local c = k8s.connect({ kubeconfig = kubeconfig_file(text), context = opts.context, retries = opts.retries },
    { default = false })
  return c:get("deployment", "api"), c
end

-- An exec credential plugin: a shell script that appends KUBERNETES_EXEC_INFO to
-- NAME.info, counts its runs in NAME.count and prints what `body` (shell) prints.
local function plugin(name, body)
  local path = ("%s/%s.sh"):format(dir, name)
  write(path, table.concat({
    "#!/bin/sh",
    ("n=$(cat %s/%s.count 2>/dev/null || echo 0); n=$((n+1)); echo $n > %s/%s.count"):format(dir, name, dir, name),
    ("printf '%%s\\n' \"$KUBERNETES_EXEC_INFO\" >> %s/%s.info"):format(dir, name),
    body, "",
  }, "\n"), "0755")
  return path
end

local function runs(name)
  local f = io.open(("%s/%s.count"):format(dir, name))
  if not f then return 0 end
  local n = tonumber(f:read("a"))
  f:close()
  return n
end

local function cred(api_version, status)
  return ("cat <<'EOF'\n%s\nEOF"):format(json.encode({ apiVersion = api_version, kind = "ExecCredential", status = status }))
end

describe("k8s kubeconfig", function()
  setup(function()
    dir = simtest.tmpdir()
    client_pki()
    cluster = simtest.start({ port = 0 })
    proxy = nginx.start({ tls = true, locations = locations(cluster.sim.port) })
  end)

  teardown(function()
    if proxy then proxy:stop() end
    if cluster then cluster:close() end
    if dir then exec.run({ "rm", "-rf", dir }) end
  end)

  describe("resolution, held to kubectl's", function()
    -- What kubectl makes of a KUBECONFIG: server, namespace, token or tokenFile, user.
    local function kubectl_view(env, args)
      local argv = require("kubectl").argv({ "config", "view", "--minify", "--raw", "-o", "json" })
      for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
      local r = exec.run(argv, { env = env, timeout = 30 })
      assert.are.equal(0, r.code, r.stderr)
      local v = json.decode(r.stdout)
      local ctx = v.contexts[1].context
      return {
        context = v["current-context"], server = v.clusters[1].cluster.server,
        namespace = ctx.namespace or "default", user = ctx.user,
        token = v.users[1] and v.users[1].user.token, token_file = v.users[1] and v.users[1].user.tokenFile,
      }
    end

    local function ours(env, opts)
      opts = opts or {}
      opts.getenv = function(name) return env[name] end
      local conn = kubeconfig.resolve(opts)
      local token_file = conn.token_file and conn.token_file:match("[^/]+$")
      return { context = conn.context, server = conn.server, namespace = conn.namespace, user = conn.user,
        token = conn.token, token_file = token_file }
    end

    local a, b
    setup(function()
      a = write(dir .. "/a.yaml", [[
apiVersion: v1
kind: Config
current-context: ctx-a
clusters:
- name: shared
  cluster: { server: "https://a.example:6443" }
contexts:
- name: ctx-a
  context: { cluster: shared, user: alice, namespace: from-a }
users:
- name: alice
  user: { token: token-a }
]])
      b = write(dir .. "/b.yaml", [[
apiVersion: v1
kind: Config
current-context: ctx-b
clusters:
- name: shared
  cluster: { server: "https://b.example:6443" }
- name: only-b
  cluster: { server: "https://onlyb.example" }
contexts:
- name: ctx-b
  context: { cluster: only-b, user: bob }
- name: ctx-a
  context: { cluster: only-b, user: bob, namespace: from-b }
users:
- name: bob
  user: { tokenFile: tok }
- name: alice
  user: { token: token-b }
]])
    end)

    it("merges KUBECONFIG files as kubectl does: the first to define a name or current-context wins", function()
      for _, case in ipairs({
        { env = { KUBECONFIG = a .. ":" .. b } },
        { env = { KUBECONFIG = b .. ":" .. a } },
        { env = { KUBECONFIG = b .. ":" .. a }, context = "ctx-a" },
        { env = { KUBECONFIG = a .. "::" .. dir .. "/missing.yaml:" .. b }, context = "ctx-b" },
      }) do
        local args = case.context and { "--context", case.context } or nil
        local want = kubectl_view(case.env, args)
        local got = ours(case.env, { context = case.context })
        assert.are.same(want, got)
      end
      local got = ours({ KUBECONFIG = a .. ":" .. b })
      assert.are.equal("https://a.example:6443", got.server) -- a's "shared", whole entry
      assert.are.equal("from-a", got.namespace)
    end)

    it("reads ~/.kube/config when KUBECONFIG is unset, and only the named file with kubeconfig", function()
      local home = dir .. "/home"
      exec.run({ "mkdir", "-p", home .. "/.kube" })
      write(home .. "/.kube/config", read(b))
      local want = kubectl_view({ HOME = home })
      assert.are.same(want, ours({ HOME = home }))
      assert.are.equal("https://onlyb.example", want.server)
      -- --kubeconfig wins over KUBECONFIG
      local got = ours({ KUBECONFIG = b }, { kubeconfig = a })
      assert.are.equal("https://a.example:6443", got.server)
      local ok, err = pcall(kubeconfig.resolve, { kubeconfig = dir .. "/nope.yaml" })
      assert.is_false(ok)
      assert.are.equal("k8s", err.kind)
      assert.matches("nope.yaml: no such file", err.message)
    end)

    it("resolves relative paths against the file that names them, as kubectl --flatten reads them", function()
      exec.run({ "mkdir", "-p", dir .. "/sub/certs" })
      write(dir .. "/sub/certs/ca.crt", read(proxy.ca))
      write(dir .. "/sub/token", "good-file-token\n")
      local path = write(dir .. "/sub/config", config(
        { server = "https://127.0.0.1:1", ["certificate-authority"] = "certs/ca.crt" }, { tokenFile = "token" }))
      local r = exec.run(require("kubectl").argv({ "config", "view", "--minify", "--raw", "--flatten", "-o", "json" }),
        { env = { KUBECONFIG = path }, timeout = 30 })
      assert.are.equal(0, r.code, r.stderr)
      local flat = json.decode(r.stdout)
      local conn = kubeconfig.resolve({ kubeconfig = path })
      assert.are.equal(flat.clusters[1].cluster["certificate-authority-data"], b64file(conn.tls.ca))
      assert.are.equal(dir .. "/sub/token", conn.token_file)
    end)

    it("explains what is missing: context, cluster, current-context, a broken field", function()
      local function err_of(text, opts)
        opts = opts or {}
        opts.kubeconfig = kubeconfig_file(text)
        local ok, err = pcall(kubeconfig.resolve, opts)
        assert.is_false(ok)
        assert.are.equal("k8s", err.kind)
        return err.message
      end
      assert.matches('context "prod" does not exist', err_of(config({ server = "https://x" }), { context = "prod" }))
      assert.matches("current%-context is not set", err_of(config({ server = "https://x" }, {}, { ["current-context"] = "" })))
      assert.matches("duplicate name", err_of(json.encode({ clusters = {
        { name = "c", cluster = { server = "https://x" } }, { name = "c", cluster = { server = "https://y" } } } })))
      assert.matches("certificate%-authority%-data is not valid base64",
        err_of(config({ server = "https://x", ["certificate-authority-data"] = "*not base64*" })))
      assert.matches("interactiveMode must be specified for client.authentication.k8s.io/v1",
        err_of(config({ server = "https://x" }, { exec = { apiVersion = "client.authentication.k8s.io/v1", command = "x" } })))
      assert.matches("client certificate and key must both be given",
        err_of(config({ server = "https://x" }, { ["client-certificate"] = "/x.crt" })))
      -- found by the fuzzer: a mapping where a string belongs was a Lua error
      assert.matches('"token" must be a string, not a mapping', err_of(config({ server = "https://x" }, { token = { a = 1 } })))
      assert.matches('"server" must be a string, not a list', err_of(config({ server = { "https://x" } })))
    end)
  end)

  describe("TLS", function()
    local function server(prefix) return proxy.url .. prefix end

    it("verifies the server with certificate-authority or certificate-authority-data", function()
      local d = read_through(config({ server = server("/open"), ["certificate-authority"] = proxy.ca }))
      assert.are.equal("api", d.metadata.name)
      d = read_through(config({ server = server("/open"), ["certificate-authority-data"] = b64file(proxy.ca) }))
      assert.are.equal("api", d.metadata.name)
    end)

    it("refuses a server its CA did not sign, unless insecure-skip-tls-verify", function()
      local ok, err = pcall(read_through, config({ server = server("/open"),
        ["certificate-authority"] = dir .. "/client-ca.crt" }))
      assert.is_false(ok)
      assert.are.equal("Transport", err.reason)
      assert.are.equal("tls", err.error)
      assert.matches("get deployment multiship/api", err.message)
      local d = read_through(config({ server = server("/open"), ["insecure-skip-tls-verify"] = true }))
      assert.are.equal("api", d.metadata.name)
    end)

    it("authenticates with a client certificate from files or from -data fields", function()
      local cl = { server = server("/cert"), ["certificate-authority"] = proxy.ca }
      local d = read_through(config(cl, { ["client-certificate"] = dir .. "/client.crt", ["client-key"] = dir .. "/client.key" }))
      assert.are.equal("api", d.metadata.name)
      d = read_through(config(cl, { ["client-certificate-data"] = b64file(dir .. "/client.crt"),
        ["client-key-data"] = b64file(dir .. "/client.key") }))
      assert.are.equal("api", d.metadata.name)
      -- the key never shows in output
      assert.are.equal("***", log.redact(read(dir .. "/client.key")))
      local ok, err = pcall(read_through, config(cl, {}))
      assert.is_false(ok)
      assert.are.equal(401, err.status)
      assert.are.equal("Unauthorized", err.reason)
    end)

    it("goes through proxy-url", function()
      local ok, err = pcall(read_through, config({ server = server("/open"), ["insecure-skip-tls-verify"] = true,
        ["proxy-url"] = "http://127.0.0.1:1" }), { retries = 0 })
      assert.is_false(ok)
      assert.are.equal("Transport", err.reason)
      assert.are.equal("connect", err.error)
    end)
  end)

  describe("tokens", function()
    local cl
    before_each(function() cl = { server = proxy.url .. "/token", ["certificate-authority"] = proxy.ca } end)

    it("sends token as a bearer token, registered as a secret", function()
      local d = read_through(config(cl, { token = "good-static-token-1234" }))
      assert.are.equal("api", d.metadata.name)
      assert.are.equal("x *** y", log.redact("x good-static-token-1234 y"))
      local ok, err = pcall(read_through, config(cl, { token = "bad-token" }))
      assert.is_false(ok)
      assert.are.equal(401, err.status)
      assert.matches("^get deployment multiship/api: discover the API %(/api%): Unauthorized", err.message)
    end)

    it("reads tokenFile, and reads it again after a 401 (tokens rotate)", function()
      local tf = write(dir .. "/rotating-token", "bad-old-token\n")
      local c = k8s.connect({ kubeconfig = kubeconfig_file(config(cl, { tokenFile = tf })) }, { default = false })
      local ok, err = pcall(c.get, c, "deployment", "api")
      assert.is_false(ok)
      assert.are.equal(401, err.status)
      write(tf, "good-rotated-token\n")
      assert.are.equal("api", c:get("deployment", "api").metadata.name)
    end)
  end)

  describe("exec credential plugins", function()
    local cl
    before_each(function() cl = { server = proxy.url .. "/token", ["certificate-authority"] = proxy.ca } end)

    local function exec_user(command, api_version, extra)
      local e = { apiVersion = api_version or "client.authentication.k8s.io/v1beta1", command = command }
      if (api_version or ""):match("/v1$") then e.interactiveMode = "Never" end
      for k, v in pairs(extra or {}) do e[k] = v end
      return { exec = e }
    end

    it("runs a v1beta1 plugin as kubectl does and caches its token until it expires", function()
      local p = plugin("beta", cred("client.authentication.k8s.io/v1beta1",
        { token = "good-beta", expirationTimestamp = "2099-01-01T00:00:00Z" }))
      local _, c = read_through(config(cl, exec_user(p, nil, { args = { "--flag", "x y" },
        env = { { name = "PLUGIN_MODE", value = "test" } } })))
      c:get("deployment", "api")
      c:list("pods")
      assert.are.equal(1, runs("beta"))
      local info = json.decode(read(dir .. "/beta.info"):match("^[^\n]+"))
      assert.are.same({ apiVersion = "client.authentication.k8s.io/v1beta1", kind = "ExecCredential",
        spec = { interactive = false } }, info)
      assert.are.equal("***", log.redact("good-beta"))
    end)

    it("runs a v1 plugin again once its credential has expired, with the cluster when asked", function()
      local p = plugin("v1", cred("client.authentication.k8s.io/v1",
        { token = "good-v1", expirationTimestamp = "2001-01-01T00:00:00Z" }))
      local _, c = read_through(config(cl, exec_user(p, "client.authentication.k8s.io/v1", { provideClusterInfo = true })))
      c:get("deployment", "api")
      assert.are.equal(4, runs("v1")) -- discovery (/api, /apis) and two gets: each found it expired
      local info = json.decode(read(dir .. "/v1.info"):match("^[^\n]+"))
      assert.are.equal("client.authentication.k8s.io/v1", info.apiVersion)
      assert.are.equal(proxy.url .. "/token", info.spec.cluster.server)
      assert.are.equal(b64file(proxy.ca), info.spec.cluster.certificateAuthorityData)
    end)

    it("runs the plugin again after a 401 and retries once", function()
      local p = plugin("refresh", [[
if [ "$n" = 1 ]; then tok=stale-1; else tok=good-$n; fi
printf '{"apiVersion":"client.authentication.k8s.io/v1beta1","kind":"ExecCredential","status":{"token":"%s"}}\n' "$tok"]])
      local d = read_through(config(cl, exec_user(p)))
      assert.are.equal("api", d.metadata.name)
      assert.are.equal(2, runs("refresh"))
    end)

    it("logs in with a client certificate a plugin returns", function()
      local p = plugin("certs", cred("client.authentication.k8s.io/v1beta1", {
        clientCertificateData = read(dir .. "/client.crt"), clientKeyData = read(dir .. "/client.key") }))
      local d = read_through(config({ server = proxy.url .. "/cert", ["certificate-authority"] = proxy.ca }, exec_user(p)))
      assert.are.equal("api", d.metadata.name)
    end)

    it("says why a plugin failed: exit code and stderr, not found with the install hint, bad output", function()
      local function failure(user)
        local ok, err = pcall(read_through, config(cl, user))
        assert.is_false(ok)
        assert.are.equal("k8s", err.kind)
        return err.message
      end
      local p = plugin("fails", "echo 'token expired: run aws sso login' >&2; exit 3")
      assert.matches("exec: executable .*fails.sh failed with exit code 3: token expired: run aws sso login",
        failure(exec_user(p)))
      assert.matches("executable /nonexistent/aws%-iam not found\n\nInstall the AWS CLI",
        failure(exec_user("/nonexistent/aws-iam", nil, { installHint = "Install the AWS CLI" })))
      p = plugin("wrongversion", cred("client.authentication.k8s.io/v1", { token = "good-x" }))
      assert.matches("exec plugin is configured to use API version client.authentication.k8s.io/v1beta1, "
        .. "plugin returned version client.authentication.k8s.io/v1", failure(exec_user(p)))
      p = plugin("nostatus", cred("client.authentication.k8s.io/v1beta1", nil))
      assert.matches("exec plugin didn't return a status field", failure(exec_user(p)))
      p = plugin("garbage", "echo not json")
      assert.matches("not an ExecCredential", failure(exec_user(p)))
    end)
  end)

  describe("in a pod", function()
    it("uses the service account when KUBERNETES_SERVICE_HOST is set and there is no kubeconfig", function()
      local sa = dir .. "/serviceaccount"
      exec.run({ "mkdir", "-p", sa, dir .. "/emptyhome" })
      write(sa .. "/token", "good-service-account-token\n")
      write(sa .. "/ca.crt", read(proxy.ca))
      write(sa .. "/namespace", "multiship\n")
      local port = proxy.url:match(":(%d+)$")
      local code = ([[
        local c = k8s.connect{ service_account_dir = %q }
        print(c.context, c.namespace, c.server)
        print(k8s.get("deployment", "api").metadata.name)
      ]]):format(sa)
      local r = child.lua(code, { env = { KUBERNETES_SERVICE_HOST = "127.0.0.1", KUBERNETES_SERVICE_PORT = port,
        HOME = dir .. "/emptyhome", KUBECONFIG = false } })
      assert.are.equal(0, r.code, r.stderr)
      assert.are.equal(("in-cluster\tmultiship\thttps://127.0.0.1:%s\napi\n"):format(port), r.stdout)
      -- with a kubeconfig present, the kubeconfig wins (as client-go's deferred loader)
      r = child.lua([[print(k8s.connect{}.server)]], { env = { KUBERNETES_SERVICE_HOST = "127.0.0.1",
        KUBERNETES_SERVICE_PORT = port, KUBECONFIG = cluster.kubeconfig } })
      assert.are.equal(0, r.code, r.stderr)
      assert.are.equal(cluster.url .. "\n", r.stdout)
    end)
  end)

  it("reads KUBECONFIG from the environment of a tug process", function()
    local r = child.lua([[print(k8s.get("deployment", "api").spec.replicas)]],
      { env = { KUBECONFIG = dir .. "/missing:" .. cluster.kubeconfig } })
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal("4\n", r.stdout)
  end)
end)
