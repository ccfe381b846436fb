-- The k8s module's figures beside kubectl's, on the simulated cluster.
--
--   tug lua spec/bench/k8s.lua latency [RUNS]   time from the simulator marking a rollout
--       complete (the store write that makes `kubectl rollout status` succeed) to
--       k8s.rollout_status returning, and to `kubectl rollout status` exiting, on the
--       same kind of rollout (the simulator runs in this process, so both clocks agree)
--   tug lua spec/bench/k8s.lua many [N]         N Deployments updated and awaited at once
--       from one task.parallel (set_image + rollout_status each): total time and this
--       process's RSS, the simulator in a child process; then the same with N concurrent
--       `kubectl set image && kubectl rollout status` pipelines (peak RSS summed)
--   tug lua spec/bench/k8s.lua exec [RUNS]      one command in a pod of deployment/api
--       (a canned answer): k8s.exec's round trip over the WebSocket stream, one after
--       another and 20 at once, against `kubectl exec deployment/api -- echo hello`
-- Nothing is asserted; spec/bench/run.sh prints this beside the other benchmarks.

package.path = "spec/support/?.lua;" .. package.path
local simtest = dofile("spec/support/sim.lua")

local mode = arg[1] or "latency"
local count = tonumber(arg[2])

log.set_level("warn")

local function deployment(name, image, replicas)
  return {
    apiVersion = "apps/v1", kind = "Deployment",
    metadata = { name = name, namespace = "bench" },
    spec = {
      replicas = replicas or 2,
      selector = { matchLabels = { app = name } },
      template = { metadata = { labels = { app = name } }, spec = { containers = { { name = "app", image = image } } } },
    },
  }
end

local function complete(d)
  local st = d.status or {}
  return (st.observedGeneration or 0) >= (d.metadata.generation or 0)
    and (st.updatedReplicas or 0) >= (d.spec.replicas or 0)
    and (st.replicas or 0) <= (st.updatedReplicas or 0)
    and (st.availableReplicas or 0) >= (st.updatedReplicas or 0)
end

