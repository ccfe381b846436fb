-- Locks and run exclusivity under contention, driven through the real binary: many `tug
-- resume` and `tug run --break-lock` processes started at once against a run killed with
-- -9, counting each step's side effects to prove that exactly one of them proceeds; file
-- modes of .tug; and what a lock that cannot be written reports.
package.path = "spec/support/?.lua;" .. package.path
local project = require("project")

-- LOCK_ROUNDS raises the number of rounds (spec/bench/locks.sh runs many more).
local ROUNDS = tonumber(os.getenv("LOCK_ROUNDS") or "") or 50
local CONTENDERS = 10

-- Each step appends "NAME PID" to effects.txt. DIE=1 makes step "two" kill its own process
-- with SIGKILL (a run killed with -9 in the middle of a step); HOLD=1 makes step "four"
-- wait for the file `release`, so that every contender meets a live winner.
local function playbook_text(lock)
  return string.format([[
local function effect(name)
  local f = assert(io.open("effects.txt", "a"))
  f:write(name, " ", tug.sys.pid(), "\n")
  f:close()
end
return playbook { %s steps = {
  step "one" { run = function() effect("one") end },
  step "two" { run = function()
    effect("two")
    if os.getenv("DIE") then exec.run({ "kill", "-KILL", tostring(tug.sys.pid()) }) task.sleep(30) end
  end },
  step "three" { run = function() effect("three") end },
  step "four" { run = function()
    effect("four")
    if os.getenv("HOLD") then
      while not io.open("release") do task.sleep(0.005) end
    end
  end },
} }]], lock and ("lock = %q,"):format(lock) or "")
end

