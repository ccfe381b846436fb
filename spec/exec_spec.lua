-- exec_spec.lua: exec.run and exec.spawn driving real programs on tug's loop. Checks what a
-- user notices: output, exit codes and signals, options, timeouts, streaming, errors, and
-- that a cancelled task leaves no child process behind.

local exec = require("exec")
local task = require("task")
local time = require("time")

-- The pid's state letter from /proc ("S", "R", "Z" for a zombie ...), nil once it is gone.
local function state(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return nil end
  local stat = f:read("a")
  f:close()
  return stat:match("^%d+ %b() (%a)")
end

local function exists(pid) return state(pid) ~= nil end

-- Waits up to `within` seconds for the pid to disappear; returns true if it did. tug reaps
-- its own children, so they must vanish; a grandchild is reaped by init, which in some
-- containers never happens, so for those a zombie (dead, not reaped) counts as gone.
local function gone_within(pid, within, grandchild)
  local deadline = time.monotonic() + within
  repeat
    local s = state(pid)
    if s == nil or (grandchild and s == "Z") then return true end
    task.sleep(0.02)
  until time.monotonic() >= deadline
  return false
end

local function elapsed(fn)
  local start = time.monotonic()
  local a, b = fn()
  return time.monotonic() - start, a, b
end

describe("exec.run", function()
  it("captures stdout, stderr and the exit code", function()
    local r = exec.run({ "sh", "-c", "echo out; echo err >&2; exit 3" })
    assert.are.equal(3, r.code)
    assert.is_nil(r.signal)
    assert.are.equal("out\n", r.stdout)
    assert.are.equal("err\n", r.stderr)
    assert.is_false(r.timed_out)
    assert.is_false(r.truncated)
    assert.is_number(r.pid)
    assert.is_true(r.duration >= 0 and r.duration < 5)
  end)

  it("reports a death by signal with the signal's name and no code", function()
    local r = exec.run({ "sh", "-c", "kill -KILL $$" })
    assert.is_nil(r.code)
    assert.are.equal("KILL", r.signal)
  end)

  it("passes argv words as they are, with no shell in between", function()
    local r = exec.run({ "printf", "%s|", "a b", "$HOME", "*", "'q'" })
    assert.are.equal("a b|$HOME|*|'q'|", r.stdout)
  end)

  it("adds and overrides environment variables on top of the inherited ones", function()
    local r = exec.run({ "sh", "-c", 'echo "$TUG_A|$TUG_B|${PATH:+has path}"' },
      { env = { TUG_A = "one", TUG_B = 2 } })
    assert.are.equal("one|2|has path\n", r.stdout)
  end)

  it("starts from an empty environment with env_clear, and unsets with false", function()
    local r = exec.run({ "/usr/bin/env" }, { env = { ONLY = "me" }, env_clear = true })
    assert.are.equal("ONLY=me\n", r.stdout)
    r = exec.run({ "/usr/bin/env" }, { env = { HOME = false, TUG_SET = "yes" } })
    assert.matches("\nTUG_SET=yes\n", "\n" .. r.stdout, 1, true)
    assert.is_nil(("\n" .. r.stdout):find("\nHOME=", 1, true))
  end)

  it("runs in cwd", function()
    assert.are.equal("/tmp\n", exec.run({ "pwd" }, { cwd = "/tmp" }).stdout)
  end)

  it("feeds stdin, and gives /dev/null when there is none", function()
    local r = exec.run({ "tr", "a-z", "A-Z" }, { stdin = "hello\nworld" })
    assert.are.equal("HELLO\nWORLD", r.stdout)
    r = exec.run({ "cat" })
    assert.are.equal(0, r.code)
    assert.are.equal("", r.stdout)
  end)

  it("survives a child that exits without reading a large stdin", function()
    local r = exec.run({ "true" }, { stdin = string.rep("x", 4 * 1024 * 1024) })
    assert.are.equal(0, r.code)
  end)

  it("says clearly when the program does not exist", function()
    local ok, err = pcall(exec.run, { "tug-no-such-program" })
    assert.is_false(ok)
    assert.are.equal("exec", err.kind)
    assert.are.equal("exec: tug-no-such-program: program not found", tostring(err))
  end)

  it("says clearly when cwd does not exist", function()
    local ok, err = pcall(exec.run, { "pwd" }, { cwd = "/tug/no/such/dir" })
    assert.is_false(ok)
    assert.are.equal("exec", err.kind)
    assert.matches("cwd /tug/no/such/dir: No such file or directory", tostring(err), 1, true)
  end)

  it("rejects a command line string, an empty argv and unknown options", function()
    local ok, err = pcall(exec.run, "ls -l")
    assert.is_false(ok)
    assert.matches("not a command line", err, 1, true)
    ok, err = pcall(exec.run, {})
    assert.is_false(ok)
    assert.matches("argv is empty", err, 1, true)
    ok, err = pcall(exec.run, { "true" }, { time_out = 1 })
    assert.is_false(ok)
    assert.matches("unknown option 'time_out'", err, 1, true)
    ok, err = pcall(exec.run, { "true" }, { timeout = "soon" })
    assert.is_false(ok)
    assert.matches("'soon' is not a duration", err, 1, true)
  end)

  it("stops a program at its timeout with TERM", function()
    local took, r = elapsed(function() return exec.run({ "sleep", "5" }, { timeout = 0.2 }) end)
    assert.is_true(took < 1, "took " .. took)
    assert.is_true(r.timed_out)
    assert.are.equal("TERM", r.signal)
    assert.is_nil(r.code)
  end)

  it("accepts the timeout as a duration string", function()
    local took, r = elapsed(function() return exec.run({ "sleep", "5" }, { timeout = "150ms" }) end)
    assert.is_true(took < 1, "took " .. took)
    assert.is_true(r.timed_out)
  end)

  it("KILLs a program that ignores TERM once kill_grace has passed", function()
    local took, r = elapsed(function()
      return exec.run({ "sh", "-c", 'trap "" TERM; sleep 5' }, { timeout = 0.2, kill_grace = 0.3 })
    end)
    assert.is_true(took >= 0.45 and took < 2, "took " .. took)
    assert.is_true(r.timed_out)
    assert.are.equal("KILL", r.signal)
  end)

  it("kills what a shell started too, so a timeout is not held up by grandchildren", function()
    local took, r = elapsed(function()
      return exec.run({ "sh", "-c", "sleep 5; echo never" }, { timeout = 0.2 })
    end)
    assert.is_true(took < 1, "took " .. took)
    assert.is_true(r.timed_out)
    assert.are.equal("", r.stdout)
  end)

  it("drops output beyond max_output but keeps reading so the child finishes", function()
    local r = exec.run({ "head", "-c", "300000", "/dev/zero" }, { max_output = 1000 })
    assert.are.equal(0, r.code)
    assert.are.equal(1000, #r.stdout)
    assert.is_true(r.truncated)
  end)

  it("streams lines to on_line in order, with a final line that has no newline", function()
    local seen = {}
    local r = exec.run({ "sh", "-c", "echo one; echo two; printf 'three\\r\\nfour'" }, {
      on_line = function(line, stream)
        task.sleep(0.01) -- the callback may wait
        seen[#seen + 1] = stream .. ":" .. line
      end,
    })
    assert.are.same({ "stdout:one", "stdout:two", "stdout:three", "stdout:four" }, seen)
    assert.are.equal("one\ntwo\nthree\r\nfour", r.stdout)
  end)

  it("streams stderr lines too, and can skip capturing", function()
    local seen = {}
    local r = exec.run({ "sh", "-c", "echo a; sleep 0.05; echo b >&2" }, {
      capture = false,
      on_line = function(line, stream) seen[#seen + 1] = stream .. ":" .. line end,
    })
    assert.are.same({ "stdout:a", "stderr:b" }, seen)
    assert.are.equal("", r.stdout)
    assert.are.equal("", r.stderr)
  end)

  it("stops the child when on_line fails, and passes the error on", function()
    local pid
    local ok, err = pcall(exec.run, { "sh", "-c", "echo $$; exec sleep 30" }, {
      kill_grace = 0.5,
      on_line = function(line)
        pid = tonumber(line)
        error("callback failed")
      end,
    })
    assert.is_false(ok)
    assert.matches("callback failed", tostring(err), 1, true)
    assert.is_true(gone_within(pid, 1), "pid " .. tostring(pid) .. " still there")
  end)

  it("streams many lines without losing any while the callback is slow", function()
    local count, last = 0, nil
    local r = exec.run({ "seq", "1", "300000" }, {
      capture = false,
      on_line = function(line)
        count = count + 1
        last = line
        if count == 1 then task.sleep(0.3) end -- over 1 MiB of lines piles up meanwhile
      end,
    })
    assert.are.equal(0, r.code)
    assert.are.equal(300000, count)
    assert.are.equal("300000", last)
  end)

  it("hands a line longer than 1 MiB to on_line in pieces", function()
    local pieces, total = 0, 0
    exec.run({ "sh", "-c", "head -c 2500000 /dev/zero | tr '\\0' a" }, {
      capture = false,
      on_line = function(line)
        pieces = pieces + 1
        total = total + #line
      end,
    })
    assert.are.equal(3, pieces)
    assert.are.equal(2500000, total)
    local lines = {}
    exec.run({ "sh", "-c", "head -c 2097152 /dev/zero | tr '\\0' a; echo; echo next" }, {
      capture = false,
      on_line = function(line) lines[#lines + 1] = #line end,
    })
    assert.are.same({ 1048576, 1048576, 4 }, lines) -- no empty line after an exact cut
  end)

  it("raises a structured error with check = true naming command, code and stderr", function()
    local ok, err = pcall(exec.run, { "sh", "-c", "echo first >&2; echo 'last words' >&2; exit 2" },
      { check = true })
    assert.is_false(ok)
    assert.are.equal("exec", err.kind)
    assert.are.equal(2, err.code)
    local message = tostring(err)
    assert.matches("exec: sh -c ", message, 1, true)
    assert.matches("exited with code 2", message, 1, true)
    assert.matches("last words", message, 1, true)
    assert.are.equal(0, exec.run({ "true" }, { check = true }).code)
  end)

  it("runs 50 programs at once", function()
    local fns = {}
    for i = 1, 50 do
      fns[i] = function() return exec.run({ "sh", "-c", "echo " .. i }) end
    end
    local results = { task.parallel(fns) }
    assert.are.equal(50, #results)
    for i = 1, 50 do
      assert.are.equal(0, results[i].code)
      assert.are.equal(i .. "\n", results[i].stdout)
    end
  end)
end)

describe("cancelling a task that waits on a program", function()
  it("kills the child when task.timeout fires", function()
    local proc = exec.spawn({ "sleep", "30" })
    local pid = proc.pid
    assert.is_true(exists(pid))
    local took, ok, err = elapsed(function()
      return pcall(task.timeout, 0.2, function() return proc:wait() end)
    end)
    assert.is_false(ok)
    assert.are.equal("timeout", err.kind)
    assert.is_true(took < 1, "took " .. took)
    assert.is_true(gone_within(pid, 1), "pid " .. pid .. " still there")
  end)

  it("kills the child of exec.run inside task.timeout", function()
    local pid
    local ok, err = pcall(task.timeout, 0.3, function()
      return exec.run({ "sh", "-c", "echo $$; exec sleep 30" }, {
        on_line = function(line) pid = tonumber(line) end,
      })
    end)
    assert.is_false(ok)
    assert.are.equal("timeout", err.kind)
    assert.is_number(pid)
    assert.is_true(gone_within(pid, 1), "pid " .. pid .. " still there")
  end)

  it("kills the child and its children when a sibling in task.parallel fails", function()
    local pids = {}
    local ok, err = pcall(task.parallel, {
      function()
        return exec.run({ "sh", "-c", "sleep 30 & echo $!; echo $$; wait" }, {
          on_line = function(line) pids[#pids + 1] = tonumber(line) end,
        })
      end,
      function()
        task.sleep(0.2)
        error("sibling failed")
      end,
    })
    assert.is_false(ok)
    assert.matches("sibling failed", tostring(err), 1, true)
    assert.are.equal(2, #pids)
    local sleep_pid, shell_pid = pids[1], pids[2]
    assert.is_true(gone_within(shell_pid, 1), "shell " .. shell_pid .. " still there")
    assert.is_true(gone_within(sleep_pid, 1, true), "its sleep " .. sleep_pid .. " still runs")
  end)

  it("gives a child that ignores TERM kill_grace, then KILLs it", function()
    local proc = exec.spawn({ "sh", "-c", 'trap "" TERM; sleep 30' }, { kill_grace = 0.3 })
    local pid = proc.pid
    pcall(task.timeout, 0.1, function() return proc:wait() end)
    task.sleep(0.1)
    assert.is_true(exists(pid), "KILLed before the grace period ended")
    assert.is_true(gone_within(pid, 1), "pid " .. pid .. " still there")
  end)
end)

describe("exec.spawn", function()
  it("returns a process with pid, wait, kill and a readable state", function()
    local proc = exec.spawn({ "sleep", "30" })
    assert.is_number(proc.pid)
    assert.are.equal("exec.process " .. proc.pid .. " (running)", tostring(proc))
    assert.is_true(proc:kill("TERM"))
    local r = proc:wait()
    assert.are.equal("TERM", r.signal)
    assert.are.equal("exec.process " .. proc.pid .. " (killed by TERM)", tostring(proc))
    assert.are.same(r, proc:wait()) -- waiting again gives the same result
    local again, message = proc:kill()
    assert.is_nil(again)
    assert.are.equal("process has exited", message)
    proc:close()
    proc:close()
    assert.are.equal("exec.process " .. r.pid .. " (closed)", tostring(proc))
    assert.has_error(function() proc:wait() end, "attempt to use a closed process")
  end)

  it("reports a normal exit in its state", function()
    local proc = exec.spawn({ "true" })
    proc:wait()
    assert.are.equal("exec.process " .. proc.pid .. " (exited 0)", tostring(proc))
  end)

  it("hands out lines with next_lines and nil at the end", function()
    local proc = exec.spawn({ "sh", "-c", "echo a; echo b >&2" }, { lines = true })
    local got = {}
    while true do
      local batch = proc:next_lines()
      if not batch then break end
      for _, entry in ipairs(batch) do got[#got + 1] = entry.stream .. ":" .. entry.line end
    end
    table.sort(got)
    assert.are.same({ "stderr:b", "stdout:a" }, got)
    assert.are.equal(0, proc:wait().code)
    assert.is_nil(proc:next_lines())
  end)

  it("lets wait() finish a lines = true process whose lines nobody takes", function()
    local proc = exec.spawn({ "seq", "1", "500000" }, { lines = true, max_output = 100 })
    local r = proc:wait()
    assert.are.equal(0, r.code)
    assert.is_true(r.truncated)
    assert.is_nil(proc:next_lines())
  end)

  it("kills a running child when its handle is closed", function()
    local pid
    do
      local proc <close> = exec.spawn({ "sleep", "30" })
      pid = proc.pid
    end
    assert.is_true(gone_within(pid, 1), "pid " .. pid .. " still there")
  end)

  it("kills a running child when its handle is collected", function()
    local pid = exec.spawn({ "sleep", "30" }).pid
    collectgarbage()
    collectgarbage()
    assert.is_true(gone_within(pid, 1), "pid " .. pid .. " still there")
  end)

  it("stop sends TERM, then KILL after kill_grace", function()
    local proc = exec.spawn({ "sh", "-c", 'trap "" TERM; sleep 30' }, { kill_grace = 0.2 })
    task.sleep(0.05) -- let the shell set its trap
    assert.is_true(proc:stop())
    local took, r = elapsed(function() return proc:wait() end)
    assert.are.equal("KILL", r.signal)
    assert.is_true(took < 1, "took " .. took)
  end)
end)

describe("exec in plan mode", function()
  after_each(function() tug.plan.set(false); tug.plan.take() end)

  it("records a program instead of running it, unless the call is read_only", function()
    local marker = os.tmpname()
    os.remove(marker)
    tug.plan.set(true)
    local r = exec.run({ "touch", marker })
    local listing = exec.run({ "ls", "/" }, { read_only = true })
    local p = exec.spawn({ "touch", marker })
    local pr = p:wait()
    tug.plan.set(false)
    local records = tug.plan.take()
    assert.is_true(r.planned)
    assert.are.equal(0, r.code)
    assert.is_true(pr.planned)
    assert.is_nil(io.open(marker))
    assert.matches("usr", listing.stdout)
    assert.are.equal(2, #records)
    assert.are.equal("exec", records[1].module)
    assert.are.equal("touch " .. marker, records[1].summary)
  end)
end)
