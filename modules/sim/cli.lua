-- cli.lua (sim.cli): `tug sim [--port N] [--host H] [--scenario FILE] [--kubeconfig FILE]`:
-- serves the simulated cluster until Ctrl-C. main.c and runtime/lua/cli.lua hand the
-- words after `sim` to the function this returns; it returns the exit code.

local sim = require("sim")
local task = require("task")

local USAGE = [[
usage: tug sim [--port N] [--host ADDR] [--scenario FILE] [--kubeconfig FILE]

Serves a simulated Kubernetes cluster (the API kubectl talks to, a deployment
controller, pods, the Multiship applications behind Services, /metrics and faults)
until Ctrl-C.

  --port N           port to listen on (default 6443; 0 picks a free one)
  --host ADDR        address to listen on (default 127.0.0.1)
  --scenario FILE    a scenario YAML file (default: the embedded Multiship scenario)
  --kubeconfig FILE  write a kubeconfig for the cluster to FILE
]]

local FLAGS = { port = true, host = true, scenario = true, kubeconfig = true, help = false }

local function parse(args)
  local flags = {}
  local i = 1
  while i <= #args do
    local w = args[i]
    local name, inline = w:match("^%-%-([%w%-]+)=(.*)$")
    name = name or w:match("^%-%-([%w%-]+)$")
    if w == "-h" then name = "help" end
    if not name or FLAGS[name] == nil then return nil, ("'tug sim' has no argument %s"):format(w) end
    if FLAGS[name] then
      local value = inline
      if value == nil then
        i = i + 1
        value = args[i]
        if value == nil then return nil, ("--%s needs a value"):format(name) end
      end
      flags[name] = value
    else
      flags[name] = true
    end
    i = i + 1
  end
  return flags
end

return function(args)
  local flags, err = parse(args or {})
  if not flags then
    io.stderr:write("tug: ", err, "\n", USAGE)
    return 2
  end
  if flags.help then
    io.stdout:write(USAGE)
    return 0
  end
  local port = 6443
  if flags.port then
    port = math.tointeger(tonumber(flags.port))
    if not port or port < 0 or port > 65535 then
      io.stderr:write("tug: --port must be a number from 0 to 65535\n")
      return 2
    end
  end
  local ok, s = pcall(sim.start, { port = port, host = flags.host, scenario = flags.scenario })
  if not ok then
    io.stderr:write("tug: ", tostring(s), "\n")
    return 1
  end
  io.stdout:write(("simulated cluster serving at %s (namespace %s)\n"):format(s.url, s.namespace))
  if flags.kubeconfig then
    s:kubeconfig(flags.kubeconfig)
    io.stdout:write(("kubeconfig written to %s: kubectl --kubeconfig %s get pods\n"):format(flags.kubeconfig, flags.kubeconfig))
  else
    io.stdout:write("kubeconfig (save it and use kubectl --kubeconfig FILE, or pass --kubeconfig FILE):\n\n")
    io.stdout:write(s:kubeconfig(), "\n")
  end
  io.stdout:write(("applications: %s/svc/NAMESPACE/SERVICE/PATH   metrics: %s/metrics   faults: %s/sim/faults\n")
    :format(s.url, s.url, s.url))
  io.stdout:write("Ctrl-C stops it.\n")
  io.stdout:flush()
  local ok2, stop = pcall(function()
    while true do task.sleep(3600) end
  end)
  s:close()
  if not ok2 then
    if type(stop) == "table" and stop.kind == "cancelled" then return 130 end
    error(stop, 0)
  end
  return 0
end
