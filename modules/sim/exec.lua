-- exec.lua (sim.exec): `pods/NAME/exec` for the simulated cluster, the way the API server
-- and the kubelet answer it: a WebSocket upgrade with the subprotocol v5.channel.k8s.io
-- (or v4.channel.k8s.io), channels 0 stdin, 1 stdout, 2 stderr, 3 the final
-- metav1.Status, 4 resize; v5 adds [255, channel] to close a channel (stdin's end).
--
-- The simulated containers run nothing, so what a command does comes from rules the
-- scenario (`exec:`) or the Lua API (`cluster:set_exec`) sets:
--
--   { argv = { "migrate", "up" }, stdout = "ok\n", code = 0 }    canned output, exact argv
--   { prefix = { "psql" }, run = function(req) return { stdout = ..., code = 0 } end }
--   { prefix = { "migrate" }, ["local"] = { command = { "./bin/migrate" }, env = {...} } }
--                                       a real local process (stdin piped, exit code kept)
--
-- A command no rule matches fails as containerd fails an executable that is not in the
-- image: exit code 126 and "OCI runtime exec failed: ... executable file not found in
-- $PATH". Every exec is recorded (cluster.execs.log) and counted by transport.

local json = require("json")
local task = require("task")
local errors = require("sim.errors")
local resources = require("sim.resources")
local selectors = require("sim.selectors")
local util = require("sim.util")

local M = {}
local Execs = {}
Execs.__index = Execs

local PROTOCOLS = { "v5.channel.k8s.io", "v4.channel.k8s.io" }
local CHUNK = 32 * 1024
local LOG_MAX = 200
local RULE_KEYS = {
  argv = true, prefix = true, pod = true, labels = true, container = true, namespace = true,
  stdout = true, stderr = true, code = true, run = true, ["local"] = true, delay = true, name = true,
}
local LOCAL_KEYS = { command = true, env = true, cwd = true, timeout = true }
local STDIN, STDOUT, STDERR, ERROR = 0, 1, 2, 3
local CLOSE_CHANNEL = 255

local function string_list(v, what)
  if type(v) == "string" then return { v } end
  if type(v) ~= "table" then return nil, what .. " must be a list of strings" end
  local out = {}
  for i, x in ipairs(v) do
    if type(x) ~= "string" and type(x) ~= "number" then return nil, ("%s[%d] must be a string"):format(what, i) end
    out[i] = tostring(x)
  end
  return out
end

-- Checks a rule (from the scenario or set_exec) and returns its normalized form, or nil
-- and what is wrong with it.
function M.check_rule(spec)
  if type(spec) == "function" then spec = { run = spec } end
  if type(spec) ~= "table" then return nil, "an exec rule must be a table (or a function)" end
  local r = {}
  for k, v in pairs(spec) do
    if not RULE_KEYS[k] then return nil, ("unknown exec rule key %q"):format(tostring(k)) end
    r[k] = v
  end
  local err
  if r.argv ~= nil then
    r.argv, err = string_list(r.argv, "argv")
    if not r.argv then return nil, err end
  end
  if r.prefix ~= nil then
    r.prefix, err = string_list(r.prefix, "prefix")
    if not r.prefix then return nil, err end
  end
  if r.argv and r.prefix then return nil, "an exec rule takes argv or prefix, not both" end
  if r.labels ~= nil then
    if type(r.labels) ~= "string" then return nil, "labels must be a label selector (\"app=migrator\")" end
    local sel, serr = selectors.parse_labels(r.labels)
    if not sel then return nil, "labels: " .. tostring(serr) end
    r.label_match = sel
  end
  for _, k in ipairs({ "pod", "container", "namespace", "stdout", "stderr", "name" }) do
    if r[k] ~= nil and type(r[k]) ~= "string" then return nil, k .. " must be a string" end
  end
  local behaviours = 0
  if r.run ~= nil then
    if type(r.run) ~= "function" then return nil, "run must be a function(req) -> { stdout, stderr, code }" end
    behaviours = behaviours + 1
  end
  if r["local"] ~= nil then
    local l = r["local"]
    if l == true then l = {} end
    if type(l) ~= "table" then return nil, "local must be true or { command, env, cwd, timeout }" end
    for k in pairs(l) do
      if not LOCAL_KEYS[k] then return nil, ("unknown key local.%s"):format(tostring(k)) end
    end
    local c = {}
    if l.command ~= nil then
      c.command, err = string_list(l.command, "local.command")
      if not c.command or #c.command == 0 then return nil, err or "local.command must not be empty" end
    end
    if l.env ~= nil and type(l.env) ~= "table" then return nil, "local.env must be a table" end
    if l.cwd ~= nil and type(l.cwd) ~= "string" then return nil, "local.cwd must be a string" end
    c.env, c.cwd = l.env, l.cwd
    if l.timeout ~= nil then
      local ok, s = pcall(util.seconds, l.timeout, "local.timeout")
      if not ok then return nil, tostring(s) end
      c.timeout = s
    end
    r["local"] = c
    behaviours = behaviours + 1
  end
  if r.stdout ~= nil or r.stderr ~= nil or r.code ~= nil then behaviours = behaviours + 1 end
  if behaviours > 1 then return nil, "an exec rule gives canned output (stdout, stderr, code), run or local: one of them" end
  if r.code ~= nil and math.tointeger(r.code) == nil then return nil, "code must be an integer" end
  r.code = math.tointeger(r.code)
  if r.code and (r.code < 0 or r.code > 255) then return nil, "code must be between 0 and 255" end
  if r.delay ~= nil then
    local ok, s = pcall(util.seconds, r.delay, "delay")
    if not ok then return nil, tostring(s) end
    r.delay = s
  end
  return r
end

function M.new(sim, scenario_rules)
  local e = setmetatable({
    sim = sim, rules = {}, next_id = 0, log = {},
    stats = { websocket = 0, refused = 0, by_protocol = {} },
  }, Execs)
  -- the scenario's rules, in order, after any added later (those are checked first)
  for i = #(scenario_rules or {}), 1, -1 do
    local ok, err = e:add(scenario_rules[i])
    if not ok then error(("sim: scenario exec[%d]: %s"):format(i, err), 0) end
  end
  return e
end

-- add(rule) -> id | nil, message. The newest rule is checked first.
function Execs:add(spec)
  local r, err = M.check_rule(spec)
  if not r then return nil, err end
  self.next_id = self.next_id + 1
  r.id = r.name or ("exec-" .. self.next_id)
  table.insert(self.rules, 1, r)
  return r.id
end

-- clear([id]) -> how many rules went.
function Execs:clear(id)
  if id == nil then
    local n = #self.rules
    self.rules = {}
    return n
  end
  for i, r in ipairs(self.rules) do
    if r.id == id then
      table.remove(self.rules, i)
      return 1
    end
  end
  return 0
end

local function starts_with(argv, prefix)
  if #argv < #prefix then return false end
  for i, w in ipairs(prefix) do if argv[i] ~= w then return false end end
  return true
end

function Execs:match(pod, container, argv)
  for _, r in ipairs(self.rules) do
    local ok = true
    if r.argv and (#r.argv ~= #argv or not starts_with(argv, r.argv)) then ok = false end
    if ok and r.prefix and not starts_with(argv, r.prefix) then ok = false end
    if ok and r.namespace and pod.metadata.namespace ~= r.namespace then ok = false end
    if ok and r.pod and not pod.metadata.name:find(r.pod) then ok = false end
    if ok and r.label_match and not r.label_match(pod.metadata.labels or {}) then ok = false end
    if ok and r.container and r.container ~= container then ok = false end
    if ok then return r end
  end
  return nil
end

-- ---- the request ----

local function unescape(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- Every command= in order (req.query keeps only the last of a repeated key).
local function query_list(raw, key)
  local out = {}
  for pair in (raw or ""):gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    if unescape(k) == key then out[#out + 1] = unescape(v) end
  end
  return out
end

local function flag(q, key)
  local v = q[key]
  return v == "true" or v == "1"
end

local function fail(st)
  return { status = st.code, headers = { ["content-type"] = "application/json" }, body = json.encode(st) }
end

-- The pod and container an exec request names, as the API server and the kubelet check
-- them: nil, Status when the exec cannot happen.
local function target(sim, ns, name, q)
  local def = resources.get("pods")
  local pod = sim.store:get("pods", ns, name)
  if not pod then return nil, errors.not_found(def, name) end
  local containers = pod.spec.containers or {}
  local cname = q.container
  if cname == nil or cname == "" then
    if #containers == 1 then
      cname = containers[1].name
    else
      local names = {}
      for i, c in ipairs(containers) do names[i] = c.name end
      return nil, errors.bad_request(("a container name must be specified for pod %s, choose one of: [%s]")
        :format(name, table.concat(names, " ")))
    end
  end
  local known = false
  for _, c in ipairs(containers) do if c.name == cname then known = true end end
  if not known then
    return nil, errors.bad_request(("container %s is not valid for pod %s"):format(cname, name))
  end
  local phase = pod.status and pod.status.phase
  if phase == "Succeeded" or phase == "Failed" then
    return nil, errors.bad_request(("cannot exec into a container in a completed pod; current phase is %s"):format(phase))
  end
  local running = false
  local waiting = "ContainerCreating"
  for _, cs in ipairs(pod.status and pod.status.containerStatuses or {}) do
    if cs.name == cname then
      if cs.state and cs.state.running then running = true end
      if cs.state and cs.state.waiting and cs.state.waiting.reason then waiting = cs.state.waiting.reason end
    end
  end
  if phase ~= "Running" or not running then
    return nil, errors.bad_request(("container %q in pod %q is waiting to start: %s"):format(cname, name, waiting))
  end
  return pod, cname
end

-- ---- running a command ----

local function not_found(argv)
  return {
    code = 126,
    stdout = "",
    stderr = ("OCI runtime exec failed: exec failed: unable to start container process: exec: %q: "
      .. "executable file not found in $PATH: unknown\r\n"):format(argv[1]),
  }
end

-- Runs the rule's local process; the process is stopped if the client goes away.
local function run_local(rule, argv, stdin, conn)
  local l = rule["local"]
  local cmd = argv
  if l.command then
    cmd = {}
    for _, w in ipairs(l.command) do cmd[#cmd + 1] = w end
    for i = #(rule.prefix or rule.argv or {}) + 1, #argv do cmd[#cmd + 1] = argv[i] end
  end
  local exec = require("exec")
  local ok, proc = pcall(exec.spawn, cmd, {
    stdin = stdin, env = l.env, cwd = l.cwd, timeout = l.timeout, read_only = true,
  })
  if not ok then
    if type(proc) == "table" and tostring(proc.message):find("not found", 1, true) then return not_found(cmd) end
    return { code = 126, stdout = "", stderr = ("exec failed: %s\r\n"):format(type(proc) == "table" and proc.message or tostring(proc)) }
  end
  local watcher = task.spawn(function()
    while true do
      local data = conn:recv()
      if not data then
        proc:kill()
        return
      end
    end
  end)
  local r = proc:wait()
  proc:close()
  watcher:cancel()
  local code = r.code
  if code == nil then
    local signals = { HUP = 1, INT = 2, QUIT = 3, KILL = 9, TERM = 15, SEGV = 11, ABRT = 6, PIPE = 13 }
    code = 128 + (signals[r.signal] or (tonumber(r.signal) or 9))
  end
  return { code = code, stdout = r.stdout or "", stderr = r.stderr or "" }
end

local function behaviour(rule, req, conn)
  if rule == nil then return not_found(req.argv) end
  if rule.delay and rule.delay > 0 then task.sleep(rule.delay) end
  if rule["local"] then return run_local(rule, req.argv, req.stdin, conn) end
  if rule.run then
    local out = rule.run(req)
    if type(out) ~= "table" then
      error(("sim: exec rule %s: run returned %s (want { stdout, stderr, code })"):format(rule.id, type(out)), 0)
    end
    return { stdout = tostring(out.stdout or ""), stderr = tostring(out.stderr or ""),
      code = math.tointeger(out.code) or 0 }
  end
  return { stdout = rule.stdout or "", stderr = rule.stderr or "", code = rule.code or 0 }
end

local function status_of(argv, code, failure)
  if failure then
    return { metadata = json.object(), status = "Failure", message = failure, reason = "InternalError",
      code = 500 }
  end
  if code == 0 then return { metadata = json.object(), status = "Success" } end
  return {
    metadata = json.object(), status = "Failure",
    message = ("command terminated with non-zero exit code: error executing command %s, exit code %d")
      :format("[" .. table.concat(argv, " ") .. "]", code),
    reason = "NonZeroExitCode",
    details = { causes = { { reason = "ExitCode", message = tostring(code) } } },
  }
end

local function send_channel(conn, channel, data)
  if data == "" then return true end
  for i = 1, #data, CHUNK do
    if not conn:send(string.char(channel) .. data:sub(i, i + CHUNK - 1), true) then return false end
  end
  return true
end

-- Reads stdin until the client closes it (v5: [255, 0]) or the connection.
local function read_stdin(conn, v5)
  local parts = {}
  while true do
    local data = conn:recv()
    if not data then return table.concat(parts), true end
    local ch = data:byte(1)
    if ch == STDIN then
      parts[#parts + 1] = data:sub(2)
    elseif ch == CLOSE_CHANNEL and v5 and data:byte(2) == STDIN then
      return table.concat(parts), false
    end
  end
end

-- serve(req, ns, name) -> the http.server answer: a 4xx/5xx Status, or (after the
-- upgrade) nothing, the connection being the exec session's.
function Execs:serve(req, ns, name)
  local sim = self.sim
  local q = req.query
  if req.method ~= "GET" and req.method ~= "POST" then return fail(errors.method_not_allowed()) end
  local argv = query_list(req.raw_query, "command")
  if #argv == 0 then return fail(errors.bad_request("you must specify at least one command for the container")) end
  local want_stdin, want_stdout, want_stderr = flag(q, "stdin"), flag(q, "stdout"), flag(q, "stderr")
  local tty = flag(q, "tty")
  if not (want_stdin or want_stdout or want_stderr) then
    return fail(errors.bad_request("you must specify at least 1 of stdin, stdout, stderr"))
  end
  local pod, container = target(sim, ns, name, q)
  if not pod then return fail(container) end
  local ws = require("ws")
  if type(req.take_connection) ~= "function" or not ws.is_upgrade(req) then
    -- SPDY/3.1 (kubectl's fallback) and plain requests: the simulator speaks WebSocket only
    self.stats.refused = self.stats.refused + 1
    return fail(errors.bad_request("the simulated cluster serves exec over WebSocket only "
      .. "(v5.channel.k8s.io or v4.channel.k8s.io); upgrade to websocket"))
  end
  local conn <close>, status, message = ws.upgrade(req, { protocols = PROTOCOLS })
  if not conn then return { status = status, headers = { ["content-type"] = "text/plain" }, body = message .. "\n" } end
  self.stats.websocket = self.stats.websocket + 1
  local protocol = conn.protocol
  self.stats.by_protocol[protocol] = (self.stats.by_protocol[protocol] or 0) + 1
  local v5 = protocol == "v5.channel.k8s.io"
  local entry = { namespace = ns, pod = name, container = container, argv = argv, protocol = protocol,
    stdin = want_stdin, tty = tty, started = util.now() }
  self.log[#self.log + 1] = entry
  if #self.log > LOG_MAX then table.remove(self.log, 1) end

  local stdin, gone = nil, false
  if want_stdin then
    if not v5 then
      conn:send(string.char(ERROR) .. json.encode(status_of(argv, nil,
        "stdin needs the v5.channel.k8s.io protocol (v4 cannot close stdin)")), true)
      return nil
    end
    stdin, gone = read_stdin(conn, v5)
    entry.stdin_bytes = #stdin
    if gone then
      entry.code = "client gone"
      return nil
    end
  end
  local rule = self:match(pod, container, argv)
  entry.rule = rule and rule.id or nil
  local ok, out = pcall(behaviour, rule, {
    namespace = ns, pod = name, container = container, argv = argv, stdin = stdin or "", tty = tty,
    labels = util.copy(pod.metadata.labels or {}),
  }, conn)
  if not ok then
    if type(out) == "table" and out.kind == "cancelled" then error(out, 0) end
    entry.error = tostring(type(out) == "table" and out.message or out)
    conn:send(string.char(ERROR) .. json.encode(status_of(argv, nil, "Internal error occurred: " .. entry.error)), true)
    return nil
  end
  entry.code = out.code
  local stdout, stderr = out.stdout, out.stderr
  if tty then stdout, stderr = stdout .. stderr, "" end
  local sent = (not want_stdout or send_channel(conn, STDOUT, stdout))
    and (not want_stderr or tty or send_channel(conn, STDERR, stderr))
  if sent then conn:send(string.char(ERROR) .. json.encode(status_of(argv, out.code)), true) end
  conn:close(1000)
  return nil
end

M.PROTOCOLS = PROTOCOLS
return M
