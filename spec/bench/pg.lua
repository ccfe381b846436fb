-- pg.lua (bench): 10,000 simple queries through tug's pg module, over one connection and over
-- ten at once, beside psql running the same statements from a file and pgbench -n -f, against
-- a throwaway PostgreSQL 15 (spec/support/postgres.lua). Each figure is the best of three runs
-- (the machine is shared). Prints figures; asserts nothing.
--
--   tug lua spec/bench/pg.lua [N]
package.path = "spec/support/?.lua;" .. package.path
local postgres = require("postgres")

local N = tonumber((...)) or 10000
local CONNECTIONS = 10

local function line(what, seconds)
  print(("  %-52s %7.3f s  %8.0f queries/s  %6.1f us/query"):format(what, seconds, N / seconds,
    seconds / N * 1e6))
end

local function timed(fn)
  local best = math.huge
  for _ = 1, 3 do
    local t0 = time.monotonic()
    fn()
    best = math.min(best, time.monotonic() - t0)
  end
  return best
end

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

local server = postgres.start({ max_connections = 40 })
local work = exec.run({ "mktemp", "-d", "/tmp/tug-pg-bench.XXXXXX" }).stdout:gsub("%s+$", "")
exec.run({ "chmod", "755", work })
local ok, err = pcall(function()
  -- warm the server (catalog caches, the first backend)
  local warm <close> = pg.connect(server.url)
  for _ = 1, 200 do warm:value("SELECT 1") end

  print(("%d queries, one connection:"):format(N))
  local conn <close> = pg.connect(server.url)
  line("tug  conn:value(\"SELECT 1\")", timed(function()
    for _ = 1, N do conn:value("SELECT 1") end
  end))
  line("tug  conn:value(\"SELECT $1::int\", i) (parameters)", timed(function()
    for i = 1, N do conn:value("SELECT $1::int", i) end
  end))

  write(work .. "/select.sql", string.rep("SELECT 1;\n", N))
  local psql = { postgres.bin .. "/psql", "-X", "-q", "-A", "-t", "-o", "/dev/null", "-d", server.url,
    "-f", work .. "/select.sql" }
  line("psql -f (same statements from a file)", timed(function()
    assert(exec.run(psql).code == 0)
  end))
  write(work .. "/select.pgbench", "SELECT 1;\n")
  write(work .. "/param.pgbench", "\\set i random(1, 1000000)\nSELECT :i::int;\n")
  local function pgbench(script, clients, protocol)
    local argv = { postgres.bin .. "/pgbench", "-n", "-f", work .. "/" .. script, "-M", protocol,
      "-c", tostring(clients), "-j", tostring(math.min(clients, 2)), "-t", tostring(N // clients),
      "-h", "127.0.0.1", "-p", tostring(server.port), "-U", "postgres", "postgres" }
    local r = exec.run(argv)
    assert(r.code == 0, r.stderr)
  end
  line("pgbench -n -f (SELECT 1, simple protocol)", timed(function() pgbench("select.pgbench", 1, "simple") end))
  line("pgbench -n -f (SELECT :i, extended protocol)", timed(function() pgbench("param.pgbench", 1, "extended") end))

  print(("%d queries over %d connections at once:"):format(N, CONNECTIONS))
  local conns = {}
  for i = 1, CONNECTIONS do conns[i] = pg.connect(server.url) end
  line(("tug  %d tasks, one connection each"):format(CONNECTIONS), timed(function()
    local fns = {}
    for c = 1, CONNECTIONS do
      fns[c] = function()
        local mine = conns[c]
        for _ = 1, N // CONNECTIONS do mine:value("SELECT 1") end
      end
    end
    task.parallel(fns)
  end))
  line(("tug  %d tasks sharing one connection (queued)"):format(CONNECTIONS), timed(function()
    local fns = {}
    for c = 1, CONNECTIONS do
      fns[c] = function()
        for _ = 1, N // CONNECTIONS do conn:value("SELECT 1") end
      end
    end
    task.parallel(fns)
  end))
  for i = 1, CONNECTIONS do conns[i]:close() end
  line(("pgbench -n -f -c %d -j 2 (SELECT 1)"):format(CONNECTIONS), timed(function()
    pgbench("select.pgbench", CONNECTIONS, "simple")
  end))
  line(("%d psql -f at once (%d statements each)"):format(CONNECTIONS, N // CONNECTIONS), timed(function()
    write(work .. "/part.sql", string.rep("SELECT 1;\n", N // CONNECTIONS))
    local fns = {}
    for c = 1, CONNECTIONS do
      fns[c] = function()
        local argv = { table.unpack(psql) }
        argv[#argv] = work .. "/part.sql"
        assert(exec.run(argv).code == 0)
      end
    end
    task.parallel(fns)
  end))
end)
server:stop()
exec.run({ "rm", "-rf", work })
if not ok then error(err, 0) end
