-- make soak (spec/soak/run.sh): its refusals and its failures, quickly. The soak itself
-- takes ten minutes and is not part of make test; its figures are in the README.

package.path = "spec/support/?.lua;" .. package.path
local child = require("child")

local function soak(env)
  local e = { TUG = child.tug }
  for k, v in pairs(env) do e[k] = v end
  return exec.run({ "spec/soak/run.sh" }, { env = e, timeout = 60 })
end

describe("make soak", function()
  it("refuses a duration too short for its warm-up and its two windows", function()
    local r = soak({ SOAK_SECONDS = "100", SOAK_WARMUP = "60", SOAK_WINDOW = "30" })
    assert.are.equal(2, r.code)
    assert.matches("SOAK_SECONDS %(100%) must be at least SOAK_WARMUP %+ 2 x SOAK_WINDOW %(120%)", r.stderr)
  end)

  it("fails, with the simulator's own words, when tug sim cannot start", function()
    local r = soak({ SOAK_SCENARIO = "/nonexistent/soak.yaml" })
    assert.are.equal(1, r.code)
    assert.matches("tug sim did not start", r.stderr)
    assert.matches("cannot read scenario /nonexistent/soak.yaml", r.stderr)
  end)

  it("samples both processes and compares the start and the end", function()
    local r = soak({ SOAK_SECONDS = "20", SOAK_WARMUP = "5", SOAK_WINDOW = "5", SOAK_RATE = "5" })
    assert.matches("tug sim: RSS%s+%d+ kB%s+%d+ kB", r.stdout)
    assert.matches("tug sim: descriptors%s+%d+%s+%d+", r.stdout)
    assert.matches("smoke %-%-every 1s: RSS%s+%d+ kB%s+%d+ kB", r.stdout)
    assert.matches("traffic: %d+ calls in 20 s", r.stdout)
    assert.matches("smoke %-%-every: the loop stopped after %d+ runs", r.stdout)
  end)
end)
