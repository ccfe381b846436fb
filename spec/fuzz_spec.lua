-- The parsers' fuzzer (spec/fuzz/fuzz.py and target.lua): a short pass over every target
-- with the binary under test (under `make sanitize`, the ASan build), and its failure paths.
-- `make fuzz` runs the same fuzzer for minutes under ASan + UBSan.
package.path = "spec/support/?.lua;" .. package.path
local child = require("child")
local fixture = require("fixture")

local TARGETS = { "yaml", "json", "environment", "kubeconfig", "playbook", "http" }

local function fuzz(args)
  local argv = { "python3", "spec/fuzz/fuzz.py" }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return exec.run(argv, { timeout = 120 })
end

describe("the parser fuzzer", function()
  local out
  before_each(function() out = exec.run({ "mktemp", "-d", "/tmp/tug-fuzz-spec-XXXXXX" }).stdout:gsub("\n$", "") end)
  after_each(function() exec.run({ "rm", "-rf", out }) end)

  it("finds no crash, hang or broken invariant in 1.5 s per parser", function()
    -- a fixed seed: the same inputs on every run, so the suite stays deterministic
    -- (TUG_FUZZ_SEED picks others; `make fuzz` draws a new seed each time)
    local r = fuzz({ "--tug", child.tug, "--time", "9", "--out", out, "--seed", os.getenv("TUG_FUZZ_SEED") or "20261208" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    for _, target in ipairs(TARGETS) do
      local tried = r.stdout:match("\n" .. target .. "%s+(%d+) inputs in%s+[%d.]+s, 0 failures")
      assert.is_truthy(tried, r.stdout)
      assert.is_true(tonumber(tried) >= 100, target .. " tried only " .. tried .. " inputs")
    end
  end)

  -- Stand-ins for tug that fail the way a broken parser would.
  local function fake(name, body)
    local path = out .. "/" .. name
    fixture.write(path, "#!/bin/sh\n" .. body .. "\n")
    exec.run({ "chmod", "+x", path })
    return path
  end

  it("saves the input that kills the process, with its stderr, and fails", function()
    local crashing = fake("crashing", "head -c 12 > /dev/null; echo 'AddressSanitizer: heap-use-after-free' >&2; kill -SEGV $$")
    local r = fuzz({ "--tug", crashing, "--time", "0.5", "--out", out .. "/found", "json" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("FAIL json: the tug process died %(exit %-11%) %(input saved to " .. out:gsub("%p", "%%%0")
      .. "/found/json%-1%.bin%)", r.stdout)
    assert.matches("AddressSanitizer: heap%-use%-after%-free", fixture.read(out .. "/found/json-1.txt"))
    assert.is_true(#fixture.read(out .. "/found/json-1.bin") > 0)
  end)

  it("saves an input that gets no answer (a hang) and fails", function()
    local hanging = fake("hanging", "exec sleep 30")
    local r = fuzz({ "--tug", hanging, "--time", "0.5", "--hang", "1", "--out", out .. "/found", "yaml" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("FAIL yaml: no answer within 1s %(a hang%)", r.stdout)
    assert.matches("fuzz.py: %d+ failures, saved in ", r.stdout)
  end)

  it("saves an input that breaks an invariant and fails", function()
    local wrong = fake("wrong", "while [ -n \"$(head -c 8)\" ]; do echo 'bug the round trip changed the value'; done")
    local r = fuzz({ "--tug", wrong, "--time", "0.5", "--out", out .. "/found", "kubeconfig" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("FAIL kubeconfig: bug the round trip changed the value %(input saved to", r.stdout)
  end)
end)
