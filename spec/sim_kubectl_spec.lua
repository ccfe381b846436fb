-- The simulated cluster driven by the real kubectl (v1.32), an independent client: each
-- test runs kubectl commands and then checks the objects they left behind, not only
-- kubectl's exit code. The simulator runs in this process (exec.run yields, so it keeps
-- serving while kubectl waits), and once in a child `tug lua` process.

package.path = "spec/support/?.lua;" .. package.path
local json = require("json")
local task = require("task")
local simtest = dofile("spec/support/sim.lua")

local function lines_of(text)
  local out = {}
  for line in text:gmatch("[^\n]+") do out[#out + 1] = line end
  return out
end

local function columns(line)
  local out = {}
  for w in line:gmatch("%S+") do out[#out + 1] = w end
  return out
end

local function revision(obj)
  return obj.metadata.annotations and obj.metadata.annotations["deployment.kubernetes.io/revision"]
end

local function image_of(obj)
  return obj.spec.template.spec.containers[1].image
end

describe("sim with the real kubectl", function()
  local c, s

  setup(function()
    c = simtest.start({ port = 0 })
    s = c.sim
  end)

  teardown(function()
    if c then c:close() end
  end)

  local function k(...)
    return c:kubectl({ ... })
  end

  it("answers get for deployments, pods and services as a cluster would print them", function()
    local r = k("get", "deployments")
    assert.are.equal(0, r.code, r.stderr)
    local rows = lines_of(r.stdout)
    assert.are.same({ "NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE" }, columns(rows[1]))
    local by_name = {}
    for i = 2, #rows do
      local cols = columns(rows[i])
      by_name[cols[1]] = cols
    end
    assert.are.same({ "api", "4/4", "4", "4" }, { table.unpack(by_name.api, 1, 4) })
    assert.are.same({ "api-green", "0/0", "0", "0" }, { table.unpack(by_name["api-green"], 1, 4) })

    r = k("get", "pods", "-l", "app=api,colour=blue", "-o", "wide")
    assert.are.equal(0, r.code, r.stderr)
    rows = lines_of(r.stdout)
    assert.are.same({ "NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED", "NODE", "READINESS", "GATES" },
      columns(rows[1]))
    assert.are.equal(5, #rows) -- header + 4 pods
    for i = 2, #rows do
      local cols = columns(rows[i])
      assert.matches("^api%-blue%-[%w]+%-[%w]+$", cols[1])
      assert.are.equal("1/1", cols[2])
      assert.are.equal("Running", cols[3])
      assert.matches("^10%.244%.", cols[6])
    end

    local svc = c:kubectl_json({ "get", "services" })
    assert.are.equal("List", svc.kind)
    local names = {}
    for _, item in ipairs(svc.items) do
      names[item.metadata.name] = item
      assert.are.equal("Service", item.kind) -- kubectl fills in the kind of list items
    end
    assert.are.same({ app = "api", colour = "blue" }, names["api-service"].spec.selector)
    assert.matches("^10%.96%.", names["api-service"].spec.clusterIP)

    local d = c:kubectl_json({ "get", "deployment", "api" })
    local stored = s:get("deployments", "multiship", "api")
    assert.are.equal(stored.metadata.uid, d.metadata.uid)
    assert.are.equal(stored.metadata.resourceVersion, d.metadata.resourceVersion)
    assert.are.equal("1", revision(d))
    assert.are.equal(4, d.status.availableReplicas)

    r = k("get", "all")
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("deployment.apps/api%s", r.stdout)
    assert.matches("replicaset.apps/api%-", r.stdout)
    assert.matches("service/api%-service", r.stdout)
  end)

  it("rolls out with set image, reports history with change causes, and undoes to the previous and a chosen revision", function()
    local r = k("set", "image", "deployment/api", "api=multiship/api:v2.2.0")
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("deployment.apps/api image updated", r.stdout)
    r = k("annotate", "deployment/api", "kubernetes.io/change-cause=deploy v2.2.0", "--overwrite")
    assert.are.equal(0, r.code, r.stderr)

    r = k("rollout", "status", "deployment/api", "--timeout=30s")
    assert.are.equal(0, r.code, r.stderr)
    assert.matches('deployment "api" successfully rolled out\n$', r.stdout)
    local d = s:get("deployments", "multiship", "api")
    assert.are.equal("multiship/api:v2.2.0", image_of(d))
    assert.are.equal("2", revision(d))
    assert.are.equal(d.metadata.generation, d.status.observedGeneration)
    assert.are.same({ 4, 4, 4 }, { d.status.replicas, d.status.updatedReplicas, d.status.availableReplicas })
    for _, p in ipairs(s:list("pods", "multiship", { label = "app=api,track=main" })) do
      assert.are.equal("multiship/api:v2.2.0", p.spec.containers[1].image)
    end

    r = k("rollout", "history", "deployment/api")
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("REVISION%s+CHANGE%-CAUSE", r.stdout)
    assert.matches("\n1%s+initial release v2%.1%.0\n", r.stdout)
    assert.matches("\n2%s+deploy v2%.2%.0\n", r.stdout)

    -- undo: the revision-1 ReplicaSet comes back as revision 3
    r = k("rollout", "undo", "deployment/api")
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("deployment.apps/api rolled back", r.stdout)
    r = k("rollout", "status", "deployment/api", "--timeout=30s")
    assert.are.equal(0, r.code, r.stderr)
    d = s:get("deployments", "multiship", "api")
    assert.are.equal("multiship/api:v2.1.0", image_of(d))
    assert.are.equal("3", revision(d))
    assert.are.equal("initial release v2.1.0", d.metadata.annotations["kubernetes.io/change-cause"])
    local by_revision = {}
    for _, rs in ipairs(s:list("replicasets", "multiship", { label = "app=api,track=main" })) do
      by_revision[revision(rs)] = rs
    end
    assert.is_nil(by_revision["1"])
    assert.are.equal("1", by_revision["3"].metadata.annotations["deployment.kubernetes.io/revision-history"])
    assert.are.equal(4, by_revision["3"].spec.replicas)
    assert.are.equal(0, by_revision["2"].spec.replicas)

    r = k("rollout", "undo", "deployment/api", "--to-revision=2")
    assert.are.equal(0, r.code, r.stderr)
    r = k("rollout", "status", "deployment/api", "--timeout=30s")
    assert.are.equal(0, r.code, r.stderr)
    d = s:get("deployments", "multiship", "api")
    assert.are.equal("multiship/api:v2.2.0", image_of(d))
    assert.are.equal("4", revision(d))
    r = k("rollout", "history", "deployment/api")
    assert.matches("\n3%s+initial release v2%.1%.0\n", r.stdout)
    assert.matches("\n4%s+deploy v2%.2%.0\n", r.stdout)

    -- the current revision: kubectl sends nothing and says so
    local rv = d.metadata.resourceVersion
    r = k("rollout", "undo", "deployment/api", "--to-revision=4")
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("skipped rollback %(current template already matches revision 4%)", r.stdout)
    assert.are.equal(rv, s:get("deployments", "multiship", "api").metadata.resourceVersion)

    r = k("rollout", "undo", "deployment/api", "--to-revision=9")
    assert.are.equal(1, r.code)
    assert.matches("unable to find specified revision 9 in history", r.stderr)
  end)

  it("fails rollout status once the progress deadline passes", function()
    s:fault({ type = "never_ready", version = "v2.2.1-bad" })
    local path = c:file("slow.yaml", [[
apiVersion: apps/v1
kind: Deployment
metadata:
  name: slow
spec:
  replicas: 2
  progressDeadlineSeconds: 1
  selector: { matchLabels: { app: slow } }
  template:
    metadata: { labels: { app: slow } }
    spec:
      containers:
        - name: api
          image: multiship/api:v2.2.1-bad
]])
    local r = k("create", "-f", path)
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("deployment.apps/slow created", r.stdout)
    r = k("rollout", "status", "deployment/slow", "--timeout=30s")
    assert.are.equal(1, r.code)
    assert.matches('error: deployment "slow" exceeded its progress deadline', r.stderr)
    local d = s:get("deployments", "multiship", "slow")
    local progressing
    for _, cond in ipairs(d.status.conditions) do
      if cond.type == "Progressing" then progressing = cond end
    end
    assert.are.equal("False", progressing.status)
    assert.are.equal("ProgressDeadlineExceeded", progressing.reason)
    assert.matches('^ReplicaSet "slow%-%w+" has timed out progressing%.$', progressing.message)
    assert.is_nil(d.status.availableReplicas)
    s:clear_faults()
    r = k("delete", "deployment", "slow")
    assert.are.equal(0, r.code, r.stderr)
    assert.are.same({}, s:list("replicasets", "multiship", { label = "app=slow" }))
    assert.are.same({}, s:list("pods", "multiship", { label = "app=slow" }))
  end)

  it("scales through the scale subresource, and refuses a stale --current-replicas", function()
    local r = k("scale", "deployment/api-blue", "--replicas=6")
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal(6, s:get("deployments", "multiship", "api-blue").spec.replicas)
    assert.are.equal("complete", s:wait_rollout("multiship", "api-blue", 10))
    assert.are.equal(6, #s:list("pods", "multiship", { label = "app=api,colour=blue,track=stable" }))

    r = k("scale", "deployment/api-blue", "--current-replicas=4", "--replicas=2")
    assert.are.equal(1, r.code)
    assert.matches("Expected replicas to be 4, was 6", r.stderr)
    assert.are.equal(6, s:get("deployments", "multiship", "api-blue").spec.replicas)

    r = k("scale", "deployment/api-blue", "--current-replicas=6", "--replicas=4")
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal("complete", s:wait_rollout("multiship", "api-blue", 10))
    assert.are.equal(4, #s:list("pods", "multiship", { label = "app=api,colour=blue,track=stable" }))
  end)

  it("patches a Service's selector with a strategic, a merge and a JSON patch", function()
    local r = k("patch", "service", "api-service", "-p", '{"spec":{"selector":{"colour":"green"}}}')
    assert.are.equal(0, r.code, r.stderr)
    assert.are.same({ app = "api", colour = "green" }, s:get("services", "multiship", "api-service").spec.selector)

    r = k("patch", "service", "api-service", "--type=merge", "-p", '{"spec":{"selector":{"colour":"blue","tier":"web"}}}')
    assert.are.equal(0, r.code, r.stderr)
    assert.are.same({ app = "api", colour = "blue", tier = "web" }, s:get("services", "multiship", "api-service").spec.selector)

    r = k("patch", "service", "api-service", "--type=json", "-p", '[{"op":"remove","path":"/spec/selector/tier"}]')
    assert.are.equal(0, r.code, r.stderr)
    local svc = s:get("services", "multiship", "api-service")
    assert.are.same({ app = "api", colour = "blue" }, svc.spec.selector)
    assert.are.equal(80, svc.spec.ports[1].port)

    r = k("patch", "service", "api-service", "--type=json", "-p", '[{"op":"test","path":"/spec/type","value":"NodePort"}]')
    assert.are.equal(1, r.code)
    assert.matches("testing value /spec/type failed", r.stderr)
  end)

  it("creates and reads a Lease, and will not create it twice", function()
    local path = c:file("lease.yaml", [[
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata:
  name: deploy-lock
spec:
  holderIdentity: ci-run-42
  leaseDurationSeconds: 30
]])
    local r = k("create", "-f", path)
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("lease.coordination.k8s.io/deploy%-lock created", r.stdout)
    local lease = c:kubectl_json({ "get", "lease", "deploy-lock" })
    assert.are.equal("ci-run-42", lease.spec.holderIdentity)
    assert.are.equal(30, lease.spec.leaseDurationSeconds)
    assert.are.equal(s:get("leases", "multiship", "deploy-lock").metadata.uid, lease.metadata.uid)
    r = k("get", "leases")
    assert.matches("deploy%-lock%s+ci%-run%-42", r.stdout)
    r = k("create", "-f", path)
    assert.are.equal(1, r.code)
    assert.matches('AlreadyExists.*leases.coordination.k8s.io "deploy%-lock" already exists', r.stderr)
  end)

  it("shows container logs, their tail, and a crashed container's previous log", function()
    local pod = s:list("pods", "multiship", { label = "app=api,colour=blue" })[1]
    local r = k("logs", pod.metadata.name)
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("multiship%-api v2%.1%.0 starting", r.stdout)
    assert.matches("listening on :8080", r.stdout)
    r = k("logs", pod.metadata.name, "--tail=1")
    assert.are.equal("INFO  listening on :8080\n", r.stdout)

    r = k("logs", "deployment/api-blue", "--tail=1")
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal("INFO  listening on :8080\n", r.stdout)

    -- a crash loop: the previous container's log ends with its error
    s:fault({ type = "crash_loop", version = "v2.1.0" })
    local restarted = s:wait_for(function()
      local p = s:get("pods", "multiship", pod.metadata.name)
      return p.status.containerStatuses[1].restartCount >= 1
    end, 10)
    assert.truthy(restarted)
    r = k("logs", pod.metadata.name, "--previous")
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("exiting with code 1\n$", r.stdout)
    r = k("get", "pod", pod.metadata.name)
    assert.matches("0/1%s+%w+%s+[1-9]%d* %(%d+s ago%)", r.stdout) -- RESTARTS: "1 (0s ago)"
    s:clear_faults()
    assert.truthy(s:wait_for(function()
      local p = s:get("pods", "multiship", pod.metadata.name)
      return p.status.containerStatuses[1].ready
    end, 10))

    -- follow: lines arrive as the pod serves requests; the stream ends with the pod
    local follower = task.spawn(function() return c:kubectl({ "logs", "-f", pod.metadata.name }, { timeout = 10 }) end)
    task.sleep(0.3)
    local served = 0
    while served < 2 do
      local _, headers = s:request({ path = "/svc/multiship/api-service/api/orders" })
      if headers["x-served-by"] == pod.metadata.name then served = served + 1 end
    end
    task.sleep(0.3)
    assert.truthy(s:delete("pods", "multiship", pod.metadata.name))
    r = follower:wait()
    assert.are.equal(0, r.code, r.stderr)
    local _, count = r.stdout:gsub("GET /api/orders 200", "")
    assert.are.equal(2, count)

    r = k("logs", "no-such-pod")
    assert.are.equal(1, r.code)
    assert.matches('pods "no%-such%-pod" not found', r.stderr)
  end)
end)

describe("sim and kubectl exec", function()
  local c, s

  setup(function()
    c = simtest.start({ port = 0 })
    s = c.sim
    s:set_exec({ argv = { "echo", "hello" }, stdout = "hello\n" })
    s:set_exec({ prefix = { "fail" }, stdout = "half done\n", stderr = "it broke\n", code = 3 })
    s:set_exec({ prefix = { "cat" }, ["local"] = true })
  end)

  teardown(function()
    if c then c:close() end
  end)

  it("runs kubectl exec over WebSocket (v5.channel.k8s.io), never SPDY: output, exit codes, stdin", function()
    local before = s:state().execs
    local pod
    for _, p in ipairs(s:list("pods", "multiship", { label = "app=api,track=main" })) do
      if p.status.phase == "Running" then pod = p.metadata.name end
    end
    assert.truthy(pod)

    local r = c:kubectl({ "exec", pod, "--", "echo", "hello" })
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal("hello\n", r.stdout)

    r = c:kubectl({ "exec", "deployment/api", "--", "fail", "now" })
    assert.are.equal(3, r.code)
    assert.are.equal("half done\n", r.stdout)
    assert.matches("it broke\n", r.stderr, 1, true)
    assert.matches("command terminated with exit code 3", r.stderr, 1, true)

    local input = string.rep("through kubectl -i\n", 2000)
    r = c:kubectl({ "exec", "-i", "deployment/api", "--", "cat" }, { stdin = input })
    assert.are.equal(0, r.code, r.stderr)
    assert.is_true(r.stdout == input, "stdin did not come back whole")

    r = c:kubectl({ "exec", "deployment/api", "--", "nosuch" })
    assert.are.equal(126, r.code)
    assert.matches('exec: "nosuch": executable file not found in $PATH', r.stderr, 1, true)

    r = c:kubectl({ "exec", "no-such-pod", "--", "echo", "hello" })
    assert.are.equal(1, r.code)
    assert.matches('pods "no-such-pod" not found', r.stderr, 1, true)

    local after = s:state().execs
    assert.are.equal(before.websocket + 4, after.websocket)
    assert.are.equal(before.refused, after.refused) -- kubectl never fell back to SPDY
    local log = s.execs.log
    for i = #log - 3, #log do assert.are.equal("v5.channel.k8s.io", log[i].protocol) end
    assert.are.equal(pod, log[#log - 3].pod)
    assert.are.same({ "cat" }, log[#log - 1].argv)
    assert.is_true(log[#log - 1].stdin)
    -- deployment/api ran in one of the Deployment's pods
    assert.are.equal("api", s:get("pods", "multiship", log[#log - 2].pod).metadata.labels.app)
  end)
end)

describe("sim in a child process", function()
  it("serves kubectl from a `tug lua` child", function()
    local c = simtest.start_child()
    local ok, err = pcall(function()
      local r = c:kubectl({ "get", "deployments", "-o", "json" })
      assert.are.equal(0, r.code, r.stderr)
      local list = json.decode(r.stdout)
      assert.are.equal(4, #list.items)
      r = c:kubectl({ "set", "image", "deployment/api", "api=multiship/api:v2.2.0" })
      assert.are.equal(0, r.code, r.stderr)
      r = c:kubectl({ "rollout", "status", "deployment/api", "--timeout=30s" })
      assert.are.equal(0, r.code, r.stderr)
      local d = c:kubectl_json({ "get", "deployment", "api" })
      assert.are.equal("multiship/api:v2.2.0", d.spec.template.spec.containers[1].image)
      assert.are.equal("2", d.metadata.annotations["deployment.kubernetes.io/revision"])
    end)
    c:close()
    if not ok then error(err, 0) end
  end)
end)

describe("tug sim (sim.cli)", function()
  local child = require("child")
  local exec = require("exec")

  it("serves until interrupted, writes a kubeconfig kubectl uses, and exits 130", function()
    local dir = simtest.tmpdir()
    local kc = dir .. "/kubeconfig"
    local proc = exec.spawn({ child.tug, "lua", "-e", "os.exit(require('sim.cli')({ ... }))", "--port", "0",
      "--kubeconfig", kc }, { lines = true })
    local said = {}
    local ok, err = pcall(function()
      while not (said[#said] or ""):match("^Ctrl%-C") do
        local lines = task.timeout(20, proc.next_lines, proc)
        assert(lines, "tug sim exited early: " .. table.concat(said, "\n"))
        for _, e in ipairs(lines) do said[#said + 1] = e.line end
      end
      assert.matches("^simulated cluster serving at http://127%.0%.0%.1:%d+ %(namespace multiship%)$", said[1])
      local r = exec.run(require("kubectl").argv({ "--kubeconfig", kc, "get", "deployment", "api-blue", "-o", "json" }),
        { env = { KUBECACHEDIR = dir .. "/cache", HOME = dir, PATH = os.getenv("PATH") }, timeout = 30 })
      assert.are.equal(0, r.code, r.stderr)
      assert.are.equal(4, json.decode(r.stdout).status.availableReplicas)
    end)
    proc:kill("INT")
    local result = proc:wait()
    proc:close()
    exec.run({ "rm", "-rf", dir })
    if not ok then error(err, 0) end
    assert.are.equal(130, result.code)
  end)

  it("prints its usage for a bad argument and exits 2", function()
    local r = child.lua("os.exit(require('sim.cli')({ '--colour', 'blue' }))")
    assert.are.equal(2, r.code)
    assert.matches("'tug sim' has no argument %-%-colour", r.stderr)
    assert.matches("usage: tug sim", r.stderr)
    r = child.lua("os.exit(require('sim.cli')({ '--scenario', '/nonexistent.yaml', '--port', '0' }))")
    assert.are.equal(1, r.code)
    assert.matches("cannot read scenario /nonexistent.yaml", r.stderr)
  end)
end)
