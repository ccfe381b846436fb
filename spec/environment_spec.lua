-- Environment files (runtime/lua/environment.lua) that a hostile or careless edit makes
-- huge: aliases of aliases must fail fast with the file and line, and a table that aliases
-- share is resolved once. Driven through the real binary in a throwaway project.
package.path = "spec/support/?.lua;" .. package.path
local project = require("project")

-- 486 bytes whose aliases expand to 10^9 strings; walking them took hours.
local LAUGHS = { "name: local", 'l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]' }
for i = 1, 8 do
  LAUGHS[#LAUGHS + 1] = ("l%d: &l%d [%s]"):format(i, i, ("*l" .. (i - 1) .. ","):rep(10):sub(1, -2))
end
LAUGHS = table.concat(LAUGHS, "\n") .. "\n"

local PLAYBOOK = [[
return playbook { steps = { step "show" { run = function(ctx)
  print("token=" .. ctx.env.staging.token .. " same=" .. tostring(ctx.env.staging == ctx.env.base))
end } } }]]

describe("an environment file", function()
  local p
  before_each(function()
    p = project.new()
    p:write("playbooks/pb.lua", PLAYBOOK)
  end)
  after_each(function() p:remove() end)

  for _, verb in ipairs({ "plan", "run" }) do
    it("whose aliases multiply fails `tug " .. verb .. "` at once, naming the file and the alias", function()
      p:write("environments/local.yaml", LAUGHS)
      local started = time.monotonic()
      local r = p:tug({ verb, "pb" }, { timeout = 10 })
      assert.is_true(time.monotonic() - started < 5)
      assert.are.equal(2, r.code, r.stdout .. r.stderr)
      assert.matches("environments/local%.yaml:7:38: alias %*l4 would make the document's aliases "
        .. "repeat more than 1000000 nodes", r.stderr)
    end)
  end

  it("whose aliases multiply is one problem `tug check` reports", function()
    p:write("environments/local.yaml", "name: local\n")
    p:write("environments/laughs.yaml", LAUGHS)
    local started = time.monotonic()
    local r = p:tug({ "check" }, { timeout = 10 })
    assert.is_true(time.monotonic() - started < 5)
    assert.are.equal(2, r.code, r.stdout .. r.stderr)
    assert.matches("environments/laughs%.yaml:7:38: alias %*l4", r.stderr)
    assert.matches("1 problem", r.stdout)
  end)

  it("may have a number that is not an integer as a key (found by spec/fuzz)", function()
    -- The key path of a ${...} error was formatted with %d, which raised a Lua error for
    -- any float key before anything was resolved.
    p:write("environments/local.yaml", "name: local\nthresholds:\n  0.05: warn\n  0.5: ${env:NO_SUCH_VAR_Y}\n")
    local r = p:tug({ "plan", "pb" })
    assert.are.equal(2, r.code, r.stdout .. r.stderr)
    assert.matches("environments/local%.yaml: thresholds%.0%.5: environment variable NO_SUCH_VAR_Y is not set", r.stderr)
  end)

  it("resolves a table that aliases share once: a resolved value is not resolved again", function()
    p:write("environments/local.yaml",
      "name: local\nbase: &base\n  token: ${env:TOKEN}\nstaging: *base\n")
    -- A secret whose text looks like a reference: walking the shared table a second time
    -- would resolve it again (and fail here, NOT_SET being unset).
    local r = p:tug({ "run", "pb" }, { env = { TOKEN = "${env:NOT_SET}" } })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.matches("token=%${env:NOT_SET} same=true", r.stdout)
  end)
end)
