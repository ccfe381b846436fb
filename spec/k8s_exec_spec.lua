-- k8s_exec_spec.lua: k8s.exec against the simulated cluster (sim.exec answers pods/exec
-- over WebSocket, v5.channel.k8s.io): output, exit codes, stdin, how the pod is picked,
-- the API's refusals, timeouts, plan mode, a real local process behind the exec, and the
-- kubeconfig's TLS, client certificate and token through a real nginx in front.

package.path = "spec/support/?.lua;" .. package.path
local exec = require("exec")
local json = require("json")
local k8s = require("k8s")
local task = require("task")
local time = require("time")
local simtest = dofile("spec/support/sim.lua")

local function err_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return err
end

describe("k8s.exec", function()
  local cluster, s, c

  setup(function()
    cluster = simtest.start({ port = 0 })
    s = cluster.sim
    c = k8s.connect({ kubeconfig = cluster.kubeconfig }, { default = false })
    s:set_exec({ argv = { "echo", "hello" }, stdout = "hello\n" })
    s:set_exec({ prefix = { "both" }, stdout = "to stdout\n", stderr = "to stderr\n", code = 0 })
    s:set_exec({ prefix = { "fail" }, stdout = "partial\n", stderr = "line 1\nline 2\nerror: it broke\n", code = 3 })
    s:set_exec({ prefix = { "slow" }, delay = "5s", stdout = "late\n" })
    s:set_exec({ prefix = { "whoami" }, run = function(req)
      return { stdout = req.pod .. " " .. req.container .. " " .. (req.labels.app or "") .. "\n" }
    end })
    s:set_exec({ prefix = { "cat" }, ["local"] = true })
    s:set_exec({ prefix = { "migrate" }, ["local"] = {
      command = { "sh", "-c", 'echo "migrating $TARGET with $*"; echo warn >&2; exit ${EXIT:-0}', "migrate" },
      env = { TARGET = "db" },
    } })
  end)

  teardown(function()
    if cluster then cluster:close() end
  end)

  it("returns stdout, stderr and the exit code, and names the pod and container", function()
    local r = c:exec("deployment/api", { "echo", "hello" })
    assert.are.equal("hello\n", r.stdout)
    assert.are.equal("", r.stderr)
    assert.are.equal(0, r.code)
    assert.are.equal("api", r.container)
    local pod = s:get("pods", "multiship", r.pod)
    assert.are.equal("api", pod.metadata.labels.app)
    r = c:exec("deployment/api", { "both" })
    assert.are.same({ "to stdout\n", "to stderr\n", 0 }, { r.stdout, r.stderr, r.code })
  end)

  it("runs 20 execs at once, each returning its stdout and exit code 0", function()
    -- the simulator closes each stream and lets go of it at once; a collector that runs
    -- often (as in a busy playbook) must not cut off what is still queued for the client
    local pause = collectgarbage("setpause", 50)
    local ok, err = pcall(function()
      for _ = 1, 3 do
        local fns = {}
        for i = 1, 20 do
          fns[i] = function() return c:exec("deployment/api", { "echo", "hello" }, { check = true }) end
        end
        local results = { task.parallel(fns) }
        assert.are.equal(20, #results)
        for i = 1, 20 do
          assert.are.same({ "hello\n", "", 0 }, { results[i].stdout, results[i].stderr, results[i].code })
        end
      end
    end)
    collectgarbage("setpause", pause)
    assert(ok, err)
  end)

  it("returns a non-zero exit code, and raises with it and the end of stderr under check", function()
    local r = c:exec("deployment/api", { "fail", "now" })
    assert.are.equal(3, r.code)
    assert.are.equal("partial\n", r.stdout)
    local err = err_of(c.exec, c, "deployment/api", { "fail", "now" }, { check = true })
    assert.are.equal("k8s", err.kind)
    assert.are.equal("NonZeroExitCode", err.reason)
    assert.are.equal(3, err.exit_code)
    assert.matches("^exec deployment multiship/api: fail now exited with code 3 in api%-[%w-]+/api:\n", err.message)
    assert.matches("error: it broke$", err.message)
  end)

  it("fails like containerd for a command the image does not have", function()
    local r = c:exec("deployment/api", { "nosuch", "--flag" })
    assert.are.equal(126, r.code)
    assert.matches('exec: "nosuch": executable file not found in $PATH', r.stderr, 1, true)
  end)

  it("sends stdin and ends it (v5), byte for byte", function()
    local data = {}
    for i = 0, 255 do data[#data + 1] = string.char(i) end
    local input = string.rep(table.concat(data), 1000) -- 256 KB, every byte value
    local r = c:exec("deployment/api", { "cat" }, { stdin = input })
    assert.are.equal(0, r.code)
    assert.are.equal(#input, #r.stdout)
    assert.is_true(input == r.stdout)
    r = c:exec("deployment/api", { "cat" }, { stdin = "" })
    assert.are.equal("", r.stdout)
    local log = s.execs.log[#s.execs.log]
    assert.are.equal("v5.channel.k8s.io", log.protocol)
    assert.is_true(log.stdin)
  end)

  it("picks a running, ready pod of a deployment the way kubectl does; takes pods by name or object", function()
    local r = c:exec("deploy/api-blue", { "whoami" })
    local pod_name, container, app = r.stdout:match("^(%S+) (%S+) (%S+)\n$")
    assert.are.equal("api", app)
    assert.are.equal("api", container)
    local pod = s:get("pods", "multiship", pod_name)
    assert.are.equal("blue", pod.metadata.labels.colour)
    assert.are.equal("Running", pod.status.phase)
    assert.are.equal(pod_name, c:exec(pod_name, { "whoami" }).pod)
    assert.are.equal(pod_name, c:exec("pod/" .. pod_name, { "whoami" }).pod)
    assert.are.equal(pod_name, c:exec(pod, { "whoami" }).pod)
  end)

  it("raises the API's NotFound for a pod or deployment that does not exist", function()
    local err = err_of(c.exec, c, "pod/nope", { "echo", "hello" })
    assert.are.equal(404, err.status)
    assert.are.equal("NotFound", err.reason)
    assert.are.equal('exec pod multiship/nope: pods "nope" not found (NotFound 404)', err.message)
    err = err_of(c.exec, c, "deployment/nope", { "echo" })
    assert.are.equal(404, err.status)
    assert.matches('^exec deployment multiship/nope: deployments.apps "nope" not found', err.message)
  end)

  it("refuses a container the pod does not have", function()
    local err = err_of(c.exec, c, "deployment/api", { "echo" }, { container = "sidecar" })
    assert.are.equal("BadRequest", err.reason)
    assert.matches("container sidecar is not valid for pod api%-", err.message)
  end)

  it("gets the API server's 400 for a pod whose container has not started", function()
    s:set_timing({ pod_start = "1h" })
    local ok, err = pcall(function()
      assert.truthy(s:create({ apiVersion = "v1", kind = "Pod", metadata = { name = "starting", labels = { app = "x" } },
        spec = { containers = { { name = "main", image = "busybox:1" } } } }))
      return c:exec("pod/starting", { "echo", "hello" })
    end)
    s:set_timing({ pod_start = "50ms" })
    s:delete("pods", "multiship", "starting", { grace = 0 })
    assert.is_false(ok)
    assert.are.equal(400, err.status)
    assert.are.equal("BadRequest", err.reason)
    assert.matches("^exec pod multiship/starting: the server refused the WebSocket upgrade", err.message)
    -- what the API says, as a plain request sees it
    local status, _, body = s:request({ path = "/api/v1/namespaces/multiship/pods/nope/exec?command=x&stdout=true" })
    assert.are.equal(404, status)
    assert.matches('pods \\"nope\\" not found', body)
  end)

  it("gives up after the timeout and closes the stream", function()
    local t0 = time.monotonic()
    local err = err_of(c.exec, c, "deployment/api", { "slow" }, { timeout = 0.3 })
    local took = time.monotonic() - t0
    assert.are.equal("Timeout", err.reason)
    assert.matches("timed out after 0.3s running slow in api%-", err.message)
    assert.is_true(took < 2, "took " .. took)
  end)

  it("in plan mode records the exec and sends nothing, unless read_only", function()
    local before = #s.execs.log
    tug.plan.take()
    tug.plan.set(true)
    local ok, r = pcall(c.exec, c, "deployment/api", { "migrate", "up" }, { stdin = "abc" })
    local ok2, r2 = pcall(c.exec, c, "deployment/api", { "echo", "hello" }, { read_only = true })
    tug.plan.set(false)
    local records = tug.plan.take()
    assert.is_true(ok, tostring(r))
    assert.is_true(r.planned)
    assert.are.equal(0, r.code)
    assert.is_true(ok2, tostring(r2))
    assert.are.equal("hello\n", r2.stdout)
    assert.are.equal(1, #records)
    assert.are.equal("k8s", records[1].module)
    assert.matches("^exec pod multiship/api%-[%w-]+ %(api%): migrate up$", records[1].summary)
    assert.are.equal(before + 1, #s.execs.log) -- only the read_only one reached the cluster
  end)

  it("runs a real local process for a local rule: arguments, environment, stderr, exit code", function()
    local r = c:exec("deployment/api", { "migrate", "up", "--to", "v3" })
    assert.are.equal(0, r.code)
    assert.are.equal("migrating db with up --to v3\n", r.stdout)
    assert.are.equal("warn\n", r.stderr)
    local id = s:set_exec({ prefix = { "migrate" }, ["local"] = { command = { "sh", "-c", "exit 7" } } })
    r = c:exec("deployment/api", { "migrate", "up" })
    assert.are.equal(7, r.code)
    s:clear_exec(id)
  end)

  it("checks its arguments, naming them", function()
    assert.matches("argv must be a list of strings, not a command line", err_of(c.exec, c, "api", "echo hi"))
    assert.matches("argv must be a non%-empty list", err_of(c.exec, c, "api", {}))
    assert.matches("unknown option 'time_out'", err_of(c.exec, c, "api", { "x" }, { time_out = 1 }))
    assert.matches("stdin must be a string", err_of(c.exec, c, "api", { "x" }, { stdin = 5 }))
  end)

  it("is a module function on the default client", function()
    local previous = k8s.use(c)
    local r = k8s.exec("deployment/api", { "echo", "hello" })
    k8s.use(previous)
    assert.are.equal("hello\n", r.stdout)
  end)
end)

describe("exec rules from the scenario", function()
  local sim = require("sim")

  it("reads exec: rules from a scenario, and names a bad one", function()
    local s <close> = sim.start({ port = 0, timing = simtest.FAST, scenario = table.concat({
      "extends: default",
      "exec:",
      "  - argv: [pg_isready]",
      "    stdout: \"accepting connections\\n\"",
      "  - prefix: [pg_isready]",
      "    code: 2",
      "",
    }, "\n") })
    local c = k8s.connect({ server = s.url, namespace = "multiship" }, { default = false })
    local r = c:exec("deployment/api", { "pg_isready" })
    assert.are.same({ "accepting connections\n", 0 }, { r.stdout, r.code })
    assert.are.equal(2, c:exec("deployment/api", { "pg_isready", "-h", "db" }).code)
    local ok, err = pcall(sim.start, { serve = false, scenario = { extends = "default", exec = { { stdot = "x" } } } })
    assert.is_false(ok)
    assert.matches('sim: scenario exec%[1%]: unknown exec rule key "stdot"', tostring(err))
    ok, err = pcall(s.set_exec, s, { argv = { "x" }, stdout = "a", ["local"] = true })
    assert.is_false(ok)
    assert.matches("one of them", tostring(err))
  end)
end)

describe("k8s.exec through TLS, a client certificate and a token", function()
  local nginx = require("nginx")
  local cluster, proxy, dir

  local fixture = require("fixture")
  local read = fixture.read

  setup(function()
    cluster = simtest.start({ port = 0 })
    cluster.sim:set_exec({ argv = { "id" }, stdout = "uid=0(root)\n" })
    dir = cluster.dir
    fixture.client_pki(dir)
    local deny = [[return 401 '{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}';]]
    proxy = nginx.start({ tls = true, locations = table.concat({
      ("ssl_client_certificate %s/client-ca.crt;"):format(dir),
      "ssl_verify_client optional;",
      ("location ~ ^/(api|apis|version)(/|$) { default_type application/json; if ($ssl_client_verify != SUCCESS) { %s } "
        .. "if ($http_authorization != \"Bearer exec-token\") { %s } "
        .. "proxy_pass http://127.0.0.1:%d; proxy_http_version 1.1; "
        .. "proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection $http_connection; "
        .. "proxy_buffering off; proxy_read_timeout 3600s; }"):format(deny, deny, cluster.sim.port),
    }, "\n    ") })
  end)

  teardown(function()
    if proxy then proxy:stop() end
    if cluster then cluster:close() end
  end)

  local function kubeconfig(user)
    local kc = k8s.kubeconfig
    local doc = {
      apiVersion = "v1", kind = "Config", ["current-context"] = "t",
      clusters = { { name = "c", cluster = { server = proxy.url,
        ["certificate-authority-data"] = kc.base64_encode(read(proxy.ca)) } } },
      contexts = { { name = "t", context = { cluster = "c", user = "u", namespace = "multiship" } } },
      users = { { name = "u", user = user } },
    }
    local path = dir .. "/kc-" .. tostring(math.random(1e9))
    local f = assert(io.open(path, "w"))
    f:write(json.encode(doc))
    f:close()
    return path
  end

  it("runs the exec with the kubeconfig's CA data, client certificate data and token", function()
    local kc = k8s.kubeconfig
    local c = k8s.connect({ kubeconfig = kubeconfig({
      token = "exec-token",
      ["client-certificate-data"] = kc.base64_encode(read(dir .. "/client.crt")),
      ["client-key-data"] = kc.base64_encode(read(dir .. "/client.key")),
    }) }, { default = false })
    local r = c:exec("deployment/api", { "id" })
    assert.are.equal("uid=0(root)\n", r.stdout)
    assert.are.equal(0, r.code)
  end)

  it("reports the proxy's 401 when the client certificate is missing", function()
    local c = k8s.connect({ kubeconfig = kubeconfig({ token = "exec-token" }) }, { default = false })
    local err = err_of(c.exec, c, "pod/whatever", { "id" })
    assert.are.equal(401, err.status)
    assert.are.equal("Unauthorized", err.reason)
  end)
end)
