-- postgres.lua: a throwaway PostgreSQL 15 for specs and benchmarks, on a free loopback port and
-- a private socket directory under /tmp, with fsync off. initdb refuses to run as root, so the
-- cluster belongs to the unprivileged `postgres` user (created as a system user when missing)
-- and every server program runs through `runuser -u postgres --` when tug runs as root.
--
--   local server = postgres.start()       -- about 2 s
--   server.url          postgresql://postgres@127.0.0.1:PORT/postgres   (trust, superuser)
--   server.app_url      postgresql://app:PASSWORD@127.0.0.1:PORT/postgres (scram-sha-256)
--   server.app_password the password of the `app` role
--   server:psql(sql)    runs sql through psql over the socket, returns stdout (raises on error)
--   server:restart()    stops (-m fast: sessions are terminated) and starts on the same port
--   server:standby()    a streaming replica of this server (pg_basebackup -R), a server too
--   server:stop()       pg_ctl -m immediate stop, then removes the directory; safe to call twice
--
-- Authentication: the socket and the superuser over TCP are trusted (set-up and most tests);
-- every other role must give a password over TCP (scram-sha-256), so a wrong password fails.
-- The server loads pg_stat_statements (shared_preload_libraries; postgres.start{ preload =
-- false } does not); no database has the extension until a test creates it.

local postgres = {}

postgres.bin = "/usr/lib/postgresql/15/bin"

local APP_PASSWORD = "app-Pa55word-q9Zr"

local function run(argv, what, opts)
  opts = opts or {}
  opts.timeout = opts.timeout or 60
  local r = exec.run(argv, opts)
  if r.code ~= 0 then
    error(("postgres helper: %s failed (%s): %s%s"):format(what, tostring(r.code or r.signal),
      r.stderr, r.stdout), 3)
  end
  return r.stdout
end

