-- journal.lua: every run appends JSON lines to .tug/runs/RUN_ID.jsonl, flushed after
-- each event and fsync'd at each step boundary, so `tug resume` can continue a run that
-- died. Lines pass through redaction: secrets never reach the journal. Journals hold
-- params, state and every event: .tug's directories are 0700 and its files 0600, whatever
-- the umask.

local M = {}

function M.home()
  local home = os.getenv("TUG_HOME")
  return (home and home ~= "") and home or ".tug"
end

function M.dir()
  return M.home() .. "/runs"
end

-- Creates DIR (and any missing parent) owner-only. An existing DIR that others can reach
-- is tightened to 0700, and notice(message) says so (or that it could not be); notice
-- defaults to a line on stderr. `kind` names the structured error raised when DIR cannot
-- be created ("journal", "lock", "backup"). Also used for database backups.
function M.private_dir(dir, kind, notice)
  local ok, err = tug.sys.mkdir(dir, 448) -- 0700
  if not ok then error(tug.error.new(kind, "cannot create the " .. kind .. " directory: " .. err), 0) end
  local st = tug.sys.stat(dir)
  if not st or st.mode & 63 == 0 then return end -- no access for group and others
  notice = notice or function(message) io.stderr:write("tug: ", message, "\n") end
  local tight, cerr = tug.sys.chmod(dir, st.mode & 448)
  if tight then
    notice(string.format("%s was open to other users (mode %o); it is now owner-only (mode %o)",
      dir, st.mode, st.mode & 448))
  else
    notice(string.format("warning: %s is open to other users (mode %o) and cannot be made owner-only (%s): " ..
      "what it holds may be read by them", dir, st.mode, cerr))
  end
end

function M.new_id()
  local now = time.now()
  return string.format("%s-%04x", time.format(now, "%Y%m%dT%H%M%S"),
    (math.floor(now * 1e6) ~ (tug.sys.pid() << 8)) & 0xffff)
end

local writer = {}
writer.__index = writer

function M.create(run_id)
  M.private_dir(M.dir(), "journal")
  local path = M.dir() .. "/" .. run_id .. ".jsonl"
  local f, ferr = tug.sys.open_private(path, "a")
  if not f then error(tug.error.new("journal", "cannot open the journal: " .. ferr), 0) end
  return setmetatable({ file = f, path = path, run_id = run_id }, writer)
end

-- Appends one event, already encoded as JSON and redacted (the engine encodes each
-- event once for every output).
function writer:write_line(line)
  local ok, err = self.file:write(line, "\n")
  if not ok then error(tug.error.new("journal", "cannot write the journal " .. self.path .. ": " .. err), 0) end
  self.file:flush()
end

-- Forces what was written to disk: called at every step boundary.
function writer:sync()
  local ok, err = tug.sys.fsync(self.file)
  if not ok then error(tug.error.new("journal", "cannot sync the journal " .. self.path .. ": " .. err), 0) end
end

function writer:close()
  if self.file then
    self.file:close()
    self.file = nil
  end
end

-- Reads a journal: the list of events (a torn last line from a crash is skipped).
function M.read(run_id)
  local path = M.dir() .. "/" .. run_id .. ".jsonl"
  local f = io.open(path)
  if not f then return nil, "no run '" .. run_id .. "' in " .. M.dir() end
  local events = {}
  for line in f:lines() do
    local ok, event = pcall(json.decode, line)
    if ok and type(event) == "table" then events[#events + 1] = event end
  end
  f:close()
  return events, path
end

-- Summarises a journal's events: the run as a whole and each step's last outcome.
function M.summarise(events)
  local run = { steps = {}, undone = {} }
  for _, e in ipairs(events) do
    if e.event == "run_start" or e.event == "run_resume" then
      run.run_id, run.playbook, run.path = e.run_id, e.playbook, e.path
      run.env, run.params, run.started = e.env, e.params, run.started or e.time
      run.step_names = e.steps or run.step_names
      run.status = "running"
    elseif e.event == "step_end" then
      run.steps[e.index] = e
      if e.state ~= nil then run.state = e.state end
    elseif e.event == "undo_end" then
      run.undone[e.index] = e
    elseif e.event == "run_end" then
      run.status, run.reason, run.ended = e.status, e.reason, e.time
    end
  end
  return run
end

-- Lists runs, newest first: { run_id, playbook, env, status, started }.
function M.list()
  local runs = {}
  for _, e in ipairs(tug.sys.listdir(M.dir()) or {}) do
    local id = e.name:match("^(.+)%.jsonl$")
    if id then
      local events = M.read(id)
      local run = M.summarise(events or {})
      run.run_id = run.run_id or id
      runs[#runs + 1] = run
    end
  end
  table.sort(runs, function(a, b) return (a.started or "") > (b.started or "") end)
  return runs
end

return M
