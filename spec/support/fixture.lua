-- fixture.lua: what the starters of the specs' test servers (nginx, PostgreSQL,
-- Prometheus) and TLS specs share: free loopback ports, commands that must succeed, files
-- to write and read, client certificates.
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

-- Waits (at most `seconds`) for a line of proc's output (spawned with lines = true) that
-- matches `pattern`; returns its first capture. Raises, naming `who`, when the process
-- exits first or the time runs out.
function fixture.wait_for_line(proc, pattern, who, seconds)
  return task.timeout(seconds or 20, function()
    while true do
      local batch = proc:next_lines()
      if not batch then error(who .. " exited before it was ready: " .. tostring(proc:wait().stderr), 0) end
      for _, l in ipairs(batch) do
        local found = l.line:match(pattern)
        if found then return found end
      end
    end
  end)
end

function fixture.read(path)
  local f = assert(io.open(path, "rb"))
  local text = f:read("a")
  f:close()
  return text
end

-- A client CA and a client certificate it signed (what a cluster's CA gives a user), in
-- dir: client-ca.key, client-ca.crt, client.key, client.crt. subject: the client's
-- (default "/CN=alice").
function fixture.client_pki(dir, subject)
  local function openssl(args)
    local argv = { "openssl" }
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    fixture.run(argv, "openssl " .. args[1], "client_pki")
  end
  local ec = { "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes" }
  openssl({ "req", "-x509", ec[1], ec[2], ec[3], ec[4], ec[5], "-keyout", dir .. "/client-ca.key",
    "-out", dir .. "/client-ca.crt", "-days", "2", "-subj", "/CN=tug spec client CA",
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign" })
  openssl({ "req", ec[1], ec[2], ec[3], ec[4], ec[5], "-keyout", dir .. "/client.key", "-out", dir .. "/client.csr",
    "-subj", subject or "/CN=alice" })
  fixture.write(dir .. "/client.ext", "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
  openssl({ "x509", "-req", "-in", dir .. "/client.csr", "-CA", dir .. "/client-ca.crt", "-CAkey",
    dir .. "/client-ca.key", "-CAcreateserial", "-out", dir .. "/client.crt", "-days", "2",
    "-extfile", dir .. "/client.ext" })
end

return fixture
