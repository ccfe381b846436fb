-- kubectl-like API traffic on one Deployment of a simulated cluster, paced, for the soak
-- (spec/soak/run.sh) and for measuring the simulator's memory by hand:
--
--   tug lua spec/soak/traffic.lua KUBECONFIG SECONDS [READS_PER_SECOND]
--
-- What on-call engineers and playbooks send while they watch a deploy: gets, lists (pods
-- by label, ReplicaSets, events, Tables as `kubectl get` asks), short watches as `kubectl
-- get -w` and `rollout status` open them, pod logs, rollout history, application
-- requests through the Service proxy; and writes to deployment/api every few seconds:
-- annotations, scaling between 3 and 5, a new image (v2.1.0 and v2.2.0 in turn, followed
-- by a rollout status), a restart. Prints what it sent at the end; exits 1 when a request
-- failed for a reason other than a conflict (a real server answers those too).

local target = arg[1]
local seconds = tonumber(arg[2])
local rate = tonumber(arg[3]) or 15
if not target or not seconds then
  io.stderr:write("usage: tug lua spec/soak/traffic.lua KUBECONFIG SECONDS [READS_PER_SECOND]\n")
  os.exit(2)
end

log.set_level("warn")
local c = k8s.connect({ kubeconfig = target, namespace = "multiship" })
local base = c.server or c.url
local deadline = time.monotonic() + seconds
local counts, failures = {}, {}

local function count(what, ok, err)
  counts[what] = (counts[what] or 0) + 1
  if not ok then
    local reason = type(err) == "table" and err.reason or nil
    if reason ~= "Conflict" then failures[#failures + 1] = what .. ": " .. tostring(type(err) == "table" and err.message or err) end
  end
end

local function try(what, fn, ...)
  local ok, err = pcall(fn, ...)
  count(what, ok, err)
end

-- What `kubectl get deploy` and friends ask for: Tables.
local TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
local function get_table(path)
  local r = http.get(base .. path, { headers = { accept = TABLE, authorization = "Bearer tug-sim" }, timeout = 10 })
  if r.status ~= 200 then error(("GET %s: %s"):format(path, tostring(r.status or r.message)), 0) end
end

local READS = {
  function() try("get deployment", c.get, c, "deployment", "api") end,
  function() try("list pods app=api", c.list, c, "pods", { labels = "app=api" }) end,
  function() try("list replicasets", c.list, c, "replicasets") end,
  function() try("list events", c.list, c, "events") end,
  function() try("get deploy (Table)", get_table, "/apis/apps/v1/namespaces/multiship/deployments") end,
  function() try("get pods (Table)", get_table, "/api/v1/namespaces/multiship/pods") end,
  function() try("logs deployment/api", c.logs, c, "deployment/api", { tail = 20 }) end,
  function() try("rollout history", c.rollout_history, c, "api") end,
  function()
    try("service proxy /health", function()
      local r = http.get(base .. "/api/v1/namespaces/multiship/services/api/proxy/health", { timeout = 10 })
      if not r.status then error(r.message, 0) end
    end)
  end,
}

local function reader()
  local i = 0
  while time.monotonic() < deadline do
    i = i + 1
    READS[(i - 1) % #READS + 1]()
    task.sleep(1 / rate)
  end
end

-- `kubectl get pods -w` for a few seconds at a time, from the list's resourceVersion.
local function watcher()
  while time.monotonic() < deadline do
    try("watch pods", c.watch, c, "pods", { labels = "app=api", timeout = 5 }, function() return true end)
    task.sleep(0.5)
  end
end

local WRITES = {
  function(n)
    try("annotate", c.patch, c, "deployment", "api", { metadata = { annotations = { ["soak/touched"] = tostring(n) } } })
  end,
  function(n) try("scale", c.scale, c, "api", 3 + n % 3) end,
  function(n)
    local image = n % 2 == 0 and "multiship/api:v2.2.0" or "multiship/api:v2.1.0"
    try("set image", c.set_image, c, "api", { api = image }, { change_cause = "soak " .. n })
    try("rollout status", c.rollout_status, c, "api", { timeout = 60, quiet = true })
  end,
  function()
    try("rollout restart", c.restart, c, "api")
    try("rollout status", c.rollout_status, c, "api", { timeout = 60, quiet = true })
  end,
}

local function writer()
  local n = 0
  while time.monotonic() < deadline do
    n = n + 1
    WRITES[(n - 1) % #WRITES + 1](n)
    task.sleep(3)
  end
end

task.parallel({ reader, watcher, writer })

local names, total = {}, 0
for k, v in pairs(counts) do
  names[#names + 1] = k
  total = total + v
end
table.sort(names)
local parts = {}
for _, k in ipairs(names) do parts[#parts + 1] = k .. " " .. counts[k] end
print(("traffic: %d calls in %d s (%s)"):format(total, seconds, table.concat(parts, ", ")))
if #failures > 0 then
  print(("traffic: %d failed, the first: %s"):format(#failures, failures[1]))
  os.exit(1)
end
