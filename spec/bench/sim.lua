-- The simulated cluster under load: N Deployments of R replicas each (default 1,000 x
-- 10 = 10,000 pods) brought up, then all rolled out to a new image at once. Prints the
-- time until every Deployment is complete (updated, available, old pods gone), and the
-- latency of API list requests sent over HTTP every 100 ms while it happens.
--   tug lua spec/bench/sim.lua [N] [R]
-- Peak RSS comes from /usr/bin/time in spec/bench/run.sh.

local n = tonumber(arg[1]) or 1000
local replicas = tonumber(arg[2]) or 10

local s = sim.start({
  port = 0,
  scenario = {
    namespace = "bench",
    warm_start = false,
    timing = { pod_start = "100ms", ready_after = "100ms" },
    objects = { { apiVersion = "v1", kind = "Namespace", metadata = { name = "bench" } } },
  },
})

local function deployment(i, image)
  local name = ("app-%04d"):format(i)
  return {
    apiVersion = "apps/v1", kind = "Deployment",
    metadata = { name = name, namespace = "bench" },
    spec = {
      replicas = replicas,
      selector = { matchLabels = { app = name } },
      template = {
        metadata = { labels = { app = name } },
        spec = { containers = { { name = "app", image = image, ports = { { containerPort = 8080 } } } } },
      },
    },
  }
end

-- Counts complete Deployments (what `kubectl rollout status` calls success).
local function complete_count()
  local done = 0
  for _, d in ipairs(s.store:list("deployments", "bench")) do
    local st = d.status or {}
    if (st.observedGeneration or 0) >= d.metadata.generation and (st.updatedReplicas or 0) == replicas
      and (st.replicas or 0) == replicas and (st.availableReplicas or 0) == replicas then
      done = done + 1
    end
  end
  return done
end

local function wait_all()
  local t0 = time.monotonic()
  while complete_count() < n do task.sleep(0.05) end
  return time.monotonic() - t0
end

-- List requests over HTTP every 100 ms until stopped; returns their latencies.
local function sample_lists(stop)
  local lat = {}
  local paths = {
    "/apis/apps/v1/namespaces/bench/deployments",
    "/api/v1/namespaces/bench/pods?labelSelector=app%3Dapp-0500",
    "/api/v1/namespaces/bench/pods?limit=500",
  }
  local i = 0
  while not stop.now do
    i = i + 1
    local path = paths[(i - 1) % #paths + 1]
    local t0 = time.monotonic()
    local r = http.get(s.url .. path, { timeout = 30 })
    lat[#lat + 1] = { path = path, seconds = time.monotonic() - t0, status = r.status }
    task.sleep(0.1)
  end
  return lat
end

local function summary(lat, path)
  local xs = {}
  for _, l in ipairs(lat) do
    if l.path == path then xs[#xs + 1] = l.seconds end
  end
  table.sort(xs)
  if #xs == 0 then return "no samples" end
  local function q(p) return xs[math.max(1, math.ceil(#xs * p))] * 1000 end
  return ("%3d lists  p50 %6.1f ms  p90 %6.1f ms  max %6.1f ms"):format(#xs, q(0.5), q(0.9), xs[#xs] * 1000)
end

local t0 = time.monotonic()
for i = 1, n do assert(s:create(deployment(i, "bench/app:v1"))) end
local created = time.monotonic() - t0
local up = wait_all()
print(("sim: %d Deployments x %d replicas created in %.2f s, all Available %.2f s later (%d pods)")
  :format(n, replicas, created, up, s.store:count("pods")))

local stop = { now = false }
local sampler = task.spawn(sample_lists, stop)
t0 = time.monotonic()
for i = 1, n do
  assert(s:patch("deployments", "bench", ("app-%04d"):format(i), "strategic",
    { spec = { template = { spec = { containers = { { name = "app", image = "bench/app:v2" } } } } } }))
end
local patched = time.monotonic() - t0
local rolled = wait_all()
stop.now = true
local lat = sampler:wait()
print(("sim: %d rolling updates started in %.2f s; every Deployment complete %.2f s after the last (pod start %s + ready %s)")
  :format(n, patched, rolled, "100ms", "100ms"))
print(("sim: %d writes in all (resourceVersion), %d controller syncs"):format(s.store.rv, s.controller.syncs))
print("sim: API list latency during the rollout (HTTP, this process):")
print("  deployments (" .. n .. "):              " .. summary(lat, "/apis/apps/v1/namespaces/bench/deployments"))
print("  pods by label (" .. replicas .. "):              " .. summary(lat, "/api/v1/namespaces/bench/pods?labelSelector=app%3Dapp-0500"))
print("  pods, first page of 500:         " .. summary(lat, "/api/v1/namespaces/bench/pods?limit=500"))
s:close()