local function stats(list)
  table.sort(list)
  local sum = 0
  for _, v in ipairs(list) do sum = sum + v end
  local function pct(p) return list[math.max(1, math.ceil(#list * p))] end
  return ("median %6.1f ms   p90 %6.1f ms   mean %6.1f ms   (%d runs)"):format(pct(0.5) * 1000, pct(0.9) * 1000,
    sum / #list * 1000, #list)
end

local function rss_kb(field)
  local f = io.open("/proc/self/status")
  local text = f:read("a")
  f:close()
  return tonumber(text:match(field .. ":%s+(%d+)"))
end

if mode == "latency" then
  local runs = count or 10
  local cluster = simtest.start({ port = 0, timing = { pod_start = "200ms", ready_after = "300ms" }, scenario = {
    namespace = "bench", objects = { { apiVersion = "v1", kind = "Namespace", metadata = { name = "bench" } } } } })
  local s = cluster.sim
  local c = k8s.connect({ server = cluster.url, namespace = "bench" })
  c:create(deployment("lat", "bench/app:v0"))
  c:rollout_status("lat", { quiet = true, timeout = 30 })

  local armed, complete_at = false, nil
  s.store:on("deployments", function(_, obj)
    if armed and not complete_at and obj.metadata.name == "lat" and complete(obj) then
      complete_at = time.monotonic()
    end
  end)

  local tug_lat, kubectl_lat = {}, {}
  for i = 1, runs do
    complete_at = nil
    armed = true
    c:set_image("lat", { app = "bench/app:t" .. i })
    c:rollout_status("lat", { quiet = true, timeout = 30 })
    tug_lat[#tug_lat + 1] = time.monotonic() - complete_at
    armed = false

    complete_at = nil
    armed = true
    c:set_image("lat", { app = "bench/app:k" .. i })
    local r = cluster:kubectl({ "rollout", "status", "deployment/lat", "--timeout=30s" })
    local t = time.monotonic()
    assert(r.code == 0, r.stderr)
    kubectl_lat[#kubectl_lat + 1] = t - complete_at
    armed = false
  end
  print("tug k8s.rollout_status:   " .. stats(tug_lat))
  print("kubectl rollout status:   " .. stats(kubectl_lat))
  cluster:close()

elseif mode == "exec" then
  local runs = count or 50
  local cluster = simtest.start({ port = 0 })
  cluster.sim:set_exec({ argv = { "echo", "hello" }, stdout = "hello\n" })
  local c = k8s.connect({ kubeconfig = cluster.kubeconfig }, { default = false })
  c:exec("deployment/api", { "echo", "hello" }, { check = true }) -- warm: discovery, the pod list
  local tug_lat, kubectl_lat = {}, {}
  for _ = 1, runs do
    local t0 = time.monotonic()
    c:exec("deployment/api", { "echo", "hello" }, { check = true })
    tug_lat[#tug_lat + 1] = time.monotonic() - t0
  end
  local fns = {}
  for i = 1, 20 do fns[i] = function() return c:exec("deployment/api", { "echo", "hello" }, { check = true }) end end
  local t0 = time.monotonic()
  task.parallel(fns)
  local parallel = time.monotonic() - t0
  for _ = 1, math.min(runs, 20) do
    t0 = time.monotonic()
    local r = cluster:kubectl({ "exec", "deployment/api", "--", "echo", "hello" })
    assert(r.code == 0 and r.stdout == "hello\n", r.stderr)
    kubectl_lat[#kubectl_lat + 1] = time.monotonic() - t0
  end
  print("tug k8s.exec:             " .. stats(tug_lat))
  print(("tug k8s.exec, 20 at once: %.1f ms in all"):format(parallel * 1000))
  print("kubectl exec:             " .. stats(kubectl_lat))
  cluster:close()

elseif mode == "many" then
  local n = count or 100
  local yaml_scenario = table.concat({
    "namespace: bench", "warm_start: false", "objects:",
    "  - { apiVersion: v1, kind: Namespace, metadata: { name: bench } }", "",
  }, "\n")
  local cluster = simtest.start_child({ timing = { pod_start = "200ms", ready_after = "300ms" }, scenario = yaml_scenario })
  local ok, err = pcall(function()
    local c = k8s.connect({ server = cluster.url, namespace = "bench" })
    local names, fns = {}, {}
    for i = 1, n do
      names[i] = ("app-%03d"):format(i)
      fns[i] = function()
        c:create(deployment(names[i], "bench/app:v1"))
        return c:rollout_status(names[i], { quiet = true, timeout = 120 })
      end
    end
    task.parallel(fns)
    local rss_before = rss_kb("VmRSS")
    for i = 1, n do
      fns[i] = function()
        c:set_image(names[i], { app = "bench/app:v2" })
        return c:rollout_status(names[i], { quiet = true, timeout = 120 })
      end
    end
    local t0 = time.monotonic()
    task.parallel(fns)
    local tug_total = time.monotonic() - t0
    print(("tug, one task.parallel:   %d Deployments updated and rolled out in %.2f s; RSS %d KB before, %d KB after, "
      .. "peak %d KB (the simulator runs in another process)"):format(n, tug_total, rss_before, rss_kb("VmRSS"),
      rss_kb("VmHWM")))

    -- the same with kubectl: one pipeline per Deployment, all at once
    local procs = {}
    t0 = time.monotonic()
    for i = 1, n do
      local cmd = ("kubectl --kubeconfig %s -n bench set image deployment/%s app=bench/app:v3 > /dev/null && "
        .. "kubectl --kubeconfig %s -n bench rollout status deployment/%s --timeout=120s > /dev/null"):format(
        cluster.kubeconfig, names[i], cluster.kubeconfig, names[i])
      procs[i] = exec.spawn({ "/usr/bin/time", "-f", "%M", "sh", "-c", cmd }, {
        env = { KUBECACHEDIR = cluster.dir .. "/cache", HOME = cluster.dir }, timeout = 180,
      })
    end
    local peak, failed = 0, 0
    for i = 1, n do
      local r = procs[i]:wait()
      procs[i]:close()
      if r.code ~= 0 then
        failed = failed + 1
        if failed == 1 then io.stderr:write("first kubectl failure: ", r.stderr, "\n") end
      end
      peak = peak + (tonumber(r.stderr:match("(%d+)%s*$")) or 0)
    end
    local kubectl_total = time.monotonic() - t0
    print(("kubectl, %d pipelines:    %d Deployments updated and rolled out in %.2f s; peak RSS of the kubectl "
      .. "processes summed %d KB%s"):format(n, n, kubectl_total, peak, failed > 0 and (", " .. failed .. " failed") or ""))
  end)
  cluster:close()
  if not ok then error(err, 0) end
else
  error("usage: tug lua spec/bench/k8s.lua latency [RUNS] | many [N]")
end
