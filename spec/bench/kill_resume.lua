-- tug lua spec/bench/kill_resume.lua [RUNS] [RESUMERS]: kill -9 and resume under contention.
-- Each of RUNS runs of an eight-step playbook (with a lock) is killed with -9 at a random
-- moment once its first step started, then resumed by RESUMERS processes started at once, which are killed again at
-- random moments, until the run ends. Every step appends "start I PID" and "end I PID" to
-- a file and adds I to ctx.state.trail. A run ends consistently when:
--   - its journal has one run_end, "succeeded", and its saved trail is exactly 12345678
--     (each step's state counted once, whatever was killed where);
--   - the steps started in order and never went back (a step the journal had finished
--     never ran again; only the step in flight at a kill may run twice);
--   - no two processes ran its steps at once (a process whose lines were followed by
--     another's never wrote again);
--   - at most one process ended it with exit 0 (none when the one that wrote run_end was
--     killed before it exited); the others exited 2 (it had ended), 3 (another held it)
--     or were killed.
-- Prints the counts and the number of inconsistent endings; exits 1 if there is any.
local RUNS = tonumber(arg[1]) or 20
local RESUMERS = tonumber(arg[2]) or 3
local STEPS = 8

local dir = exec.run({ "mktemp", "-d", "/tmp/tug-kill-resume-XXXXXX" }).stdout:gsub("\n$", "")
exec.run({ "mkdir", "-p", dir .. "/playbooks", dir .. "/environments" }, { check = true })
local function write(path, text)
  local f = assert(io.open(dir .. "/" .. path, "w"))
  f:write(text)
  f:close()
end
write("environments/local.yaml", "name: local\nprotected: false\n")
local steps = {}
for i = 1, STEPS do
  steps[#steps + 1] = string.format([[
  step "step %d" { run = function(ctx)
    effect("start %d")
    task.sleep(math.random() * 0.03)
    ctx.state.trail = (ctx.state.trail or "") .. "%d"
    effect("end %d")
  end },]], i, i, i, i)
end
write("playbooks/pb.lua", [[
local function effect(what)
  local f = assert(io.open("effects.txt", "a"))
  f:write(what, " ", tug.sys.pid(), "\n")
  f:close()
end
return playbook { lock = "deploy", steps = {
]] .. table.concat(steps, "\n") .. "\n} }")

local env = { CI = "true", TUG_HOME = false, TUG_PATH = false, TUG_ENVIRONMENTS = false }
local function spawn(args)
  local argv = { tug.executable }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return exec.spawn(argv, { cwd = dir, env = env, timeout = 60 })
end

local function read(path)
  local f = io.open(dir .. "/" .. path)
  if not f then return "" end
  local text = f:read("a")
  f:close()
  return text
end

local function run_ends(run_id)
  local ends = {}
  for line in read(".tug/runs/" .. run_id .. ".jsonl"):gmatch("[^\n]+") do
    local ok, e = pcall(json.decode, line)
    if ok and e.event == "run_end" then ends[#ends + 1] = e end
  end
  return ends
end

-- What is wrong with a run that ended (nil if nothing).
local function check(run_id, successes)
  local ends = run_ends(run_id)
  if #ends ~= 1 or ends[1].status ~= "succeeded" then
    return string.format("%d run_end events, status %s", #ends, ends[1] and ends[1].status or "none")
  end
  local events = {}
  for line in read(".tug/runs/" .. run_id .. ".jsonl"):gmatch("[^\n]+") do
    local ok, e = pcall(json.decode, line)
    if ok then events[#events + 1] = e end
  end
  local trail
  for _, e in ipairs(events) do if e.event == "step_end" and e.state then trail = e.state.trail end end
  if trail ~= "12345678" then return "saved trail " .. tostring(trail) end
  if successes > 1 then return successes .. " processes ended it with exit 0" end
  local highest, seen, last_pid = 0, {}, nil
  for kind, i, pid in read("effects.txt"):gmatch("(%a+) (%d+) (%d+)\n") do
    i = tonumber(i)
    if kind == "start" then
      if i < highest or i > highest + 1 then return "step " .. i .. " started after step " .. highest end
      highest = i
    end
    if pid ~= last_pid then
      if seen[pid] then return "process " .. pid .. " ran steps again after another one had" end
      if last_pid then seen[last_pid] = true end
      last_pid = pid
    end
  end
  if highest ~= STEPS then return "the last step started was " .. highest end
  return nil
end

math.randomseed(os.time())
local kills, resumes, refused, inconsistent = 0, 0, 0, 0
local t0 = time.monotonic()
for round = 1, RUNS do
  os.remove(dir .. "/effects.txt")
  -- --break-lock: the previous run's last process may have been killed after its run_end
  local first = spawn({ "run", "pb", "--break-lock" })
  local waiting = task.spawn(function() return first:wait() end)
  while read("effects.txt") == "" and waiting:status() ~= "done" do task.sleep(0.005) end
  if read("effects.txt") == "" then
    local r = waiting:wait()
    error("the run did not start: exit " .. tostring(r.code) .. ": " .. r.stderr)
  end
  task.sleep(math.random() * 0.15)
  first:kill("KILL")
  local r = waiting:wait()
  first:close()
  local successes = r.code == 0 and 1 or 0
  if r.signal then kills = kills + 1 end
  local run_id = exec.run({ "sh", "-c", "ls -t .tug/runs/*.jsonl | head -1" }, { cwd = dir }).stdout
    :match("([^/]+)%.jsonl")
  local attempts = 0
  while #run_ends(run_id) == 0 and attempts < 50 do
    attempts = attempts + 1
    local procs, done = {}, 0
    for i = 1, RESUMERS do
      procs[i] = spawn({ "resume", run_id })
      resumes = resumes + 1
    end
    local waiters = {}
    for i, proc in ipairs(procs) do
      waiters[i] = task.spawn(function()
        local res = proc:wait()
        done = done + 1
        if res.code == 0 then successes = successes + 1 end
        if res.code == 3 then refused = refused + 1 end
        if res.signal then kills = kills + 1 end
      end)
    end
    -- kill them all at a random moment, or let them be half of the time
    if math.random() < 0.5 then
      task.sleep(0.03 + math.random() * 0.2)
      for _, proc in ipairs(procs) do proc:kill("KILL") end
    end
    for _, w in ipairs(waiters) do w:wait() end
    for _, proc in ipairs(procs) do proc:close() end
  end
  local problem = check(run_id, successes)
  if problem then
    inconsistent = inconsistent + 1
    io.stderr:write(string.format("run %d (%s): %s\n", round, run_id, problem))
  end
end
print(string.format("%d runs, %d kill -9s, %d resumes (%d refused with exit 3), %d inconsistent endings, %.1f s",
  RUNS, kills, resumes, refused, inconsistent, time.monotonic() - t0))
exec.run({ "rm", "-rf", dir })
os.exit(inconsistent == 0 and 0 or 1)
