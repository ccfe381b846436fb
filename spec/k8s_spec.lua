-- k8s_spec.lua: the Kubernetes module against the simulated cluster (modules/sim), which
-- runs in this process with fast timings; where a behaviour is kubectl's, the real
-- kubectl 1.32 acts on the same cluster and the two are compared. Failures are produced
-- the way they happen: the simulator's fault injection (API 5xx and 429 bursts, dropped
-- watch streams, an image version whose pods never become ready), Deployments that do not
-- exist, stale resourceVersions.

package.path = "spec/support/?.lua;" .. package.path

local json = require("json")
local log = require("log")
local task = require("task")
local time = require("time")
local k8s = require("k8s")
local simtest = dofile("spec/support/sim.lua")

local SCENARIO = {
  namespace = "shop",
  warm_start = true,
  images = {
    ["shop/web"] = { versions = { bad = { ready = false } } },
    ["multiship/api"] = { app = "multiship" }, -- its pods log a few lines as they start
  },
  objects = {
    { apiVersion = "v1", kind = "Namespace", metadata = { name = "shop" } },
    { apiVersion = "v1", kind = "Service", metadata = { name = "web", labels = { app = "web" } },
      spec = { selector = { app = "web", colour = "blue" }, ports = { { port = 80, targetPort = 8080 } } } },
    { apiVersion = "v1", kind = "ConfigMap", metadata = { name = "settings", labels = { app = "web" } },
      data = { mode = "fast" } },
  },
}

local cluster, s, c -- the simulated cluster, its simulator, a client connected to it
local logged = {}     -- what the module logged, as "LEVEL message"

local function was_logged(text)
  for _, line in ipairs(logged) do
    if line:find(text, 1, true) then return true end
  end
  return false
end

local serial = 0
local function fresh(prefix)
  serial = serial + 1
  return ("%s-%d"):format(prefix, serial)
end

local function deployment(name, o)
  o = o or {}
  return {
    apiVersion = "apps/v1", kind = "Deployment",
    metadata = { name = name, labels = { app = name }, annotations = o.annotations },
    spec = {
      replicas = o.replicas or 2, progressDeadlineSeconds = o.deadline,
      selector = { matchLabels = { app = name } },
      template = {
        metadata = { labels = { app = name } },
        spec = { containers = { { name = "web", image = o.image or "shop/web:" .. (o.version or "v1") } } },
      },
    },
  }
end

-- A Deployment, created and rolled out.
local function ready(prefix, o)
  local name = fresh(prefix or "web")
  c:create(deployment(name, o))
  c:rollout_status(name, { timeout = 10, quiet = true })
  return name
end

local function image_of(d) return d.spec.template.spec.containers[1].image end

local function error_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  assert.are.equal("table", type(err), tostring(err))
  return err
end

local function kubectl(...)
  return cluster:kubectl({ ... })
end

