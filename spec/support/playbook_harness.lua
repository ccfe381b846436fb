-- The harness for running the Multiship playbooks end to end: a simulated cluster this
-- spec serves (so it can look at the cluster afterwards), an environment "sim" that
-- reaches it through a kubeconfig, and the real tug binary as a child process.
--
--   local h = harness.new({ env = "extra: yaml\n", timing = {...} })
--   local r = h:tug({ "run", "deploy", "version=v2.2.0" })   -- --env sim --output json
--   h:run_end(r).status; h:events(r, "step_end"); h:image("api"); h.cluster:get(...)
--   h:close()
--
-- In a describe block whose tests each want a fresh cluster:
--   local h, cluster
--   local new_harness = harness.per_test()        -- closes each test's harness after it
--   local function start(opts) h, cluster = new_harness(opts) end
package.path = "spec/support/?.lua;" .. package.path
local child = require("child")

local harness = {}
harness.__index = harness

-- The project's root (the directory the specs run in); set by harness.new, since require
-- cannot wait on a process.
harness.ROOT = nil

-- For runs whose gate must pass: the healthy versions without their background 0.05% of
-- errors (a one-second probe cannot tell that from the 0.1% threshold; see
-- multiship.error_rate_low), so only the tests about noise depend on it.
harness.QUIET_SCENARIO = { extends = "default", images = { ["multiship/api"] = { versions = {
  ["v2.1.0"] = { error_rate = 0 }, ["v2.2.0"] = { error_rate = 0 } } } } }

-- opts.env: YAML lines appended to the environment file (database, cdn, metrics...);
-- opts.timing: the simulator's timing; opts.scenario: its scenario; opts.quiet: the
-- scenario is QUIET_SCENARIO (with opts.scenario's keys added); opts.admin_token: the
-- environment's admin_token (default sim-admin-token, the simulator's; false: none).
function harness.new(opts)
  opts = opts or {}
  local h = setmetatable({}, harness)
  harness.ROOT = harness.ROOT or exec.run({ "pwd" }).stdout:gsub("\n$", "")
  local scenario = opts.scenario
  if opts.quiet then
    scenario = {}
    for k, v in pairs(opts.scenario or {}) do scenario[k] = v end
    for k, v in pairs(harness.QUIET_SCENARIO) do scenario[k] = v end
  end
  h.admin_token = opts.admin_token == nil and "sim-admin-token" or opts.admin_token
  h.cluster = sim.start({ port = 0, scenario = scenario,
    timing = opts.timing or { pod_start = "100ms", ready_after = "200ms" } })
  h.dir = exec.run({ "mktemp", "-d", "/tmp/tug-playbooks-XXXXXX" }).stdout:gsub("\n$", "")
  exec.run({ "mkdir", "-p", h.dir .. "/environments" }, { check = true })
  h.cluster:kubeconfig(h.dir .. "/kubeconfig")
  h:write_env(opts.env or "")
  return h
end

-- For a describe block whose tests each start their own harness: returns start(opts),
-- which starts one (harness.new(opts)) and returns it and its cluster; an after_each
-- closes it.
function harness.per_test()
  local current
  -- a module does not see the spec file's busted functions; busted's API has them
  require("busted").after_each(function()
    if current then current:close() end
    current = nil
  end)
  return function(opts)
    current = harness.new(opts)
    return current, current.cluster
  end
end

function harness:write_env(extra)
  local f = assert(io.open(self.dir .. "/environments/sim.yaml", "w"))
  f:write(string.format([[
name: sim
url: %s/svc/multiship/api-service
service_url: %s/svc/multiship/{service}
kubernetes: { kubeconfig: %s/kubeconfig, namespace: multiship }
thresholds: { p95_ms: 500, error_rate: 0.001 }
]], self.cluster.url, self.cluster.url, self.dir))
  if self.admin_token then f:write("admin_token: ", self.admin_token, "\n") end
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

-- The JSON events of a run's stdout (--output json), all or those named `name`; also for
-- specs that run tug without a harness.
function harness.json_events(r, name)
  local out = {}
  for line in r.stdout:gmatch("[^\n]+") do
    local ok, e = pcall(json.decode, line)
    if ok and type(e) == "table" and (name == nil or e.event == name) then out[#out + 1] = e end
  end
  return out
end

-- The last run_end event of a run's stdout.
function harness.last_run_end(r)
  local ends = harness.json_events(r, "run_end")
  return ends[#ends]
end

function harness:events(r, name) return harness.json_events(r, name) end
function harness:run_end(r) return harness.last_run_end(r) end

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
