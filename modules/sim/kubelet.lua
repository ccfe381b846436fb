-- kubelet.lua (sim.kubelet): what the scheduler and the kubelet do to a pod in the
-- simulated cluster. A new pod is bound to the node, waits `pod_start` in
-- ContainerCreating, runs, and turns Ready `ready_after` later, each step a status
-- write (so watches and controllers see it) and the events a real node records.
-- What a pod's image version does (scenario and faults, see sim.faults) decides the
-- rest: crash loops (Error, CrashLoopBackOff with doubling back-off, restartCount),
-- readiness that never passes, ErrImagePull / ImagePullBackOff. A pod being deleted
-- with a grace period turns unready, is stopped, and goes after `terminate_after`.
-- Container logs live here, not in the store: `kubectl logs` reads them.

local json = require("json")
local util = require("sim.util")

local kubelet = {}
local Kubelet = {}
Kubelet.__index = Kubelet

local NODE = "sim-node-1"
local HOST_IP = "172.18.0.2"
local MAX_LOG_LINES = 2000
local MAX_BACKOFF_FACTOR = 30 -- back-off doubles up to restart_backoff * this (10 s -> 5 min in Kubernetes)

-- sim: { store, clock, faults, recorder, timing }
function kubelet.new(sim)
  local k = setmetatable({
    sim = sim,
    store = sim.store,
    clock = sim.clock,
    pods = {}, -- uid -> state { key, ns, name, timer, logs, previous, backoff, ... }
    next_ip = 1,
    instant = false, -- warm start: every step at once
  }, Kubelet)
  sim.store:on("pods", function(kind, obj, old) k:observe(kind, obj, old) end)
  return k
end

function Kubelet:timing(name, behaviour)
  if self.instant then return 0 end
  if behaviour and behaviour[name] then return behaviour[name] end
  return self.sim.timing[name] or 0
end

local function now_ts(self) return util.timestamp(self.clock:now()) end

local function condition(typ, status, ts, reason, message)
  return { type = typ, status = status, lastProbeTime = json.null, lastTransitionTime = ts, reason = reason, message = message }
end

