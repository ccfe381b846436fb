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

-- Ends a line that a run which died while writing left torn, so that what a resume appends
-- starts on a line of its own.
function writer:end_torn_line()
  local f = io.open(self.path, "rb")
  if not f then return end
  local size = f:seek("end")
  local last = size > 0 and f:seek("set", size - 1) and f:read(1)
  f:close()
  if last and last ~= "\n" then self:write_line("") end
end

function writer:close()
  if self.file then
    self.file:close()
    self.file = nil
  end
end

-- ---- the state: a step_end or undo_end records the change to ctx.state as a JSON Patch ----
-- (RFC 6902: add, replace and remove at JSON Pointer paths) against the state recorded
-- before it, so a run whose state grows by a key a step writes a journal that grows
-- linearly. run_resume records the whole state it resumes with, and journals written
-- before patches carry the whole state on every step_end and undo_end: `state` always
-- replaces what came before, `state_patch` changes it.

local ARRAY_MT = debug.getmetatable(json.array())
local OBJECT_MT = debug.getmetatable(json.object())

-- A JSON Pointer one level below `path`: a string key is an object member (with ~ and /
-- escaped), an integer key a Lua position in an array (JSON counts from 0).
local function pointer(path, key)
  if math.type(key) == "integer" then return path .. "/" .. (key - 1) end
  return path .. "/" .. key:gsub("~", "~0"):gsub("/", "~1")
end

local math_type, type, next, rawget, rawlen = math.type, type, next, rawget, rawlen

-- Whether a live value that is not a table encodes as the recorded one: 1 and 1.0 are equal
-- in Lua but not in JSON, and neither are 0.0 and -0.0.
local function same_scalar(live, recorded)
  if live ~= recorded then return false end
  if type(live) == "number" then
    return math_type(live) == math_type(recorded) and (live ~= 0 or 1 / live == 1 / recorded)
  end
  return true
end

local diff_table

