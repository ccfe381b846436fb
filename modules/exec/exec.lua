-- exec.lua: the public exec module. Runs programs from an argv array (never through a shell),
-- with an environment, a working directory, stdin, a timeout, captured output with a size
-- cap, or streamed lines. The C half (exec.core) owns the mechanism: spawning, pipes,
-- signals, timers and option checking. This file is the policy: which options a caller may
-- pass, how streaming calls back into Lua, and what `check = true` reports.

local core = require("exec.core")

local exec = {}

local SPAWN_OPTIONS = {
  read_only = true, env = true, env_clear = true, cwd = true, stdin = true, timeout = true, kill_grace = true,
  max_output = true, capture = true, lines = true,
}
local RUN_OPTIONS = {
  read_only = true, env = true, env_clear = true, cwd = true, stdin = true, timeout = true, kill_grace = true,
  max_output = true, capture = true, on_line = true, check = true,
}

-- How much of stderr a `check` failure quotes.
local TAIL_LINES, TAIL_BYTES = 10, 2000

-- Checks argv's shape early so the message names the caller, and the option names so a typo
-- (`time_out`) fails loudly instead of being ignored. Returns the options for core.spawn.
local function core_options(argv, opts, allowed, caller)
  if type(argv) == "string" then
    error(caller .. ": argv must be an array of strings, not a command line;"
      .. " use { \"sh\", \"-c\", command } to run through a shell", 3)
  end
  if type(argv) ~= "table" then
    error(("%s: argv must be an array of strings (got %s)"):format(caller, type(argv)), 3)
  end
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    error(("%s: opts must be a table (got %s)"):format(caller, type(opts)), 3)
  end
  local copy = {}
  for key, value in pairs(opts) do
    if not allowed[key] then
      error(("%s: unknown option '%s'"):format(caller, tostring(key)), 3)
    end
    copy[key] = value
  end
  copy.on_line, copy.check, copy.read_only = nil, nil, nil
  return copy
end

-- Shows argv the way a shell user would type it, for error messages.
local function show_command(argv)
  local parts = {}
  for i, word in ipairs(argv) do
    word = tostring(word)
    if word == "" or word:find("[^%w@%%+=:,./_-]") then
      word = "'" .. word:gsub("'", "'\\''") .. "'"
    end
    parts[i] = word
  end
  return table.concat(parts, " ")
end

local function tail(text)
  text = text:gsub("%s+$", "")
  if #text > TAIL_BYTES then text = "..." .. text:sub(-TAIL_BYTES) end
  local lines = {}
  for line in (text .. "\n"):gmatch("(.-)\n") do lines[#lines + 1] = line end
  if #lines > TAIL_LINES then
    lines = { "...", table.unpack(lines, #lines - TAIL_LINES + 1) }
  end
  return table.concat(lines, "\n")
end

local function failure(argv, result)
  local what
  if result.timed_out then
    what = ("timed out after %.3gs (stopped by %s)"):format(result.duration,
      tostring(result.signal or "TERM"))
  elseif result.signal then
    what = "was killed by signal " .. tostring(result.signal)
  else
    what = "exited with code " .. tostring(result.code)
  end
  local message = ("exec: %s: %s"):format(show_command(argv), what)
  local stderr = tail(result.stderr or "")
  if stderr ~= "" then
    message = message .. (stderr:find("\n") and ":\n" or ": ") .. stderr
  end
  return tug.error.new("exec", message, {
    command = show_command(argv),
    code = result.code,
    signal = result.signal,
    timed_out = result.timed_out,
    stdout = result.stdout,
    stderr = result.stderr,
  })
end

local function stream_lines(proc, on_line)
  while true do
    local batch = proc:next_lines()
    if not batch then return end
    for i = 1, #batch do
      local entry = batch[i]
      on_line(entry.line, entry.stream)
    end
  end
end

-- core.spawn raises argument mistakes as plain strings; they are re-raised here so that their
-- position is the caller's line. Structured errors (program not found) pass unchanged.
local function start(argv, copts)
  local ok, proc = pcall(core.spawn, argv, copts)
  if ok then return proc end
  error(proc, type(proc) == "string" and 3 or 0)
end

-- In plan mode (tug plan) a program counts as a write unless the call says
-- read_only = true: it is recorded, not run, and looks like a success.
local function planned(argv, opts)
  if not tug.plan.active() or (opts and opts.read_only) then return nil end
  tug.plan.record("exec", show_command(argv))
  return { code = 0, stdout = "", stderr = "", duration = 0, timed_out = false,
    truncated = false, planned = true }
end

local planned_process = {
  wait = function(self) return self.result end,
  next_lines = function() return nil end,
  kill = function() end, stop = function() end, close = function() end,
}
planned_process.__index = planned_process

-- Processes exec.spawn started inside a scope (a playbook run's steps): process -> scope
-- and command. When the run ends, one still running is stopped (TERM, then KILL after
-- kill_grace) and named, as the engine closes what else the steps left open.
local scoped = setmetatable({}, { __mode = "k" })

tug.scope_closers[#tug.scope_closers + 1] = function(scope)
  local stopped = {}
  for proc, owner in pairs(scoped) do
    if owner.scope == scope then
      scoped[proc] = nil
      if select(2, pcall(proc.stop, proc)) == true then -- false: it ended; an error: closed
        stopped[#stopped + 1] = ("process %s (pid %d)"):format(owner.command, owner.pid)
      end
    end
  end
  table.sort(stopped)
  return stopped
end

-- exec.spawn(argv, opts) -> process: starts the program and returns at once.
function exec.spawn(argv, opts)
  local copts = core_options(argv, opts, SPAWN_OPTIONS, "exec.spawn")
  local plan = planned(argv, opts)
  if plan then return setmetatable({ result = plan }, planned_process) end
  local proc = start(argv, copts)
  local scope = tug.scope()
  if scope ~= 0 then scoped[proc] = { scope = scope, command = show_command(argv), pid = proc.pid } end
  return proc
end

-- exec.run(argv, opts) -> result: runs the program to the end.
function exec.run(argv, opts)
  local copts = core_options(argv, opts, RUN_OPTIONS, "exec.run")
  opts = opts or {}
  if opts.on_line ~= nil and type(opts.on_line) ~= "function" then
    error(("exec.run: opts.on_line must be a function (got %s)"):format(type(opts.on_line)), 2)
  end
  copts.lines = opts.on_line ~= nil
  local plan = planned(argv, opts)
  if plan then return plan end
  local proc = start(argv, copts)
  if opts.on_line then
    -- The callback may wait (task.sleep) or fail; if it fails or the task is cancelled
    -- meanwhile, the child is stopped the same way a timeout stops it.
    local ok, err = pcall(stream_lines, proc, opts.on_line)
    if not ok then
      proc:stop()
      error(err, 0)
    end
  end
  local result = proc:wait()
  proc:close()
  if opts.check and (result.code ~= 0 or result.timed_out) then
    error(failure(argv, result), 2)
  end
  return result
end

return exec