-- Sets condition typ on status (keeping lastTransitionTime when status does not change).
local function set_condition(st, typ, value, ts, reason, message)
  st.conditions = st.conditions or json.array()
  for _, c in ipairs(st.conditions) do
    if c.type == typ then
      if c.status ~= value then c.lastTransitionTime = ts end
      c.status, c.reason, c.message = value, reason, message
      return
    end
  end
  st.conditions[#st.conditions + 1] = condition(typ, value, ts, reason, message)
end

-- ---- logs ----

function Kubelet:log(state, container, line)
  state.logs[container] = state.logs[container] or {}
  local lines = state.logs[container]
  lines[#lines + 1] = util.micro_timestamp(self.clock:now()) .. " " .. line
  if #lines > MAX_LOG_LINES then table.remove(lines, 1) end
  state.written = state.written or {}
  state.written[container] = (state.written[container] or 0) + 1
end

-- For `logs -f`: the lines of the pod's container written since the count `seen` (as
-- text, timestamps kept or not) and the new count; nil when the pod is gone.
function Kubelet:log_since(pod, container, seen, timestamps)
  local state = self.pods[pod.metadata.uid]
  if not state then return nil end
  container = container or (pod.spec.containers[1] and pod.spec.containers[1].name)
  local total = state.written and state.written[container] or 0
  if total <= seen then return "", total end
  local lines = state.logs[container] or {}
  local out = {}
  for i = math.max(1, #lines - (total - seen) + 1), #lines do
    local line = lines[i]
    if not timestamps then line = line:gsub("^%S+ ", "", 1) end
    out[#out + 1] = line
  end
  return #out > 0 and (table.concat(out, "\n") .. "\n") or "", total
end

-- A request served by a pod (sim.apps) goes into its container's log.
function Kubelet:append_log(pod, line)
  local state = self.pods[pod.metadata.uid]
  if not state then return end
  local c = pod.spec.containers[1]
  if c then self:log(state, c.name, line) end
end

local function behaviour_of(self, image)
  return self.sim.faults:behaviour(image)
end

local function process_env(c)
  for _, e in ipairs(c.env or {}) do
    if e.name == "NODE_ENV" and e.value then return "NODE_ENV=" .. e.value end
  end
  return "NODE_ENV=production"
end

-- The lines a container prints when it starts.
local function startup_lines(self, state, pod, c)
  local _, tag = util.split_image(c.image)
  local app = self.sim.faults:app_of(c.image)
  if app == "multiship" then
    self:log(state, c.name, ("INFO  multiship-api %s starting (%s)"):format(tag, process_env(c)))
    self:log(state, c.name, "INFO  database: connected to postgresql (pool size 10)")
    self:log(state, c.name, "INFO  providers: easypost, shippo, veeqo clients ready")
    self:log(state, c.name, "INFO  listening on :8080")
  else
    self:log(state, c.name, ("INFO  %s %s started"):format(c.name, tag))
  end
end

-- ---- status writes ----

-- Applies fn to a copy of the pod's status and writes it; returns the new pod or nil
-- (the pod is gone, or being deleted when only_live).
function Kubelet:write(state, fn, only_live)
  local pod = self.store:get("pods", state.ns, state.name)
  if not pod then return nil end
  if only_live and pod.metadata.deletionTimestamp then return nil end
  local p = util.shallow(pod)
  p.metadata = util.shallow(pod.metadata)
  p.status = util.copy(pod.status or {})
  fn(p.status, p)
  p.metadata.resourceVersion = nil
  return (self.store:update("pods", p, { subresource = "status", internal = true }))
end

local function container_status(c, ts)
  return {
    name = c.name, image = c.image, imageID = "", ready = false, restartCount = 0, started = false,
    state = { waiting = { reason = "ContainerCreating" } }, lastState = {},
  }
end

local function image_id(image)
  local repo = util.split_image(image)
  local core = require("sim.core")
  return ("docker.io/%s@sha256:%08x%08x%08x%08x"):format(repo, core.fnv32a(image), core.fnv32a(image .. "1"),
    core.fnv32a(image .. "2"), core.fnv32a(image .. "3"))
end

function Kubelet:cancel(state)
  if state.timer then
    state.timer.cancel()
    state.timer = nil
  end
end

function Kubelet:schedule_step(state, seconds, fn)
  self:cancel(state)
  state.timer = self.clock:after(seconds, function()
    state.timer = nil
    if self.pods[state.uid] == state then fn() end
  end)
end

-- ---- the steps ----

-- Bound to the node: Pending, ContainerCreating.
function Kubelet:bind(state)
  local pod = self.store:get("pods", state.ns, state.name)
  if not pod or pod.metadata.deletionTimestamp then return end
  -- the scheduler binds the pod to the node and the kubelet reports it Pending: one write
  local p = util.shallow(pod)
  p.metadata = util.shallow(pod.metadata)
  p.spec = util.shallow(pod.spec)
  p.spec.nodeName = NODE
  p.metadata.resourceVersion = nil
  p.status = util.copy(pod.status or {})
  local ts = now_ts(self)
  local function fill(st, obj)
    st.phase = "Pending"
    st.hostIP = HOST_IP
    st.hostIPs = json.array({ { ip = HOST_IP } })
    st.startTime = ts
    st.qosClass = st.qosClass or "BestEffort"
    set_condition(st, "PodReadyToStartContainers", "False", ts)
    set_condition(st, "Initialized", "True", ts)
    set_condition(st, "Ready", "False", ts, "ContainersNotReady", "containers with unready status: [" .. state.names .. "]")
    set_condition(st, "ContainersReady", "False", ts, "ContainersNotReady", "containers with unready status: [" .. state.names .. "]")
    set_condition(st, "PodScheduled", "True", ts)
    local list = json.array()
    for i, c in ipairs(obj.spec.containers) do list[i] = container_status(c, ts) end
    st.containerStatuses = list
  end
  fill(p.status, p)
  pod = self.store:update("pods", p, { binding = true, internal = true })
  if not pod then return end
  self.sim.recorder:record(pod, "Normal", "Scheduled",
    ("Successfully assigned %s/%s to %s"):format(state.ns, state.name, NODE), "default-scheduler")
  local delay = self:timing("pod_start", self:pod_behaviour(pod))
  self:schedule_step(state, delay, function() self:start(state) end)
end

-- The pod's behaviour: the worst of its containers' (pull errors before crash loops
-- before unreadiness).
function Kubelet:pod_behaviour(pod)
  local worst
  for _, c in ipairs(pod.spec.containers or {}) do
    local b = behaviour_of(self, c.image)
    if not worst then
      worst = b
    elseif b.pull_error and not worst.pull_error then
      worst = b
    elseif b.crash_loop and not (worst.pull_error or worst.crash_loop) then
      worst = b
    elseif b.ready == false and worst.ready ~= false and not (worst.pull_error or worst.crash_loop) then
      worst = b
    end
  end
  return worst or behaviour_of(self, "")
end

-- Containers start (or fail to pull).
function Kubelet:start(state)
  local pod = self.store:get("pods", state.ns, state.name)
  if not pod or pod.metadata.deletionTimestamp then return end
  local b = self:pod_behaviour(pod)
  local rec = self.sim.recorder
  local ts = now_ts(self)
  if b.pull_error then
    local first = not state.pull_failed
    state.pull_failed = true
    pod = self:write(state, function(st, obj)
      for i, c in ipairs(obj.spec.containers) do
        local cs = st.containerStatuses[i] or container_status(c, ts)
        cs.state = { waiting = { reason = first and "ErrImagePull" or "ImagePullBackOff",
          message = first and ("failed to pull and unpack image %q: not found"):format(c.image)
            or ("Back-off pulling image %q"):format(c.image) } }
        st.containerStatuses[i] = cs
      end
    end, true)
    if not pod then return end
    for _, c in ipairs(pod.spec.containers) do
      if first then
        rec:record(pod, "Normal", "Pulling", ("Pulling image %q"):format(c.image), "kubelet", "spec.containers{" .. c.name .. "}")
        rec:record(pod, "Warning", "Failed", ("Failed to pull image %q: not found"):format(c.image), "kubelet", "spec.containers{" .. c.name .. "}")
      else
        rec:record(pod, "Normal", "BackOff", ("Back-off pulling image %q"):format(c.image), "kubelet", "spec.containers{" .. c.name .. "}")
      end
    end
    self:schedule_step(state, self:backoff(state), function() self:start(state) end)
    return
  end
  state.pull_failed = nil
  if not state.ip then
    self.next_ip = self.next_ip + 1
    local n = self.next_ip
    state.ip = ("10.244.%d.%d"):format(n // 250, n % 250 + 1)
  end
  local restarting = state.started_once
  pod = self:write(state, function(st, obj)
    st.phase = "Running"
    st.podIP = state.ip
    st.podIPs = json.array({ { ip = state.ip } })
    set_condition(st, "PodReadyToStartContainers", "True", ts)
    for i, c in ipairs(obj.spec.containers) do
      local cs = st.containerStatuses[i] or container_status(c, ts)
      cs.image, cs.imageID = c.image, image_id(c.image)
      cs.containerID = ("containerd://%08x%08x"):format(math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
      cs.state = { running = { startedAt = ts } }
      cs.started, cs.ready = true, false
      st.containerStatuses[i] = cs
    end
  end, true)
  if not pod then return end
  state.started_once = true
  state.started_at = self.clock:now()
  for _, c in ipairs(pod.spec.containers) do
    local where = "spec.containers{" .. c.name .. "}"
    if not restarting then
      rec:record(pod, "Normal", "Pulled", ("Container image %q already present on machine"):format(c.image), "kubelet", where)
    end
    rec:record(pod, "Normal", "Created", "Created container " .. c.name, "kubelet", where)
    rec:record(pod, "Normal", "Started", "Started container " .. c.name, "kubelet", where)
    startup_lines(self, state, pod, c)
  end
  self:after_start(state, pod, b)
end

-- What happens to a running container next: a crash, readiness, or nothing.
function Kubelet:after_start(state, pod, b)
  if b.crash_loop then
    self:schedule_step(state, self:timing("crash_after", b), function() self:crash(state) end)
  elseif b.ready ~= false then
    self:schedule_step(state, self:timing("ready_after", b), function() self:set_ready(state, true) end)
  else
    self:cancel(state)
    local c = pod.spec.containers[1]
    self.sim.recorder:record(pod, "Warning", "Unhealthy", "Readiness probe failed: HTTP probe failed with statuscode: 503",
      "kubelet", "spec.containers{" .. c.name .. "}")
    self:log(state, c.name, "WARN  readiness check failing: dependencies not ready")
  end
end

function Kubelet:set_ready(state, ready)
  local ts = now_ts(self)
  local pod = self:write(state, function(st)
    local names = {}
    for _, cs in ipairs(st.containerStatuses or {}) do
      if cs.state and cs.state.running then cs.ready = ready end
      if not cs.ready then names[#names + 1] = cs.name end
    end
    local all = #names == 0
    if all then
      set_condition(st, "Ready", "True", ts)
      set_condition(st, "ContainersReady", "True", ts)
    else
      local msg = "containers with unready status: [" .. table.concat(names, " ") .. "]"
      set_condition(st, "Ready", "False", ts, "ContainersNotReady", msg)
      set_condition(st, "ContainersReady", "False", ts, "ContainersNotReady", msg)
    end
  end, true)
  state.ready = ready and pod ~= nil
  if pod and ready then state.backoff = nil end
  return pod
end

function Kubelet:backoff(state)
  local base = self:timing("restart_backoff")
  if base <= 0 then return 0 end
  local current = state.backoff or base
  state.backoff = math.min(current * 2, base * MAX_BACKOFF_FACTOR)
  return current
end

-- The container exits with an error; it restarts after a back-off.
function Kubelet:crash(state)
  local ts = now_ts(self)
  local delay = self:backoff(state)
  local pod = self:write(state, function(st, obj)
    for i, cs in ipairs(st.containerStatuses or {}) do
      local started = cs.state and cs.state.running and cs.state.running.startedAt or ts
      cs.lastState = { terminated = { exitCode = 1, reason = "Error", startedAt = started, finishedAt = ts,
        containerID = cs.containerID } }
      cs.state = { waiting = { reason = "CrashLoopBackOff",
        message = ("back-off %s restarting failed container=%s pod=%s_%s(%s)"):format(
          util.human_duration(math.max(delay, 1)), cs.name, obj.metadata.name, obj.metadata.namespace, obj.metadata.uid) } }
      cs.ready, cs.started = false, false
      cs.restartCount = (cs.restartCount or 0) + 1
    end
    local names = {}
    for _, cs in ipairs(st.containerStatuses or {}) do names[#names + 1] = cs.name end
    local msg = "containers with unready status: [" .. table.concat(names, " ") .. "]"
    set_condition(st, "Ready", "False", ts, "ContainersNotReady", msg)
    set_condition(st, "ContainersReady", "False", ts, "ContainersNotReady", msg)
  end, true)
  if not pod then return end
  state.ready = false
  for _, c in ipairs(pod.spec.containers) do
    self:log(state, c.name, "ERROR unhandled exception: connection to database lost during startup; exiting with code 1")
    state.previous = state.previous or {}
    state.previous[c.name] = state.logs[c.name]
    state.logs[c.name] = {}
    self.sim.recorder:record(pod, "Warning", "BackOff", ("Back-off restarting failed container %s in pod %s_%s(%s)")
      :format(c.name, pod.metadata.name, pod.metadata.namespace, pod.metadata.uid), "kubelet", "spec.containers{" .. c.name .. "}")
  end
  self:schedule_step(state, delay, function() self:start(state) end)
end

-- A faults change: pods of the version it names act on it now.
function Kubelet:refresh(fault)
  for _, state in pairs(self.pods) do
    local pod = self.store:get("pods", state.ns, state.name)
    if pod and not pod.metadata.deletionTimestamp and pod.spec.nodeName then
      local hit = false
      for _, c in ipairs(pod.spec.containers) do
        local repo, tag = util.split_image(c.image)
        if (fault.version == nil or fault.version == tag) and (fault.image == nil or fault.image == repo) then hit = true end
      end
      if hit then self:reconsider(state, pod) end
    end
  end
end

function Kubelet:reconsider(state, pod)
  local b = self:pod_behaviour(pod)
  local running = false
  for _, cs in ipairs(pod.status.containerStatuses or {}) do
    if cs.state and cs.state.running then running = true end
  end
  if not running then
    -- waiting (creating, backing off, failing to pull): the next start sees the change
    if state.timer == nil and pod.status.phase ~= nil then
      self:schedule_step(state, 0, function() self:start(state) end)
    end
    return
  end
  if b.crash_loop then
    self:schedule_step(state, self:timing("crash_after", b), function() self:crash(state) end)
  elseif b.ready == false then
    if state.ready then
      self:cancel(state)
      self:set_ready(state, false)
      local c = pod.spec.containers[1]
      self.sim.recorder:record(pod, "Warning", "Unhealthy", "Readiness probe failed: HTTP probe failed with statuscode: 503",
        "kubelet", "spec.containers{" .. c.name .. "}")
    else
      self:cancel(state)
    end
  elseif not state.ready and not state.timer then
    self:schedule_step(state, self:timing("ready_after", b), function() self:set_ready(state, true) end)
  end
end

-- ---- termination ----

function Kubelet:terminate(state, pod)
  self:cancel(state)
  if not state.terminating then
    state.terminating = true
    for _, c in ipairs(pod.spec.containers) do
      self.sim.recorder:record(pod, "Normal", "Killing", "Stopping container " .. c.name, "kubelet", "spec.containers{" .. c.name .. "}")
      self:log(state, c.name, "INFO  SIGTERM received: draining connections")
    end
    self:write(state, function(st)
      local ts = now_ts(self)
      for _, cs in ipairs(st.containerStatuses or {}) do cs.ready = false end
      set_condition(st, "Ready", "False", ts, "ContainersNotReady", "containers with unready status: [" .. state.names .. "]")
      set_condition(st, "ContainersReady", "False", ts, "ContainersNotReady", "containers with unready status: [" .. state.names .. "]")
    end)
  end
  -- the container stops within its grace period; the scenario says how long it takes
  local grace = pod.metadata.deletionGracePeriodSeconds or 0
  local delay = math.min(math.max(grace, 0), self:timing("terminate_after"))
  if self.instant then delay = 0 end
  state.timer = self.clock:after(delay, function()
    state.timer = nil
    if self.store:get("pods", state.ns, state.name) then
      self.store:delete("pods", state.ns, state.name, { grace = 0 })
    end
  end)
end

-- ---- watching the store ----

function Kubelet:observe(kind, pod, old)
  local uid = pod.metadata.uid
  if kind == "DELETED" then
    local state = self.pods[uid]
    if state then
      self:cancel(state)
      self.pods[uid] = nil
    end
    return
  end
  local state = self.pods[uid]
  if kind == "ADDED" and not state then
    local names = {}
    for _, c in ipairs(pod.spec.containers or {}) do names[#names + 1] = c.name end
    state = { uid = uid, ns = pod.metadata.namespace, name = pod.metadata.name, logs = {}, names = table.concat(names, " ") }
    self.pods[uid] = state
    if pod.metadata.deletionTimestamp then return end
    self:schedule_step(state, 0, function() self:bind(state) end)
    return
  end
  if not state then return end
  if pod.metadata.deletionTimestamp and not (old and old.metadata.deletionTimestamp) then
    self.clock:defer(function()
      local now = self.store:get("pods", state.ns, state.name)
      if now and self.pods[uid] == state then self:terminate(state, now) end
    end)
    return
  end
  -- a new image on a running pod: the container restarts with it
  if old and not pod.metadata.deletionTimestamp then
    for i, c in ipairs(pod.spec.containers or {}) do
      local oc = old.spec.containers and old.spec.containers[i]
      if oc and oc.image ~= c.image then
        self.clock:defer(function()
          local now = self.store:get("pods", state.ns, state.name)
          if not now or self.pods[uid] ~= state then return end
          self.sim.recorder:record(now, "Normal", "Killing", ("Container %s definition changed, will be restarted"):format(c.name),
            "kubelet", "spec.containers{" .. c.name .. "}")
          self:write(state, function(st)
            for _, cs in ipairs(st.containerStatuses or {}) do
              if cs.name == c.name then cs.restartCount = (cs.restartCount or 0) + 1 end
            end
          end, true)
          self:schedule_step(state, self:timing("pod_start"), function() self:start(state) end)
        end)
        return
      end
    end
  end
end

-- ---- reading logs ----

-- The log of a container as text, or nil and a Status (sim.errors).
function Kubelet:logs(pod, opts)
  local errors = require("sim.errors")
  local containers = pod.spec.containers or {}
  local name = opts.container
  if name == nil or name == "" then
    if #containers == 1 then
      name = containers[1].name
    else
      local names = {}
      for i, c in ipairs(containers) do names[i] = c.name end
      return nil, errors.bad_request(("a container name must be specified for pod %s, choose one of: [%s]")
        :format(pod.metadata.name, table.concat(names, " ")))
    end
  end
  local cs
  for _, s in ipairs(pod.status and pod.status.containerStatuses or {}) do
    if s.name == name then cs = s end
  end
  local known = false
  for _, c in ipairs(containers) do if c.name == name then known = true end end
  if not known then
    return nil, errors.bad_request(("container %s is not valid for pod %s"):format(name, pod.metadata.name))
  end
  local state = self.pods[pod.metadata.uid]
  local lines
  if opts.previous then
    lines = state and state.previous and state.previous[name]
    if not lines then
      return nil, errors.bad_request(("previous terminated container %q in pod %q not found"):format(name, pod.metadata.name))
    end
  else
    if not cs or not state or (cs.state and cs.state.waiting and (cs.restartCount or 0) == 0) then
      local reason = cs and cs.state and cs.state.waiting and cs.state.waiting.reason or "ContainerCreating"
      return nil, errors.bad_request(("container %q in pod %q is waiting to start: %s"):format(name, pod.metadata.name, reason))
    end
    lines = state.logs[name] or {}
  end
  local first = 1
  local tail = tonumber(opts.tail_lines)
  if tail and tail >= 0 then first = math.max(1, #lines - tail + 1) end
  local out = {}
  for i = first, #lines do
    local line = lines[i]
    if not opts.timestamps then line = line:gsub("^%S+ ", "", 1) end
    out[#out + 1] = line
  end
  if #out == 0 then return "" end
  return table.concat(out, "\n") .. "\n"
end

kubelet.NODE = NODE
return kubelet
