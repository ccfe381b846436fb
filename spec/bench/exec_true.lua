-- 1,000 runs of /bin/true through exec, 50 at a time (compare: xargs -P 50).
local total, width = tonumber(arg[1]) or 1000, tonumber(arg[2]) or 50
local next_index = 0
local workers = {}
for w = 1, width do
  workers[w] = function()
    while next_index < total do
      next_index = next_index + 1
      local r = exec.run({ "/bin/true" })
      assert(r.code == 0)
    end
  end
end
task.parallel(workers)
