-- A throwaway project directory (playbooks/, environments/, .tug/) for engine specs,
-- and a way to run the tug binary under test inside it.
package.path = "spec/support/?.lua;" .. package.path
local child = require("child")

local project = {}
project.__index = project

local DEFAULT_ENV = "name: local\nprotected: false\nurl: http://127.0.0.1:1\n"

function project.new()
  local dir = exec.run({ "mktemp", "-d", "/tmp/tug-spec-XXXXXX" }).stdout:gsub("\n$", "")
  exec.run({ "mkdir", "-p", dir .. "/playbooks", dir .. "/environments" })
  local self = setmetatable({ dir = dir }, project)
  self:write("environments/local.yaml", DEFAULT_ENV)
  return self
end

function project:write(path, text)
  local full = self.dir .. "/" .. path
  exec.run({ "mkdir", "-p", (full:gsub("/[^/]*$", "")) })
  local f = assert(io.open(full, "w"))
  f:write(text)
  f:close()
  return full
end

function project:read(path)
  local f = io.open(self.dir .. "/" .. path)
  if not f then return nil end
  local text = f:read("a")
  f:close()
  return text
end

-- A prelude for playbooks: trace(word) appends a line to trace.txt, which p:trace() reads.
project.TRACE = [[
local function trace(word)
  local f = io.open("trace.txt", "a"); f:write(word, "\n"); f:close()
end
]]

function project:trace()
  local out = {}
  for line in (self:read("trace.txt") or ""):gmatch("[^\n]+") do out[#out + 1] = line end
  return out
end

function project:exists(path)
  local f = io.open(self.dir .. "/" .. path)
  if f then f:close() end
  return f ~= nil
end

-- Runs `tug ARGS...` in the project; returns exec.run's result.
function project:tug(args, opts)
  opts = opts or {}
  local argv = { child.tug }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local env = { CI = "true", TUG_PATH = false, TUG_ENVIRONMENTS = false, TUG_HOME = false, GITHUB_ACTIONS = false }
  for k, v in pairs(opts.env or {}) do env[k] = v end
  return exec.run(argv, { cwd = self.dir, env = env, timeout = opts.timeout or 30, stdin = opts.stdin })
end

-- Starts `tug ARGS...` without waiting; returns the process.
function project:spawn(args, opts)
  opts = opts or {}
  local argv = { child.tug }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local env = { CI = "true", TUG_PATH = false, TUG_ENVIRONMENTS = false, TUG_HOME = false, GITHUB_ACTIONS = false }
  for k, v in pairs(opts.env or {}) do env[k] = v end
  return exec.spawn(argv, { cwd = self.dir, env = env, timeout = opts.timeout or 30 })
end

-- The journal events of the only (or newest) run.
function project:journal()
  local runs = exec.run({ "sh", "-c", "ls -t .tug/runs/*.jsonl 2>/dev/null | head -1" }, { cwd = self.dir }).stdout
  local path = runs:gsub("\n$", "")
  if path == "" then return nil end
  local events = {}
  for line in io.lines(self.dir .. "/" .. path) do events[#events + 1] = json.decode(line) end
  return events, path:match("([^/]+)%.jsonl$")
end

-- Waits until fn() is true (polling), up to `seconds`.
function project.wait_for(fn, seconds)
  local deadline = time.monotonic() + (seconds or 10)
  while time.monotonic() < deadline do
    if fn() then return true end
    task.sleep(0.02)
  end
  return false
end

function project:remove()
  exec.run({ "rm", "-rf", self.dir })
end

return project
