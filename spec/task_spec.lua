-- The scheduler through the task module: concurrency, results, failures, cancellation.

describe("task", function()
  it("runs 200 tasks sleeping 0.2 s each at once, not one after another", function()
    local t0 = time.monotonic()
    local fns = {}
    for i = 1, 200 do
      fns[i] = function() task.sleep(0.2); return i end
    end
    local results = { task.parallel(fns) }
    local elapsed = time.monotonic() - t0
    assert.are.equal(200, #results)
    for i = 1, 200 do assert.are.equal(i, results[i]) end
    -- one after another would take 40 s; at once it is one sleep plus overhead
    assert.is_true(elapsed >= 0.2, "finished before the sleep: " .. elapsed)
    assert.is_true(elapsed < 0.9, "took " .. elapsed .. " s")
  end)

  it("never wakes a sleep early", function()
    for _, s in ipairs({ 0.001, 0.013, 0.05 }) do
      local t0 = time.monotonic()
      task.sleep(s)
      assert.is_true(time.monotonic() - t0 >= s)
    end
  end)

  it("wakes a task whose timer fired at the top of a loop turn, without waiting for other timers", function()
    local sleeper = task.spawn(function() task.sleep(0.01) end)
    local other = task.spawn(function() task.sleep(5) end)
    task.yield() -- both are now waiting on their timers
    local t0 = time.monotonic()
    while time.monotonic() - t0 < 0.05 do end -- no yield: the 10 ms timer is overdue
    sleeper:wait()
    other:cancel()
    assert.is_true(time.monotonic() - t0 < 1, "waited for the 5 s timer")
  end)

  it("accepts durations as strings and names a bad one", function()
    local t0 = time.monotonic()
    task.sleep("20ms")
    assert.is_true(time.monotonic() - t0 >= 0.02)
    local ok, err = pcall(task.sleep, "soon")
    assert.is_false(ok)
    assert.matches("'soon' is not a duration", err)
    ok, err = pcall(task.sleep, -1)
    assert.is_false(ok)
    assert.matches("seconds must be a number from 0 to 876000h", err)
  end)

  it("spawns a task and waits for its results", function()
    local h = task.spawn(function(a, b) task.sleep(0.01); return a + b, "two" end, 2, 3)
    assert.are.equal("new", h:status())
    local sum, second = h:wait()
    assert.are.equal(5, sum)
    assert.are.equal("two", second)
    assert.are.equal("done", h:status())
    -- waiting again returns the same results
    assert.are.equal(5, (h:wait()))
  end)

  it("re-raises a task's error to whoever waits, with the original value", function()
    local h = task.spawn(function() task.sleep(0.01); error({ kind = "custom", message = "bad" }) end)
    local ok, err = pcall(h.wait, h)
    assert.is_false(ok)
    assert.are.equal("custom", err.kind)
    assert.are.equal("failed", h:status())
  end)

  it("returns parallel results in order, whatever order they finish in", function()
    local a, b, c = task.parallel({
      function() task.sleep(0.03); return "a" end,
      function() return "b" end,
      function() task.sleep(0.01); return "c" end,
    })
    assert.are.same({ "a", "b", "c" }, { a, b, c })
  end)

  it("fails parallel fast with the first error and cancels the rest", function()
    local finished = false
    local t0 = time.monotonic()
    local ok, err = pcall(task.parallel, {
      function() task.sleep(0.02); error("disk full") end,
      function() task.sleep(5); finished = true end,
    })
    assert.is_false(ok)
    assert.matches("disk full", tostring(err))
    assert.is_true(time.monotonic() - t0 < 1)
    task.sleep(0.02) -- let the cancelled sibling unwind
    assert.is_false(finished)
  end)

  it("rejects a parallel item that is not a function", function()
    local ok, err = pcall(task.parallel, { function() end, 42 })
    assert.is_false(ok)
    assert.matches("item 2 is a number, not a function", err)
  end)

  it("times out a slow function, cancelling it", function()
    local finished = false
    local ok, err = pcall(task.timeout, 0.05, function() task.sleep(5); finished = true end)
    assert.is_false(ok)
    assert.are.equal("timeout", err.kind)
    assert.matches("timed out after 0.05 seconds", tostring(err))
    task.sleep(0.02)
    assert.is_false(finished)
  end)

  it("returns the function's results when it beats the timeout", function()
    assert.are.same({ 1, 2 }, { task.timeout("1s", function(a) task.sleep(0.01); return a, 2 end, 1) })
  end)

  it("stops code that never yields once its timeout has passed", function()
    local ok, err = pcall(task.timeout, 0.05, function() while true do end end)
    assert.is_false(ok)
    assert.are.equal("timeout", err.kind)
  end)

  it("cancels a waiting task: it ends cancelled and cannot wait again", function()
    local reached, retried = false, nil
    local h = task.spawn(function()
      local ok, err = pcall(task.sleep, 5)
      -- a task that swallows its cancellation is still cancelled at its next wait
      retried = select(2, pcall(task.sleep, 0.01))
      reached = true
      error(err)
    end)
    task.sleep(0.01)
    h:cancel()
    local ok, err = pcall(h.wait, h)
    assert.is_false(ok)
    assert.are.equal("cancelled", err.kind)
    assert.are.equal("cancelled", h:status())
    assert.is_true(reached)
    assert.are.equal("cancelled", retried.kind)
  end)

  it("cancels tasks that never ran, even when nothing holds their handles any more", function()
    local ran = false
    for _ = 1, 100 do task.spawn(function() ran = true end):cancel() end
    collectgarbage()
    collectgarbage()
    task.sleep(0.01)
    assert.is_false(ran)
    local h = task.spawn(function() ran = true end)
    h:cancel()
    local ok, err = pcall(h.wait, h)
    assert.is_false(ok)
    assert.are.equal("cancelled", err.kind)
    assert.is_false(ran)
    assert.are.equal(3, task.spawn(function() return 3 end):wait())
  end)

  it("cancels a task when its handle goes out of a <close> scope", function()
    local h
    do
      local scoped <close> = task.spawn(function() task.sleep(5) end)
      h = scoped
      task.sleep(0.01)
    end
    task.sleep(0.01)
    assert.are.equal("cancelled", h:status())
  end)

  it("gives the loop a turn with task.yield", function()
    local order = {}
    local h = task.spawn(function() order[#order + 1] = "other" end)
    order[#order + 1] = "me"
    task.yield()
    order[#order + 1] = "me again"
    h:wait()
    assert.are.same({ "me", "other", "me again" }, order)
  end)

  it("wakes tasks waiting on an event, remembers a notify nobody waited for, and times out", function()
    local ev = task.event()
    local woken = {}
    local a = task.spawn(function() local r = ev:wait(); woken[#woken + 1] = r end)
    local b = task.spawn(function() local r = ev:wait(); woken[#woken + 1] = r end)
    task.yield()
    ev:notify()
    a:wait()
    b:wait()
    assert.are.same({ true, true }, woken)
    ev:notify() -- nobody waits: kept for the next wait
    assert.is_true(ev:wait(0))
    local t0 = time.monotonic()
    assert.is_false(ev:wait(0.05))
    assert.is_true(time.monotonic() - t0 >= 0.05)
    -- a cancelled waiter leaves the event usable
    local c = task.spawn(function() return ev:wait() end)
    task.yield()
    c:cancel()
    assert.is_false(pcall(c.wait, c))
    local d = task.spawn(function() return ev:wait(1) end)
    task.yield()
    ev:notify()
    assert.is_true(d:wait())
  end)

  it("knows the current task", function()
    local h = task.spawn(function() return task.current() end)
    assert.are.equal(h, h:wait())
  end)

  it("explains why a wait is impossible inside a plain coroutine", function()
    local co = coroutine.wrap(function() return pcall(task.sleep, 0.01) end)
    local ok, err = co()
    assert.is_false(ok)
    assert.matches("must be called from a task", err)
  end)
end)
