-- test.lua: `tug test`, busted run inside tug, so specs exercise the real native
-- modules on the real loop. Adds a closing line 'N passed, N failed' that CI reads, after
-- the name and reason of every skipped spec (a skip is never silent).

local args = { ... }
local has_path = false
for _, a in ipairs(args) do
  if a:sub(1, 1) ~= "-" then has_path = true end
end
if not has_path then args[#args + 1] = "spec" end

package.preload["tug.test_summary"] = function()
  local busted = require("busted")
  local passed, failed, pending = 0, 0, 0
  local skipped = {}
  -- skip(reason), for spec support code: marks the running spec skipped with its reason
  -- (busted gives `pending` only to the spec's own environment).
  local running
  -- The watchdog: a spec (or the hooks after it) that runs longer than TUG_TEST_TIMEOUT
  -- seconds (default 300) stops the whole run with its name, so `make test` never hangs.
  local limit = tonumber(os.getenv("TUG_TEST_TIMEOUT") or "") or 300
  local doing, since = "loading the spec files", time.monotonic()
  local watchdog = task.spawn(function()
    while true do
      task.sleep(math.min(5, limit))
      local took = time.monotonic() - since
      if took > limit then
        io.stderr:write(string.format("\ntug test: %s has run for %.0f s (over TUG_TEST_TIMEOUT=%s): stopping\n",
          doing, took, limit))
        io.stdout:write(string.format("\n%d passed, %d failed\n", passed, failed + 1))
        io.stdout:flush()
        os.exit(1)
      end
    end
  end)
  local function label(element, parent)
    local where = element.trace and element.trace.short_src
    return (where and (where .. ": ") or "") .. (parent and parent.name and (parent.name .. " ") or "") ..
      tostring(element.name)
  end
  busted.subscribe({ "test", "start" }, function(element, parent)
    running = element
    doing, since = "the spec \"" .. label(element, parent) .. "\"", time.monotonic()
  end)
  local api = {}
  function api.skip(reason)
    if not (running and running.env and running.env.pending) then error(reason, 2) end
    running.env.pending(reason)
  end
  busted.subscribe({ "pending" }, function(element, parent, message)
    skipped[#skipped + 1] = string.format("SKIPPED %s\n        %s", label(element, parent),
      tostring(message or "pending"):gsub("^[^\n]-:%d+: ", ""))
  end)
  busted.subscribe({ "test", "end" }, function(element, parent, status)
    doing, since = "the hooks after \"" .. label(element, parent) .. "\"", time.monotonic()
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
    watchdog:cancel()
    if #skipped > 0 then io.stdout:write("\n", table.concat(skipped, "\n"), "\n") end
    local line = string.format("%d passed, %d failed", passed, failed)
    if pending > 0 then line = line .. string.format(", %d skipped", pending) end
    io.stdout:write("\n", line, "\n")
    io.stdout:flush()
  end)
  return api
end

table.insert(args, 1, "--helper=tug.test_summary")
arg = args
arg[0] = "tug test"
require("busted.runner")({ standalone = false })