-- { one = {pids...}, two = ... } from effects.txt.
local function effects(p)
  local out = { one = {}, two = {}, three = {}, four = {} }
  for name, pid in (p:read("effects.txt") or ""):gmatch("(%a+) (%d+)\n") do
    out[name][#out[name] + 1] = tonumber(pid)
  end
  return out
end

-- With a gate, the environment reads a secret from the FIFO `gate`: every contender blocks
-- opening it until all of them wait there, and all go on together when it opens.
local GATE_ENV = "name: local\nprotected: false\ngate: ${secret:file:gate}\n"
local GATE_TOKEN = "gate-open-7f3a"

local function open_gate(p, procs)
  local waiting = project.wait_for(function()
    for _, proc in ipairs(procs) do
      local f = io.open("/proc/" .. proc.pid .. "/wchan")
      local wchan = f and f:read("a")
      if f then f:close() end
      if wchan ~= "wait_for_partner" then return false end
    end
    return true
  end, 20)
  assert.is_true(waiting, "the contenders did not all reach the gate")
  local f = assert(io.open(p.dir .. "/gate", "w"))
  f:write(GATE_TOKEN)
  f:close()
end

-- Starts `tug ARGS` CONTENDERS times at once (HOLD=1), waits until each one has either
-- ended or reached step "four", lets the ones holding go, and returns their results.
local function contend(p, args, gate)
  local procs, results, ended = {}, {}, 0
  if gate then
    os.remove(p.dir .. "/gate")
    exec.run({ "mkfifo", p.dir .. "/gate" }, { check = true })
  end
  for i = 1, CONTENDERS do procs[i] = p:spawn(args, { env = { HOLD = "1" } }) end
  if gate then open_gate(p, procs) end
  for i, proc in ipairs(procs) do
    task.spawn(function()
      results[i] = proc:wait()
      ended = ended + 1
    end)
  end
  assert.is_true(project.wait_for(function() return ended + #effects(p).four >= CONTENDERS end, 20),
    "the contenders neither ended nor reached step four")
  p:write("release", "")
  assert.is_true(project.wait_for(function() return ended == CONTENDERS end, 20), "a contender did not end")
  for i, proc in ipairs(procs) do
    results[i].pid = proc.pid
    proc:close()
  end
  return results
end

-- The one result with exit 0; every other one must be exit 3 matching `refusal`.
local function the_one_that_ran(results, refusal)
  local winners, report = {}, {}
  for _, r in ipairs(results) do
    if r.code == 0 then
      winners[#winners + 1] = r
    else
      assert.are.equal(3, r.code, r.stdout .. r.stderr)
      assert.matches(refusal, r.stderr)
    end
    report[#report + 1] = r.code .. (r.signal and ("/" .. r.signal) or "")
  end
  assert.are.equal(1, #winners, "exit codes: " .. table.concat(report, " "))
  return winners[1]
end

-- The project of the running test: each describe starts a fresh one for each test, with
-- playbooks/pb.lua when given its text.
local p
local function fresh_project(text)
  before_each(function()
    p = project.new()
    if text then p:write("playbooks/pb.lua", text) end
  end)
  after_each(function() p:remove() end)
end

-- Runs the playbook with DIE=1 and returns the run id of the run killed in step "two".
local function killed_run(p)
  local r = p:tug({ "run", "pb" }, { env = { DIE = "1" } })
  assert.are.equal("KILL", r.signal, r.stdout .. r.stderr)
  local _, run_id = p:journal()
  return run_id
end

describe("run exclusivity", function()
  fresh_project()

  local function resume_rounds(lock, rounds)
    p:write("playbooks/pb.lua", playbook_text(lock))
    for round = 1, rounds do
      os.remove(p.dir .. "/effects.txt")
      os.remove(p.dir .. "/release")
      local run_id = killed_run(p)
      local winner = the_one_that_ran(contend(p, { "resume", run_id }),
        "run " .. run_id:gsub("%p", "%%%0") .. " is already running")
      local e = effects(p)
      -- the killed run did one and two; the resume did two again (it never finished), three and four
      assert.are.equal(1, #e.one, "round " .. round)
      assert.are.same({ winner.pid }, e.three, "round " .. round)
      assert.are.same({ winner.pid }, e.four, "round " .. round)
      assert.are.equal(2, #e.two, "round " .. round)
      local ending = p:read(".tug/runs/" .. run_id .. ".jsonl"):match('[^\n]*"event":"run_end"[^\n]*')
      assert.are.equal("succeeded", json.decode(ending).status, "round " .. round)
    end
  end

  it(("lets exactly one of %d simultaneous resumes of a killed run proceed, %d rounds"):format(CONTENDERS, ROUNDS),
    function() resume_rounds("deploy", ROUNDS) end)

  it("does the same for a playbook without a lock", function()
    resume_rounds(nil, math.max(1, ROUNDS // 10))
  end)

  it(("lets exactly one of %d simultaneous --break-lock runs take a dead holder's lock, %d rounds")
    :format(CONTENDERS, ROUNDS), function()
    p:write("playbooks/pb.lua", playbook_text("deploy"))
    p:write("environments/local.yaml", GATE_ENV)
    for round = 1, ROUNDS do
      os.remove(p.dir .. "/effects.txt")
      os.remove(p.dir .. "/release")
      os.remove(p.dir .. "/gate")
      p:write("gate", GATE_TOKEN)
      killed_run(p)
      local winner = the_one_that_ran(contend(p, { "run", "pb", "--break-lock" }, true),
        "lock 'deploy' on local is held by run %S+ of pb %(pid %d+")
      local e = effects(p)
      assert.are.same({ winner.pid }, e.four, "round " .. round)
      assert.are.equal(2, #e.one, "round " .. round)
    end
  end)
end)

describe("one process per run", function()
  fresh_project()

  it("refuses to resume a run that is still running, naming its process, exit 3", function()
    p:write("playbooks/pb.lua", playbook_text(nil))
    local first = p:spawn({ "run", "pb" }, { env = { HOLD = "1" } })
    assert.is_true(project.wait_for(function() return #effects(p).four == 1 end))
    local _, run_id = p:journal()
    local r = p:tug({ "resume", run_id })
    assert.are.equal(3, r.code, r.stdout .. r.stderr)
    assert.matches("tug: run " .. run_id:gsub("%p", "%%%0") .. " is already running %(pid " .. first.pid
      .. " on " .. tug.sys.hostname():gsub("%p", "%%%0") .. ", `tug run` since %d%d%d%d%-", r.stderr)
    p:write("release", "")
    assert.are.equal(0, first:wait().code)
    r = p:tug({ "resume", run_id })
    assert.are.equal(2, r.code)
    assert.matches("already ended: succeeded", r.stderr)
    assert.are.same({ first.pid }, effects(p).three)
    assert.is_false(p:exists(".tug/locks/runs/" .. run_id .. ".lock"))
  end)

  it("takes over only the lock of the run it resumes; another run's needs --break-lock", function()
    p:write("playbooks/pb.lua", playbook_text("deploy"))
    local first = killed_run(p)
    -- a second run breaks the first one's lock, then dies too: the lock names it
    local r = p:tug({ "run", "pb", "--break-lock" }, { env = { DIE = "1" } })
    assert.are.equal("KILL", r.signal)
    local second = json.decode(p:read(".tug/locks/local--deploy.lock")).run_id
    assert.are_not.equal(first, second)
    r = p:tug({ "resume", first })
    assert.are.equal(3, r.code, r.stdout .. r.stderr)
    assert.matches("lock 'deploy' on local is held by run " .. second:gsub("%p", "%%%0") .. " of pb %(pid %d+ on .-%); that process " ..
      "is gone: rerun with %-%-break%-lock to take the lock", r.stderr)
    assert.are.equal(0, #effects(p).three)
    r = p:tug({ "resume", first, "--break-lock" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    r = p:tug({ "resume", second })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal(2, #effects(p).three)
    assert.is_false(p:exists(".tug/locks/local--deploy.lock"))
  end)
end)

describe("lock holders", function()
  fresh_project(playbook_text("deploy"))

  local function holder(fields)
    local h = { host = tug.sys.hostname(), pid = tug.sys.pid(), run_id = "20261201T000000-beef", playbook = "pb",
      since = "2026-12-01T00:00:00Z", lock = "deploy", env = "local" }
    for k, v in pairs(fields) do h[k] = v end
    p:write(".tug/locks/local--deploy.lock", json.encode(h))
  end

  it("judges a holder by its flock, not its pid: a reused pid does not keep a dead run's lock", function()
    holder({ held_with = "flock" }) -- this very process has that pid, and holds no flock on the file
    local r = p:tug({ "run", "pb" })
    assert.are.equal(3, r.code, r.stdout .. r.stderr)
    assert.matches("held by run 20261201T000000%-beef of pb %(pid " .. tug.sys.pid() .. " .-that process is gone", r.stderr)
    assert.are.equal(0, p:tug({ "run", "pb", "--break-lock" }).code)
  end)

  it("judges the lock of an older tug, which holds no flock, by its pid", function()
    holder({}) -- no held_with: a live pid keeps it, even from --break-lock
    local r = p:tug({ "run", "pb", "--break-lock" })
    assert.are.equal(3, r.code, r.stdout .. r.stderr)
    assert.matches("held by run 20261201T000000%-beef of pb %(pid " .. tug.sys.pid() .. " on [^)]+%)\n$", r.stderr)
    holder({ pid = exec.run({ "true" }).pid }) -- a pid that is gone
    r = p:tug({ "run", "pb" })
    assert.matches("that process is gone", r.stderr)
    assert.are.equal(0, p:tug({ "run", "pb", "--break-lock" }).code)
  end)

  it("does not break the lock of a holder on another host, and says which file to remove", function()
    holder({ host = "build-7.example.net" })
    local r = p:tug({ "run", "pb", "--break-lock" })
    assert.are.equal(3, r.code, r.stdout .. r.stderr)
    assert.matches("held by run 20261201T000000%-beef of pb %(pid %d+ on build%-7%.example%.net, since " ..
      "2026%-12%-01T00:00:00Z%); that host cannot be checked from here: once that run is known to be over, " ..
      "remove %.tug/locks/local%-%-deploy%.lock", r.stderr)
    os.remove(p.dir .. "/.tug/locks/local--deploy.lock")
    assert.are.equal(0, p:tug({ "run", "pb" }).code)
  end)

  it("takes an unreadable lock file only with --break-lock", function()
    p:write(".tug/locks/local--deploy.lock", "{ torn")
    local r = p:tug({ "run", "pb" })
    assert.are.equal(3, r.code)
    assert.matches("lock 'deploy' on local is held %(the lock file cannot be read%); that process is gone", r.stderr)
    assert.are.equal(0, p:tug({ "run", "pb", "--break-lock" }).code)
  end)
end)

describe("file modes", function()
  fresh_project(playbook_text("deploy"))

  local function mode(path)
    local st = tug.sys.stat(p.dir .. "/" .. path)
    return st and string.format("%o", st.mode)
  end

  -- `tug ARGS` under a umask, started at once
  local function spawn_with_umask(umask, args)
    return exec.spawn({ "sh", "-c", "umask " .. umask .. "; exec \"$@\"", "sh", require("child").tug,
      table.unpack(args) }, { cwd = p.dir, timeout = 30,
      env = { CI = "true", TUG_HOME = false, TUG_PATH = false, TUG_ENVIRONMENTS = false, GITHUB_ACTIONS = false,
        HOLD = "1" } })
  end

  for _, umask in ipairs({ "022", "000" }) do
    it("keeps .tug, journals and locks owner-only under umask " .. umask, function()
      local proc = spawn_with_umask(umask, { "run", "pb" })
      assert.is_true(project.wait_for(function() return #effects(p).four == 1 end))
      local _, run_id = p:journal()
      assert.are.same({ "700", "700", "700", "700", "600", "600", "600" }, {
        mode(".tug"), mode(".tug/runs"), mode(".tug/locks"), mode(".tug/locks/runs"),
        mode(".tug/runs/" .. run_id .. ".jsonl"), mode(".tug/locks/runs/" .. run_id .. ".lock"),
        mode(".tug/locks/local--deploy.lock") })
      p:write("release", "")
      local r = proc:wait()
      assert.are.equal(0, r.code, r.stdout .. r.stderr)
      assert.is_nil(mode(".tug/locks/runs/" .. run_id .. ".lock"))
      assert.is_nil(mode(".tug/locks/local--deploy.lock"))
      assert.are.same({ { name = "runs", type = "dir" } }, tug.sys.listdir(p.dir .. "/.tug/locks"))
      assert.are.same({}, tug.sys.listdir(p.dir .. "/.tug/locks/runs"))
    end)
  end

  it("tightens the journal and lock directories an older tug left open, and says so", function()
    exec.run({ "mkdir", "-m", "755", "-p", p.dir .. "/.tug/runs", p.dir .. "/.tug/locks" }, { check = true })
    p:write(".tug/runs/20261201T000000-beef.jsonl", '{"event":"run_start","run_id":"20261201T000000-beef"}\n')
    tug.sys.chmod(p.dir .. "/.tug/runs/20261201T000000-beef.jsonl", 420) -- 0644
    tug.sys.chmod(p.dir .. "/.tug", 493) -- 0755, and left so: it may be a directory the user chose
    local r = p:tug({ "run", "pb" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.matches("tug: %.tug/runs was open to other users %(mode 755%); it is now owner%-only %(mode 700%)", r.stderr)
    assert.matches("tug: %.tug/locks was open to other users %(mode 755%)", r.stderr)
    assert.are.same({ "755", "700", "700" }, { mode(".tug"), mode(".tug/runs"), mode(".tug/locks") })
    r = p:tug({ "run", "pb" })
    assert.are.equal("", r.stderr)
  end)

  it("makes a journal an older tug left open owner-only when it resumes it", function()
    local run_id = killed_run(p)
    local journal_path = ".tug/runs/" .. run_id .. ".jsonl"
    tug.sys.chmod(p.dir .. "/" .. journal_path, 420) -- 0644
    assert.are.equal(0, p:tug({ "resume", run_id }).code)
    assert.are.equal("600", mode(journal_path))
  end)
end)

describe("a lock that cannot be written", function()
  fresh_project(playbook_text("deploy"))

  it("says why when TUG_HOME is under a file, exit 1", function()
    p:write("not-a-dir", "")
    local r = p:tug({ "run", "pb" }, { env = { TUG_HOME = p.dir .. "/not-a-dir/.tug" } })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("^tug: cannot create the lock directory: mkdir .-/not%-a%-dir/%.tug: Not a directory\n$", r.stderr)
    assert.is_nil(p:read("effects.txt"))
  end)

  it("says why when the lock directory is a file, exit 1", function()
    p:write(".tug/locks", "")
    local r = p:tug({ "run", "pb" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("^tug: cannot create the lock directory: mkdir %.tug/locks: Not a directory\n$", r.stderr)
    assert.is_nil(p:read("effects.txt"))
    assert.is_nil(tug.sys.listdir(p.dir .. "/.tug/runs"))
  end)

  it("says why when the lock file cannot be opened, exit 1", function()
    exec.run({ "sh", "-c", 'umask 077 && mkdir -p "$1"', "sh", p.dir .. "/.tug/locks/local--deploy.lock" },
      { check = true })
    local r = p:tug({ "run", "pb" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("^tug: cannot read the lock file: cannot open %.tug/locks/local%-%-deploy%.lock: Is a directory\n$",
      r.stderr)
    assert.is_nil(p:read("effects.txt"))
    -- the run's own claim, taken first, was let go
    assert.are.same({}, tug.sys.listdir(p.dir .. "/.tug/locks/runs"))
  end)
end)
