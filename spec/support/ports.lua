-- ports.lua: free loopback ports for the test servers the specs start (nginx, PostgreSQL,
-- Prometheus), found from what the kernel says is listening.
local ports = {}

-- Ports something listens on now, from /proc/net/tcp and tcp6 (state 0A is LISTEN).
function ports.listening()
  local used = {}
  for _, file in ipairs({ "/proc/net/tcp", "/proc/net/tcp6" }) do
    local f = io.open(file)
    if f then
      for line in f:lines() do
        local port, state = line:match("^%s*%d+: %x+:(%x+) %x+:%x+ (%x%x)")
        if port and state == "0A" then used[tonumber(port, 16)] = true end
      end
      f:close()
    end
  end
  return used
end

-- A port nothing listens on, chosen at random so that parallel runs rarely collide.
function ports.free()
  local used = ports.listening()
  for _ = 1, 100 do
    local port = math.random(20000, 59999)
    if not used[port] then return port end
  end
  error("no free port found", 2)
end

return ports
