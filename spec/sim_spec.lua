-- The simulated cluster (modules/sim) in this process, driven over HTTP with tug's http
-- client as any Kubernetes client would: discovery, the REST verbs and their errors,
-- patches, watches, the deployment controller's guarantees (surge and unavailability
-- bounds at every observed moment, revisions, deadlines, crash loops), deletion
-- propagation, the simulated applications, /metrics and faults.

package.path = "spec/support/?.lua;" .. package.path
local exec = require("exec")
local http = require("http")
local json = require("json")
local task = require("task")
local time = require("time")
local sim = require("sim")
local simtest = dofile("spec/support/sim.lua")

-- The default scenario, without latency, so application requests answer at once.
local QUICK = [[
extends: default
images:
  multiship/api:
    default: { latency: 0 }
    versions:
      v2.1.0: { latency: 0 }
      v2.2.0: { latency: 0 }
      v2.2.1-bad: { latency: 0 }
]]

local function deployment(name, replicas, image, extra)
  local d = {
    apiVersion = "apps/v1", kind = "Deployment",
    metadata = { name = name, namespace = "multiship" },
    spec = {
      replicas = replicas,
      selector = { matchLabels = { app = name } },
      template = {
        metadata = { labels = { app = name } },
        spec = { containers = { { name = "app", image = image or "multiship/api:v2.1.0" } } },
      },
    },
  }
  for k, v in pairs(extra or {}) do d.spec[k] = v end
  return d
end

