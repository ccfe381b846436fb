-- exec.lua (k8s.exec): `kubectl exec`, natively. The API's pods/NAME/exec is a WebSocket
-- upgrade (the ws module) with the subprotocol v5.channel.k8s.io (v4 accepted): every
-- binary message starts with its channel, 0 stdin, 1 stdout, 2 stderr, 3 the final
-- metav1.Status (the exit code), 4 resize; v5 ends stdin with [255, 0].
--
--   local r = c:exec("deployment/migrator", { "migrate", "up" }, { timeout = "10m", check = true })
--   print(r.code, r.stdout, r.stderr, r.pod, r.container)
--
-- The connection carries the client's credentials (k8s.auth: tokens, token files, exec
-- plugins, client certificates, the CA, insecure) like every other request.

local json = require("json")
local log = require("log")
local time = require("time")
local ws = require("ws")
local client = require("k8s.client")
local util = require("k8s.util")

local M = {}
local Client = client.Client

local PROTOCOLS = { "v5.channel.k8s.io", "v4.channel.k8s.io" }
local DEFAULT_CONTAINER = "kubectl.kubernetes.io/default-container"
local OPTIONS = {
  container = true, stdin = true, timeout = true, check = true, read_only = true, namespace = true,
}
local STDIN_CHUNK = 32 * 1024
local TAIL_LINES, TAIL_BYTES = 10, 2000

local function usage(fmt, ...)
  error(("k8s.exec: " .. fmt):format(...), 3)
end

local function fail(what, message, fields)
  fields = fields or {}
  fields.what = what
  error(client.error(what .. ": " .. message, fields), 0)
end

