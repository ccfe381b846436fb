-- fixture.lua: what the starters of the specs' test servers (nginx, PostgreSQL,
-- Prometheus) share: free loopback ports, commands that must succeed, files to write.
local fixture = {}

-- Ports something listens on now, from /proc/net/tcp and tcp6 (state 0A is LISTEN).
function fixture.listening()
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
function fixture.free()
  local used = fixture.listening()
  for _ = 1, 100 do
    local port = math.random(20000, 59999)
    if not used[port] then return port end
  end
  error("no free port found", 2)
end

-- Runs argv, which must exit 0; returns its stdout. `who` names the helper in errors.
function fixture.run(argv, what, who)
  local r = exec.run(argv, { timeout = 30 })
  if r.code ~= 0 then
    error(("%s helper: %s failed (%s): %s"):format(who, what, tostring(r.code or r.signal), r.stderr), 3)
  end
  return r.stdout
end

function fixture.write(path, content)
  local f = assert(io.open(path, "wb"))
  f:write(content)
  f:close()
end

return fixture
