-- `tug test` itself: the closing line CI reads, skips that are never silent, and the
-- watchdog that turns a stuck spec into a failure with its name instead of a hang.
package.path = "spec/support/?.lua;" .. package.path
local child = require("child")

local function spec_file(text)
  local dir = exec.run({ "mktemp", "-d", "/tmp/tug-test-runner.XXXXXX" }, { check = true }).stdout:gsub("%s+$", "")
  local f = assert(io.open(dir .. "/one_spec.lua", "w"))
  f:write(text)
  f:close()
  return dir, dir .. "/one_spec.lua"
end

describe("tug test", function()
  it("names every skipped spec and its reason before the closing line", function()
    local here = exec.run({ "pwd" }, { check = true }).stdout:gsub("%s+$", "")
    local dir, path = spec_file([[
package.path = "]] .. here .. [[/spec/support/?.lua;" .. package.path
describe("cross-checks", function()
  it("passes", function() end)
  it("needs the real kubectl", function() require("kubectl").require() end)
end)
]])
    -- a PATH with no kubectl on it
    local r = child.run({ "test", path }, { env = { PATH = dir, HOME = dir } })
    exec.run({ "rm", "-rf", dir })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.matches("SKIPPED [^\n]*one_spec%.lua: cross%-checks needs the real kubectl\n%s+kubectl is not installed", r.stdout)
    assert.matches("put kubectl 1%.32 on PATH", r.stdout)
    assert.matches("\n1 passed, 0 failed, 1 skipped\n", r.stdout)
  end)

  it("stops a spec that runs past TUG_TEST_TIMEOUT, naming it, and fails the run", function()
    local dir, path = spec_file([[
describe("stuck", function()
  it("finishes", function() end)
  it("waits forever", function() task.sleep(3600) end)
end)
]])
    local t0 = time.monotonic()
    local r = child.run({ "test", path }, { env = { PATH = os.getenv("PATH"), TUG_TEST_TIMEOUT = "2" } })
    exec.run({ "rm", "-rf", dir })
    assert.are.equal(1, r.code)
    assert.is_true(time.monotonic() - t0 < 10)
    assert.matches("the spec \"[^\"]*one_spec%.lua: stuck waits forever\" has run for %d+ s %(over TUG_TEST_TIMEOUT=2%)", r.stderr)
    assert.matches("\n1 passed, 1 failed\n", r.stdout)
  end)
end)
