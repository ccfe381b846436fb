-- lock.lua: one run per lock and environment at a time. The file backend keeps
-- .tug/locks/ENV--NAME.lock, created exclusively and naming its holder; a holder that
-- died on this host is detected and can be broken with --break-lock. Other backends
-- (a Kubernetes Lease) plug in through M.backends with the same three functions.

local M = { backends = {} }

local file = {}
M.backends.file = file

local function lock_path(env, name)
  return string.format("%s/locks/%s--%s.lock", require("tug.journal").home(), env, name)
end

local function read_holder(path)
  local f = io.open(path)
  if not f then return nil end
  local text = f:read("a")
  f:close()
  local ok, holder = pcall(json.decode, text)
  return ok and type(holder) == "table" and holder or { unreadable = true }
end

-- Returns a handle, or nil, holder, reason ("held" or "dead").
function file.acquire(req)
  local ok, err = tug.sys.mkdir(require("tug.journal").home() .. "/locks")
  if not ok then error(tug.error.new("lock", "cannot create the lock directory: " .. err), 0) end
  local path = lock_path(req.env, req.name)
  local me = {
    host = tug.sys.hostname(), pid = tug.sys.pid(), run_id = req.run_id,
    playbook = req.playbook, since = time.format(), lock = req.name, env = req.env,
  }
  for _ = 1, 2 do
    if tug.sys.create_exclusive(path, json.encode(me)) then
      return { path = path, holder = me }
    end
    local holder = read_holder(path)
    if holder == nil then goto retry end -- released meanwhile
    local dead = holder.host == me.host and holder.pid and not tug.sys.pid_alive(holder.pid)
    if not (req.break_lock and dead) then
      return nil, holder, dead and "dead" or "held"
    end
    os.remove(path)
    ::retry::
  end
  return nil, read_holder(path) or {}, "held"
end

function file.release(handle)
  local holder = read_holder(handle.path)
  if holder and holder.run_id == handle.holder.run_id then os.remove(handle.path) end
end

function file.inspect(env, name)
  return read_holder(lock_path(env, name))
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

-- "held by run X (pid 123 on host h, since T)"
function M.describe(holder)
  if holder.unreadable then return "held (the lock file cannot be read)" end
  return string.format("held by run %s of %s (pid %s on %s, since %s)", tostring(holder.run_id),
    tostring(holder.playbook), tostring(holder.pid), tostring(holder.host), tostring(holder.since))
end

return M
