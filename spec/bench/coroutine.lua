-- The floor: a bare Lua coroutine resume/yield pair in lua5.4, no event loop at all.
local n = tonumber(arg[1]) or 100000
local co = coroutine.wrap(function() while true do coroutine.yield() end end)
local t0 = os.clock()
for _ = 1, n do co() end
local elapsed = os.clock() - t0
print(string.format("lua5.4 coroutine resume   %8d round trips  %7.3f s  %6.3f us each", n, elapsed, elapsed / n * 1e6))
