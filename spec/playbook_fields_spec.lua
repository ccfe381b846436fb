-- Step and playbook fields whose values are out of range: durations that overflow or are
-- negative, NaN or infinite, backoffs below 1 or NaN, retries negative, fractional or huge.
-- `tug check`, `tug plan` and `tug run` refuse them, naming the file, line, step and field.
package.path = "spec/support/?.lua;" .. package.path
local project = require("project")

local CASES = {
  { 'timeout = "99999999999999999999h"', " field 'timeout': '99999999999999999999h' is longer than the " ..
    "longest duration, 876000h %(100 years%)" },
  { 'timeout = "1e308h1e308h"', " field 'timeout': '1e308h1e308h' is longer than the longest duration" },
  { "timeout = 1e300", " field 'timeout': 1e%+300 seconds is not a duration %(from 0 to 876000h" },
  { "timeout = -5", " field 'timeout': %-5 seconds is not a duration" },
  { "timeout = math.huge", " field 'timeout': inf seconds is not a duration" },
  { "retry_delay = 0/0", " field 'retry_delay': NaN seconds is not a duration" },
  { 'undo_timeout = "-1s"', " field 'undo_timeout': '%-1s' is not a duration" },
  { "backoff = 0/0", " field 'backoff' must be a finite number from 1 %(the same wait each time; 2 doubles it%), not NaN" },
  { "backoff = math.huge", " field 'backoff' must be a finite number from 1 .*, not inf" },
  { "backoff = 0.5", " field 'backoff' must be a finite number from 1 .*, not 0.5" },
  { "retries = -1", " field 'retries' must be from 0 to 1000, not %-1" },
  { "retries = 2.5", " field 'retries' must be an integer, not 2.5" },
  { "retries = 1000000", " field 'retries' must be from 0 to 1000, not 1000000" },
  { 'retries = 40, retry_delay = "1h", backoff = 2', ": retries = 40 with retry_delay 1h and backoff 2 would wait " ..
    "1.98e%+15 s before the last attempt, longer than the longest duration" },
}

describe("step fields out of range", function()
  local p
  before_each(function() p = project.new() end)
  after_each(function() p:remove() end)

  it("are refused by tug check, plan and run, naming the file, line, step and field", function()
    for _, case in ipairs(CASES) do
      p:write("playbooks/pb.lua", 'return playbook { steps = {\n' ..
        '  step "first" { run = function() end },\n' ..
        '  step "deploy" { run = function() io.open("ran.txt", "w"):close() end, ' .. case[1] .. ' },\n} }\n')
      for _, command in ipairs({ { "check" }, { "plan", "pb" }, { "run", "pb" } }) do
        local r = p:tug(command)
        assert.are.equal(2, r.code, case[1] .. ": " .. command[1])
        assert.matches("playbooks/pb%.lua:3: step \"deploy\"" .. case[2], r.stderr,
          case[1] .. ": " .. command[1])
      end
      assert.is_false(p:exists("ran.txt"))
    end
  end)

  it("accepts the longest duration, and a backoff of 1", function()
    p:write("playbooks/pb.lua", 'return playbook { undo_timeout = "876000h", steps = {\n' ..
      '  step "deploy" { run = function() end, timeout = "876000h", retries = 1000, retry_delay = "1ms", backoff = 1 },\n} }\n')
    local r = p:tug({ "run", "pb" })
    assert.are.equal(0, r.code, r.stderr)
  end)

  it("refuses a playbook's undo_timeout out of range", function()
    p:write("playbooks/pb.lua", 'return playbook { undo_timeout = "100000000h", steps = {\n' ..
      '  step "deploy" { run = function() end },\n} }\n')
    local r = p:tug({ "check" })
    assert.are.equal(2, r.code)
    assert.matches("playbooks/pb%.lua: playbook field 'undo_timeout': '100000000h' is longer than the longest duration",
      r.stderr)
  end)
end)
