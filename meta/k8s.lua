---@meta k8s
-- k8s: Kubernetes, natively (modules/k8s/README.md). Every client method is also a module
-- function on the default client (the last `k8s.connect`, else the run's environment, else
-- the kubeconfig's current context). Failures raise
-- `{ kind = "k8s", message, what, status, reason, api_message, details }`.

---A kind as kubectl takes it: "deployment", "deploy", "deployments.apps", "apps/v1/Deployment",
---or `{ apiVersion = "apps/v1", kind = "Deployment" }`.
---@alias tug.k8s.Kind string|{ apiVersion: string, kind: string }

---An environment's `kubernetes:` block.
---@class tug.k8s.Config
---@field context? string a kubeconfig context (default: the current one)
---@field namespace? string default: the context's, else "default"
---@field kubeconfig? string|string[] these files only (like --kubeconfig)
---@field cluster? string override the context's
---@field user? string override the context's
---@field simulate? boolean the simulated cluster (modules/sim), started in this process
---@field scenario? string|table the simulator's scenario
---@field timing? table the simulator's timings
---@field in_cluster? boolean the pod's service account
---@field service_account_dir? string where the service account is mounted
---@field server? string a server given directly
---@field token? string
---@field ca? string
---@field insecure? boolean
---@field retries? integer default 5
---@field backoff? tug.Duration default 0.2 s
---@field timeout? tug.Duration a request (default 30 s)
---@field field_manager? string default "tug"
---@field lock_ttl? tug.Duration the lock backend's Lease ttl (default 60 s)
---@field lock_namespace? string the lock backend's namespace

---@class tug.k8s.Options
---@field namespace? string default: the client's

---@class tug.k8s.GetOptions: tug.k8s.Options
---@field optional? boolean nil instead of a NotFound error
---@field subresource? string

---@class tug.k8s.ListOptions: tug.k8s.Options
---@field labels? string|table<string, string|boolean> "app=api,tier!=db" or { app = "api" }
---@field fields? string|table<string, string|boolean>
---@field all_namespaces? boolean
---@field limit? integer page size (all pages are read)

---@class tug.k8s.PatchOptions: tug.k8s.Options
---@field type? "strategic"|"merge"|"json"|"apply" default "strategic"
---@field field_manager? string for "apply" (default "tug")
---@field force? boolean for "apply"

---@class tug.k8s.DeleteOptions: tug.k8s.Options
---@field propagation? "Background"|"Foreground"|"Orphan"
---@field grace? integer seconds
---@field resource_version? string precondition
---@field uid? string precondition
---@field optional? boolean no error when it does not exist

---@class tug.k8s.UpdateOptions: tug.k8s.Options
---@field attempts? integer on 409 Conflict (default 5)

---@class tug.k8s.WatchOptions: tug.k8s.Options
---@field name? string
---@field labels? string|table<string, string|boolean>
---@field fields? string|table<string, string|boolean>
---@field resource_version? string start there instead of listing
---@field send_initial? boolean default true
---@field timeout? tug.Duration then watch returns false

---@class tug.k8s.RolloutStatusOptions: tug.k8s.Options
---@field timeout? tug.Duration none by default, like kubectl
---@field revision? integer
---@field quiet? boolean do not log progress
---@field on_progress? fun(message: string)

---@class tug.k8s.LogsOptions: tug.k8s.Options
---@field tail? integer
---@field since? tug.Duration
---@field grep? string|fun(line: string): boolean a Lua pattern or a function
---@field container? string
---@field all_containers? boolean
---@field previous? boolean
---@field timestamps? boolean

---@class tug.k8s.Logs
---@field lines { pod: string, container: string, text: string }[]
---@field text string
---@field pods string[]
---@field skipped table?

---@class tug.k8s.ExecOptions: tug.k8s.Options
---@field container? string
---@field stdin? string
---@field timeout? tug.Duration
---@field check? boolean raise when the exit code is not 0
---@field read_only? boolean run under `tug plan` too

---@class tug.k8s.ExecResult
---@field stdout string
---@field stderr string
---@field code integer
---@field pod string
---@field container string
---@field planned boolean?

---@class tug.k8s.LeaseOptions: tug.k8s.Options
---@field holder? string
---@field ttl? tug.Duration
---@field annotations? table<string, string>
---@field renew? boolean
---@field force? boolean
---@field on_lost? fun(lease: tug.k8s.Lease)

---A held Lease (`lease_acquire`); `local l <close> = ...` releases it at scope end.
---@class tug.k8s.Lease
local Lease = {}

---Stops renewing and clears holderIdentity.
function Lease:release() end

---Whether it is still held (not lost, not released).
---@return boolean
function Lease:held() end

---@class tug.k8s
k8s = {}

---A client (`k8s.connect`); its methods are also module functions on the default client.
---@class tug.k8s.Client
---@field namespace string the default namespace of its calls
---@field server string the API server's URL
---@field context string? the kubeconfig context
k8s.Client = {}

---One API call with retries; the http response, whatever its status.
---@param spec { method?: string, path: string, query?: table, body?: string, content_type?: string, accept?: string, timeout?: tug.Duration }
---@return tug.http.Response
function k8s.Client:request(spec) end

---One API call whose answer must be 2xx JSON (the decoded body); raises the API's error otherwise.
---@param what string what is being done, for the error ("get deployment web/api")
---@param spec { method?: string, path: string, query?: table, body?: string, content_type?: string, accept?: string, timeout?: tug.Duration }
---@return table
function k8s.Client:call(what, spec) end

---The object (nil instead of a NotFound error with `opts.optional`).
---@param kind tug.k8s.Kind
---@param name string
---@param opts? tug.k8s.GetOptions
---@return table? obj nil only with opts.optional
function k8s.Client:get(kind, name, opts) end

---The List: every page is read.
---@param kind tug.k8s.Kind
---@param opts? tug.k8s.ListOptions
---@return { items: table[], metadata: table }
function k8s.Client:list(kind, opts) end

---POST: `create(obj, opts)` (the kind from apiVersion/kind) or `create(kind, obj, opts)`.
---@param kind tug.k8s.Kind|table
---@param obj? table
---@param opts? tug.k8s.Options
---@return table
function k8s.Client:create(kind, obj, opts) end

---PUT with the object's resourceVersion (409 Conflict when it changed meanwhile): `replace(obj, opts)` or `replace(kind, obj, opts)`.
---@param kind tug.k8s.Kind|table
---@param obj? table
---@param opts? tug.k8s.Options
---@return table
function k8s.Client:replace(kind, obj, opts) end

---Patches the object: strategic (default), merge, json (RFC 6902 operations) or apply (server-side).
---@param kind tug.k8s.Kind
---@param name string
---@param patch table
---@param opts? tug.k8s.PatchOptions
---@return table
function k8s.Client:patch(kind, name, patch, opts) end

---Deletes the object.
---@param kind tug.k8s.Kind
---@param name string
---@param opts? tug.k8s.DeleteOptions
---@return table?
function k8s.Client:delete(kind, name, opts) end

---get -> fn(obj) (change it in place, return a replacement, or false to leave it) -> replace; on 409 again from a fresh read.
---@param kind tug.k8s.Kind
---@param name string
---@param fn fun(obj: table): table|false|nil
---@param opts? tug.k8s.UpdateOptions
---@return table
function k8s.Client:update(kind, name, fn, opts) end

---Lists (fn("ADDED", obj) each unless send_initial = false), then streams changes until fn returns false.
---@param kind tug.k8s.Kind
---@param opts tug.k8s.WatchOptions?
---@param fn fun(type: "ADDED"|"MODIFIED"|"DELETED", obj: table): boolean?
---@return boolean stopped true when fn returned false, false when opts.timeout passed
---@return string? type
---@return table? obj
function k8s.Client:watch(kind, opts, fn) end

---What discovery says about a kind, as kubectl resolves its names.
---@param kind tug.k8s.Kind
---@return table resource { group, version, resource, kind, namespaced, ... }
function k8s.Client:resource(kind) end

---The server's discovery index (fetched once per client).
---@param refresh? boolean
---@return table index
function k8s.Client:discovery(refresh) end

---`kubectl set image`: `{ container = "image:tag" }` ("*" = all containers).
---@param deploy string|table
---@param images table<string, string>
---@param opts? { change_cause?: string, namespace?: string }
---@return table deployment
function k8s.Client:set_image(deploy, images, opts) end

---`kubectl rollout status`: waits until the rollout is done; raises on a progress deadline or the timeout.
---@param deploy string|table
---@param opts? tug.k8s.RolloutStatusOptions
---@return { message: string, deployment: table, revision: integer? }
function k8s.Client:rollout_status(deploy, opts) end

---`kubectl rollout history`: the revisions, oldest first.
---@param deploy string|table
---@param opts? tug.k8s.Options
---@return { revision: integer, change_cause: string?, replicaset: string, template: table, created: string }[]
function k8s.Client:rollout_history(deploy, opts) end

---`kubectl rollout undo`: back to the previous (or the given) revision; `{ skipped = true, message }` when already there.
---@param deploy string|table
---@param opts? { to_revision?: integer, namespace?: string }
---@return table
function k8s.Client:rollout_undo(deploy, opts) end

---`kubectl rollout restart`.
---@param deploy string|table
---@param opts? tug.k8s.Options
---@return table
function k8s.Client:restart(deploy, opts) end

---`kubectl scale`: returns the Scale.
---@param deploy string|table
---@param n integer
---@param opts? { current_replicas?: integer, namespace?: string }
---@return table scale
function k8s.Client:scale(deploy, n, opts) end

---`kubectl patch svc` on the selector; `exact = true` removes the keys not given.
---@param svc string|table
---@param selector table<string, string>
---@param opts? { exact?: boolean, namespace?: string }
---@return table service
function k8s.Client:patch_service_selector(svc, selector, opts) end

---`kubectl wait --for`: "Available", "condition=Ready=False", "jsonpath={.status.phase}=Running", "delete", or a function. Default timeout 30 s.
---@param target string|table
---@param condition string|fun(obj: table): boolean
---@param timeout? tug.Duration
---@param opts? tug.k8s.Options
---@return table?
function k8s.Client:wait(target, condition, timeout, opts) end

---`kubectl logs`: a pod, or every pod of a Deployment ("deployment/api").
---@param target string|table
---@param opts? tug.k8s.LogsOptions
---@return tug.k8s.Logs
function k8s.Client:logs(target, opts) end

---`kubectl exec`, natively (over a WebSocket).
---@param target string|table
---@param argv string[]
---@param opts? tug.k8s.ExecOptions
---@return tug.k8s.ExecResult
function k8s.Client:exec(target, argv, opts) end

---Takes (or renews) a coordination.k8s.io Lease, renewed every ttl/3 while held.
---@param name string
---@param opts? tug.k8s.LeaseOptions
---@return tug.k8s.Lease? lease
---@return table? info `{ holder, expires, ... }` when held elsewhere
---@return "held"? why
function k8s.Client:lease_acquire(name, opts) end

---Who holds the Lease, if anyone.
---@param name string
---@param opts? tug.k8s.Options
---@return table? info nil when the Lease is free
function k8s.Client:lease_inspect(name, opts) end

---Connects to a cluster (see tug.k8s.Config); the new client becomes the default unless
---`opts.default = false`.
---@param cfg? tug.k8s.Config
---@param opts? { default?: boolean }
---@return tug.k8s.Client
function k8s.connect(cfg, opts) end

---Makes `env` (an environment, or its kubernetes block) the default, connecting on first use.
---@param env tug.Environment|tug.k8s.Config
function k8s.set_environment(env) end

---The default client (connecting if need be).
---@return tug.k8s.Client
function k8s.client() end

---Sets the default client; returns the previous one.
---@param c tug.k8s.Client?
---@return tug.k8s.Client?
function k8s.use(c) end

---The simulator `simulate = true` started in this process, if any.
---@return tug.sim.Cluster?
function k8s.simulator() end

---kubectl's verdict on a Deployment: the message, whether the rollout is done, an error.
---@param deployment table
---@param revision? integer
---@return string? message
---@return boolean done
---@return string? error
---@return string? reason "ProgressDeadlineExceeded" with that error
function k8s.deployment_status(deployment, revision) end

---The object (nil instead of a NotFound error with `opts.optional`).
---@param kind tug.k8s.Kind
---@param name string
---@param opts? tug.k8s.GetOptions
---@return table? obj nil only with opts.optional
function k8s.get(kind, name, opts) end

---The List: every page is read.
---@param kind tug.k8s.Kind
---@param opts? tug.k8s.ListOptions
---@return { items: table[], metadata: table }
function k8s.list(kind, opts) end

---POST: `create(obj, opts)` (the kind from apiVersion/kind) or `create(kind, obj, opts)`.
---@param kind tug.k8s.Kind|table
---@param obj? table
---@param opts? tug.k8s.Options
---@return table
function k8s.create(kind, obj, opts) end

---PUT with the object's resourceVersion (409 Conflict when it changed meanwhile): `replace(obj, opts)` or `replace(kind, obj, opts)`.
---@param kind tug.k8s.Kind|table
---@param obj? table
---@param opts? tug.k8s.Options
---@return table
function k8s.replace(kind, obj, opts) end

---Patches the object: strategic (default), merge, json (RFC 6902 operations) or apply (server-side).
---@param kind tug.k8s.Kind
---@param name string
---@param patch table
---@param opts? tug.k8s.PatchOptions
---@return table
function k8s.patch(kind, name, patch, opts) end

---Deletes the object.
---@param kind tug.k8s.Kind
---@param name string
---@param opts? tug.k8s.DeleteOptions
---@return table?
function k8s.delete(kind, name, opts) end

---get -> fn(obj) (change it in place, return a replacement, or false to leave it) -> replace; on 409 again from a fresh read.
---@param kind tug.k8s.Kind
---@param name string
---@param fn fun(obj: table): table|false|nil
---@param opts? tug.k8s.UpdateOptions
---@return table
function k8s.update(kind, name, fn, opts) end

---Lists (fn("ADDED", obj) each unless send_initial = false), then streams changes until fn returns false.
---@param kind tug.k8s.Kind
---@param opts tug.k8s.WatchOptions?
---@param fn fun(type: "ADDED"|"MODIFIED"|"DELETED", obj: table): boolean?
---@return boolean stopped true when fn returned false, false when opts.timeout passed
---@return string? type
---@return table? obj
function k8s.watch(kind, opts, fn) end

---What discovery says about a kind, as kubectl resolves its names.
---@param kind tug.k8s.Kind
---@return table resource { group, version, resource, kind, namespaced, ... }
function k8s.resource(kind) end

---The server's discovery index (fetched once per client).
---@param refresh? boolean
---@return table index
function k8s.discovery(refresh) end

---`kubectl set image`: `{ container = "image:tag" }` ("*" = all containers).
---@param deploy string|table
---@param images table<string, string>
---@param opts? { change_cause?: string, namespace?: string }
---@return table deployment
function k8s.set_image(deploy, images, opts) end

---`kubectl rollout status`: waits until the rollout is done; raises on a progress deadline or the timeout.
---@param deploy string|table
---@param opts? tug.k8s.RolloutStatusOptions
---@return { message: string, deployment: table, revision: integer? }
function k8s.rollout_status(deploy, opts) end

---`kubectl rollout history`: the revisions, oldest first.
---@param deploy string|table
---@param opts? tug.k8s.Options
---@return { revision: integer, change_cause: string?, replicaset: string, template: table, created: string }[]
function k8s.rollout_history(deploy, opts) end

---`kubectl rollout undo`: back to the previous (or the given) revision; `{ skipped = true, message }` when already there.
---@param deploy string|table
---@param opts? { to_revision?: integer, namespace?: string }
---@return table
function k8s.rollout_undo(deploy, opts) end

---`kubectl rollout restart`.
---@param deploy string|table
---@param opts? tug.k8s.Options
---@return table
function k8s.restart(deploy, opts) end

---`kubectl scale`: returns the Scale.
---@param deploy string|table
---@param n integer
---@param opts? { current_replicas?: integer, namespace?: string }
---@return table scale
function k8s.scale(deploy, n, opts) end

---`kubectl patch svc` on the selector; `exact = true` removes the keys not given.
---@param svc string|table
---@param selector table<string, string>
---@param opts? { exact?: boolean, namespace?: string }
---@return table service
function k8s.patch_service_selector(svc, selector, opts) end

---`kubectl wait --for`: "Available", "condition=Ready=False", "jsonpath={.status.phase}=Running", "delete", or a function. Default timeout 30 s.
---@param target string|table
---@param condition string|fun(obj: table): boolean
---@param timeout? tug.Duration
---@param opts? tug.k8s.Options
---@return table?
function k8s.wait(target, condition, timeout, opts) end

---`kubectl logs`: a pod, or every pod of a Deployment ("deployment/api").
---@param target string|table
---@param opts? tug.k8s.LogsOptions
---@return tug.k8s.Logs
function k8s.logs(target, opts) end

---`kubectl exec`, natively (over a WebSocket).
---@param target string|table
---@param argv string[]
---@param opts? tug.k8s.ExecOptions
---@return tug.k8s.ExecResult
function k8s.exec(target, argv, opts) end

---Takes (or renews) a coordination.k8s.io Lease, renewed every ttl/3 while held.
---@param name string
---@param opts? tug.k8s.LeaseOptions
---@return tug.k8s.Lease? lease
---@return table? info `{ holder, expires, ... }` when held elsewhere
---@return "held"? why
function k8s.lease_acquire(name, opts) end

---Who holds the Lease, if anyone.
---@param name string
---@param opts? tug.k8s.Options
---@return table? info nil when the Lease is free
function k8s.lease_inspect(name, opts) end

return k8s
