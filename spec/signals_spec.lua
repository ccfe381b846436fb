-- Nothing hangs: SIGTERM and Ctrl-C (SIGINT) stop tug within 2 s whatever it is doing
-- (loading playbooks, a script's top level, a step), through real signals sent to real tug
-- children; what a run's steps leave open is closed when the run ends; an error object
-- whose __tostring raises still gives a clear error.
package.path = "spec/support/?.lua;" .. package.path
local child = require("child")
local project = require("project")

-- Sends `signal` to proc once ready() holds (polled), then waits (at most 5 s, then
-- SIGKILL) for it to exit; reader is the task reading its lines, if any. Returns exec's
-- result and the seconds from the signal to the exit.
local function signal_when(proc, signal, ready, reader)
  local deadline = time.monotonic() + 10
  while not ready() and time.monotonic() < deadline do task.sleep(0.02) end
  assert(ready(), "the child never got ready")
  local t0 = time.monotonic()
  proc:kill(signal)
  if reader and not pcall(task.timeout, 5, reader.wait, reader) then reader:cancel() end
  local exited, r = pcall(task.timeout, 5, proc.wait, proc)
  if not exited then
    proc:kill("KILL")
    r = proc:wait()
  end
  local took = time.monotonic() - t0
  proc:close()
  assert(exited, "tug did not exit within 5 s of SIG" .. signal .. ": " .. tostring(r.stderr))
  return r, took
end

-- A `tug lua -e CODE` child whose stdout lines are collected in `lines`.
local function lua_child(code)
  local proc = exec.spawn({ child.tug, "lua", "-e", code }, { lines = true, timeout = 30 })
  local lines = {}
  local reader = task.spawn(function()
    while true do
      local batch = proc:next_lines()
      if not batch then return end
      for _, l in ipairs(batch) do lines[#lines + 1] = l.line end
    end
  end)
  return proc, lines, reader
end

local function said(lines, text)
  return function()
    for _, l in ipairs(lines) do if l:find(text, 1, true) then return true end end
    return false
  end
end

-- `tug lua -e CODE`, sent `signal` once it printed `ready_text`: exec's result, and the
-- seconds it took to exit, checked to be under 2 with exit code 130.
local function interrupted_script(code, ready_text, signal)
  local proc, lines, reader = lua_child(code)
  local r, took = signal_when(proc, signal or "TERM", said(lines, ready_text), reader)
  assert.are.equal(130, r.code, r.stderr)
  assert.is_true(took < 2, "took " .. took .. " s")
  return r
end

local function events_of(events, kind)
  local out = {}
  for _, e in ipairs(events or {}) do if e.event == kind then out[#out + 1] = e end end
  return out
end

describe("tug lua under SIGTERM and SIGINT", function()
  for _, signal in ipairs({ "TERM", "INT" }) do
    it("stops a top level that loops without yielding (SIG" .. signal .. "), exit 130, no traceback", function()
      local r = interrupted_script('print("spinning"); io.stdout:flush(); while true do end', "spinning", signal)
      assert.matches("interrupted", r.stderr)
      assert.is_nil(r.stderr:find("traceback", 1, true), r.stderr)
    end)
  end

  it("exits quietly with 130 when a plain script waits (no traceback for the cancel)", function()
    local r = interrupted_script('print("waiting"); io.stdout:flush(); task.sleep(3600)', "waiting")
    assert.is_nil(r.stderr:find("traceback", 1, true), r.stderr)
    assert.is_nil(r.stderr:find("task cancelled", 1, true), r.stderr)
  end)

  it("stops a loop that catches the cancel with pcall, within 2 s, saying why", function()
    local r = interrupted_script('print("spinning"); io.stdout:flush(); ' ..
      'while true do pcall(function() while true do end end) end', "spinning")
    assert.matches("kept running 1.5 s after Ctrl%-C cancelled it", r.stderr)
  end)

  it("stops a loop inside a C call that cannot yield (a table.sort comparator)", function()
    local r = interrupted_script('print("sorting"); io.stdout:flush(); ' ..
      'table.sort({ 3, 2, 1 }, function(a, b) while true do end end)', "sorting")
    assert.is_nil(r.stderr:find("traceback", 1, true), r.stderr)
  end)

  -- The first-hour hang: SIGTERM right after sim.start printed its URL cancelled the
  -- http.server's serve task before it ever ran, so nothing closed the listening socket.
  it("stops right after sim.start says its URL, every time (20 tries)", function()
    for _ = 1, 20 do
      local r = interrupted_script('local s = sim.start{ port = 0 }; print("URL " .. s.url); ' ..
        'io.stdout:flush(); while true do task.sleep(3600) end', "URL ")
      assert.is_nil(r.stderr:find("traceback", 1, true), r.stderr)
    end
  end)
end)

describe("a playbook whose top level loops forever", function()
  local p
  before_each(function()
    p = project.new()
    p:write("playbooks/spin.lua", 'io.open("loading", "w"):close()\nwhile true do end\n' ..
      'return playbook { lock = "deploy", steps = { step "a" { run = function() end } } }')
  end)
  after_each(function() p:remove() end)

  for _, case in ipairs({ { "plan", "TERM" }, { "run", "TERM" }, { "run", "INT" }, { "check", "TERM" },
      { "list", "INT" } }) do
    local command, signal = case[1], case[2]
    it(("stops `tug %s` on SIG%s within 2 s: exit 130, nothing run, no journal or lock"):format(command, signal), function()
      local args = { command }
      if command == "plan" or command == "run" then args[2] = "spin" end
      local proc = p:spawn(args)
      local r, took = signal_when(proc, signal, function() return p:exists("loading") end)
      assert.are.equal(130, r.code, r.stdout .. r.stderr)
      assert.is_true(took < 2, "took " .. took .. " s")
      assert.matches("interrupted: 'tug " .. command .. "' stopped before anything ran", r.stderr)
      assert.is_nil(r.stderr:find("traceback", 1, true), r.stderr)
      assert.is_nil(r.stderr:find("no playbook named", 1, true), r.stderr)
      assert.is_false(p:exists(".tug"))
    end)
  end
end)

describe("a step that loops without yielding", function()
  local p
  before_each(function()
    p = project.new()
    p:write("playbooks/spin.lua", [[
return playbook { lock = "deploy", steps = {
  step "first" { run = function() end, undo = function() io.open("undone", "w"):close() end },
  step "spin" { run = function(ctx)
    if not ctx.plan then io.open("spinning", "w"):close() end
    while true do end
  end },
} }]])
  end)
  after_each(function() p:remove() end)

  for _, signal in ipairs({ "TERM", "INT" }) do
    it("is cancelled by SIG" .. signal .. ", the run rolls back (exit 4), journal ended, lock released", function()
      local proc = p:spawn({ "run", "spin" })
      local r, took = signal_when(proc, signal, function() return p:exists("spinning") end)
      assert.are.equal(4, r.code, r.stdout .. r.stderr)
      assert.is_true(took < 2, "took " .. took .. " s")
      assert.is_true(p:exists("undone"))
      local run_end = events_of(p:journal(), "run_end")[1]
      assert.are.equal("rolled-back", run_end.status)
      assert.is_true(run_end.interrupted)
      assert.is_false(p:exists(".tug/locks/local--deploy.lock"))
      assert.are.equal(0, p:tug({ "run", "spin", "--tags", "none" }).code) -- the lock is free
    end)
  end

  it("is stopped again by a second SIGINT when its undo spins too: exit 4, journal says where", function()
    p:write("playbooks/spin2.lua", [[
return playbook { lock = "deploy", steps = {
  step "first" { run = function() end, undo = function() io.open("undoing", "w"):close(); while true do end end },
  step "spin" { run = function() io.open("spinning", "w"):close(); while true do end end },
} }]])
    local proc = p:spawn({ "run", "spin2" })
    local deadline = time.monotonic() + 10
    while not p:exists("spinning") and time.monotonic() < deadline do task.sleep(0.02) end
    proc:kill("INT")
    while not p:exists("undoing") and time.monotonic() < deadline do task.sleep(0.02) end
    assert.is_true(p:exists("undoing"), "the rollback never started")
    local r, took = signal_when(proc, "INT", function() return true end)
    assert.are.equal(4, r.code, r.stdout .. r.stderr)
    assert.is_true(took < 2, "took " .. took .. " s")
    local events = p:journal()
    assert.are.equal("aborted", events_of(events, "run_end")[1].status)
    assert.are.equal("stopped", events_of(events, "undo_end")[1].status)
    assert.is_false(p:exists(".tug/locks/local--deploy.lock"))
  end)

  it("is cancelled under `tug plan` too (exit 4)", function()
    -- plan mode refuses to write files: give the step time to reach its loop instead
    local proc = p:spawn({ "plan", "spin" })
    local start = time.monotonic()
    local r, took = signal_when(proc, "INT", function() return time.monotonic() - start > 0.8 end)
    assert.are.equal(4, r.code, r.stdout .. r.stderr)
    assert.is_true(took < 2, "took " .. took .. " s")
  end)
end)

describe("what a run's steps leave open", function()
  local p
  before_each(function() p = project.new() end)
  after_each(function() p:remove() end)

  it("is closed when the run ends, with a warning naming it, and the run exits with its code", function()
    p:write("playbooks/leak.lua", [[
return playbook { steps = {
  step "serve" { run = function(ctx)
    local srv = http.server({ port = 0, handler = function() return 200, {}, "hi" end })
    local f = io.open("port", "w"); f:write(srv.port); f:close()
    task.spawn(function() while true do task.sleep(1) end end)
  end },
} }]])
    local r = p:tug({ "run", "leak", "--output", "plain" }, { timeout = 10 })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local port = p:read("port")
    assert.matches("http.server on 127.0.0.1:" .. port .. " was still open when the run ended: closed", r.stdout)
    assert.matches("a task waiting at playbooks/leak.lua:5 was still running when the run ended: cancelled", r.stdout)
    local probe = http.get("http://127.0.0.1:" .. port .. "/", { timeout = 2 })
    assert.is_nil(probe.status, "the server still answers")
  end)

  it("stops a program exec.spawn started and nobody waited for, naming it", function()
    p:write("playbooks/leak.lua", [[
return playbook { steps = {
  step "spawn" { run = function(ctx)
    local proc = exec.spawn({ "sleep", "300" })
    local f = io.open("pid", "w"); f:write(proc.pid); f:close()
    local done = exec.spawn({ "true" }); done:wait(); done:close() -- waited for: not named
  end },
} }]])
    local t0 = time.monotonic()
    local r = p:tug({ "run", "leak", "--output", "plain" }, { timeout = 20 })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.is_true(time.monotonic() - t0 < 5)
    local pid = p:read("pid")
    assert.matches("process sleep 300 %(pid " .. pid .. "%) was still running when the run ended: stopped", r.stdout)
    assert.is_nil(r.stdout:find("process true", 1, true), r.stdout)
    assert.are_not.equal(0, exec.run({ "kill", "-0", pid }).code, "sleep still runs")
  end)

  it("is closed after a failed run too, and the failure's exit code is kept", function()
    p:write("playbooks/leak.lua", [[
return playbook { steps = {
  step "serve" { run = function(ctx)
    http.server({ port = 0, handler = function() return 200 end })
    error("then it failed")
  end },
} }]])
    local r = p:tug({ "run", "leak", "--output", "plain" }, { timeout = 10 })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("http.server on 127.0.0.1:%d+ was still open when the run ended: closed", r.stdout)
  end)
end)

describe("an error object whose __tostring raises", function()
  local p
  before_each(function() p = project.new() end)
  after_each(function() p:remove() end)

  local RAISING = 'setmetatable({}, { __tostring = function() error("tostring exploded") end })'

  it("fails the step with a clear error and the run's normal exit", function()
    p:write("playbooks/bad.lua", ([[
return playbook { steps = {
  step "a" { run = function() end, undo = function() io.open("undone", "w"):close() end },
  step "b" { run = function() error(%s) end },
} }]]):format(RAISING))
    local r = p:tug({ "run", "bad", "--output", "plain" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("a table error object whose __tostring failed: .*tostring exploded", r.stdout)
    assert.is_true(p:exists("undone"))
    assert.are.equal("rolled-back", events_of(p:journal(), "run_end")[1].status)
    assert.is_nil(r.stderr:find("internal error", 1, true), r.stderr)
  end)

  it("in a script gives exit 1 and says what happened, not an internal error", function()
    local r = child.lua("error(" .. RAISING .. ")")
    assert.are.equal(1, r.code, r.stderr)
    assert.matches("a table error whose __tostring failed: .*tostring exploded", r.stderr)
    assert.is_nil(r.stderr:find("internal error", 1, true), r.stderr)
  end)
end)

-- SIGHUP: the terminal goes (a closed window, a lost SSH connection) under a real tmux.
describe("when the terminal goes away", function()
  local SOCKET = "tug-hup-spec-" .. tug.sys.pid()
  local p
  before_each(function() p = project.new() end)
  after_each(function()
    exec.run({ "tmux", "-L", SOCKET, "kill-server" })
    p:remove()
  end)

  -- Runs tug ARGS in a tmux window, waits until `trace` holds `first`, then closes the
  -- window (tmux sends SIGHUP), and waits for the journal's run_end.
  local function run_then_hang_up(args, first)
    exec.run({ "tmux", "-L", SOCKET, "new-session", "-d", "-x", "120", "-y", "30", "-c", p.dir,
      "-e", "CI=", "-e", "GITHUB_ACTIONS=", child.tug .. " " .. table.concat(args, " ") }, { check = true })
    assert.is_true(project.wait_for(function() return (p:read("trace") or ""):find(first, 1, true) ~= nil end),
      "the run never started")
    exec.run({ "tmux", "-L", SOCKET, "kill-server" })
    local ended
    assert.is_true(project.wait_for(function()
      for _, e in ipairs(p:journal() or {}) do if e.event == "run_end" then ended = e end end
      return ended ~= nil
    end, 15), "the run never ended")
    return ended, p:journal()
  end

  it("goes on with the run and finishes it, saying so in the journal", function()
    p:write("playbooks/pb.lua", [[
local function trace(s) local f = io.open("trace", "a") f:write(s, "\n") f:close() end
return playbook { steps = {
  step "one" { run = function() trace("one") task.sleep(1.5) end, undo = function() trace("undo:one") end },
  step "two" { run = function() print("writing to a terminal that is gone") trace("two") end },
} }]])
    local ended, events = run_then_hang_up({ "run", "pb" }, "one")
    assert.are.equal("succeeded", ended.status)
    assert.are.equal("one\ntwo\n", p:read("trace"))
    local said
    for _, e in ipairs(events) do
      if e.event == "log" and e.message:find("the terminal closed (SIGHUP): the run goes on", 1, true) then said = e end
    end
    assert.truthy(said, "no word of the hangup in the journal")
    assert.matches("follow it with `tug show " .. ended.run_id .. "`", said.message, 1, true)
  end)

  it("counts a question asked after it as declined, and rolls back", function()
    p:write("playbooks/pb.lua", [[
local function trace(s) local f = io.open("trace", "a") f:write(s, "\n") f:close() end
return playbook { steps = {
  step "one" { run = function() trace("one") task.sleep(1.5) end, undo = function() trace("undo:one") end },
  step "two" { confirm = "Go on?", run = function() trace("two") end },
} }]])
    local ended = run_then_hang_up({ "run", "pb" }, "one")
    assert.are.equal("rolled-back", ended.status)
    assert.matches("no terminal to ask", ended.reason)
    assert.are.equal("one\nundo:one\n", p:read("trace"))
  end)

  it("ends a script as SIGTERM does", function()
    local proc, lines, reader = lua_child([[print("ready") io.stdout:flush() while true do task.sleep(1) end]])
    local r = signal_when(proc, "HUP", said(lines, "ready"), reader)
    assert.are.equal(130, r.code)
  end)

  it("shows a run whose process died in tug runs, with the command that resumes it", function()
    p:write("playbooks/gone.lua", [[return playbook { steps = { step "a" { run = function() os.exit(9) end } } }]])
    assert.are.equal(9, p:tug({ "run", "gone" }).code)
    local _, id = p:journal()
    local r = p:tug({ "runs" })
    assert.matches(id:gsub("%-", "%%-") .. "%s+gone%s+local%s+died", r.stdout)
    assert.matches("run " .. id .. " died before it ended: tug resume " .. id, r.stdout, 1, true)
  end)
end)
