-- test.lua: `tug test`, busted run inside tug, so specs exercise the real native
-- modules on the real loop. Adds a closing line 'N passed, N failed' that CI reads.

local args = { ... }
local has_path = false
for _, a in ipairs(args) do
  if a:sub(1, 1) ~= "-" then has_path = true end
end
if not has_path then args[#args + 1] = "spec" end

package.preload["tug.test_summary"] = function()
  local busted = require("busted")
  local passed, failed, pending = 0, 0, 0
  busted.subscribe({ "test", "end" }, function(_, _, status)
    if status == "success" then
      passed = passed + 1
    elseif status == "pending" then
      pending = pending + 1
    elseif status == "failure" then
      failed = failed + 1
    end
  end)
  -- errors (in a test, in a file that does not load, in a hook) count once each
  busted.subscribe({ "error" }, function()
    failed = failed + 1
  end)
  busted.subscribe({ "exit" }, function()
    local line = string.format("%d passed, %d failed", passed, failed)
    if pending > 0 then line = line .. string.format(", %d skipped", pending) end
    io.stdout:write("\n", line, "\n")
    io.stdout:flush()
  end)
  return true
end

table.insert(args, 1, "--helper=tug.test_summary")
arg = args
arg[0] = "tug test"
require("busted.runner")({ standalone = false })
