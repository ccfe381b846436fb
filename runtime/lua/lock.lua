-- lock.lua: one run per lock and environment at a time, and one process per run id.
--
-- The file backend keeps .tug/locks/ENV--NAME.lock; each run also holds
-- .tug/locks/runs/RUN_ID.lock for as long as a process runs or resumes it. A lock file names its
-- holder (host, pid, run, playbook, since) and the holder keeps an flock(2) on it until it
-- ends (runtime/lockfile.c): on this host, "the holder is alive" means "its flock is held",
-- which the kernel lets go when the process dies however it dies, so a reused pid cannot
-- pass for the holder. Taking over the lock of a holder that died needs its flock first and
-- swaps in the new record while holding it: of many contenders, exactly one wins.
--
-- A holder recorded on another host is never judged dead from here (over NFS an flock may
-- not reach that host): the message names the file to remove once that run is known to be
-- over. Other backends (a Kubernetes Lease) plug in through M.backends with the same three
-- functions.

local journal = require("tug.journal")

local M = { backends = {} }

local file = {}
M.backends.file = file

local function decode(text)
  local ok, holder = pcall(json.decode, text or "")
  return ok and type(holder) == "table" and holder or { unreadable = true }
end

-- held_with = "flock" tells a contender that the holder keeps an flock on the file, so a
-- free flock means it died; a record without it (an older tug) is judged by its pid.
local function record(fields)
  fields.host, fields.pid, fields.since = tug.sys.hostname(), tug.sys.pid(), time.format()
  fields.held_with = "flock"
  return fields
end

-- Takes the lock file at path for `me`. take_over(holder) says whether the lock of a holder
-- that died on this host (its flock is free) may be taken. Returns the lockfile, or nil,
-- holder, reason: "held" (alive), "dead" (died on this host, not taken over) or
-- "elsewhere" (recorded on another host, which cannot be checked from here).
-- Raises a structured error (`kind`) when the file cannot be created or read.
local function take(path, me, kind, take_over)
  local text = json.encode(me)
  local last
  for _ = 1, 20 do
    local handle, err, code = tug.sys.lock_create(path, text)
    if handle then return handle end
    if code ~= "exists" then error(tug.error.new(kind, "cannot create the lock file: " .. err), 0) end
    local probe, found, why = tug.sys.lock_probe(path)
    if probe then
      -- nobody holds its flock: the holder ended without removing it
      local holder = decode(found)
      if not holder.unreadable and holder.host ~= me.host then
        probe:close()
        return nil, holder, "elsewhere"
      end
      if holder.held_with ~= "flock" and math.type(holder.pid) == "integer" and holder.pid > 0
          and tug.sys.pid_alive(holder.pid) then
        probe:close() -- written by a tug that does not flock: its pid is all there is to go by
        return nil, holder, "held"
      end
      if not take_over(holder) then
        probe:close()
        return nil, holder, "dead"
      end
      local ok, rerr = probe:replace(text)
      if ok then return probe end
      probe:close()
      error(tug.error.new(kind, "cannot take over the lock file: " .. rerr), 0)
    elseif why == "held" then
      return nil, decode(found), "held"
    elseif why ~= "gone" then
      error(tug.error.new(kind, "cannot read the lock file: " .. found), 0)
    end
    last = found -- released or taken over between our two looks: look again
  end
  error(tug.error.new(kind, "the lock file keeps changing under us: " .. tostring(last)), 0)
end

local function lock_path(env, name)
  return string.format("%s/locks/%s--%s.lock", journal.home(), env, name)
end

-- Returns a handle, or nil, holder, reason ("held", "dead" or "elsewhere"). req: env, name,
-- run_id, playbook, break_lock (take a dead holder's lock), resume (take the lock of a dead
-- holder that was this same run).
function file.acquire(req)
  journal.private_dir(journal.home() .. "/locks", "lock")
  local path = lock_path(req.env, req.name)
  local me = record({ run_id = req.run_id, playbook = req.playbook, lock = req.name, env = req.env })
  local handle, holder, reason = take(path, me, "lock", function(dead)
    return req.break_lock or (req.resume and not dead.unreadable and dead.run_id == req.run_id)
  end)
  if not handle then return nil, holder, reason end
  return { path = path, holder = me, file = handle }
end

file.path = lock_path

function file.release(handle)
  handle.file:release()
end

function file.inspect(env, name)
  local f = io.open(lock_path(env, name))
  if not f then return nil end
  local text = f:read("a")
  f:close()
  return decode(text)
end

-- A Kubernetes Lease per lock, for clusters that several machines deploy to; an
-- environment chooses it with `lock: kubernetes`.
M.backends.kubernetes = setmetatable({}, {
  __index = function(_, k) return require("k8s").lock_backend[k] end,
})

function M.backend(name)
  local b = M.backends[name or "file"]
  if not b then error(tug.error.new("lock", "unknown lock backend '" .. tostring(name) .. "'"), 0) end
  return b
end

-- "held by run X of P (pid 123 on host h, since T)"
function M.describe(holder)
  if holder.unreadable then return "held (the lock file cannot be read)" end
  return string.format("held by run %s of %s (pid %s on %s, since %s)", tostring(holder.run_id),
    tostring(holder.playbook), tostring(holder.pid), tostring(holder.host), tostring(holder.since))
end

-- What to do about a lock that was not taken, after M.describe.
function M.hint(reason, path)
  if reason == "dead" then
    return "; that process is gone: rerun with --break-lock to take the lock"
  elseif reason == "elsewhere" then
    return "; that host cannot be checked from here: once that run is known to be over, remove " ..
      (path or "the lock file")
  end
  return ""
end

-- ---- one process per run ----

-- Takes .tug/locks/runs/RUN_ID.lock for this process: the lockfile (its `<close>` releases it),
-- or nil and a message saying who runs it. A lock left by a process of this host that died
-- is taken over: it is this run's own. command: "run" or "resume".
function M.run_lock(run_id, playbook, command)
  local dir = journal.home() .. "/locks/runs"
  journal.private_dir(journal.home() .. "/locks", "lock")
  journal.private_dir(dir, "lock")
  local path = dir .. "/" .. run_id .. ".lock"
  local me = record({ run_id = run_id, playbook = playbook, command = command })
  local handle, holder, reason = take(path, me, "lock", function() return true end)
  if handle then return handle end
  if holder.unreadable then
    return nil, string.format("run %s is already running (%s cannot be read)", run_id, path)
  end
  local who = string.format("pid %s on %s, `tug %s` since %s", tostring(holder.pid), tostring(holder.host),
    tostring(holder.command), tostring(holder.since))
  if reason == "elsewhere" then
    return nil, string.format("run %s is held by %s, which cannot be checked from here: once it is known " ..
      "to be over, remove %s", run_id, who, path)
  end
  return nil, string.format("run %s is already running (%s)", run_id, who)
end

-- Whether a process holds run RUN_ID's lock now: true, false (the lock is there and free:
-- its process died), or nil when there is no lock to go by (the run ended, or an older tug
-- ran it). Looks only; takes nothing.
function M.run_alive(run_id)
  local probe, _, why = tug.sys.lock_probe(journal.home() .. "/locks/runs/" .. run_id .. ".lock")
  if probe then
    probe:close()
    return false
  end
  if why == "held" then return true end
  return nil
end

return M
