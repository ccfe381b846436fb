-- metrics.lua (sim.metrics): /metrics in the Prometheus text exposition format (0.0.4),
-- so a real Prometheus can scrape the simulator and canary analysis can query it:
--
--   http_requests_total{namespace,service,version,route,method,code}      counter
--   http_request_duration_seconds{namespace,service,version}               histogram
--   apiserver_request_total{verb,resource,code}                            counter
--   kube_deployment_spec_replicas, kube_deployment_status_replicas_*,
--   kube_deployment_status_observed_generation, kube_deployment_metadata_generation,
--   kube_pod_container_status_restarts_total, kube_pod_status_ready        gauges, as
--                                                           kube-state-metrics names them
--   sim_faults_active                                                      gauge

local metrics = {}
local M = {}
M.__index = M

metrics.BUCKETS = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10 }

function metrics.new()
  return setmetatable({ requests = {}, durations = {}, api = {} }, M)
end

local function escape(v)
  return (tostring(v):gsub("\\", "\\\\"):gsub("\n", "\\n"):gsub('"', '\\"'))
end

local function labels(pairs_list)
  local parts = {}
  for i = 1, #pairs_list, 2 do
    parts[#parts + 1] = pairs_list[i] .. '="' .. escape(pairs_list[i + 1]) .. '"'
  end
  return table.concat(parts, ",")
end

-- One request served by a simulated application.
function M:observe(ns, service, version, route, method, code, seconds)
  local key = labels({ "namespace", ns, "service", service, "version", version, "route", route,
    "method", method, "code", tostring(code) })
  self.requests[key] = (self.requests[key] or 0) + 1
  local hkey = labels({ "namespace", ns, "service", service, "version", version })
  local h = self.durations[hkey]
  if not h then
    h = { counts = {}, sum = 0, count = 0 }
    for i = 1, #metrics.BUCKETS do h.counts[i] = 0 end
    self.durations[hkey] = h
  end
  h.sum = h.sum + seconds
  h.count = h.count + 1
  local buckets = metrics.BUCKETS
  for i = 1, #buckets do
    if seconds <= buckets[i] then h.counts[i] = h.counts[i] + 1 end
  end
end

function M:api_request(verb, resource, code)
  local key = labels({ "verb", verb, "resource", resource or "", "code", tostring(code) })
  self.api[key] = (self.api[key] or 0) + 1
end

local function number(n)
  if math.type(n) == "integer" then return tostring(n) end
  if n == math.floor(n) and math.abs(n) < 1e15 then return string.format("%d", n) end
  return string.format("%.9g", n)
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  return keys
end

-- The exposition text; sim gives the store (for cluster gauges) and the faults.
function M:render(sim)
  local out = {}
  local function add(s) out[#out + 1] = s end

  add("# HELP http_requests_total Requests served by the simulated applications, by service, version, route and status code.")
  add("# TYPE http_requests_total counter")
  for _, k in ipairs(sorted_keys(self.requests)) do
    add(("http_requests_total{%s} %s"):format(k, number(self.requests[k])))
  end

  add("# HELP http_request_duration_seconds Latency of the simulated applications' responses.")
  add("# TYPE http_request_duration_seconds histogram")
  for _, k in ipairs(sorted_keys(self.durations)) do
    local h = self.durations[k]
    for i, le in ipairs(metrics.BUCKETS) do
      add(('http_request_duration_seconds_bucket{%s,le="%s"} %d'):format(k, number(le), h.counts[i]))
    end
    add(('http_request_duration_seconds_bucket{%s,le="+Inf"} %d'):format(k, h.count))
    add(("http_request_duration_seconds_sum{%s} %s"):format(k, number(h.sum)))
    add(("http_request_duration_seconds_count{%s} %d"):format(k, h.count))
  end

  add("# HELP apiserver_request_total Requests to the simulated Kubernetes API, by verb, resource and code.")
  add("# TYPE apiserver_request_total counter")
  for _, k in ipairs(sorted_keys(self.api)) do
    add(("apiserver_request_total{%s} %s"):format(k, number(self.api[k])))
  end

  if sim then
    local store = sim.store
    local deployments = store:list("deployments", nil)
    local gauges = {
      { "kube_deployment_spec_replicas", "Number of desired pods for a deployment.", function(d) return d.spec.replicas or 0 end },
      { "kube_deployment_status_replicas", "The number of replicas per deployment.", function(d) return d.status and d.status.replicas or 0 end },
      { "kube_deployment_status_replicas_ready", "The number of ready replicas per deployment.", function(d) return d.status and d.status.readyReplicas or 0 end },
      { "kube_deployment_status_replicas_available", "The number of available replicas per deployment.", function(d) return d.status and d.status.availableReplicas or 0 end },
      { "kube_deployment_status_replicas_unavailable", "The number of unavailable replicas per deployment.", function(d) return d.status and d.status.unavailableReplicas or 0 end },
      { "kube_deployment_status_replicas_updated", "The number of updated replicas per deployment.", function(d) return d.status and d.status.updatedReplicas or 0 end },
      { "kube_deployment_status_observed_generation", "The generation observed by the deployment controller.", function(d) return d.status and d.status.observedGeneration or 0 end },
      { "kube_deployment_metadata_generation", "Sequence number representing a specific generation of the desired state.", function(d) return d.metadata.generation or 0 end },
    }
    for _, g in ipairs(gauges) do
      add("# HELP " .. g[1] .. " " .. g[2])
      add("# TYPE " .. g[1] .. " gauge")
      for _, d in ipairs(deployments) do
        add(("%s{%s} %s"):format(g[1], labels({ "namespace", d.metadata.namespace, "deployment", d.metadata.name }), number(g[3](d))))
      end
    end
    local pods = store:list("pods", nil)
    add("# HELP kube_pod_container_status_restarts_total The number of container restarts per container.")
    add("# TYPE kube_pod_container_status_restarts_total counter")
    for _, p in ipairs(pods) do
      for _, cs in ipairs(p.status and p.status.containerStatuses or {}) do
        add(("kube_pod_container_status_restarts_total{%s} %d"):format(labels({ "namespace", p.metadata.namespace,
          "pod", p.metadata.name, "container", cs.name }), cs.restartCount or 0))
      end
    end
    add("# HELP kube_pod_status_ready Describes whether the pod is ready to serve requests.")
    add("# TYPE kube_pod_status_ready gauge")
    for _, p in ipairs(pods) do
      local ready = "false"
      for _, c in ipairs(p.status and p.status.conditions or {}) do
        if c.type == "Ready" and c.status == "True" then ready = "true" end
      end
      for _, cond in ipairs({ "true", "false" }) do
        add(("kube_pod_status_ready{%s} %d"):format(labels({ "namespace", p.metadata.namespace, "pod", p.metadata.name,
          "condition", cond }), cond == ready and 1 or 0))
      end
    end
    add("# HELP sim_faults_active Faults injected into the simulator right now.")
    add("# TYPE sim_faults_active gauge")
    add(("sim_faults_active %d"):format(#sim.faults.list))
  end
  return table.concat(out, "\n") .. "\n"
end

return metrics
