-- tables.lua (sim.tables): server-side printing. `kubectl get` asks for a meta.k8s.io/v1
-- Table; these are the columns and cells a real API server sends for each kind (the
-- printers of pkg/printers/internalversion), so `kubectl get` output looks as it would
-- against a real cluster.

local json = require("json")
local util = require("sim.util")

local tables = {}

local function col(name, typ, desc, priority, format)
  return { name = name, type = typ, format = format or "", description = desc or "", priority = priority or 0 }
end

local NAME = col("Name", "string", "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated.", 0, "name")
local AGE = col("Age", "string", "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.")

local function containers_and_images(spec)
  local names, images = {}, {}
  for _, c in ipairs(spec and spec.containers or {}) do
    names[#names + 1] = c.name or ""
    images[#images + 1] = c.image or ""
  end
  return table.concat(names, ","), table.concat(images, ",")
end

local function age(obj, now) return util.age(obj.metadata.creationTimestamp, now) end

-- The STATUS and READY/RESTARTS of a pod, as printPod computes them.
function tables.pod_summary(pod, now)
  local status = pod.status or {}
  local reason = status.reason or status.phase or "Pending"
  local total, ready, restarts = 0, 0, 0
  local last_restart
  local has_running = false
  local statuses = status.containerStatuses or {}
  total = #(pod.spec and pod.spec.containers or {})
  for i = #statuses, 1, -1 do
    local c = statuses[i]
    restarts = restarts + (c.restartCount or 0)
    local lt = c.lastState and c.lastState.terminated
    if lt and lt.finishedAt then
      local t = util.parse_time(lt.finishedAt)
      if t and (not last_restart or t > last_restart) then last_restart = t end
    end
    local st = c.state or {}
    if st.waiting and st.waiting.reason and st.waiting.reason ~= "" then
      reason = st.waiting.reason
    elseif st.terminated and st.terminated.reason and st.terminated.reason ~= "" then
      reason = st.terminated.reason
    elseif st.terminated then
      reason = st.terminated.signal and ("Signal:" .. st.terminated.signal) or ("ExitCode:" .. (st.terminated.exitCode or 0))
    elseif c.ready and st.running then
      has_running = true
      ready = ready + 1
    end
  end
  if reason == "Completed" and has_running then reason = "Running" end
  if pod.metadata.deletionTimestamp then reason = "Terminating" end
  local restarts_text = tostring(restarts)
  if last_restart then
    restarts_text = ("%d (%s ago)"):format(restarts, util.human_duration((now or util.now()) - last_restart))
  end
  return ("%d/%d"):format(ready, total), reason, restarts_text
end

local function none(v)
  if v == nil or v == "" then return "<none>" end
  return v
end

local PRINTERS = {}

PRINTERS.pods = {
  columns = {
    NAME,
    col("Ready", "string", "The aggregate readiness state of this pod for accepting traffic."),
    col("Status", "string", "The aggregate status of the containers in this pod."),
    col("Restarts", "string", "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
    AGE,
    col("IP", "string", "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.", 1),
    col("Node", "string", "NodeName is a request to schedule this pod onto a specific node.", 1),
    col("Nominated Node", "string", "nominatedNodeName is set only when this pod preempts other pods on the node.", 1),
    col("Readiness Gates", "string", "If specified, all readiness gates will be evaluated for pod readiness.", 1),
  },
  cells = function(o, now)
    local ready, reason, restarts = tables.pod_summary(o, now)
    local status = o.status or {}
    return { o.metadata.name, ready, reason, restarts, age(o, now), none(status.podIP),
      none(o.spec and o.spec.nodeName), none(status.nominatedNodeName), "<none>" }
  end,
}

PRINTERS.deployments = {
  columns = {
    NAME,
    col("Ready", "string", "Number of the pod with ready state"),
    col("Up-to-date", "integer", "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
    col("Available", "integer", "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
    AGE,
    col("Containers", "string", "Names of each container in the template.", 1),
    col("Images", "string", "Images referenced by each container in the template.", 1),
    col("Selector", "string", "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.", 1),
  },
  cells = function(o, now)
    local st = o.status or {}
    local names, images = containers_and_images(o.spec.template and o.spec.template.spec)
    return { o.metadata.name, ("%d/%d"):format(st.readyReplicas or 0, o.spec.replicas or 0),
      st.updatedReplicas or 0, st.availableReplicas or 0, age(o, now), names, images,
      util.format_selector(o.spec.selector) }
  end,
}

PRINTERS.replicasets = {
  columns = {
    NAME,
    col("Desired", "integer", "Replicas is the number of desired replicas."),
    col("Current", "integer", "Replicas is the most recently observed number of replicas."),
    col("Ready", "integer", "The number of ready replicas for this replica set."),
    AGE,
    col("Containers", "string", "Names of each container in the template.", 1),
    col("Images", "string", "Images referenced by each container in the template.", 1),
    col("Selector", "string", "Selector is a label query over pods that should match the replica count.", 1),
  },
  cells = function(o, now)
    local st = o.status or {}
    local names, images = containers_and_images(o.spec.template and o.spec.template.spec)
    return { o.metadata.name, o.spec.replicas or 0, st.replicas or 0, st.readyReplicas or 0, age(o, now),
      names, images, util.format_selector(o.spec.selector) }
  end,
}

local function service_ports(spec)
  local parts = {}
  for _, p in ipairs(spec.ports or {}) do
    local s = tostring(p.port)
    if p.nodePort then s = s .. ":" .. p.nodePort end
    parts[#parts + 1] = s .. "/" .. (p.protocol or "TCP")
  end
  if #parts == 0 then return "<none>" end
  return table.concat(parts, ",")
end

PRINTERS.services = {
  columns = {
    NAME,
    col("Type", "string", "type determines how the Service is exposed."),
    col("Cluster-IP", "string", "clusterIP is the IP address of the service and is usually assigned randomly."),
    col("External-IP", "string", "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service."),
    col("Port(s)", "string", "The list of ports that are exposed by this service."),
    AGE,
    col("Selector", "string", "Route service traffic to pods with label keys and values matching this selector.", 1),
  },
  cells = function(o, now)
    local spec = o.spec or {}
    local external = "<none>"
    if spec.type == "ExternalName" then external = spec.externalName or "<none>" end
    if spec.type == "LoadBalancer" then external = "<pending>" end
    local selector = util.format_labels(spec.selector)
    return { o.metadata.name, spec.type or "ClusterIP", spec.clusterIP or "<none>", external, service_ports(spec),
      age(o, now), selector == "" and "<none>" or selector }
  end,
}

PRINTERS.namespaces = {
  columns = { NAME, col("Status", "string", "The status of the namespace"), AGE },
  cells = function(o, now)
    return { o.metadata.name, (o.status and o.status.phase) or "Active", age(o, now) }
  end,
}

PRINTERS.configmaps = {
  columns = { NAME, col("Data", "integer", "Data contains the configuration data."), AGE },
  cells = function(o, now)
    local n = 0
    for _ in pairs(o.data or {}) do n = n + 1 end
    for _ in pairs(o.binaryData or {}) do n = n + 1 end
    return { o.metadata.name, n, age(o, now) }
  end,
}

PRINTERS.leases = {
  columns = { NAME, col("Holder", "string", "holderIdentity contains the identity of the holder of a current lease."), AGE },
  cells = function(o, now)
    return { o.metadata.name, (o.spec and o.spec.holderIdentity) or "", age(o, now) }
  end,
}

PRINTERS.events = {
  columns = {
    col("Last Seen", "string", "The time at which the most recent occurrence of this event was recorded."),
    col("Type", "string", "Type of this event (Normal, Warning), new types could be added in the future."),
    col("Reason", "string", "This should be a short, machine understandable string that gives the reason for the transition into the object's current status."),
    col("Object", "string", "The object that this event is about."),
    col("Subobject", "string", "The subobject (field) this event is about.", 1),
    col("Source", "string", "The component reporting this event.", 1),
    col("Message", "string", "A human-readable description of the status of this operation."),
    col("First Seen", "string", "The time at which the event was first recorded.", 1),
    col("Count", "string", "The number of times this event has occurred.", 1),
    col("Name", "string", "Name of the event.", 1, "name"),
  },
  cells = function(o, now)
    local last = o.lastTimestamp or o.eventTime or o.metadata.creationTimestamp
    local first = o.firstTimestamp or o.eventTime or o.metadata.creationTimestamp
    local inv = o.involvedObject or {}
    local src = o.source and o.source.component or o.reportingComponent or ""
    if o.source and o.source.host then src = src .. ", " .. o.source.host end
    return { util.age(last, now), o.type or "", o.reason or "", (inv.kind or ""):lower() .. "/" .. (inv.name or ""),
      inv.fieldPath or "", src, o.message or "", util.age(first, now), tostring(o.count or 1), o.metadata.name }
  end,
}

local function partial(obj, include)
  if include == "None" then return nil end
  if include == "Object" then return obj end
  local m = obj.metadata
  return {
    kind = "PartialObjectMetadata", apiVersion = "meta.k8s.io/v1",
    metadata = m,
  }
end

local function row(printer, obj, include, now)
  local r = { cells = json.array(printer.cells(obj, now)) }
  local o = partial(obj, include)
  if o then r.object = o end
  return r
end

-- A Table of objects; with_columns false leaves columnDefinitions out (watch events
-- after the first). include: "Metadata" (default), "Object" or "None".
function tables.table(resource, objects, meta, include, with_columns)
  local printer = PRINTERS[resource]
  local now = util.now()
  local rows = json.array()
  for i, obj in ipairs(objects) do rows[i] = row(printer, obj, include, now) end
  local t = { kind = "Table", apiVersion = "meta.k8s.io/v1", metadata = meta or {}, rows = rows }
  if with_columns ~= false then
    local cols = json.array()
    for i, c in ipairs(printer.columns) do cols[i] = c end
    t.columnDefinitions = cols
  else
    t.columnDefinitions = json.null
  end
  return t
end

function tables.supported(resource) return PRINTERS[resource] ~= nil end

-- Whether an Accept header asks for a Table (as=Table;g=meta.k8s.io) before plain JSON.
function tables.wanted(accept)
  if type(accept) ~= "string" then return false end
  for part in accept:gmatch("[^,]+") do
    local p = part:gsub("%s", "")
    if p:find("as=Table", 1, true) and p:find("g=meta.k8s.io", 1, true) then
      return p:find("v=v1", 1, true) ~= nil and not p:find("v=v1beta1", 1, true) and "v1" or "v1beta1"
    end
    if p:match("^application/json") then return false end
  end
  return false
end

return tables