describe("k8s", function()
  setup(function()
    cluster = simtest.start({ port = 0, scenario = SCENARIO })
    s = cluster.sim
    c = k8s.connect({ server = cluster.url, namespace = "shop", backoff = 0.01 })
    log.set_sink(function(r) logged[#logged + 1] = r.level:upper() .. " " .. r.message end)
  end)

  teardown(function()
    log.set_sink(nil)
    if cluster then cluster:close() end
  end)

  after_each(function() s:clear_faults() end)

  describe("discovery", function()
    it("finds a kind by any name kubectl takes", function()
      for _, name in ipairs({ "deployment", "deployments", "deploy", "Deployment", "deployments.apps",
        "deployments.v1.apps", "apps/v1/Deployment" }) do
        local r = c:resource(name)
        assert.are.same({ "apps", "v1", "deployments", "Deployment", true },
          { r.group, r.version, r.resource, r.kind, r.namespaced })
      end
      assert.are.equal("deployments", c:resource({ apiVersion = "apps/v1", kind = "Deployment" }).resource)
      assert.are.same({ "", "pods", true }, { c:resource("po").group, c:resource("po").resource, c:resource("po").namespaced })
      assert.are.equal("coordination.k8s.io", c:resource("leases").group)
      assert.is_false(c:resource("ns").namespaced)
      assert.is_true(c:resource("deploy").subresources.scale)
      local err = error_of(c.get, c, "widgets", "x")
      assert.are.equal('get widgets shop/x: the server doesn\'t have a resource type "widgets"', err.message)
    end)

    it("reads legacy discovery (APIResourceList per group) to the same result", function()
      local legacy = k8s.connect({ server = cluster.url, namespace = "shop" }, { default = false })
      legacy.aggregated_discovery = false
      assert.is_nil(legacy:discovery().aggregated)
      for _, name in ipairs({ "deploy", "svc", "leases", "rs", "ns", "configmaps" }) do
        local a, b = c:resource(name), legacy:resource(name)
        assert.are.same({ a.group, a.version, a.resource, a.kind, a.namespaced },
          { b.group, b.version, b.resource, b.kind, b.namespaced })
      end
      assert.is_true(legacy:resource("deploy").subresources.scale)
    end)
  end)

  describe("generic verbs", function()
    it("gets and lists with label and field selectors", function()
      local name = ready("sel")
      assert.are.equal(name, c:get("deploy", name).metadata.name)
      assert.is_nil(c:get("deploy", "nope", { optional = true }))
      local pods = c:list("pods", { labels = { app = name } })
      assert.are.equal(2, #pods.items)
      assert.is_string(pods.metadata.resourceVersion)
      local one = c:list("pods", { labels = "app=" .. name, fields = { ["metadata.name"] = pods.items[1].metadata.name } })
      assert.are.equal(1, #one.items)
      assert.are.equal(0, #c:list("pods", { labels = { app = name, missing = true } }).items)
      local all = c:list("deployments", { all_namespaces = true })
      assert.is_true(#all.items >= 1)
    end)

    it("raises API errors with the Status message, reason, code and what was being done", function()
      local err = error_of(c.get, c, "deployment", "nope")
      assert.are.equal("k8s", err.kind)
      assert.are.equal(404, err.status)
      assert.are.equal("NotFound", err.reason)
      assert.are.equal('deployments.apps "nope" not found', err.api_message)
      assert.are.equal("get deployment shop/nope", err.what)
      assert.are.equal('get deployment shop/nope: deployments.apps "nope" not found (NotFound 404)', tostring(err))
      err = error_of(c.create, c, { apiVersion = "v1", kind = "ConfigMap", metadata = { name = "settings" } })
      assert.are.equal(409, err.status)
      assert.are.equal("AlreadyExists", err.reason)
      assert.matches("^create configmap shop/settings: ", err.message)
    end)

    it("creates, replaces (409 on a stale resourceVersion), patches three ways and deletes", function()
      local name = fresh("cm")
      local cm = c:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = name }, data = { a = "1" } })
      assert.are.equal("shop", cm.metadata.namespace)
      local stale = json.decode(json.encode(cm))
      cm.data.b = "2"
      cm = c:replace(cm)
      stale.data.c = "3"
      local err = error_of(c.replace, c, stale)
      assert.are.equal(409, err.status)
      assert.are.equal("Conflict", err.reason)
      cm = c:patch("configmap", name, { data = { a = json.null, m = "merge" } }, { type = "merge" })
      assert.are.same({ b = "2", m = "merge" }, cm.data)
      cm = c:patch("configmap", name, { { op = "add", path = "/data/j", value = "json" } }, { type = "json" })
      assert.are.equal("json", cm.data.j)
      cm = c:patch("configmap", name, { metadata = { labels = { s = "strategic" } } })
      assert.are.equal("strategic", cm.metadata.labels.s)
      c:delete("configmap", name)
      assert.is_nil(c:get("configmap", name, { optional = true }))
      assert.is_nil(c:delete("configmap", name, { optional = true }))
      assert.are.equal(404, error_of(c.delete, c, "configmap", name).status)
    end)

    it("sends server-side apply as apply-patch+yaml with a field manager (the simulator answers 415)", function()
      local err = error_of(c.patch, c, "configmap", "settings",
        { apiVersion = "v1", kind = "ConfigMap", metadata = { name = "settings" }, data = { mode = "slow" } },
        { type = "apply", field_manager = "tug-spec", force = true })
      assert.are.equal(415, err.status)
      assert.matches("application/apply%-patch%+yaml", err.api_message)
    end)

    it("update() starts again from a fresh read when a write gets 409", function()
      local name = fresh("cm")
      c:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = name }, data = { n = "0" } })
      local calls = 0
      local out = c:update("configmap", name, function(cm)
        calls = calls + 1
        if calls == 1 then -- someone else writes between our read and our write
          assert(s:patch("configmaps", "shop", name, "merge", { data = { other = "x" } }))
        end
        cm.data.n = tostring(tonumber(cm.data.n) + 1)
      end)
      assert.are.equal(2, calls)
      assert.are.same({ n = "1", other = "x" }, out.data)
    end)
  end)

  describe("retries", function()
    it("rides out a burst of 503s and 500s", function()
      local before = c.stats.retries
      s:fault({ type = "api_error", verb = "get", resource = "configmaps", status = 503, count = 2 })
      s:fault({ type = "api_error", verb = "get", resource = "configmaps", status = 500, count = 1 })
      assert.are.equal("fast", c:get("configmap", "settings").data.mode)
      assert.are.equal(3, c.stats.retries - before)
    end)

    it("waits as long as a 429's Retry-After says", function()
      s:fault({ type = "api_error", verb = "list", resource = "configmaps", status = 429, count = 1 })
      local t0 = time.monotonic()
      c:list("configmaps")
      assert.is_true(time.monotonic() - t0 >= 0.95)
    end)

    it("gives up after its retries with the last error", function()
      local few = k8s.connect({ server = cluster.url, namespace = "shop", retries = 2, backoff = 0.01 }, { default = false })
      few:discovery()
      local n = few.stats.requests
      s:fault({ type = "api_error", verb = "get", resource = "configmaps", status = 500 })
      local err = error_of(few.get, few, "configmap", "settings")
      assert.are.equal(500, err.status)
      assert.are.equal("InternalError", err.reason)
      assert.are.equal(3, few.stats.requests - n)
    end)

    it("reports a server that cannot be reached", function()
      local down = k8s.connect({ server = "http://127.0.0.1:1", retries = 1, backoff = 0.01 }, { default = false })
      local err = error_of(down.get, down, "deploy", "api")
      assert.are.equal("Transport", err.reason)
      assert.are.equal("connect", err.error)
      assert.matches("^get deploy default/api: discover the API", err.message)
    end)
  end)

  describe("watch", function()
    it("hands over the listed objects, then changes, and stops when fn returns false", function()
      local name = fresh("cm")
      local seen = {}
      local watcher = task.spawn(function()
        return c:watch("configmaps", { labels = { watched = name } }, function(t, obj)
          seen[#seen + 1] = t .. " " .. obj.metadata.name .. " " .. tostring(obj.data and obj.data.v)
          if t == "DELETED" then return false end
        end)
      end)
      c:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = name, labels = { watched = name } }, data = { v = "1" } })
      c:patch("configmap", name, { data = { v = "2" } }, { type = "merge" })
      c:delete("configmap", name)
      local stopped, t, obj = watcher:wait()
      assert.is_true(stopped)
      assert.are.equal("DELETED", t)
      assert.are.equal(name, obj.metadata.name)
      assert.are.same({ "ADDED " .. name .. " 1", "MODIFIED " .. name .. " 2", "DELETED " .. name .. " 2" }, seen)
    end)

    it("returns false when its timeout passes", function()
      local t0 = time.monotonic()
      local stopped = c:watch("configmaps", { name = "settings", timeout = 0.3 }, function() end)
      assert.is_false(stopped)
      assert.is_true(time.monotonic() - t0 < 2)
    end)

    it("resumes after dropped streams without losing or repeating an event", function()
      local name = fresh("cm")
      c:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = name }, data = { v = "0" } })
      s:fault({ type = "watch_drop", resource = "configmaps", after = "100ms" })
      local values = {}
      local watcher = task.spawn(function()
        return c:watch("configmaps", { name = name, send_initial = false }, function(_, obj)
          values[#values + 1] = tonumber(obj.data.v)
          if obj.data.v == "12" then return false end
        end)
      end)
      for i = 1, 12 do
        task.sleep(0.04)
        c:patch("configmap", name, { data = { v = tostring(i) } }, { type = "merge" })
      end
      assert.is_true(task.timeout(5, watcher.wait, watcher))
      assert.are.same({ 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 }, values)
    end)

    it("lists again when its position has expired (410 Gone)", function()
      local small = simtest.start({ port = 0, scenario = { namespace = "shop", watch_cache = 3,
        objects = { { apiVersion = "v1", kind = "Namespace", metadata = { name = "shop" } } } } })
      local sc = k8s.connect({ server = small.url, namespace = "shop" }, { default = false })
      local ok, err = pcall(function()
        local first = sc:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "a" }, data = { v = "1" } })
        for i = 2, 8 do sc:patch("configmap", "a", { data = { v = tostring(i) } }, { type = "merge" }) end
        local got
        local stopped = sc:watch("configmaps", { resource_version = first.metadata.resourceVersion, timeout = 5 },
          function(t, obj)
            got = t .. " " .. obj.data.v
            return false
          end)
        assert.is_true(stopped)
        assert.are.equal("ADDED 8", got) -- the relisted current state
      end)
      small:close()
      assert(ok, err)
    end)
  end)

  describe("rollouts", function()
    it("sets an image and waits for the rollout as kubectl rollout status does", function()
      local name = ready("img")
      local d = c:set_image(name, { web = "shop/web:v2" }, { change_cause = "to v2" })
      assert.are.equal("shop/web:v2", image_of(d))
      local progress = {}
      local r = c:rollout_status(name, { timeout = 10, quiet = true,
        on_progress = function(m) progress[#progress + 1] = m end })
      assert.are.equal(('deployment "%s" successfully rolled out'):format(name), r.message)
      assert.are.equal(2, r.revision)
      assert.is_true(#progress >= 1)
      assert.is_false(was_logged(progress[1])) -- quiet
      assert.are.equal(1, progress[1]:find('Waiting for deployment "' .. name .. '" rollout to finish: ', 1, true))
      -- kubectl agrees, on the same cluster
      local k = kubectl("rollout", "status", "deployment/" .. name, "--timeout=10s")
      assert.are.equal(0, k.code, k.stderr)
      assert.are.equal(r.message, k.stdout:match("([^\n]+)\n$"))
      local err = error_of(c.set_image, c, name, { sidecar = "x:1" })
      assert.are.equal(('set image deployment shop/%s: unable to find container named "sidecar"'):format(name), err.message)
    end)

    it("fails with ProgressDeadlineExceeded like kubectl when the new pods never become ready", function()
      local name = ready("stuck")
      -- a short deadline only now: condition times have whole seconds, so a 1 s deadline
      -- could expire during the first rollout already
      c:patch("deployment", name, { spec = { progressDeadlineSeconds = 1 } }, { type = "merge" })
      c:set_image(name, { web = "shop/web:bad" })
      local err = error_of(c.rollout_status, c, name, { timeout = 10, quiet = true })
      assert.are.equal("ProgressDeadlineExceeded", err.reason)
      local k = kubectl("rollout", "status", "deployment/" .. name, "--timeout=10s")
      assert.are.equal(1, k.code)
      assert.are.equal(k.stderr:match("^error: ([^\n]+)"), err.message:match("^rollout status deployment shop/[%w-]+: (.*)$"))
    end)

    it("times out, saying how far the rollout got", function()
      local name = ready("slow", { deadline = 600 })
      c:set_image(name, { web = "shop/web:bad" })
      local t0 = time.monotonic()
      local err = error_of(c.rollout_status, c, name, { timeout = "400ms", quiet = true })
      assert.are.equal("Timeout", err.reason)
      assert.matches("timed out waiting for the condition %(Waiting for deployment", err.message)
      assert.is_true(time.monotonic() - t0 < 2)
    end)

    it("fails for a Deployment that does not exist", function()
      local err = error_of(c.rollout_status, c, "nope", { timeout = 5 })
      assert.are.equal(404, err.status)
      assert.are.equal('rollout status deployment shop/nope: deployments.apps "nope" not found (NotFound 404)', err.message)
    end)

    it("carries on through dropped watches and API 5xx bursts", function()
      local name = ready("rough")
      s:fault({ type = "watch_drop", resource = "deployments", after = "50ms" })
      s:fault({ type = "api_error", verb = "watch", resource = "deployments", status = 503, count = 2 })
      s:fault({ type = "api_error", verb = "list", resource = "deployments", status = 500, count = 2 })
      c:set_image(name, { web = "shop/web:v2" })
      local r = c:rollout_status(name, { timeout = 10, quiet = true })
      assert.are.equal(2, r.revision)
      assert.are.equal(2, r.deployment.status.availableReplicas)
    end)

    it("awaits many rollouts at once on one shared watch", function()
      local names = {}
      for i = 1, 8 do names[i] = ready("many") end
      local fns = {}
      for i, name in ipairs(names) do
        fns[i] = function()
          c:set_image(name, { web = "shop/web:v" .. (i + 1) })
          return c:rollout_status(name, { timeout = 20, quiet = true }).message
        end
      end
      local results = { task.parallel(fns) }
      for i, name in ipairs(names) do
        assert.are.equal(('deployment "%s" successfully rolled out'):format(name), results[i])
        assert.are.equal("shop/web:v" .. (i + 1), image_of(c:get("deploy", name)))
      end
      assert.is_nil(next(c.hubs)) -- the shared watch ends with its last waiter
    end)

    it("lists revisions as kubectl rollout history does", function()
      local name = ready("hist", { annotations = { ["kubernetes.io/change-cause"] = "first" } })
      c:set_image(name, { web = "shop/web:v2" }, { change_cause = "second" })
      c:rollout_status(name, { timeout = 10, quiet = true })
      c:set_image(name, { web = "shop/web:v3" })
      c:rollout_status(name, { timeout = 10, quiet = true })
      local h = c:rollout_history(name)
      assert.are.same({ 1, 2, 3 }, { h[1].revision, h[2].revision, h[3].revision })
      assert.are.same({ "first", "second", "second" }, { h[1].change_cause, h[2].change_cause, h[3].change_cause })
      assert.are.equal("shop/web:v3", h[3].template.spec.containers[1].image)
      local k = kubectl("rollout", "history", "deployment/" .. name)
      assert.are.equal(0, k.code, k.stderr)
      local rows = {}
      for line in k.stdout:gmatch("[^\n]+") do
        local rev, cause = line:match("^(%d+)%s+(.-)%s*$")
        if rev then rows[#rows + 1] = rev .. " " .. cause end
      end
      local ours = {}
      for i, e in ipairs(h) do ours[i] = e.revision .. " " .. (e.change_cause or "<none>") end
      assert.are.same(rows, ours)
    end)

    it("undoes to the previous revision or a given one, and skips when there is nothing to undo", function()
      local name = ready("undo")
      c:set_image(name, { web = "shop/web:v2" })
      c:rollout_status(name, { timeout = 10, quiet = true })
      local u = c:rollout_undo(name)
      assert.are.same({ true, 1, "rolled back" }, { u.rolled_back, u.revision, u.message })
      local r = c:rollout_status(name, { timeout = 10, quiet = true })
      assert.are.equal(3, r.revision) -- the controller renumbers revision 1 as 3
      assert.are.equal("shop/web:v1", image_of(r.deployment))
      assert.is_nil(r.deployment.spec.template.metadata.labels["pod-template-hash"])
      u = c:rollout_undo(name, { to_revision = 2 })
      assert.is_true(u.rolled_back)
      assert.are.equal("shop/web:v2", image_of(c:rollout_status(name, { timeout = 10, quiet = true }).deployment))
      u = c:rollout_undo(name, { to_revision = 4 })
      assert.is_true(u.skipped)
      assert.are.equal("skipped rollback (current template already matches revision 4)", u.message)
      assert.is_true(was_logged("WARN skipped rollback (current template already matches revision 4)"))
      local err = error_of(c.rollout_undo, c, name, { to_revision = 99 })
      assert.are.equal(("rollout undo deployment shop/%s: unable to find specified revision 99 in history"):format(name),
        err.message)
      local fresh_one = ready("undo")
      err = error_of(c.rollout_undo, c, fresh_one)
      assert.is_truthy(err.message:find('no rollout history found for deployment "' .. fresh_one .. '"', 1, true))
    end)

    it("agrees with kubectl: tug's image change is in kubectl's history, kubectl's undo is what tug sees", function()
      local name = ready("cross")
      c:set_image(name, { web = "shop/web:v2" }, { change_cause = "tug deployed v2" })
      c:rollout_status(name, { timeout = 10, quiet = true })
      local k = kubectl("rollout", "history", "deployment/" .. name)
      assert.are.equal(0, k.code, k.stderr)
      assert.matches("\n2%s+tug deployed v2", k.stdout)
      k = kubectl("rollout", "undo", "deployment/" .. name)
      assert.are.equal(0, k.code, k.stderr)
      assert.matches("rolled back", k.stdout)
      local r = c:rollout_status(name, { timeout = 10, quiet = true })
      assert.are.equal("shop/web:v1", image_of(r.deployment))
      assert.are.equal(3, r.revision)
      local h = c:rollout_history(name)
      assert.are.same({ 2, 3 }, { h[1].revision, h[2].revision })
      -- and kubectl's undo back again skips exactly when tug's would
      local u = c:rollout_undo(name, { to_revision = 3 })
      k = kubectl("rollout", "undo", "deployment/" .. name, "--to-revision=3")
      assert.is_true(u.skipped)
      assert.matches(u.message, k.stdout, 1, true)
    end)

    it("restarts with kubectl's restartedAt annotation and a new revision", function()
      local name = ready("restart")
      local d = c:restart(name)
      local at = d.spec.template.metadata.annotations["kubectl.kubernetes.io/restartedAt"]
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$", at)
      assert.are.equal(2, c:rollout_status(name, { timeout = 10, quiet = true }).revision)
      c:patch("deploy", name, { spec = { paused = true } }, { type = "merge" })
      local err = error_of(c.restart, c, name)
      assert.are.equal("can't restart paused deployment (run rollout resume first)", err.message:match(": (.*)$"))
      err = error_of(c.rollout_undo, c, name)
      assert.are.equal("Paused", err.reason)
    end)

    it("scales through the scale subresource, checking the current count when asked", function()
      local name = ready("scale")
      local sc = c:scale(name, 3)
      assert.are.equal("Scale", sc.kind)
      assert.are.equal(3, sc.spec.replicas)
      c:rollout_status(name, { timeout = 10, quiet = true })
      local k = cluster:kubectl_json({ "get", "deployment", name })
      assert.are.equal(3, k.status.readyReplicas)
      local err = error_of(c.scale, c, name, 1, { current_replicas = 2 })
      assert.are.equal(("scale deployment shop/%s: Expected replicas to be 2, was 3"):format(name), err.message)
      assert.are.equal(1, c:scale(name, 1, { current_replicas = 3 }).spec.replicas)
    end)

    it("patches a service selector key by key, or exactly", function()
      local svc = c:patch_service_selector("web", { colour = "green" })
      assert.are.same({ app = "web", colour = "green" }, svc.spec.selector)
      assert.are.same(svc.spec.selector, cluster:kubectl_json({ "get", "service", "web" }).spec.selector)
      svc = c:patch_service_selector("web", { app = "web", track = "canary" }, { exact = true })
      assert.are.same({ app = "web", track = "canary" }, svc.spec.selector)
      c:patch_service_selector("web", { app = "web", colour = "blue" }, { exact = true })
      assert.are.equal(404, error_of(c.patch_service_selector, c, "nope", { a = "b" }).status)
    end)
  end)

  describe("wait", function()
    it("waits for a condition, a jsonpath value, a function, or deletion", function()
      local name = ready("wait")
      local d = c:wait("deployment/" .. name, "condition=Available", 5)
      assert.are.equal(name, d.metadata.name)
      assert.are.equal(name, c:wait("deploy/" .. name, "Available=True", "5s").metadata.name)
      assert.are.equal(name, c:wait(d, "jsonpath={.status.readyReplicas}=2", 5).metadata.name)
      c:scale(name, 3)
      d = c:wait("deployment/" .. name, function(obj) return obj.status.readyReplicas == 3 end, 5)
      assert.are.equal(3, d.status.readyReplicas)
      local waiter = task.spawn(function() return c:wait("deployment/" .. name, "delete", 5) end)
      c:delete("deployment", name)
      assert.is_nil(waiter:wait())
    end)

    it("times out as kubectl wait does", function()
      local err = error_of(c.wait, c, "configmap/settings", "condition=Ready", 0.2)
      assert.are.equal("Timeout", err.reason)
      assert.matches("timed out waiting for the condition on configmaps/settings", err.message)
    end)
  end)

  describe("logs", function()
    it("reads a pod's logs and every pod's of a Deployment, with tail and grep", function()
      local name = ready("logs", { image = "multiship/api:v2.1.0" })
      local pods = c:list("pods", { labels = { app = name } }).items
      table.sort(pods, function(a, b) return a.metadata.name < b.metadata.name end)
      local pod = pods[1].metadata.name
      local all = c:logs(pod)
      assert.is_true(#all.lines >= 2)
      assert.are.equal(s:logs("shop", pod, {}), all.text .. "\n")
      local tail = c:logs("pod/" .. pod, { tail = 1 })
      assert.are.equal(1, #tail.lines)
      assert.are.equal(all.lines[#all.lines].text, tail.lines[1].text)
      local dep = c:logs("deployment/" .. name, { tail = 1 })
      assert.are.equal(2, dep.pods)
      assert.are.same({ pods[1].metadata.name, pods[2].metadata.name }, { dep.lines[1].pod, dep.lines[2].pod })
      assert.are.equal(1, dep.text:find("[pod/" .. pods[1].metadata.name .. "/web] ", 1, true))
      local word = all.lines[1].text:match("%a%a%a+")
      local grep = c:logs("deployment/" .. name, { grep = word })
      assert.is_true(#grep.lines >= 2)
      for _, l in ipairs(grep.lines) do assert.matches(word, l.text) end
      assert.are.equal(0, #c:logs("deployment/" .. name, { grep = "no such line here" }).lines)
      assert.are.equal(0, #c:logs(pod, { since = "1ms" }).lines)
      assert.are.equal(#all.lines, #c:logs(pod, { since = "1h" }).lines)
      local err = error_of(c.logs, c, "pod/nope")
      assert.are.equal(404, err.status)
    end)
  end)

  describe("plan mode", function()
    it("records writes with the change they would make and sends none", function()
      local name = ready("plan")
      local before = c:get("deploy", name)
      tug.plan.take()
      tug.plan.set(true)
      local ok, err = pcall(function()
        local d = c:set_image(name, { web = "shop/web:v9" })
        assert.are.equal("shop/web:v9", image_of(d))
        c:scale(name, 5)
        c:patch_service_selector("web", { colour = "green" })
        c:delete("configmap", "settings")
        c:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "planned" }, data = { a = "1" } })
      end)
      tug.plan.set(false)
      assert(ok, err)
      local records = tug.plan.take()
      local summaries, details = {}, {}
      for i, r in ipairs(records) do
        summaries[i] = r.summary
        details[i] = r.detail
        assert.are.equal("k8s", r.module)
      end
      assert.are.same({
        "patch deployment shop/" .. name, "patch deployment shop/" .. name .. " (scale)",
        "patch service shop/web", "delete configmap shop/settings", "create configmap shop/planned",
      }, summaries)
      assert.are.equal('~ spec.template.spec.containers[web].image: "shop/web:v1" -> "shop/web:v9"', details[1])
      assert.are.equal("~ spec.replicas: 2 -> 5", details[2])
      assert.are.equal('~ spec.selector.colour: "blue" -> "green"', details[3])
      assert.matches('%+ data: {"a":"1"}', details[5])
      assert.are.equal(before.metadata.resourceVersion, c:get("deploy", name).metadata.resourceVersion)
      assert.are.equal("blue", c:get("svc", "web").spec.selector.colour)
      assert.is_not_nil(c:get("configmap", "settings"))
    end)
  end)

  describe("leases", function()
    it("is held by one holder at a time, renewed while held, free once released", function()
      local a = c:lease_acquire("deploy-lock", { holder = "a", ttl = 1 })
      assert.is_not_nil(a)
      local b, info, why = c:lease_acquire("deploy-lock", { holder = "b", ttl = 1 })
      assert.is_nil(b)
      assert.are.equal("held", why)
      assert.are.equal("a", info.holder)
      local first = c:get("lease", "deploy-lock").spec.renewTime
      task.sleep(1.3) -- past the ttl: only renewals keep it
      assert.is_true(a.renewals >= 2)
      assert.are_not.equal(first, c:get("lease", "deploy-lock").spec.renewTime)
      assert.is_nil((c:lease_acquire("deploy-lock", { holder = "b", ttl = 1 })))
      assert.is_true(a:release())
      assert.is_nil(c:lease_inspect("deploy-lock"))
      b = c:lease_acquire("deploy-lock", { holder = "b", ttl = 1 })
      assert.is_not_nil(b)
      assert.are.equal(1, c:get("lease", "deploy-lock").spec.leaseTransitions)
      b:release()
    end)

    it("is taken over once expired, and the old holder learns it lost it", function()
      local lost = false
      local a = c:lease_acquire("expiring", { holder = "a", ttl = 1, renew = false })
      a.on_lost = function() lost = true end
      task.sleep(1.2)
      local b = c:lease_acquire("expiring", { holder = "b", ttl = 5 })
      assert.is_not_nil(b)
      assert.is_false(a:renew())
      a:lose("another holder took it")
      assert.is_true(lost)
      assert.is_true(was_logged("ERROR lease lost: another holder took it"))
      assert.is_false(a:release())
      assert.are.equal("b", c:lease_inspect("expiring").holder)
      b:release()
    end)

    it("lets exactly one of many contenders win", function()
      local fns = {}
      for i = 1, 6 do
        fns[i] = function() return c:lease_acquire("contended", { holder = "h" .. i, ttl = 5, renew = false }) or false end
      end
      local got = { task.parallel(fns) }
      local winners = 0
      for _, l in ipairs(got) do if l then winners = winners + 1 end end
      assert.are.equal(1, winners)
    end)

    it("serves the engine as a lock backend", function()
      local backend = k8s.lock_backend
      local env = { name = "test", kubernetes = { server = cluster.url, namespace = "shop", lock_ttl = 5 } }
      local req = { env = "test", name = "deploy", run_id = "run-1", playbook = "blue-green", environment = env }
      local h = backend.acquire(req)
      assert.is_not_nil(h)
      local none, holder, why = backend.acquire({ env = "test", name = "deploy", run_id = "run-2", playbook = "canary",
        environment = env })
      assert.is_nil(none)
      assert.are.equal("held", why)
      assert.are.same({ "run-1", "blue-green", tug.sys.pid() }, { holder.run_id, holder.playbook, holder.pid })
      assert.are.equal("run-1", c:get("lease", "tug-lock-test-deploy").spec.holderIdentity)
      backend.release(h)
      assert.is_nil(c:lease_inspect("tug-lock-test-deploy"))
      -- a holder on this host whose process is gone: "dead", and --break-lock takes it
      local gone = exec.run({ "true" }).pid
      c:create({ apiVersion = "coordination.k8s.io/v1", kind = "Lease",
        metadata = { name = "tug-lock-test-deploy2", annotations = { ["tug.dev/lock-holder"] = json.encode({
          host = tug.sys.hostname(), pid = gone, run_id = "old", playbook = "blue-green" }) } },
        spec = { holderIdentity = "old", leaseDurationSeconds = 60, renewTime = require("k8s.util").format_micro() } })
      local r2 = { env = "test", name = "deploy2", run_id = "run-3", playbook = "canary", environment = env }
      none, holder, why = backend.acquire(r2)
      assert.is_nil(none)
      assert.are.equal("dead", why)
      r2.break_lock = true
      h = backend.acquire(r2)
      assert.is_not_nil(h)
      backend.release(h)
    end)
  end)

  it("connects to an embedded simulator with simulate = true", function()
    local r = require("child").lua([[
      local c = k8s.connect{ simulate = true, namespace = "multiship" }
      print(c.context, k8s.get("deployment", "api").metadata.name, c.server:match("^http://127%.0%.0%.1:%d+$") ~= nil)
      k8s.simulator():close()
    ]])
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal("simulated\tapi\ttrue\n", r.stdout)
  end)
end)