local is_root = nil
local function as_postgres(argv)
  if is_root == nil then
    is_root = run({ "id", "-u" }, "id -u"):match("^0%s") ~= nil
  end
  if not is_root then return argv end
  local wrapped = { "runuser", "-u", "postgres", "--" }
  for _, word in ipairs(argv) do wrapped[#wrapped + 1] = word end
  return wrapped
end

local function ensure_user()
  if exec.run({ "id", "postgres" }).code == 0 then return end
  run({ "useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin",
    "postgres" }, "creating the postgres user")
end

local function write(path, content)
  local f = assert(io.open(path, "wb"))
  f:write(content)
  f:close()
end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local text = f:read("a")
  f:close()
  return text
end

local free_port = require("fixture").free

local HBA = [[
local   all          all                    trust
local   replication  all                    trust
host    all          postgres  127.0.0.1/32 trust
host    replication  postgres  127.0.0.1/32 trust
host    all          all       127.0.0.1/32 scram-sha-256
]]

local Server = {}
Server.__index = Server

function Server:pg_ctl(action, extra)
  local argv = { postgres.bin .. "/pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "30" }
  for _, word in ipairs(extra or {}) do argv[#argv + 1] = word end
  argv[#argv + 1] = action
  return exec.run(as_postgres(argv), { timeout = 60 })
end

function Server:start_server()
  local options = table.concat({
    "-p " .. self.port,
    "-k " .. self.sockets,
    "-c listen_addresses=127.0.0.1",
    "-c fsync=off",
    "-c synchronous_commit=off",
    "-c full_page_writes=off",
    "-c max_connections=" .. self.max_connections,
    self.preload and "-c shared_preload_libraries=pg_stat_statements" or "",
    "-c password_encryption=scram-sha-256",
  }, " ")
  return self:pg_ctl("start", { "-o", options })
end

function Server:log_text() return read(self.log) end

-- Runs sql (one or more statements) through psql over the socket as the superuser.
function Server:psql(sql, database)
  return run(as_postgres({ postgres.bin .. "/psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
    "-h", self.sockets, "-p", tostring(self.port), "-U", "postgres", "-d", database or "postgres",
    "-c", sql }), "psql")
end

function Server:restart()
  self:pg_ctl("stop", { "-m", "fast" })
  local r = self:start_server()
  if r.code ~= 0 then
    error("postgres helper: restart failed: " .. r.stderr .. self:log_text(), 2)
  end
end

-- Stops the server (immediate: no checkpoint, 0.2 s) and removes its directory.
function Server:stop()
  if self.running then
    self:pg_ctl("stop", { "-m", "immediate" })
    self.running = false
  end
  if self.dir then
    exec.run({ "rm", "-rf", self.dir })
    self.dir = nil
  end
end

Server.__close = Server.stop

local function new_dir()
  local dir = run({ "mktemp", "-d", "/tmp/tug-pg.XXXXXX" }, "mktemp"):gsub("%s+$", "")
  run({ "mkdir", "-p", dir .. "/sockets" }, "mkdir")
  run({ "chown", "-R", "postgres:postgres", dir }, "chown")
  run({ "chmod", "700", dir }, "chmod")
  return dir
end

-- Starts a server over an existing data directory on a free port; retries on a port taken
-- meanwhile. Returns the server.
local function launch(server)
  local last = ""
  for _ = 1, 5 do
    server.port = free_port()
    local r = server:start_server()
    if r.code == 0 then
      server.running = true
      server.url = ("postgresql://postgres@127.0.0.1:%d/postgres"):format(server.port)
      server.app_url = ("postgresql://app:%s@127.0.0.1:%d/postgres"):format(APP_PASSWORD, server.port)
      server.app_password = APP_PASSWORD
      return server
    end
    last = r.stderr .. server:log_text()
    if not last:find("already in use", 1, true) and not last:find("could not bind", 1, true) then
      break
    end
  end
  exec.run({ "rm", "-rf", server.dir })
  error("postgres helper: the server did not start: " .. last, 3)
end

-- postgres.start{ max_connections = 50 } -> server
function postgres.start(opts)
  opts = opts or {}
  ensure_user()
  local dir = new_dir()
  local server = setmetatable({
    dir = dir, data = dir .. "/data", sockets = dir .. "/sockets", log = dir .. "/server.log",
    max_connections = opts.max_connections or 50, preload = opts.preload ~= false,
  }, Server)
  local ok, err = pcall(function()
    run(as_postgres({ postgres.bin .. "/initdb", "-D", server.data, "-U", "postgres", "-A", "trust",
      "-E", "UTF8", "--locale=C.UTF-8", "--no-sync" }), "initdb")
    write(server.data .. "/pg_hba.conf", HBA)
    launch(server)
    server:psql(("CREATE ROLE app LOGIN PASSWORD '%s'; GRANT ALL ON SCHEMA public TO app;")
      :format(APP_PASSWORD))
  end)
  if not ok then
    server:stop()
    error(err, 2)
  end
  return server
end

-- A streaming standby of this server: pg_basebackup with -R writes standby.signal and the
-- primary's address; the standby gets its own directory and port. { preload = false } starts
-- it without pg_stat_statements in shared_preload_libraries.
function Server:standby(opts)
  opts = opts or {}
  local dir = new_dir()
  local standby = setmetatable({
    dir = dir, data = dir .. "/data", sockets = dir .. "/sockets", log = dir .. "/server.log",
    max_connections = self.max_connections, preload = opts.preload ~= false,
  }, Server)
  local ok, err = pcall(function()
    run(as_postgres({ postgres.bin .. "/pg_basebackup", "-D", standby.data, "-R", "-X", "stream",
      "-c", "fast", "-h", self.sockets, "-p", tostring(self.port), "-U", "postgres" }),
      "pg_basebackup")
    launch(standby)
  end)
  if not ok then
    standby:stop()
    error(err, 2)
  end
  return standby
end

return postgres