-- Appends the ops that turn recorded into live at path/key (key nil: at path). The pointer
-- is made here, for values that changed or are tables: most values do not change.
local function diff_value(recorded, live, path, key, ops)
  local here = key == nil and path or pointer(path, key)
  if type(live) == "table" then
    if type(recorded) == "table" and diff_table(recorded, live, here, ops) then return end
  elseif same_scalar(live, recorded) then
    return
  end
  ops[#ops + 1] = { op = "replace", path = here, value = live }
end

-- How many members each recorded object has, kept by apply_patch, so that the diff knows
-- without a second pass whether a member was removed (weak: the tables come and go).
local member_count = setmetatable({}, { __mode = "k" })

local function count_members(t)
  local n = member_count[t]
  if n == nil then
    n = 0
    for _ in next, t do n = n + 1 end
    member_count[t] = n
  end
  return n
end

local function drop_from(ops, first)
  for i = #ops, first, -1 do ops[i] = nil end
end

-- Appends the ops that turn `recorded` (decoded JSON) into `live`, member by member; false
-- when they cannot be compared that way (the live table is of another JSON kind, or not
-- plain data, which encoding the whole value then reports) or when the ops would outnumber
-- the members: the caller replaces the whole value instead. This runs after every step
-- over the whole state, so the common case (a scalar that did not change) is kept short.
diff_table = function(recorded, live, path, ops)
  local array = debug.getmetatable(recorded) == ARRAY_MT
  local mt = debug.getmetatable(live)
  if mt == nil then
    if (rawlen(live) > 0) ~= array then return false end -- json.encode's rule: {} is an object
  elseif mt ~= (array and ARRAY_MT or OBJECT_MT) then
    return false
  end
  local first, members = #ops + 1, 0
  if array then
    local n, had = rawlen(live), rawlen(recorded)
    for _ in next, live do members = members + 1 end
    -- n members, and 1..n all present (below): no other keys, no holes
    if members ~= n then return false end
    for i = 1, n do
      local v = live[i]
      if v == nil then
        drop_from(ops, first)
        return false
      elseif i > had then
        ops[#ops + 1] = { op = "add", path = pointer(path, i), value = v }
      else
        local was = recorded[i]
        if v ~= was then
          diff_value(was, v, path, i, ops)
        else
          local number = math_type(v)
          if number and (number ~= math_type(was) or (v == 0 and 1 / v ~= 1 / was)) then
            diff_value(was, v, path, i, ops)
          end
        end
      end
    end
    for i = had, n + 1, -1 do ops[#ops + 1] = { op = "remove", path = pointer(path, i) } end
  else
    local added = 0
    for k, v in next, live do
      members = members + 1
      local was = recorded[k] -- recorded tables carry only the json markers: no __index
      if was == nil then
        if type(k) ~= "string" then -- a recorded object's keys are all strings
          drop_from(ops, first)
          return false
        end
        added = added + 1
        ops[#ops + 1] = { op = "add", path = pointer(path, k), value = v }
      elseif v ~= was then
        diff_value(was, v, path, k, ops) -- a table (never the recorded one) or a new value
      else
        local number = math_type(v) -- equal numbers may still differ in JSON: 1 and 1.0, 0.0 and -0.0
        if number and (number ~= math_type(was) or (v == 0 and 1 / v ~= 1 / was)) then
          diff_value(was, v, path, k, ops)
        end
      end
    end
    if members - added < count_members(recorded) then -- some recorded member is gone
      for k in next, recorded do
        if rawget(live, k) == nil then ops[#ops + 1] = { op = "remove", path = pointer(path, k) } end
      end
    end
  end
  if #ops - first + 1 > math.max(members, 1) then
    drop_from(ops, first)
    return false
  end
  return true
end

-- The JSON Patch that turns `recorded` (the state as the journal has it: decoded JSON)
-- into `live` (ctx.state); {} when nothing changed. Values are the live ones: encoding
-- the patch is what checks they are plain data.
function M.diff(recorded, live)
  local ops = {}
  diff_value(recorded, live, "", nil, ops)
  return ops
end

local function pointer_key(parent, segment)
  if debug.getmetatable(parent) == ARRAY_MT then
    local i = math.tointeger(tonumber(segment))
    if not i or i < 0 or not segment:match("^%d+$") then error("'" .. segment .. "' is not an array index", 0) end
    return i + 1
  end
  return (segment:gsub("~1", "/"):gsub("~0", "~"))
end

-- Applies a JSON Patch (decoded) to state, in place where it can; returns the new state.
-- Raises a message when an op does not fit the state (a journal that lost a line).
function M.apply_patch(state, ops)
  for _, op in ipairs(ops) do
    local path = op.path
    if type(path) ~= "string" or (path ~= "" and path:sub(1, 1) ~= "/") then
      error("patch op has no JSON Pointer path", 0)
    end
    if path == "" then
      if op.op ~= "replace" and op.op ~= "add" then error("cannot " .. tostring(op.op) .. " the whole state", 0) end
      state = op.value
    else
      local segments = {}
      for segment in path:gmatch("/([^/]*)") do segments[#segments + 1] = segment end
      local parent = state
      for i = 1, #segments - 1 do
        parent = type(parent) == "table" and parent[pointer_key(parent, segments[i])] or nil
        if type(parent) ~= "table" then error("no " .. path .. " in the state", 0) end
      end
      local key = pointer_key(parent, segments[#segments])
      local array = math.type(key) == "integer"
      local count = not array and member_count[parent]
      if op.op == "add" then
        if array then
          table.insert(parent, key, op.value)
        else
          if count and parent[key] == nil then member_count[parent] = count + 1 end
          parent[key] = op.value
        end
      elseif op.op == "replace" or op.op == "remove" then
        if parent[key] == nil then error("no " .. path .. " in the state to " .. op.op, 0) end
        if op.op == "replace" then
          parent[key] = op.value
        elseif array then
          table.remove(parent, key)
        else
          if count then member_count[parent] = count - 1 end
          parent[key] = nil
        end
      else
        error("unknown patch op '" .. tostring(op.op) .. "'", 0)
      end
    end
  end
  return state
end

-- Reads a journal: the list of events. A line that is not JSON is torn when it is the last
-- one or a resume followed it (the run died while writing it, and it never counted); any
-- other is damage, kept in the list as { event = "unreadable", line = N } so summarise
-- knows the state after it cannot be rebuilt from patches.
function M.read(run_id)
  local path = M.dir() .. "/" .. run_id .. ".jsonl"
  local f = io.open(path)
  if not f then return nil, "no run '" .. run_id .. "' in " .. M.dir() end
  local events, bad = {}, nil
  local number = 0
  for line in f:lines() do
    number = number + 1
    local ok, event = pcall(json.decode, line)
    if ok and type(event) == "table" then
      if bad and event.event ~= "run_resume" then events[#events + 1] = { event = "unreadable", line = bad } end
      bad = nil
      events[#events + 1] = event
    elseif line ~= "" then
      if bad then events[#events + 1] = { event = "unreadable", line = bad } end
      bad = number
    end
  end
  f:close()
  return events, path
end

-- The state after event e: its whole `state`, or `current` with its `state_patch` applied.
local function advance(run, current, e)
  if e.state ~= nil then
    run.state_broken = nil
    return e.state
  end
  if e.state_patch == nil or run.state_broken then return current end
  local ok, state = pcall(M.apply_patch, current, e.state_patch)
  if ok then return state end
  run.state_broken = string.format("the %s of step %s does not apply: %s", e.event, tostring(e.index), state)
  return current
end

-- Summarises a journal's events: the run as a whole, each step's last outcome, and the
-- state as of the last step_end (undos change the state, but a run shows and resumes with
-- the state its steps left, as it always did). run.state_broken says why the state could
-- not be rebuilt, if it could not.
function M.summarise(events)
  local run = { steps = {}, undone = {} }
  local current = json.object() -- the state as the events so far recorded it
  for _, e in ipairs(events) do
    run.last = e.time or run.last
    if e.event == "run_start" or e.event == "run_resume" then
      run.run_id, run.playbook, run.path = e.run_id, e.playbook, e.path
      run.env, run.params, run.started = e.env, e.params, run.started or e.time
      run.step_names = e.steps or run.step_names
      run.status = "running"
      run.pid, run.host = e.pid, e.host
      run.kubernetes = e.kubernetes -- --context / --namespace, which a resume keeps
      if e.state ~= nil then current = advance(run, current, e) end
    elseif e.event == "step_end" then
      run.steps[e.index] = e
      current = advance(run, current, e)
      run.state = current
    elseif e.event == "undo_end" then
      run.undone[e.index] = e
      if e.state_patch ~= nil and current == run.state then current = json.decode(json.encode(current)) end
      current = advance(run, current, e)
    elseif e.event == "run_end" then
      run.status, run.reason, run.ended = e.status, e.reason, e.time
    elseif e.event == "unreadable" then
      run.unreadable = run.unreadable or {}
      run.unreadable[#run.unreadable + 1] = e.line
      run.state_broken = run.state_broken or string.format("line %d of the journal is not JSON", e.line)
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

-- ---- retention ----

-- Seconds since the epoch of an event time ("2026-11-28T22:30:00.123Z", always UTC).
local function epoch(stamp)
  local y, mo, d, h, mi, sec = tostring(stamp):match("^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)")
  if not y then return nil end
  y, mo = tonumber(y), tonumber(mo)
  -- days from 1970-01-01 to y-mo-d (Howard Hinnant's days_from_civil)
  if mo <= 2 then y = y - 1 end
  local era = y // 400
  local yoe = y - era * 400
  local doy = (153 * (mo > 2 and mo - 3 or mo + 9) + 2) // 5 + tonumber(d) - 1
  local days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
  return days * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(sec)
end

-- The retention settings TUG_RETAIN_RUNS (keep the newest N runs) and TUG_RETAIN_AGE (keep
-- runs that ended within a duration): { keep = N, older_than = seconds }, nil when neither
-- is set, or nil and a message naming the variable.
function M.retention_from_env()
  local keep, age = os.getenv("TUG_RETAIN_RUNS"), os.getenv("TUG_RETAIN_AGE")
  keep = keep ~= "" and keep or nil
  age = age ~= "" and age or nil
  if not keep and not age then return nil end
  local rules = {}
  if keep then
    rules.keep = math.tointeger(tonumber(keep))
    if not rules.keep or rules.keep < 0 then
      return nil, "TUG_RETAIN_RUNS must be a whole number of runs to keep, not '" .. keep .. "'"
    end
  end
  if age then
    local err
    rules.older_than, err = time.parse_duration(age)
    if not rules.older_than then return nil, "TUG_RETAIN_AGE: " .. err end
  end
  return rules
end

-- Decides which runs to remove: rules { keep = N, older_than = seconds, unfinished = bool,
-- now = epoch }. A run is removed when it is not among the newest `keep` runs and it ended
-- longer than `older_than` ago (each rule that is given must agree). A run that has not
-- ended (running, or died and resumable) is kept unless rules.unfinished, and one whose
-- process is alive on this host is always kept; so is rules.except (a run id). Returns { remove = { run... },
-- kept_unfinished = { run... } }; each run as journal.list gives it.
function M.select_prune(runs, rules)
  local now = rules.now or time.now()
  local host = tug.sys.hostname()
  local out = { remove = {}, kept_unfinished = {} }
  for i, run in ipairs(runs) do
    if run.run_id == rules.except then goto next_run end
    local beyond_count = rules.keep == nil or i > rules.keep
    local when = epoch(run.ended or run.last or run.started)
    local old_enough = rules.older_than == nil or (when ~= nil and now - when > rules.older_than)
    if beyond_count and old_enough then
      if run.status ~= "running" then
        out.remove[#out.remove + 1] = run
      elseif rules.unfinished and not M.alive(run, host) then
        out.remove[#out.remove + 1] = run
      else
        out.kept_unfinished[#out.kept_unfinished + 1] = run
      end
    end
    ::next_run::
  end
  return out
end

-- Whether a run's process is still going: true or false from its run lock (on any host
-- sharing .tug) or, with no lock to go by, from its pid on this host; nil when neither
-- can tell (a run of another host, by a tug that kept no run lock).
function M.alive(run, host)
  local held = require("tug.lock").run_alive(run.run_id)
  if held ~= nil then return held end
  if run.host ~= (host or tug.sys.hostname()) or math.type(run.pid) ~= "integer" then return nil end
  return tug.sys.pid_alive(run.pid)
end

-- After a run: removes the runs past the retention settings (never `run_id`, never an
-- unfinished run). Returns the removed runs, or nil and a message.
function M.apply_retention(run_id)
  local rules, err = M.retention_from_env()
  if not rules then return nil, err end
  rules.except = run_id
  local removed = {}
  for _, run in ipairs(M.select_prune(M.list(), rules).remove) do
    if M.remove(run.run_id) then removed[#removed + 1] = run end
  end
  return removed
end

-- Removes a run's journal, and the lock file its process left (only when no process
-- holds it).
function M.remove(run_id)
  local path = M.dir() .. "/" .. run_id .. ".jsonl"
  local ok, err = os.remove(path)
  if not ok then return nil, err end
  local lock_path = M.home() .. "/locks/runs/" .. run_id .. ".lock"
  local probe = tug.sys.lock_probe(lock_path)
  if probe then probe:release() end
  return true
end

return M