describe("sim", function()
  local c, s, url

  setup(function()
    c = simtest.start({ port = 0, scenario = QUICK })
    s, url = c.sim, c.url
  end)

  teardown(function()
    if c then c:close() end
  end)

  local function call(method, path, body, headers)
    local h = headers or {}
    if body ~= nil and h["content-type"] == nil then h["content-type"] = "application/json" end
    return http.request({ method = method, url = url .. path, headers = h,
      body = body ~= nil and (type(body) == "string" and body or json.encode(body)) or nil, timeout = 10 })
  end

  local function get(path) return call("GET", path):json() end

  -- Streams a watch (path with its query) until stop(event) returns true or the server
  -- ends it; returns the events.
  local function watch(path, stop)
    local events = {}
    http.request({ url = url .. path, timeout = 30, on_line = function(line)
      local e = json.decode(line)
      events[#events + 1] = e
      if stop and stop(e, events) then return false end
    end })
    return events
  end

  describe("discovery", function()
    it("reports version 1.32 and lists groups and resources the legacy way", function()
      local v = get("/version")
      assert.are.same({ "1", "32" }, { v.major, v.minor })
      local api = get("/api")
      assert.are.equal("APIVersions", api.kind)
      assert.are.same({ "v1" }, api.versions)
      local groups = get("/apis")
      local names = {}
      for _, g in ipairs(groups.groups) do names[#names + 1] = g.name end
      assert.are.same({ "apps", "coordination.k8s.io" }, names)
      local core = get("/api/v1")
      local by = {}
      for _, r in ipairs(core.resources) do by[r.name] = r end
      assert.are.same({ "po" }, by.pods.shortNames)
      assert.are.same({ "all" }, by.pods.categories)
      assert.truthy(by["pods/log"])
      local apps = get("/apis/apps/v1")
      by = {}
      for _, r in ipairs(apps.resources) do by[r.name] = r end
      assert.are.same({ "deploy" }, by.deployments.shortNames)
      assert.are.same({ "autoscaling", "v1", "Scale" }, { by["deployments/scale"].group, by["deployments/scale"].version,
        by["deployments/scale"].kind })
      assert.are.equal(404, call("GET", "/apis/batch/v1").status)
    end)

    it("answers aggregated discovery with its own media type when asked", function()
      local accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
      local r = call("GET", "/apis", nil, { accept = accept })
      assert.are.equal(accept:match("^[^,]+"), r.headers["content-type"])
      local list = r:json()
      assert.are.equal("APIGroupDiscoveryList", list.kind)
      assert.are.equal("apps", list.items[1].metadata.name)
      local deploy = list.items[1].versions[1].resources[1]
      assert.are.equal("deployments", deploy.resource)
      assert.are.equal("Namespaced", deploy.scope)
      r = call("GET", "/api", nil, { accept = accept })
      assert.is_nil(r:json().items[1].metadata.name) -- the core group has no name
    end)
  end)

  describe("REST", function()
    it("creates, gets and lists with label and field selectors and pages", function()
      local r = call("POST", "/api/v1/namespaces/multiship/configmaps",
        { apiVersion = "v1", kind = "ConfigMap", metadata = { name = "flags", labels = { team = "core" } }, data = { a = "1" } })
      assert.are.equal(201, r.status)
      local cm = r:json()
      assert.matches("^%x+%-%x+%-4%x+%-%x+%-%x+$", cm.metadata.uid)
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$", cm.metadata.creationTimestamp)
      assert.are.equal(tostring(s.store.rv), cm.metadata.resourceVersion)
      assert.are.same(cm, get("/api/v1/namespaces/multiship/configmaps/flags"))

      local list = get("/api/v1/namespaces/multiship/configmaps?labelSelector=team%3Dcore")
      assert.are.equal("ConfigMapList", list.kind)
      assert.are.equal(1, #list.items)
      assert.is_nil(list.items[1].kind) -- list items carry no kind, as from a real server
      assert.truthy(tonumber(list.metadata.resourceVersion))

      local running = get("/api/v1/pods?fieldSelector=status.phase%3DRunning,metadata.namespace%3Dmultiship&labelSelector=app%20in%20(api),colour!%3Dgreen")
      assert.are.equal(8, #running.items)
      local pending = get("/api/v1/pods?fieldSelector=status.phase%3DPending")
      assert.are.equal(0, #pending.items)

      local page = get("/api/v1/namespaces/multiship/pods?limit=3")
      assert.are.equal(3, #page.items)
      assert.are.equal(5, page.metadata.remainingItemCount)
      local seen = {}
      for _, p in ipairs(page.items) do seen[#seen + 1] = p.metadata.name end
      local rest = get("/api/v1/namespaces/multiship/pods?limit=10&continue=" .. page.metadata.continue)
      for _, p in ipairs(rest.items) do seen[#seen + 1] = p.metadata.name end
      assert.is_nil(rest.metadata.continue)
      local all = get("/api/v1/namespaces/multiship/pods")
      local names = {}
      for _, p in ipairs(all.items) do names[#names + 1] = p.metadata.name end
      assert.are.same(names, seen)
    end)

    it("answers failures with Status objects, codes and reasons", function()
      local r = call("GET", "/apis/apps/v1/namespaces/multiship/deployments/nope")
      assert.are.equal(404, r.status)
      assert.are.same({ kind = "Status", apiVersion = "v1", metadata = {}, status = "Failure",
        message = 'deployments.apps "nope" not found', reason = "NotFound",
        details = { name = "nope", group = "apps", kind = "deployments" }, code = 404 }, r:json())

      r = call("POST", "/apis/apps/v1/namespaces/multiship/deployments", deployment("api", 1))
      assert.are.equal(409, r.status)
      assert.are.equal("AlreadyExists", r:json().reason)

      local bad = deployment("Bad_Name", -1)
      bad.spec.template.metadata.labels = { app = "other" }
      r = call("POST", "/apis/apps/v1/namespaces/multiship/deployments", bad)
      assert.are.equal(422, r.status)
      local st = r:json()
      assert.are.equal("Invalid", st.reason)
      assert.are.equal("Deployment", st.details.kind)
      local fields = {}
      for _, cause in ipairs(st.details.causes) do fields[cause.field] = cause.reason end
      assert.are.same({ ["metadata.name"] = "FieldValueInvalid", ["spec.replicas"] = "FieldValueInvalid",
        ["spec.template.metadata.labels"] = "FieldValueInvalid" }, fields)
      assert.matches('^Deployment.apps "Bad_Name" is invalid: %[', st.message)

      r = call("POST", "/api/v1/namespaces/nowhere/configmaps", { metadata = { name = "x" } })
      assert.are.equal(404, r.status)
      assert.are.equal('namespaces "nowhere" not found', r:json().message)

      r = call("GET", "/api/v1/pods?labelSelector=app%20in%20()")
      assert.are.equal(400, r.status)
      assert.are.equal("BadRequest", r:json().reason)
      r = call("GET", "/api/v1/pods?fieldSelector=spec.image%3Dx")
      assert.are.equal(400, r.status)
      assert.are.equal("field label not supported: spec.image", r:json().message)

      r = call("POST", "/apis/apps/v1/namespaces/multiship/deployments/api", {})
      assert.are.equal(405, r.status)
      assert.are.equal("MethodNotAllowed", r:json().reason)

      r = call("PATCH", "/apis/apps/v1/namespaces/multiship/deployments/api", "{}", { ["content-type"] = "text/plain" })
      assert.are.equal(415, r.status)
      r = call("POST", "/api/v1/namespaces/multiship/configmaps", "{not json")
      assert.are.equal(400, r.status)
      r = call("GET", "/api/v1/namespaces/multiship/pods?limit=1&continue=nonsense")
      assert.are.equal(400, r.status)
      r = call("POST", "/api/v1/namespaces/multiship/pods/x/exec?command=true")
      assert.are.equal(400, r.status)
      assert.matches("you must specify at least 1 of stdin, stdout, stderr", r:json().message)
      r = call("POST", "/api/v1/namespaces/multiship/pods/x/exec?command=true&stdout=true")
      assert.are.equal(404, r.status)
    end)

    it("updates with optimistic concurrency: a stale resourceVersion gets 409 Conflict", function()
      local cm = get("/api/v1/namespaces/multiship/configmaps/api-config")
      local stale = json.decode(json.encode(cm))
      cm.data.LOG_LEVEL = "info"
      local r = call("PUT", "/api/v1/namespaces/multiship/configmaps/api-config", cm)
      assert.are.equal(200, r.status)
      local updated = r:json()
      assert.is_true(tonumber(updated.metadata.resourceVersion) > tonumber(cm.metadata.resourceVersion))
      assert.are.equal(tostring(s.store.rv), updated.metadata.resourceVersion)

      stale.data.LOG_LEVEL = "debug"
      r = call("PUT", "/api/v1/namespaces/multiship/configmaps/api-config", stale)
      assert.are.equal(409, r.status)
      local st = r:json()
      assert.are.equal("Conflict", st.reason)
      assert.are.equal('Operation cannot be fulfilled on configmaps "api-config": the object has been modified; '
        .. "please apply your changes to the latest version and try again", st.message)
      assert.are.equal("info", s:get("configmaps", "multiship", "api-config").data.LOG_LEVEL)

      -- an update that changes nothing writes nothing
      local rv = s.store.rv
      r = call("PUT", "/api/v1/namespaces/multiship/configmaps/api-config", updated)
      assert.are.equal(200, r.status)
      assert.are.equal(updated.metadata.resourceVersion, r:json().metadata.resourceVersion)
      assert.are.equal(rv, s.store.rv)

      -- the Lua API has the same rule
      local obj, err = s:update(stale)
      assert.is_nil(obj)
      assert.are.equal(409, err.code)

      updated.metadata.name = "other"
      r = call("PUT", "/api/v1/namespaces/multiship/configmaps/api-config", updated)
      assert.are.equal(400, r.status)
    end)

    it("keeps status out of spec updates and spec out of status updates; generation follows spec", function()
      local r = call("POST", "/apis/apps/v1/namespaces/multiship/deployments", deployment("gen", 0))
      assert.are.equal(201, r.status)
      assert.are.equal(1, r:json().metadata.generation)
      assert.are.equal("complete", s:wait_rollout("multiship", "gen", 5))
      local d = get("/apis/apps/v1/namespaces/multiship/deployments/gen")
      d.spec.replicas = 0
      d.status = { replicas = 99 }
      d.metadata.labels = { x = "y" }
      d.metadata.resourceVersion = nil -- unconditional: the controller writes too
      r = call("PUT", "/apis/apps/v1/namespaces/multiship/deployments/gen", d)
      local after = r:json()
      assert.are.equal(1, after.metadata.generation) -- labels only: no new generation
      assert.are_not.equal(99, after.status and after.status.replicas)
      d = after
      d.metadata.resourceVersion = nil
      d.spec.minReadySeconds = 1
      d.status = { replicas = 77 }
      r = call("PUT", "/apis/apps/v1/namespaces/multiship/deployments/gen/status", d)
      after = r:json()
      assert.are.equal(77, after.status.replicas)
      assert.is_nil(after.spec.minReadySeconds)
      r = call("PATCH", "/apis/apps/v1/namespaces/multiship/deployments/gen", '{"spec":{"minReadySeconds":2}}',
        { ["content-type"] = "application/merge-patch+json" })
      assert.are.equal(2, r:json().metadata.generation)
      r = call("PATCH", "/apis/apps/v1/namespaces/multiship/deployments/gen",
        '{"metadata":{"annotations":{"kubernetes.io/change-cause":"why"}}}', { ["content-type"] = "application/merge-patch+json" })
      assert.are.equal(3, r:json().metadata.generation) -- a Deployment's annotations count too
      assert.are.equal(200, call("DELETE", "/apis/apps/v1/namespaces/multiship/deployments/gen").status)
    end)
  end)

  describe("patches", function()
    local path = "/apis/apps/v1/namespaces/multiship/deployments/patchme"

    before_each(function()
      local d = deployment("patchme", 0)
      d.spec.template.spec.containers = {
        { name = "app", image = "multiship/api:v2.1.0", env = { { name = "A", value = "1" }, { name = "B", value = "2" } },
          ports = { { containerPort = 8080, name = "http" } } },
        { name = "sidecar", image = "envoy:1" },
      }
      s:delete("deployments", "multiship", "patchme")
      assert.truthy(s:create(d))
    end)

    local function patched(ctype, body)
      local r = call("PATCH", path, body, { ["content-type"] = ctype })
      return r.status, r:json()
    end

    it("merges lists by key with a strategic merge patch, honouring its directives", function()
      local status, d = patched("application/strategic-merge-patch+json", json.encode({ spec = { template = { spec = {
        ["$setElementOrder/containers"] = { { name = "sidecar" }, { name = "app" } },
        containers = {
          { name = "app", image = "multiship/api:v2.2.0", env = { { name = "B", value = "3" }, { name = "C", value = "4" } } },
          { name = "sidecar", image = "envoy:2" },
        },
      } } } }))
      assert.are.equal(200, status)
      local cs = d.spec.template.spec.containers
      assert.are.same({ "sidecar", "app" }, { cs[1].name, cs[2].name })
      assert.are.same({ "envoy:2", "multiship/api:v2.2.0" }, { cs[1].image, cs[2].image })
      assert.are.same({ { name = "A", value = "1" }, { name = "B", value = "3" }, { name = "C", value = "4" } }, cs[2].env)
      assert.are.equal(8080, cs[2].ports[1].containerPort)

      status, d = patched("application/strategic-merge-patch+json",
        '{"spec":{"template":{"spec":{"containers":[{"name":"sidecar","$patch":"delete"},{"name":"app","env":[{"name":"A","$patch":"delete"}]}]}}}}')
      assert.are.equal(200, status)
      cs = d.spec.template.spec.containers
      assert.are.equal(1, #cs)
      assert.are.same({ { name = "B", value = "3" }, { name = "C", value = "4" } }, cs[1].env)

      status, d = patched("application/strategic-merge-patch+json",
        '{"spec":{"template":{"spec":{"containers":[{"$patch":"replace"},{"name":"only","image":"x:1"}]}}}}')
      assert.are.equal(200, status)
      assert.are.same({ "only" }, { d.spec.template.spec.containers[1].name })
      assert.is_nil(d.spec.template.spec.containers[2])

      status, d = patched("application/strategic-merge-patch+json", '{"spec":{"template":{"spec":{"containers":[{"image":"x:2"}]}}}}')
      assert.are.equal(422, status)
      assert.matches("does not contain declared merge key: name", d.message)
    end)

    it("replaces lists and deletes nulls with a JSON merge patch (RFC 7386)", function()
      local status, d = patched("application/merge-patch+json",
        '{"metadata":{"labels":{"tier":"web"}},"spec":{"template":{"spec":{"containers":[{"name":"solo","image":"x:1"}]}},"revisionHistoryLimit":null}}')
      assert.are.equal(200, status)
      assert.are.same({ { name = "solo", image = "x:1", imagePullPolicy = "IfNotPresent", resources = {},
        terminationMessagePath = "/dev/termination-log", terminationMessagePolicy = "File" } }, d.spec.template.spec.containers)
      assert.are.equal("web", d.metadata.labels.tier)
      assert.are.equal(10, d.spec.revisionHistoryLimit) -- removed, then defaulted again by the server
    end)

    it("applies RFC 6902 operations in order, and rejects the whole patch when one fails", function()
      local status, d = patched("application/json-patch+json", json.encode({
        { op = "add", path = "/metadata/labels", value = { a = "1" } },
        { op = "copy", from = "/metadata/labels/a", path = "/metadata/labels/b" },
        { op = "move", from = "/metadata/labels/a", path = "/metadata/labels/c~1d" },
        { op = "replace", path = "/spec/template/spec/containers/1/image", value = "envoy:3" },
        { op = "add", path = "/spec/template/spec/containers/0/env/-", value = { name = "Z", value = "26" } },
        { op = "remove", path = "/spec/template/spec/containers/0/env/0" },
        { op = "test", path = "/spec/replicas", value = 0 },
      }))
      assert.are.equal(200, status)
      assert.are.same({ b = "1", ["c/d"] = "1" }, d.metadata.labels)
      assert.are.equal("envoy:3", d.spec.template.spec.containers[2].image)
      assert.are.same({ { name = "B", value = "2" }, { name = "Z", value = "26" } }, d.spec.template.spec.containers[1].env)
      status, d = patched("application/json-patch+json", json.encode({
        { op = "replace", path = "/spec/replicas", value = 3 },
        { op = "test", path = "/spec/replicas", value = 4 },
      }))
      assert.are.equal(422, status)
      assert.are.equal(0, s:get("deployments", "multiship", "patchme").spec.replicas)
      status = patched("application/json-patch+json", '[{"op":"replace","path":"/spec/nothing","value":1}]')
      assert.are.equal(422, status)
      status = patched("application/json-patch+json", '{"op":"add"}')
      assert.are.equal(400, status)
    end)

    it("treats a resourceVersion inside a patch as a precondition", function()
      local status, st = patched("application/merge-patch+json", '{"metadata":{"resourceVersion":"1"},"spec":{"replicas":1}}')
      assert.are.equal(409, status)
      assert.are.equal("Conflict", st.reason)
    end)
  end)

  describe("watch", function()
    it("delivers every change in order from a resourceVersion, and ends at timeoutSeconds", function()
      local list = get("/api/v1/namespaces/multiship/configmaps")
      local from = list.metadata.resourceVersion
      local t0 = time.monotonic()
      local h = task.spawn(watch, "/api/v1/namespaces/multiship/configmaps?watch=true&timeoutSeconds=1&resourceVersion=" .. from)
      task.sleep(0.05)
      for i = 1, 5 do
        assert.truthy(s:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "w" .. i }, data = { n = tostring(i) } }))
      end
      local cm = s:get("configmaps", "multiship", "w3")
      cm.data.n = "three"
      assert.truthy(s:update(cm))
      assert.truthy(s:delete("configmaps", "multiship", "w1"))
      local events = h:wait()
      assert.is_true(time.monotonic() - t0 < 3)
      local got, last = {}, tonumber(from)
      for _, e in ipairs(events) do
        got[#got + 1] = e.type .. " " .. e.object.metadata.name
        local rv = tonumber(e.object.metadata.resourceVersion)
        assert.is_true(rv > last, "resourceVersions increase")
        last = rv
      end
      assert.are.same({ "ADDED w1", "ADDED w2", "ADDED w3", "ADDED w4", "ADDED w5", "MODIFIED w3", "DELETED w1" }, got)
      assert.are.equal("three", events[6].object.data.n)
    end)

    it("starts with the current objects when no resourceVersion is given", function()
      local events = watch("/api/v1/namespaces/multiship/services?watch=1&timeoutSeconds=1")
      local names = {}
      for _, e in ipairs(events) do names[#names + 1] = e.type .. " " .. e.object.metadata.name end
      assert.are.same({ "ADDED api", "ADDED api-service" }, names)
    end)

    it("sends bookmarks when allowed", function()
      s:set_timing({ bookmark_interval = "200ms" })
      local events = watch("/apis/apps/v1/namespaces/multiship/deployments?watch=true&allowWatchBookmarks=true&timeoutSeconds=1&resourceVersion="
        .. s.store.rv, function(e) return e.type == "BOOKMARK" end)
      s:set_timing({ bookmark_interval = "60s" })
      local e = events[#events]
      assert.are.equal("BOOKMARK", e.type)
      assert.are.equal("Deployment", e.object.kind)
      assert.truthy(tonumber(e.object.metadata.resourceVersion))
    end)

    it("turns objects leaving a label selector into DELETED events", function()
      local from = s.store.rv
      local h = task.spawn(watch, "/api/v1/namespaces/multiship/configmaps?watch=true&timeoutSeconds=1&labelSelector=watched%3Dyes&resourceVersion=" .. from)
      task.sleep(0.05)
      assert.truthy(s:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "sel", labels = { watched = "yes" } } }))
      assert.truthy(s:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "unsel" } }))
      local cm = s:get("configmaps", "multiship", "sel")
      cm.metadata.labels.watched = "no"
      assert.truthy(s:update(cm))
      local got = {}
      for _, e in ipairs(h:wait()) do got[#got + 1] = e.type .. " " .. e.object.metadata.name end
      assert.are.same({ "ADDED sel", "DELETED sel" }, got)
    end)

    it("answers a watch from a resourceVersion it no longer remembers with 410 Expired", function()
      local small = simtest.start({ port = 0, scenario = "extends: default\nwatch_cache: 20\nwarm_start: true\n" })
      local ok, err = pcall(function()
        for i = 1, 30 do
          assert.truthy(small.sim:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "c" .. i } }))
        end
        local events = {}
        http.request({ url = small.url .. "/api/v1/namespaces/multiship/configmaps?watch=true&resourceVersion=2", timeout = 5,
          on_line = function(line) events[#events + 1] = json.decode(line) end })
        assert.are.equal(1, #events)
        assert.are.equal("ERROR", events[1].type)
        assert.are.equal(410, events[1].object.code)
        assert.are.equal("Expired", events[1].object.reason)
        assert.matches("^too old resource version: 2 %(", events[1].object.message)
      end)
      small:close()
      if not ok then error(err, 0) end
    end)
  end)

  describe("deployment controller", function()
    -- Follows pods and replica sets of deployment `name` through two watches, checking
    -- the rolling-update bounds at every event; returns the extremes seen.
    local function observe_rollout(name, act)
      local seen = { max_pods = 0, min_ready = math.huge, max_spec = 0, events = 0 }
      local from = tostring(s.store.rv)
      local pods, sets = {}, {}
      local done = false
      local function ready(p)
        for _, cnd in ipairs(p.status and p.status.conditions or {}) do
          if cnd.type == "Ready" then return cnd.status == "True" end
        end
        return false
      end
      for _, p in ipairs(s:list("pods", "multiship", { label = "app=" .. name })) do pods[p.metadata.name] = p end
      for _, rs in ipairs(s:list("replicasets", "multiship", { label = "app=" .. name })) do sets[rs.metadata.name] = rs end
      local function check_pods()
        local live, up = 0, 0
        for _, p in pairs(pods) do
          if not p.metadata.deletionTimestamp then
            live = live + 1
            if ready(p) then up = up + 1 end
          end
        end
        seen.max_pods = math.max(seen.max_pods, live)
        seen.min_ready = math.min(seen.min_ready, up)
      end
      local function check_sets()
        local total = 0
        for _, rs in pairs(sets) do total = total + rs.spec.replicas end
        seen.max_spec = math.max(seen.max_spec, total)
      end
      local q = "?watch=true&timeoutSeconds=20&labelSelector=app%3D" .. name .. "&resourceVersion=" .. from
      local watchers = {
        task.spawn(function()
          watch("/api/v1/namespaces/multiship/pods" .. q, function(e)
            seen.events = seen.events + 1
            if e.type == "DELETED" then pods[e.object.metadata.name] = nil else pods[e.object.metadata.name] = e.object end
            check_pods()
            return done
          end)
        end),
        task.spawn(function()
          watch("/apis/apps/v1/namespaces/multiship/replicasets" .. q, function(e)
            if e.type == "DELETED" then sets[e.object.metadata.name] = nil else sets[e.object.metadata.name] = e.object end
            check_sets()
            return done
          end)
        end),
      }
      task.sleep(0.05)
      act()
      local result = s:wait_rollout("multiship", name, 20)
      task.sleep(0.1)
      done = true
      -- one more write to each stream lets the watchers see `done`
      local d = s:get("deployments", "multiship", name)
      d.metadata.annotations = d.metadata.annotations or {}
      d.metadata.annotations.observed = "yes"
      s:update(d)
      for _, w in ipairs(watchers) do w:cancel() end
      return result, seen
    end

    it("keeps a rolling update within maxSurge (rounded up) and maxUnavailable (rounded down) at every event", function()
      assert.truthy(s:create(deployment("roll", 10, "multiship/api:v2.1.0",
        { strategy = { type = "RollingUpdate", rollingUpdate = { maxSurge = "25%", maxUnavailable = "25%" } } })))
      assert.are.equal("complete", s:wait_rollout("multiship", "roll", 10))
      local result, seen = observe_rollout("roll", function()
        assert.truthy(s:patch("deployments", "multiship", "roll", "strategic",
          { spec = { template = { spec = { containers = { { name = "app", image = "multiship/api:v2.2.0" } } } } } }))
      end)
      assert.are.equal("complete", result)
      -- 25% of 10: surge ceil(2.5) = 3, unavailable floor(2.5) = 2
      assert.are.equal(13, seen.max_spec)
      assert.are.equal(13, seen.max_pods)
      assert.are.equal(8, seen.min_ready)
      assert.is_true(seen.events > 20)
      local d = s:get("deployments", "multiship", "roll")
      assert.are.same({ 10, 10, 10, 10 }, { d.status.replicas, d.status.updatedReplicas, d.status.readyReplicas,
        d.status.availableReplicas })
      local conds = {}
      for _, cnd in ipairs(d.status.conditions) do conds[cnd.type] = cnd end
      assert.are.equal("MinimumReplicasAvailable", conds.Available.reason)
      assert.are.equal("NewReplicaSetAvailable", conds.Progressing.reason)

      -- absolute values: no surge, two at a time
      d.spec.strategy.rollingUpdate = { maxSurge = 0, maxUnavailable = 2 }
      d.spec.template.spec.containers[1].image = "multiship/api:v2.1.0"
      d.metadata.resourceVersion = nil
      result, seen = observe_rollout("roll", function() assert.truthy(s:update(d)) end)
      assert.are.equal("complete", result)
      assert.are.equal(10, seen.max_spec)
      assert.are.equal(10, seen.max_pods)
      assert.are.equal(8, seen.min_ready)
    end)

    it("stops every old pod before the first new one with Recreate", function()
      assert.truthy(s:create(deployment("recreate", 3, "multiship/api:v2.1.0", { strategy = { type = "Recreate" } })))
      assert.are.equal("complete", s:wait_rollout("multiship", "recreate", 10))
      local mixed = false
      local from = s.store.rv
      local h = task.spawn(function()
        local pods = {}
        watch("/api/v1/namespaces/multiship/pods?watch=true&timeoutSeconds=3&labelSelector=app%3Drecreate&resourceVersion=" .. from,
          function(e)
            if e.type == "DELETED" then pods[e.object.metadata.name] = nil else pods[e.object.metadata.name] = e.object end
            local images = {}
            for _, p in pairs(pods) do images[p.spec.containers[1].image] = true end
            if images["multiship/api:v2.1.0"] and images["multiship/api:v2.2.0"] then mixed = true end
            local n = 0
            for _, p in pairs(pods) do
              if p.spec.containers[1].image == "multiship/api:v2.2.0" and p.status.containerStatuses
                and p.status.containerStatuses[1].ready then n = n + 1 end
            end
            return n == 3
          end)
      end)
      task.sleep(0.05)
      assert.truthy(s:patch("deployments", "multiship", "recreate", "strategic",
        { spec = { template = { spec = { containers = { { name = "app", image = "multiship/api:v2.2.0" } } } } } }))
      assert.are.equal("complete", s:wait_rollout("multiship", "recreate", 10))
      h:wait()
      assert.is_false(mixed)
    end)

    it("keeps revisionHistoryLimit old ReplicaSets, and revives an old one with the next revision", function()
      assert.truthy(s:create(deployment("history", 1, "multiship/api:v2.1.0", { revisionHistoryLimit = 2 })))
      assert.are.equal("complete", s:wait_rollout("multiship", "history", 10))
      for _, tag in ipairs({ "v2.2.0", "v2.3.0", "v2.4.0", "v2.5.0" }) do
        assert.truthy(s:patch("deployments", "multiship", "history", "json",
          { { op = "replace", path = "/spec/template/spec/containers/0/image", value = "multiship/api:" .. tag } }))
        assert.are.equal("complete", s:wait_rollout("multiship", "history", 10))
      end
      local revisions = {}
      for _, rs in ipairs(s:list("replicasets", "multiship", { label = "app=history" })) do
        revisions[#revisions + 1] = tonumber(rs.metadata.annotations["deployment.kubernetes.io/revision"])
        assert.are.equal("history", rs.metadata.ownerReferences[1].name)
        assert.is_true(rs.metadata.ownerReferences[1].controller)
        assert.are.equal(rs.metadata.labels["pod-template-hash"], rs.metadata.name:match("^history%-(.+)$"))
        assert.are.equal(rs.metadata.labels["pod-template-hash"], rs.spec.selector.matchLabels["pod-template-hash"])
      end
      table.sort(revisions)
      assert.are.same({ 3, 4, 5 }, revisions)

      -- back to v2.3.0 (revision 3), the way kubectl rollout undo does it: template and annotations
      local old
      for _, rs in ipairs(s:list("replicasets", "multiship", { label = "app=history" })) do
        if rs.metadata.annotations["deployment.kubernetes.io/revision"] == "3" then old = rs end
      end
      local template = old.spec.template
      template.metadata.labels["pod-template-hash"] = nil
      local r = call("PATCH", "/apis/apps/v1/namespaces/multiship/deployments/history", json.encode({
        { op = "replace", path = "/spec/template", value = template },
        { op = "replace", path = "/metadata/annotations", value = { ["deployment.kubernetes.io/revision"] = "5" } },
      }), { ["content-type"] = "application/json-patch+json" })
      assert.are.equal(200, r.status)
      assert.are.equal("complete", s:wait_rollout("multiship", "history", 10))
      local revived = s:get("replicasets", "multiship", old.metadata.name)
      assert.are.equal("6", revived.metadata.annotations["deployment.kubernetes.io/revision"])
      assert.are.equal("3", revived.metadata.annotations["deployment.kubernetes.io/revision-history"])
      assert.are.equal(1, revived.spec.replicas)
      assert.are.equal("6", s:get("deployments", "multiship", "history").metadata.annotations["deployment.kubernetes.io/revision"])
    end)

    it("reports ProgressDeadlineExceeded when pods never become ready, and recovers when they do", function()
      local id = s:fault({ type = "never_ready", version = "v9.9.9" })
      assert.truthy(s:create(deployment("stuck", 2, "multiship/api:v9.9.9", { progressDeadlineSeconds = 1 })))
      assert.are.equal("failed", s:wait_rollout("multiship", "stuck", 10))
      local d = s:get("deployments", "multiship", "stuck")
      local conds = {}
      for _, cnd in ipairs(d.status.conditions) do conds[cnd.type] = cnd end
      assert.are.same({ "False", "MinimumReplicasUnavailable" }, { conds.Available.status, conds.Available.reason })
      assert.are.same({ "False", "ProgressDeadlineExceeded" }, { conds.Progressing.status, conds.Progressing.reason })
      assert.are.equal(2, d.status.unavailableReplicas)
      s:clear_faults(id)
      assert.truthy(s:wait_for(function()
        local x = s:get("deployments", "multiship", "stuck")
        for _, cnd in ipairs(x.status.conditions) do
          if cnd.type == "Progressing" and cnd.reason == "NewReplicaSetAvailable" then return true end
        end
      end, 10))
    end)

    it("restarts crash-looping containers with a growing back-off and ErrImagePull for images that cannot pull", function()
      s:fault({ type = "crash_loop", version = "v6.6.6" })
      s:fault({ type = "pull_error", version = "v0.0.0-missing" })
      assert.truthy(s:create(deployment("crashy", 1, "multiship/api:v6.6.6")))
      assert.truthy(s:create(deployment("nopull", 1, "multiship/api:v0.0.0-missing")))
      local pod = s:wait_for(function()
        local p = s:list("pods", "multiship", { label = "app=crashy" })[1]
        if p and p.status.containerStatuses and p.status.containerStatuses[1].restartCount >= 2 then return p end
      end, 10)
      assert.truthy(pod)
      local cs = pod.status.containerStatuses[1]
      assert.are.equal("Error", cs.lastState.terminated.reason)
      assert.are.equal(1, cs.lastState.terminated.exitCode)
      assert.are.equal("Running", pod.status.phase)
      local waiting = s:wait_for(function()
        local p = s:list("pods", "multiship", { label = "app=nopull" })[1]
        local w = p and p.status.containerStatuses and p.status.containerStatuses[1].state.waiting
        if w and w.reason == "ImagePullBackOff" then return w end
      end, 10)
      assert.truthy(waiting)
      local reasons = {}
      for _, e in ipairs(s:list("events", "multiship", { field = "involvedObject.kind=Pod,type=Warning" })) do
        reasons[e.reason] = true
      end
      assert.truthy(reasons.BackOff)
      assert.truthy(reasons.Failed)
      local d = s:get("deployments", "multiship", "crashy")
      assert.is_nil(d.status.availableReplicas)
      s:clear_faults()
      s:delete("deployments", "multiship", "crashy")
      s:delete("deployments", "multiship", "nopull")
    end)

    it("keeps a deleted pod Terminating for its grace period while a replacement starts", function()
      s:set_timing({ terminate_after = "300ms" })
      local pod = s:list("pods", "multiship", { label = "app=api,colour=blue" })[1]
      local r = call("DELETE", "/api/v1/namespaces/multiship/pods/" .. pod.metadata.name)
      assert.are.equal(200, r.status)
      local gone = r:json()
      assert.truthy(gone.metadata.deletionTimestamp)
      assert.are.equal(1, gone.metadata.deletionGracePeriodSeconds)
      local terminating = s:get("pods", "multiship", pod.metadata.name)
      assert.truthy(terminating)
      assert.truthy(s:wait_for(function()
        local p = s:get("pods", "multiship", pod.metadata.name)
        return p and p.status.conditions and not require("sim.controller").pod_ready(p)
      end, 2))
      assert.truthy(s:wait_for(function() return s:get("pods", "multiship", pod.metadata.name) == nil end, 3))
      s:set_timing({ terminate_after = 0 })
      assert.are.equal("complete", s:wait_rollout("multiship", "api-blue", 10))
      assert.are.equal(4, #s:list("pods", "multiship", { label = "app=api,colour=blue" }))
    end)

    it("stands still while paused and catches up when resumed", function()
      s:pause()
      local ok, err = pcall(function()
        assert.truthy(s:patch("deployments", "multiship", "api", "strategic",
          { spec = { template = { spec = { containers = { { name = "api", image = "multiship/api:v2.2.0" } } } } } }))
        task.sleep(0.3)
        local d = s:get("deployments", "multiship", "api")
        assert.is_true(d.status.observedGeneration < d.metadata.generation)
        assert.are.equal(1, #s:list("replicasets", "multiship", { label = "app=api,track=main" }))
      end)
      s:resume()
      if not ok then error(err, 0) end
      assert.are.equal("complete", s:wait_rollout("multiship", "api", 10))
      assert.are.equal(2, #s:list("replicasets", "multiship", { label = "app=api,track=main" }))
    end)

    it("deletes dependents in the background or foreground, and orphans them when asked", function()
      for _, name in ipairs({ "gc-bg", "gc-fg", "gc-orphan" }) do
        assert.truthy(s:create(deployment(name, 2)))
        assert.are.equal("complete", s:wait_rollout("multiship", name, 10))
      end
      local r = call("DELETE", "/apis/apps/v1/namespaces/multiship/deployments/gc-bg", { propagationPolicy = "Background" })
      assert.are.equal(200, r.status)
      assert.are.equal("Success", r:json().status)
      assert.are.same({}, s:list("replicasets", "multiship", { label = "app=gc-bg" }))
      assert.are.same({}, s:list("pods", "multiship", { label = "app=gc-bg" }))
      r = call("DELETE", "/apis/apps/v1/namespaces/multiship/deployments/gc-fg?propagationPolicy=Foreground")
      assert.are.equal(200, r.status)
      assert.is_nil(s:get("deployments", "multiship", "gc-fg"))
      assert.are.same({}, s:list("pods", "multiship", { label = "app=gc-fg" }))
      r = call("DELETE", "/apis/apps/v1/namespaces/multiship/deployments/gc-orphan", { propagationPolicy = "Orphan" })
      assert.are.equal(200, r.status)
      local left = s:list("replicasets", "multiship", { label = "app=gc-orphan" })
      assert.are.equal(1, #left)
      assert.is_nil(left[1].metadata.ownerReferences)
      assert.are.equal(2, #s:list("pods", "multiship", { label = "app=gc-orphan" }))
      s:delete("replicasets", "multiship", left[1].metadata.name)
      assert.are.same({}, s:list("pods", "multiship", { label = "app=gc-orphan" }))
    end)
  end)

  describe("applications", function()
    it("split a Service's traffic by the ready pods of each version", function()
      -- two canary pods beside four blue ones: about a third of the requests reach v2.2.0
      assert.truthy(s:patch("deployments", "multiship", "api-canary", "json", {
        { op = "replace", path = "/spec/replicas", value = 2 },
        { op = "replace", path = "/spec/template/spec/containers/0/image", value = "multiship/api:v2.2.0" },
      }))
      assert.are.equal("complete", s:wait_rollout("multiship", "api-canary", 10))
      local versions = {}
      for _ = 1, 300 do
        local status, headers = s:request({ path = "/svc/multiship/api-service/health" })
        assert.are.equal(200, status)
        versions[headers["x-version"]] = (versions[headers["x-version"]] or 0) + 1
      end
      assert.is_true(versions["v2.2.0"] > 60 and versions["v2.2.0"] < 140, "v2.2.0 got " .. tostring(versions["v2.2.0"]))
      assert.are.equal(300, versions["v2.2.0"] + versions["v2.1.0"])
      assert.truthy(s:patch("deployments", "multiship", "api-canary", "merge", { spec = { replicas = 0 } }))
      assert.are.equal("complete", s:wait_rollout("multiship", "api-canary", 10))
    end)

    it("serve the Multiship endpoints and the feature-flag admin API over HTTP", function()
      local base = url .. "/svc/multiship/api-service"
      local r = http.get(base .. "/health")
      assert.are.equal(200, r.status)
      assert.are.same({ "ok", "v2.1.0" }, { r:json().status, r:json().version })
      assert.matches("^api%-blue%-", r.headers["x-served-by"])
      assert.are.equal("healthy", http.get(base .. "/api/health/detailed"):json().checks.database.status)
      assert.is_true(http.get(base .. "/api/health/database"):json().connected)
      local providers = http.get(base .. "/api/providers/health"):json().providers
      assert.are.same({ "healthy", "healthy", "healthy" }, { providers.easypost.status, providers.shippo.status, providers.veeqo.status })
      assert.are.equal(3, http.get(base .. "/api/orders"):json().total)

      r = http.post(base .. "/admin/features", { json = { feature = "new-shipment-tracking", enabled = true } })
      assert.are.equal(401, r.status)
      local auth = { authorization = "Bearer sim-admin-token" }
      r = http.post(base .. "/admin/features", { headers = auth, json = { feature = "new-shipment-tracking", enabled = true } })
      assert.are.equal(200, r.status)
      assert.are.same({ "new-shipment-tracking", true, false }, { r:json().feature, r:json().enabled, r:json().previous })
      r = http.get(base .. "/admin/features/new-shipment-tracking", { headers = auth })
      assert.is_true(r:json().enabled)
      assert.are.equal(404, http.get(base .. "/admin/features/nope", { headers = auth }).status)
      assert.are.equal(400, http.post(base .. "/admin/features", { headers = auth, json = { feature = "x" } }).status)
      -- through the API server's service proxy too
      r = http.get(url .. "/api/v1/namespaces/multiship/services/api-service:http/proxy/health")
      assert.are.equal(200, r.status)

      r = http.get(url .. "/svc/multiship/nope/health")
      assert.are.equal(404, r.status)
    end)

    it("answer 503 when a Service selects no ready pod", function()
      assert.truthy(s:patch("services", "multiship", "api-service", "strategic", { spec = { selector = { colour = "green" } } }))
      local status, _, body = s:request({ path = "/svc/multiship/api-service/health" })
      assert.are.equal(503, status)
      assert.matches('no endpoints available for service "api%-service"', body)
      assert.truthy(s:patch("services", "multiship", "api-service", "strategic", { spec = { selector = { colour = "blue" } } }))
      assert.are.equal(200, (s:request({ path = "/svc/multiship/api-service/health" })))
    end)
  end)

  describe("metrics", function()
    it("exposes request counts by service, version and code, and latency histograms, in a format promtool accepts", function()
      local _, served = s:request({ path = "/svc/multiship/api/api/orders" })
      local version = served["x-version"]:gsub("%.", "%%.")
      local r = http.get(url .. "/metrics")
      assert.are.equal(200, r.status)
      assert.matches("^text/plain; version=0%.0%.4", r.headers["content-type"])
      local text = r.body
      assert.matches('http_requests_total{namespace="multiship",service="api%-service",version="v2%.1%.0",route="/health",method="GET",code="200"} %d+', text)
      assert.matches('http_requests_total{namespace="multiship",service="api%-service",version="",route="/health",method="GET",code="503"} 1', text)
      local count = tonumber(text:match('http_request_duration_seconds_count{namespace="multiship",service="api",version="'
        .. version .. '"} (%d+)'))
      local inf = tonumber(text:match('http_request_duration_seconds_bucket{namespace="multiship",service="api",version="'
        .. version .. '",le="%+Inf"} (%d+)'))
      assert.is_true(count >= 1)
      assert.are.equal(count, inf)
      assert.matches('kube_deployment_status_replicas_available{namespace="multiship",deployment="api%-blue"} 4', text)
      assert.matches('apiserver_request_total{verb="list",resource="pods",code="200"} %d+', text)
      local path = c:file("metrics.txt", text)
      local lint = exec.run({ "sh", "-c", "promtool check metrics < " .. path })
      assert.are.equal(0, lint.code, lint.stdout .. lint.stderr)
    end)
  end)

  describe("faults", function()
    after_each(function() s:clear_faults() end)

    it("fail API requests that match, as many times as asked, then clear themselves", function()
      s:fault({ type = "api_error", verb = "list", resource = "pods", status = 503, count = 2 })
      local codes = {}
      for _ = 1, 3 do codes[#codes + 1] = call("GET", "/api/v1/namespaces/multiship/pods").status end
      assert.are.same({ 503, 503, 200 }, codes)
      assert.are.equal(200, call("GET", "/api/v1/namespaces/multiship/services").status)
      assert.are.same({}, s:list_faults())

      s:fault({ type = "api_error", verb = "patch", status = 500 })
      local r = call("PATCH", "/apis/apps/v1/namespaces/multiship/deployments/api", "{}", { ["content-type"] = "application/merge-patch+json" })
      assert.are.equal(500, r.status)
      assert.are.same({ "InternalError", "Internal error occurred: simulated fault" }, { r:json().reason, r:json().message })
      s:clear_faults()
      assert.are.equal(200, call("PATCH", "/apis/apps/v1/namespaces/multiship/deployments/api", "{}",
        { ["content-type"] = "application/merge-patch+json" }).status)
    end)

    it("slow API requests down", function()
      s:fault({ type = "api_latency", resource = "services", delay = "300ms" })
      local t0 = time.monotonic()
      assert.are.equal(200, call("GET", "/api/v1/namespaces/multiship/services").status)
      assert.is_true(time.monotonic() - t0 >= 0.3)
      t0 = time.monotonic()
      assert.are.equal(200, call("GET", "/api/v1/namespaces/multiship/configmaps").status)
      assert.is_true(time.monotonic() - t0 < 0.3)
    end)

    it("drop watch streams after the given time", function()
      s:fault({ type = "watch_drop", resource = "pods", after = "200ms" })
      local t0 = time.monotonic()
      watch("/api/v1/namespaces/multiship/pods?watch=true&timeoutSeconds=30&resourceVersion=" .. s.store.rv)
      local took = time.monotonic() - t0
      assert.is_true(took >= 0.2 and took < 2, "took " .. took)
    end)

    it("make a version unhealthy, add errors and latency, and take providers down, until cleared", function()
      local id = s:fault({ type = "unhealthy", version = "v2.1.0" })
      assert.are.equal(503, (s:request({ path = "/svc/multiship/api-service/health" })))
      assert.are.equal(503, (s:request({ path = "/svc/multiship/api-service/api/health/database" })))
      s:clear_faults(id)
      assert.are.equal(200, (s:request({ path = "/svc/multiship/api-service/health" })))

      s:fault({ type = "error_rate", version = "v2.1.0", rate = 1 })
      assert.are.equal(500, (s:request({ path = "/svc/multiship/api-service/api/orders" })))
      assert.are.equal(200, (s:request({ path = "/svc/multiship/api-service/health" })))
      s:clear_faults()

      s:fault({ type = "latency", service = "multiship/api", add = "250ms" })
      local t0 = time.monotonic()
      s:request({ path = "/svc/multiship/api/api/orders" })
      assert.is_true(time.monotonic() - t0 >= 0.25)
      t0 = time.monotonic()
      s:request({ path = "/svc/multiship/api-service/api/orders" })
      assert.is_true(time.monotonic() - t0 < 0.25)
      s:clear_faults()

      s:fault({ type = "provider_down", provider = "shippo" })
      local status, _, body = s:request({ path = "/svc/multiship/api-service/api/providers/health" })
      assert.are.equal(503, status)
      local doc = json.decode(body)
      assert.are.same({ "unhealthy", "down", "healthy" }, { doc.status, doc.providers.shippo.status, doc.providers.easypost.status })
      assert.are.equal("degraded", json.decode(select(3, s:request({ path = "/svc/multiship/api-service/api/health/detailed" }))).status)
    end)

    it("are managed over HTTP at /sim/faults, and expire after their duration", function()
      local r = call("POST", "/sim/faults", { type = "unhealthy", version = "v2.1.0", duration = "300ms" })
      assert.are.equal(201, r.status)
      local id = r:json().added[1]
      local list = get("/sim/faults").faults
      assert.are.equal(1, #list)
      assert.are.same({ id, "unhealthy", "v2.1.0" }, { list[1].id, list[1].type, list[1].version })
      assert.are.equal(503, http.get(url .. "/svc/multiship/api-service/health").status)
      assert.truthy(s:wait_for(function() return #s:list_faults() == 0 end, 5))
      assert.are.equal(200, http.get(url .. "/svc/multiship/api-service/health").status)

      r = call("POST", "/sim/faults", { { type = "provider_down", provider = "veeqo" }, { type = "api_latency", delay = "1ms" } })
      assert.are.equal(201, r.status)
      assert.are.equal(2, #r:json().added)
      assert.are.equal(200, call("DELETE", "/sim/faults/" .. r:json().added[1]).status)
      assert.are.equal(404, call("DELETE", "/sim/faults/" .. r:json().added[1]).status)
      assert.are.same({ cleared = 1 }, call("DELETE", "/sim/faults"):json())

      r = call("POST", "/sim/faults", { type = "meteor" })
      assert.are.equal(400, r.status)
      assert.matches('unknown fault type "meteor"', r:json().error)
      r = call("POST", "/sim/faults", { type = "crash_loop" })
      assert.are.equal(400, r.status)
      assert.has_error(function() s:fault({ type = "error_rate", rate = 3 }) end)
    end)

    it("can come from the scenario", function()
      local c2 = simtest.start({ port = 0, scenario = QUICK .. "faults:\n  - { type: unhealthy, version: v2.1.0 }\n" })
      local ok, err = pcall(function()
        assert.are.equal(1, #c2.sim:list_faults())
        assert.are.equal(503, (c2.sim:request({ path = "/svc/multiship/api-service/health" })))
      end)
      c2:close()
      if not ok then error(err, 0) end
    end)
  end)

  describe("scenarios", function()
    it("reject unknown keys and bad timings with a message that names them", function()
      local ok, err = pcall(sim.start, { scenario = "colour: blue\n", serve = false })
      assert.is_false(ok)
      assert.matches('unknown key "colour"', err)
      ok, err = pcall(sim.start, { scenario = "timing: { pod_start: soon }\n", serve = false })
      assert.is_false(ok)
      assert.matches("timing.pod_start", err)
      ok, err = pcall(sim.start, { scenario = "/nonexistent/scenario.yaml", serve = false })
      assert.is_false(ok)
      assert.matches("cannot read scenario /nonexistent/scenario.yaml", err)
    end)

    it("start pods from scratch when warm_start is off, Pending then Running then Ready", function()
      local cold = sim.start({ serve = false, scenario = "extends: default\nwarm_start: false\n",
        timing = { pod_start = "100ms", ready_after = "100ms" } })
      local ok, err = pcall(function()
        local phases = {}
        local p = cold:wait_for(function() return cold:list("pods", "multiship")[1] end, 5)
        phases[#phases + 1] = p.status.phase
        assert.is_true(cold:wait_rollout("multiship", "api", 10) == "complete")
        assert.are.equal("Pending", phases[1])
        local pod = cold:list("pods", "multiship", { label = "app=api,track=main" })[1]
        assert.are.equal("Running", pod.status.phase)
        assert.truthy(pod.status.podIP)
      end)
      cold:close()
      if not ok then error(err, 0) end
    end)
  end)
end)
