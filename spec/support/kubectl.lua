-- kubectl.lua: the real kubectl, which specs use as an independent client of the simulated
-- cluster. vendor/install.sh puts kubectl 1.32 in vendor/bin when it is not on PATH (and
-- `make test` puts vendor/bin first on PATH). When there is none at all, a spec that needs
-- it is reported as skipped, by name and with the fix, never silently passed.
local kubectl = {}

local found
-- The kubectl to run, or nil when there is none.
function kubectl.path()
  if found == nil then
    found = false
    for dir in (os.getenv("PATH") or ""):gmatch("[^:]+") do
      local f = io.open(dir .. "/kubectl")
      if f then
        f:close()
        found = dir .. "/kubectl"
        break
      end
    end
  end
  return found or nil
end

kubectl.MISSING = "kubectl is not installed: this cross-check with the real kubectl was skipped " ..
  "(run vendor/install.sh test, or put kubectl 1.32 on PATH)"

-- Marks the running spec as skipped (busted's pending) when there is no kubectl.
function kubectl.require()
  if not kubectl.path() then require("tug.test_summary").skip(kubectl.MISSING) end
end

-- argv for kubectl ARGS (skips the running spec when there is no kubectl).
function kubectl.argv(args)
  kubectl.require()
  local argv = { kubectl.path() }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return argv
end

return kubectl
