-- The harness for running the Multiship playbooks end to end: a simulated cluster this
-- spec serves (so it can look at the cluster afterwards), an environment "sim" that
-- reaches it through a kubeconfig, and the real tug binary as a child process.
--
--   local h = harness.new({ env = "extra: yaml\n", timing = {...} })
--   local r = h:tug({ "run", "deploy", "version=v2.2.0" })   -- --env sim --output json
--   h:run_end(r).status; h:events(r, "step_end"); h:image("api"); h.cluster:get(...)
--   h:close()
package.path = "spec/support/?.lua;" .. package.path
local child = require("child")

local harness = {}
harness.__index = harness

-- The project's root (the directory the specs run in); set by harness.new, since require
-- cannot wait on a process.
harness.ROOT = nil

-- opts.env: YAML lines appended to the environment file (database, cdn, metrics...);
-- opts.timing: the simulator's timing; opts.scenario: its scenario.
function harness.new(opts)
  opts = opts or {}
  local h = setmetatable({}, harness)
  harness.ROOT = harness.ROOT or exec.run({ "pwd" }).stdout:gsub("\n$", "")
  h.cluster = sim.start({ port = 0, scenario = opts.scenario,
    timing = opts.timing or { pod_start = "100ms", ready_after = "200ms" } })
  h.dir = exec.run({ "mktemp", "-d", "/tmp/tug-playbooks-XXXXXX" }).stdout:gsub("\n$", "")
  exec.run({ "mkdir", "-p", h.dir .. "/environments" }, { check = true })
  h.cluster:kubeconfig(h.dir .. "/kubeconfig")
  h:write_env(opts.env or "")
  return h
end

function harness:write_env(extra)
  local f = assert(io.open(self.dir .. "/environments/sim.yaml", "w"))
  f:write(string.format([[
name: sim
url: %s/svc/multiship/api-service
service_url: %s/svc/multiship/{service}
kubernetes: { kubeconfig: %s/kubeconfig, namespace: multiship }
thresholds: { p95_ms: 500, error_rate: 0.001 }
admin_token: sim-admin-token
]], self.cluster.url, self.cluster.url, self.dir))
  f:write(extra)
  f:close()
end

function harness:close()
  self.cluster:close()
  exec.run({ "rm", "-rf", self.dir })
end

-- Runs tug ARGS --env sim --playbooks ROOT/playbooks --output json. opts: env (extra
-- environment variables), timeout, stdin, cwd.
function harness:tug(args, opts)
  opts = opts or {}
  local argv = { child.tug }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  for _, a in ipairs({ "--env", "sim", "--playbooks", harness.ROOT .. "/playbooks", "--output", "json" }) do
    argv[#argv + 1] = a
  end
  local env = { CI = "true", TUG_ENVIRONMENTS = self.dir .. "/environments", TUG_HOME = self.dir .. "/.tug",
    GITHUB_ACTIONS = false }
  for k, v in pairs(opts.env or {}) do env[k] = v end
  return exec.run(argv, { timeout = opts.timeout or 120, env = env, stdin = opts.stdin, cwd = opts.cwd })
end

-- The JSON events of a run's stdout, all or those named `name`.
function harness:events(r, name)
  local out = {}
  for line in r.stdout:gmatch("[^\n]+") do
    local ok, e = pcall(json.decode, line)
    if ok and type(e) == "table" and (name == nil or e.event == name) then out[#out + 1] = e end
  end
  return out
end

function harness:run_end(r)
  local ends = self:events(r, "run_end")
  return ends[#ends]
end

-- Every change a plan recorded, as "module: summary" lines.
function harness:changes(r)
  local out = {}
  for _, e in ipairs(self:events(r, "step_end")) do
    for _, c in ipairs(e.changes or {}) do out[#out + 1] = c.module .. ": " .. c.summary end
  end
  return table.concat(out, "\n")
end

function harness:image(deployment)
  return self.cluster:get("deployments", "multiship", deployment).spec.template.spec.containers[1].image
end

return harness
