-- Helpers for specs that need the simulated cluster: start one in this process (the
-- usual way: exec.run yields, so the server keeps serving while kubectl runs) or as a
-- `tug lua` child, write its kubeconfig, and run the real kubectl against it with a
-- fresh KUBECACHEDIR (kubectl caches discovery on disk).

local exec = require("exec")
local json = require("json")
local sim = require("sim")
local task = require("task")
local child = require("child")

local M = {}

-- Timings that keep rollouts short but still observable step by step.
M.FAST = { pod_start = "50ms", ready_after = "100ms", crash_after = "100ms", restart_backoff = "200ms" }

function M.tmpdir()
  local path = os.tmpname()
  os.remove(path)
  local r = exec.run({ "mkdir", "-p", path })
  assert(r.code == 0, "mkdir " .. path)
  return path
end

local function remove_dir(path)
  if path and path:match("^/tmp/") then exec.run({ "rm", "-rf", path }) end
end

local Cluster = {}
Cluster.__index = Cluster

-- An in-process simulator with a kubeconfig and a kubectl cache of its own.
-- opts: sim.start's, timing defaulting to M.FAST.
function M.start(opts)
  opts = opts or {}
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.timing = o.timing or M.FAST
  local s = sim.start(o)
  local dir = M.tmpdir()
  local c = setmetatable({ sim = s, url = s.url, dir = dir, kubeconfig = s:kubeconfig(dir .. "/kubeconfig") }, Cluster)
  return c
end

-- A simulator in a child `tug lua` process; code (optional) runs there after it starts
-- with the simulator as `s`. The child says its URL on stdout.
function M.start_child(opts)
  opts = opts or {}
  local dir = M.tmpdir()
  local timing = json.encode(opts.timing or M.FAST)
  local code = ([[
    local s = sim.start{ port = 0, timing = json.decode(%q), scenario = %s }
    print("URL " .. s.url)
    io.stdout:flush()
    while true do task.sleep(3600) end
  ]]):format(timing, opts.scenario and ("%q"):format(opts.scenario) or "nil")
  local proc = exec.spawn({ child.tug, "lua", "-e", code }, { lines = true })
  local url
  local deadline = os.time() + 20
  while not url and os.time() < deadline do
    local lines = task.timeout(20, proc.next_lines, proc)
    if not lines then break end
    for _, entry in ipairs(lines) do
      url = url or entry.line:match("^URL (http://%S+)$")
    end
  end
  if not url then
    child.stop(proc, "the simulator child", { signal = "KILL" })
    error("the simulator child did not say its URL")
  end
  local c = setmetatable({ url = url, dir = dir, process = proc }, Cluster)
  c.kubeconfig = dir .. "/kubeconfig"
  local f = assert(io.open(c.kubeconfig, "w"))
  f:write(table.concat({
    "apiVersion: v1", "kind: Config",
    "clusters:", "  - name: sim", "    cluster:", "      server: " .. url,
    "contexts:", "  - name: sim", "    context:", "      cluster: sim", "      user: sim", "      namespace: multiship",
    "current-context: sim", "users:", "  - name: sim", "    user: {}", "",
  }, "\n"))
  f:close()
  return c
end

function Cluster:close()
  if self.sim then self.sim:close() end
  if self.process then
    local proc = self.process
    self.process = nil
    -- tug must stop on SIGTERM at once (whatever it was doing): a child that does not
    -- fails the spec here, by name, instead of hanging it
    child.stop(proc, "the simulator child (tug lua, sim.start)", { must_stop = true, seconds = 5 })
  end
  remove_dir(self.dir)
  self.dir = nil
end

-- kubectl ARGS against this cluster -> exec.run's result (code, stdout, stderr).
function Cluster:kubectl(args, opts)
  opts = opts or {}
  local argv = require("kubectl").argv({ "--kubeconfig", self.kubeconfig })
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return exec.run(argv, {
    env = { KUBECACHEDIR = self.dir .. "/cache", HOME = self.dir, PATH = os.getenv("PATH") },
    timeout = opts.timeout or 60, stdin = opts.stdin,
  })
end

-- kubectl ARGS -o json, decoded; raises with kubectl's stderr when it fails.
function Cluster:kubectl_json(args)
  local a = {}
  for i, x in ipairs(args) do a[i] = x end
  a[#a + 1] = "-o"
  a[#a + 1] = "json"
  local r = self:kubectl(a)
  if r.code ~= 0 then error(("kubectl %s failed (%d): %s"):format(table.concat(args, " "), r.code, r.stderr), 2) end
  return json.decode(r.stdout)
end

-- Writes text to a file in the cluster's directory; returns its path.
function Cluster:file(name, text)
  local path = self.dir .. "/" .. name
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  return path
end

return M
