---@meta sim
-- sim: a simulated Kubernetes cluster in this process (modules/sim/README.md). Errors are
-- metav1.Status tables (`code`, `reason`, `message`, `details`), as the API sends them.

---@class tug.sim.Options
---@field port? integer of the API server (0, the default, picks a free one)
---@field host? string default "127.0.0.1"
---@field scenario? string|table a YAML file path, YAML text (anything with a newline) or a table
---@field timing? table<string, tug.Duration> overrides, e.g. `{ pod_start = "50ms", ready_after = "100ms" }`
---@field serve? boolean false: no HTTP server (the Lua API and `cluster:request` only)

---@alias tug.sim.FaultType "unhealthy"|"crash_loop"|"never_ready"|"pull_error"|"error_rate"|"latency"|"provider_down"|"api_error"|"api_latency"|"watch_drop"

---@class tug.sim.Fault
---@field type tug.sim.FaultType
---@field version? string
---@field service? string "ns/name"
---@field status? integer|string
---@field rate? number
---@field add? tug.Duration
---@field provider? string
---@field verb? string
---@field resource? string
---@field share? number
---@field delay? tug.Duration
---@field after? tug.Duration
---@field image? string
---@field feature? string
---@field count? integer clears itself after firing that many times
---@field duration? tug.Duration clears itself after that long

---A running simulated cluster (`sim.start`); `local c <close> = sim.start{}` closes it.
---@class tug.sim.Cluster
---@field url string? where it serves
---@field port integer?
---@field namespace string the scenario's default namespace
---@field timing table
---@field execs { log: table[], stats: table }
---@field store table
---@field clock table
---@field controller table
---@field kubelet table
---@field faults table
---@field metrics table
---@field handler fun(req: tug.http.Request): ... the API and the applications as an http.server handler
local Cluster = {}

---Stops the server and the clock.
function Cluster:close() end

---The kubeconfig as text, or written to `path` (returns `path`).
---@param path? string
---@param opts? { namespace?: string, name?: string }
---@return string
function Cluster:kubeconfig(path, opts) end

---A copy of the object, or nil (`resource` is "deployments", "pods", ...).
---@param resource string
---@param ns string?
---@param name string
---@return table?
function Cluster:get(resource, ns, name) end

---Copies, in key order (`ns` nil: every namespace).
---@param resource string
---@param ns string?
---@param opts? { label?: string, field?: string }
---@return table[]
function Cluster:list(resource, ns, opts) end

---@param obj table
---@param ns? string
---@return table? obj
---@return table? status
function Cluster:create(obj, ns) end

---A stale metadata.resourceVersion is a 409.
---@param obj table
---@param subresource? "status"
---@return table? obj
---@return table? status
function Cluster:update(obj, subresource) end

---@param obj table
---@param ns? string
---@return table? obj
---@return table? status
function Cluster:apply(obj, ns) end

---As the API's PATCH.
---@param resource string
---@param ns string?
---@param name string
---@param kind "strategic"|"merge"|"json"
---@param patch table
---@return table? obj
---@return table? status
function Cluster:patch(resource, ns, name, kind, patch) end

---@param resource string
---@param ns string?
---@param name string
---@param opts? { propagation?: string, grace?: integer }
---@return table? obj
---@return table? status
function Cluster:delete(resource, ns, name, opts) end

---"complete" or "failed" (progress deadline exceeded), or nil, "timeout".
---@param ns string
---@param name string
---@param timeout? tug.Duration
---@return "complete"|"failed"|nil
---@return "timeout"?
function Cluster:wait_rollout(ns, name, timeout) end

---Waits until `fn()` returns a true value (default timeout 30 s); returns it, or nil, "timeout".
---@param fn fun(): any
---@param timeout? tug.Duration
---@return any
---@return "timeout"?
function Cluster:wait_for(fn, timeout) end

---Adds a fault; returns its id.
---@param spec tug.sim.Fault
---@return string id
function Cluster:fault(spec) end

---Clears one fault, or all; the count cleared.
---@param id? string
---@return integer
function Cluster:clear_faults(id) end

---@return table[]
function Cluster:list_faults() end

---Adds a rule for what `kubectl exec` runs; returns its id.
---@param rule table
---@return string id
function Cluster:set_exec(rule) end

---Removes one exec rule, or all.
---@param id? string
function Cluster:clear_exec(id) end

---Changes timings while it runs.
---@param t table<string, tug.Duration>
function Cluster:set_timing(t) end

---Stops the world (controllers, pods, traffic).
function Cluster:pause() end

---Restarts the world.
function Cluster:resume() end

---A container's log.
---@param ns string
---@param pod string
---@param opts? { container?: string, tail_lines?: integer, previous?: boolean, timestamps?: boolean }
---@return string? text
---@return table? status NotFound when there is no such pod
function Cluster:logs(ns, pod, opts) end

---Status, headers, body of the API or an application, without a socket.
---@param req { method?: string, path: string, headers?: table, body?: string }
---@return integer status
---@return table headers
---@return string body
function Cluster:request(req) end

---resourceVersion, object counts, pending work, controller syncs and errors.
---@return table
function Cluster:state() end

---@class tug.sim
sim = {}

---Starts a simulated cluster (a bad scenario raises, naming the key or value).
---@param opts? tug.sim.Options
---@return tug.sim.Cluster
function sim.start(opts) end

---Scenarios: the embedded default, and loading one.
---@class tug.sim.scenario
sim.scenario = {}

---The default timings.
---@type table<string, number>
sim.scenario.TIMING_DEFAULTS = {}

---The embedded default scenario, decoded.
---@return table
function sim.scenario.default() end

---A scenario over the default: nil (the default), a table, a YAML file path or YAML text.
---@param spec? string|table
---@return table
function sim.scenario.load(spec) end

return sim
