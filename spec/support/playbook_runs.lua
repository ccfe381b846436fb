-- playbook_runs.lua: what the playbook specs check beyond one run's exit: that a plan
-- sent no write to the simulated cluster, and runs killed with -9 mid-step then resumed.
-- Works with a playbook_harness (h.cluster is the in-process simulator, h.dir its files).
--
--   local before = runs.snapshot(h.cluster)  ... plan ...  runs.unchanged(h.cluster, before)
--   local text, r = runs.plan(h, { "plan", "deploy", "version=v2.2.0" })  -- both in one
--   local e = runs.failed(h, r, "rolled-back", "timed out")
--   local run_id = runs.kill_when(h, { "run", "blue-green", ... }, function(e) ... end)
--   local r = runs.resume(h, run_id)
--   local r = runs.resume_runbook(h, run_id)   -- a step_by_step runbook, with --no-step
package.path = "spec/support/?.lua;" .. package.path
local assert = require("luassert")
local child = require("child")
local harness = require("playbook_harness")

local runs = {}

local WRITES = { create = true, update = true, patch = true, delete = true, deletecollection = true }

-- Write requests the simulator's API has answered (any resource, subresources included).
function runs.api_writes(cluster)
  local n = 0
  for key, count in pairs(cluster.metrics.api) do
    local verb = key:match('^verb="([^"]*)"') or ""
    if WRITES[verb:match("([%a]+)$") or ""] then n = n + count end
  end
  return n
end

-- Requests the simulated applications served on a route with a method (from /metrics).
function runs.app_requests(cluster, route, method)
  local n = 0
  for key, count in pairs(cluster.metrics.requests) do
    if key:find('route="' .. route .. '"', 1, true) and key:find('method="' .. method .. '"', 1, true) then
      n = n + count
    end
  end
  return n
end

-- The cluster's resourceVersion and write count, once nothing moves any more (a warm
-- start may still be writing statuses when the spec begins).
function runs.snapshot(cluster)
  local rv = cluster:state().resourceVersion
  for _ = 1, 60 do
    task.sleep(0.1)
    local now = cluster:state().resourceVersion
    if now == rv then break end
    rv = now
  end
  return { rv = rv, writes = runs.api_writes(cluster) }
end

-- Asserts nothing was written since the snapshot.
function runs.unchanged(cluster, before)
  assert.are.equal(before.writes, runs.api_writes(cluster), "write requests reached the simulated API")
  assert.are.equal(before.rv, cluster:state().resourceVersion, "the cluster's resourceVersion moved")
end

-- Runs `tug plan ...` (args, with "plan" first) through the harness, asserts it exited 0
-- and wrote nothing to the cluster; returns the changes it listed (harness:changes) and
-- exec's result.
function runs.plan(h, args)
  local before = runs.snapshot(h.cluster)
  local r = h:tug(args)
  assert.are.equal(0, r.code, r.stdout .. r.stderr)
  runs.unchanged(h.cluster, before)
  return h:changes(r), r
end

-- Asserts a run exited 1 and ended with `status` (nil: any), its reason matching every
-- pattern after it; returns its run_end event.
function runs.failed(h, r, status, ...)
  assert.are.equal(1, r.code, r.stdout .. r.stderr)
  local e = h:run_end(r)
  if status then assert.are.equal(status, e.status) end
  for _, pattern in ipairs({ ... }) do assert.matches(pattern, e.reason) end
  return e
end

local function child_env(h)
  return { CI = "true", TUG_ENVIRONMENTS = h.dir .. "/environments", TUG_HOME = h.dir .. "/.tug",
    GITHUB_ACTIONS = false }
end

-- Starts `tug ARGS --env sim --output json` as harness:tug does, and kills it with -9 as
-- soon as stop(event, cluster) is true for one of its JSON events (checked again every
-- 50 ms on the last event, so a condition on the cluster can wait for the world).
-- opts.signal sends another signal instead ("TERM": the run rolls back and ends).
-- Returns the run id, the events seen and exec's result.
function runs.kill_when(h, args, stop, opts)
  opts = opts or {}
  local signal = opts.signal or "KILL"
  local argv = { child.tug }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  for _, a in ipairs({ "--env", "sim", "--playbooks", harness.ROOT .. "/playbooks", "--output", "json" }) do
    argv[#argv + 1] = a
  end
  local proc = exec.spawn(argv, { env = child_env(h), lines = true, timeout = 120 })
  local events, run_id, killed = {}, nil, false
  local deadline = time.monotonic() + (opts.within or 30)
  local reader = task.spawn(function()
    while true do
      local batch = proc:next_lines()
      if not batch then return end
      for _, l in ipairs(batch) do
        local ok, e = pcall(json.decode, l.line)
        if ok and type(e) == "table" and e.event then
          events[#events + 1] = e
          run_id = run_id or e.run_id
        end
      end
    end
  end)
  while not killed and time.monotonic() < deadline do
    for i = #events, 1, -1 do
      if stop(events[i], h.cluster) then
        killed = true
        break
      end
    end
    if not killed then task.sleep(0.05) end
  end
  local ended_before = false
  for _, e in ipairs(events) do ended_before = ended_before or e.event == "run_end" end
  proc:kill(killed and signal or "KILL")
  reader:wait()
  local r = proc:wait()
  proc:close()
  assert(killed, "the stop condition never held; the run said: " .. json.encode(events) .. (r.stderr or ""))
  assert(not ended_before, "the run ended before it was signalled: " .. json.encode(events))
  return run_id, events, r
end

-- tug resume RUN_ID --yes --output json; exec.run's result.
function runs.resume(h, run_id)
  return exec.run({ child.tug, "resume", run_id, "--yes", "--output", "json" },
    { env = child_env(h), timeout = 120 })
end

-- tug resume RUN_ID --no-step --yes --output json, for a runbook (step_by_step) resumed
-- straight through; exec.run's result.
function runs.resume_runbook(h, run_id)
  return exec.run({ child.tug, "resume", run_id, "--no-step", "--yes", "--output", "json" },
    { env = child_env(h), timeout = 120 })
end

-- tug show RUN_ID (plain text).
function runs.show(h, run_id)
  return exec.run({ child.tug, "show", run_id }, { env = child_env(h), timeout = 30 })
end

return runs
