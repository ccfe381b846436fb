-- 100,000 round trips through the loop: task.sleep(0) parks the task and the scheduler
-- resumes it on the next turn. Prints the cost per round trip.
local n = tonumber(arg[1]) or 100000
local t0 = time.monotonic()
for _ = 1, n do task.sleep(0) end
local elapsed = time.monotonic() - t0
print(string.format("tug task.sleep(0)        %8d round trips  %7.3f s  %6.3f us each", n, elapsed, elapsed / n * 1e6))