local function tail(text)
  text = (text or ""):gsub("%s+$", "")
  if #text > TAIL_BYTES then text = "..." .. text:sub(-TAIL_BYTES) end
  local lines = {}
  for line in (text .. "\n"):gmatch("(.-)\n") do lines[#lines + 1] = line end
  if #lines > TAIL_LINES then lines = { "...", table.unpack(lines, #lines - TAIL_LINES + 1) } end
  return table.concat(lines, "\n")
end

local function show(argv)
  local parts = {}
  for i, w in ipairs(argv) do
    parts[i] = (w == "" or w:find("[^%w@%%+=:,./_-]")) and ("'" .. w:gsub("'", "'\\''") .. "'") or w
  end
  return table.concat(parts, " ")
end

-- ---- which pod ----

local function ready_since(pod)
  for _, c in ipairs(pod.status and pod.status ~= json.null and pod.status.conditions or {}) do
    if c.type == "Ready" then
      return c.status == "True", util.parse_time(c.lastTransitionTime) or math.huge
    end
  end
  return false, math.huge
end

local function restarts(pod)
  local n = 0
  for _, cs in ipairs(pod.status and pod.status ~= json.null and pod.status.containerStatuses or {}) do
    n = n + (tonumber(cs.restartCount) or 0)
  end
  return n
end

-- kubectl's choice among a selector's pods (AttachablePodForObject: the first of
-- sort.Reverse(ActivePods)): running before pending, ready before not, ready for longer,
-- fewer restarts, older.
local function most_active_first(a, b)
  local function rank(p)
    local phase = p.status and p.status ~= json.null and p.status.phase
    return phase == "Running" and 2 or phase == "Pending" and 0 or 1
  end
  if (a.metadata.deletionTimestamp == nil) ~= (b.metadata.deletionTimestamp == nil) then
    return a.metadata.deletionTimestamp == nil
  end
  local ra, rb = rank(a), rank(b)
  if ra ~= rb then return ra > rb end
  local ready_a, since_a = ready_since(a)
  local ready_b, since_b = ready_since(b)
  if ready_a ~= ready_b then return ready_a end
  if ready_a and since_a ~= since_b then return since_a < since_b end
  local xa, xb = restarts(a), restarts(b)
  if xa ~= xb then return xa < xb end
  local ca = util.parse_time(a.metadata.creationTimestamp) or 0
  local cb = util.parse_time(b.metadata.creationTimestamp) or 0
  if ca ~= cb then return ca < cb end
  return a.metadata.name < b.metadata.name
end

-- A failed read inside exec, restated as exec's: "exec pod NS/NAME: pods "NAME" not found".
local function restate(what, fn, ...)
  local ok, a, b = pcall(fn, ...)
  if ok then return a, b end
  local e = a
  if type(e) ~= "table" or e.kind ~= "k8s" or e.what == what then error(e, 0) end
  local fields = {}
  for k, v in pairs(e) do fields[k] = v end
  fields.kind, fields.message, fields.what, fields.step = nil, nil, what, e.what
  local message = e.message
  if e.what and message:sub(1, #e.what + 2) == e.what .. ": " then message = message:sub(#e.what + 3) end
  error(client.error(what .. ": " .. message, fields), 0)
end

-- target -> pod object, what ("exec pod NS/NAME" or "exec deployment NS/NAME").
local function find_pod(self, target, ns)
  local kind, name
  if type(target) == "table" then
    if type(target.metadata) ~= "table" or type(target.metadata.name) ~= "string" then
      usage("target must be a pod name, \"kind/name\" or an object with metadata.name")
    end
    kind, name = target.kind or "Pod", target.metadata.name
    ns = target.metadata.namespace or ns
  elseif type(target) == "string" and target ~= "" then
    kind, name = target:match("^([^/]+)/([^/]+)$")
    if not kind then kind, name = "pod", target end
  else
    usage("target must be a pod name, \"kind/name\" or an object (got %s)", type(target))
  end
  local res = self:resource_for(kind, "exec", name, { namespace = ns })
  local what = "exec " .. client.describe(res, ns, name)
  if res.resource == "pods" then
    return restate(what, self.get, self, "pods", name, { namespace = ns }), what
  end
  local owner = restate(what, self.get, self, res, name, { namespace = ns })
  local selector = owner.spec and owner.spec ~= json.null and owner.spec.selector
  if type(selector) ~= "table" then
    fail(what, ("%s has no pod selector"):format(client.describe(res, ns, name)), { reason = "BadRequest" })
  end
  local text = (selector.matchLabels ~= nil or selector.matchExpressions ~= nil)
    and util.label_selector_text(selector) or util.selector_text(selector, "selector")
  local pods = restate(what, self.list, self, "pods", { namespace = ns, labels = text }).items
  local candidates = {}
  for _, p in ipairs(pods) do
    local phase = p.status and p.status ~= json.null and p.status.phase
    if phase ~= "Succeeded" and phase ~= "Failed" then candidates[#candidates + 1] = p end
  end
  if #candidates == 0 then
    fail(what, ("no pod matches %s"):format(text ~= "" and text or "its selector"), { reason = "NotFound" })
  end
  table.sort(candidates, most_active_first)
  return candidates[1], what
end

local function default_container(pod)
  local ann = pod.metadata.annotations
  if type(ann) == "table" and type(ann[DEFAULT_CONTAINER]) == "string" then return ann[DEFAULT_CONTAINER] end
  local c = pod.spec.containers and pod.spec.containers[1]
  return c and c.name
end

-- ---- the stream ----

local function escape(s)
  return (s:gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

local function exec_url(self, ns, pod, container, argv, stdin)
  local q = {}
  for _, w in ipairs(argv) do q[#q + 1] = "command=" .. escape(w) end
  q[#q + 1] = "container=" .. escape(container)
  if stdin then q[#q + 1] = "stdin=true" end
  q[#q + 1] = "stdout=true"
  q[#q + 1] = "stderr=true"
  return self.server .. self:path(self:resource("pods"), ns, pod, "exec") .. "?" .. table.concat(q, "&")
end

local REASONS = { [400] = "BadRequest", [401] = "Unauthorized", [403] = "Forbidden", [404] = "NotFound",
  [500] = "InternalError", [503] = "ServiceUnavailable" }

-- Opens the stream with the connection's credentials; after a 401, once more with fresh
-- ones (token files, exec plugins), as every request does.
local function open(self, url, what, timeout)
  local reauthenticated = false
  while true do
    local headers = {}
    local tls = self.auth:apply(headers)
    self.stats.requests = self.stats.requests + 1
    local ok, conn = pcall(ws.connect, url, {
      protocols = PROTOCOLS, headers = headers, tls = tls, timeout = timeout,
    })
    if ok then return conn end
    local err = conn
    if type(err) ~= "table" or err.kind ~= "ws" then error(err, 0) end
    if err.status == 401 and not reauthenticated and self.auth:unauthorized() then
      reauthenticated = true
    else
      local message = err.message:gsub("^ws: [^:]+://[^:]*:?%d*[^:]*: ", "")
      if err.status then
        fail(what, ("%s (%s %d)"):format(message, REASONS[err.status] or "Failure", err.status),
          { status = err.status, code = err.status, reason = REASONS[err.status] or "Failure" })
      end
      fail(what, message, { reason = err.error == "timeout" and "Timeout" or "Transport", error = err.error })
    end
  end
end

-- The exit code the Status on channel 3 carries; raises for a failure that is no exit.
local function exit_code(what, text, protocol)
  if text == "" then
    fail(what, "the stream ended without an exit status", { reason = "Transport" })
  end
  local ok, st = pcall(json.decode, text)
  if not ok or type(st) ~= "table" then
    fail(what, "the exit status is not a Status: " .. util.excerpt(text, 120), { reason = "Transport" })
  end
  if st.status == "Success" then return 0 end
  if st.reason == "NonZeroExitCode" then
    local details = st.details ~= json.null and st.details or {}
    for _, cause in ipairs(details.causes ~= json.null and details.causes or {}) do
      if cause.reason == "ExitCode" then
        local n = math.tointeger(tonumber(cause.message))
        if n then return n end
      end
    end
    fail(what, "a non-zero exit without its code: " .. tostring(st.message), { reason = "NonZeroExitCode" })
  end
  local message = type(st.message) == "string" and st.message ~= "" and st.message or "the command failed"
  fail(what, message, { reason = type(st.reason) == "string" and st.reason or "Failure", api_message = message,
    details = st.details, protocol = protocol })
end

-- exec(target, argv, opts) -> { stdout, stderr, code, pod, container }. target: a pod name,
-- "pod/NAME", "deployment/NAME" (or anything with a pod selector: its most active pod, as
-- kubectl picks it) or an object. opts: container (default: the pod's
-- kubectl.kubernetes.io/default-container, else its first), stdin (a string, then
-- end of input), timeout (seconds or a duration; none by default), check (raise on a
-- non-zero exit), read_only (run under `tug plan` too), namespace.
function Client:exec(target, argv, opts)
  if opts ~= nil and type(opts) ~= "table" then usage("opts must be a table (got %s)", type(opts)) end
  opts = opts or {}
  for key in pairs(opts) do
    if not OPTIONS[key] then usage("unknown option '%s'", tostring(key)) end
  end
  if type(argv) == "string" then
    usage("argv must be a list of strings, not a command line; use { \"sh\", \"-c\", command }")
  end
  if type(argv) ~= "table" or #argv == 0 then usage("argv must be a non-empty list of strings") end
  for i, w in ipairs(argv) do
    if type(w) ~= "string" then usage("argv[%d] must be a string (got %s)", i, type(w)) end
  end
  if opts.stdin ~= nil and type(opts.stdin) ~= "string" then usage("stdin must be a string") end
  if opts.container ~= nil and type(opts.container) ~= "string" then usage("container must be a string") end
  local timeout
  if opts.timeout ~= nil then
    timeout = type(opts.timeout) == "number" and opts.timeout or time.parse_duration(tostring(opts.timeout))
    if not timeout or timeout < 0 then usage("timeout must be seconds or a duration (got %s)", tostring(opts.timeout)) end
  end
  local deadline = timeout and time.monotonic() + timeout
  local function remaining()
    return deadline and math.max(deadline - time.monotonic(), 0.001) or nil
  end
  local ns = opts.namespace or self.namespace

  local pod, what = find_pod(self, target, ns)
  local pod_name = pod.metadata.name
  local container = opts.container or default_container(pod)
  local known = false
  for _, c in ipairs(pod.spec.containers or {}) do if c.name == container then known = true end end
  if not known then
    fail(what, ("container %s is not valid for pod %s"):format(tostring(container), pod_name), { reason = "BadRequest" })
  end
  local result = { stdout = "", stderr = "", code = 0, pod = pod_name, container = container }
  if tug.plan.active() and not opts.read_only then
    tug.plan.record("k8s", ("exec pod %s/%s (%s): %s"):format(ns, pod_name, container, show(argv)),
      opts.stdin and ("stdin: %d bytes"):format(#opts.stdin) or nil)
    result.planned = true
    return result
  end

  local url = exec_url(self, ns, pod_name, container, argv, opts.stdin ~= nil)
  local connect_timeout = self.timeout
  if deadline then connect_timeout = math.min(connect_timeout, remaining()) end
  local conn <close> = open(self, url, what, connect_timeout)
  local v5 = conn.protocol == "v5.channel.k8s.io"
  if opts.stdin ~= nil then
    if not v5 and conn.protocol ~= "" then
      fail(what, ("stdin needs v5.channel.k8s.io; the server chose %s"):format(conn.protocol), { reason = "BadRequest" })
    end
    for i = 1, #opts.stdin, STDIN_CHUNK do
      if not conn:send("\0" .. opts.stdin:sub(i, i + STDIN_CHUNK - 1), true) then break end
    end
    conn:send("\255\0", true) -- the end of stdin
  end
  local out, err, status = {}, {}, {}
  while true do
    local data, info = conn:recv(remaining())
    if not data then
      if info.error == "timeout" then
        fail(what, ("timed out after %gs running %s in %s"):format(timeout, show(argv), pod_name),
          { reason = "Timeout", stdout = table.concat(out), stderr = table.concat(err) })
      end
      if info.error and #status == 0 then
        fail(what, "the stream broke: " .. tostring(info.message), { reason = "Transport", error = info.error })
      end
      break
    end
    local channel, payload = data:byte(1), data:sub(2)
    if channel == 1 then
      out[#out + 1] = payload
    elseif channel == 2 then
      err[#err + 1] = payload
    elseif channel == 3 then
      status[#status + 1] = payload
    end
  end
  result.stdout, result.stderr = table.concat(out), table.concat(err)
  result.code = exit_code(what, table.concat(status), conn.protocol)
  if opts.check and result.code ~= 0 then
    local t = tail(result.stderr)
    fail(what, ("%s exited with code %d in %s/%s%s"):format(show(argv), result.code, pod_name, container,
      t ~= "" and ((t:find("\n") and ":\n" or ": ") .. t) or ""),
      { reason = "NonZeroExitCode", exit_code = result.code, stdout = result.stdout, stderr = result.stderr,
        pod = pod_name, container = container })
  end
  log.debug("k8s: exec", { pod = ns .. "/" .. pod_name, container = container, code = result.code })
  return result
end

return M
