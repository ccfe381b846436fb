-- migrate.lua: the local environment's migrator for the sample Multiship schema. It does
-- what `prisma migrate deploy` does with prisma/migrations, plus a rollback to a version
-- through each migration's down.sql, so that the database playbooks can be rehearsed on
-- this machine against a real PostgreSQL. Run it with tug:
--
--   DATABASE_URL=postgresql://... tug lua examples/multiship/migrate.lua deploy
--   DATABASE_URL=... tug lua examples/multiship/migrate.lua rollback --to-version=20240101_120000
--   DATABASE_URL=... tug lua examples/multiship/migrate.lua status
--   DATABASE_URL=... tug lua examples/multiship/migrate.lua resolve --rolled-back NAME
--
-- `--dir DIR` reads the migrations from DIR instead of prisma/migrations beside this file.
-- Exit codes: 0 done, 1 a migration failed or the database refuses (failed migrations,
-- unknown version), 2 usage.

-- Prisma's own lock: every `prisma migrate` takes this session-level advisory lock, so
-- two migrators (this one, Prisma itself) never run at once.
local PRISMA_LOCK = 72707369

local TABLE = [[
CREATE TABLE IF NOT EXISTS "_prisma_migrations" (
    "id"                    VARCHAR(36) PRIMARY KEY NOT NULL,
    "checksum"              VARCHAR(64) NOT NULL,
    "finished_at"           TIMESTAMPTZ,
    "migration_name"        VARCHAR(255) NOT NULL,
    "logs"                  TEXT,
    "rolled_back_at"        TIMESTAMPTZ,
    "started_at"            TIMESTAMPTZ NOT NULL DEFAULT now(),
    "applied_steps_count"   INTEGER NOT NULL DEFAULT 0
)]]

local USAGE = [[
usage: tug lua migrate.lua deploy|status|rollback --to-version=V|resolve --rolled-back NAME|resolve --applied NAME [--dir DIR]
  DATABASE_URL names the database]]

local function fail(code, message)
  io.stderr:write(message, "\n")
  os.exit(code)
end

local function read(path)
  local f <close> = io.open(path, "rb")
  return f and f:read("a")
end

-- ---- arguments ----

local args = { ... }
local command = args[1]
local opts = {}
local i = 2
while i <= #args do
  local a = args[i]
  local key, value = a:match("^%-%-([%w%-]+)=(.*)$")
  if not key then
    key = a:match("^%-%-([%w%-]+)$")
    if key == "dir" or key == "to-version" then
      i = i + 1
      value = args[i]
    elseif key == "rolled-back" or key == "applied" then
      i = i + 1
      value = args[i]
    end
  end
  if not key or value == nil then fail(2, ("migrate.lua: unexpected argument '%s'\n%s"):format(a, USAGE)) end
  opts[key] = value
  i = i + 1
end
if command ~= "deploy" and command ~= "status" and command ~= "rollback" and command ~= "resolve" then
  fail(2, USAGE)
end

local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
local dir = opts.dir or (here .. "/prisma/migrations")
local url = os.getenv("DATABASE_URL")
if not url or url == "" then fail(2, "migrate.lua: DATABASE_URL is not set") end

-- The migrations in the directory, in name order (a name starts with its timestamp).
local function local_migrations()
  local entries = tug.sys.listdir(dir)
  if not entries then fail(1, "migrate.lua: no migrations directory at " .. dir) end
  local list = {}
  for _, e in ipairs(entries) do
    local sql = e.type == "dir" and read(dir .. "/" .. e.name .. "/migration.sql")
    if sql then
      list[#list + 1] = { name = e.name, sql = sql, path = dir .. "/" .. e.name,
        checksum = pg.checksum(dir .. "/" .. e.name .. "/migration.sql") }
    end
  end
  table.sort(list, function(a, b) return a.name < b.name end)
  return list
end

local conn = pg.connect(url, { application_name = "multiship-migrate" })

local function database_error(err)
  if type(err) == "table" then return err.reason or err.message or tostring(err) end
  return tostring(err)
end

-- ---- status ----

local function print_status(status, migrations)
  for _, m in ipairs(migrations) do
    local s = "pending"
    for _, row in ipairs(status.migrations) do
      if row.name == m.name then s = row.status end
    end
    print(("%-12s %s"):format(s, m.name))
  end
end

-- ---- deploy ----

local function deploy(migrations)
  conn:exec(TABLE)
  local status = pg.migrations.prisma(conn)
  if #status.failed > 0 then
    local m
    for _, row in ipairs(status.migrations) do if row.name == status.failed[1] then m = row end end
    fail(1, ("Error: P3009\n\nmigrate found failed migrations in the target database, new migrations will not be applied. "
      .. "Resolve them first (migrate.lua resolve --rolled-back NAME once the database is repaired, or "
      .. "--applied NAME when it was finished by hand).\nThe `%s` migration started at %s failed%s")
      :format(m.name, tostring(m.started_at), m.logs and (":\n" .. m.logs) or ""))
  end
  local applied = {}
  for _, name in ipairs(status.applied) do applied[name] = true end
  local known = {}
  for _, m in ipairs(migrations) do known[m.name] = true end
  for _, row in ipairs(status.migrations) do
    if row.status == "applied" and not known[row.name] then
      io.stderr:write(("warning: %s is applied in the database but not in %s\n"):format(row.name, dir))
    end
    if row.status == "applied" and known[row.name] then
      for _, m in ipairs(migrations) do
        if m.name == row.name and m.checksum ~= row.checksum then
          io.stderr:write(("warning: %s was modified after it was applied\n"):format(row.name))
        end
      end
    end
  end
  local done = {}
  for _, m in ipairs(migrations) do
    if not applied[m.name] then
      print(("Applying migration `%s`"):format(m.name))
      -- the row goes in first, on its own, like Prisma's: an attempt that dies half-way stays
      -- visible as a failed migration
      local id = conn:value([[INSERT INTO "_prisma_migrations" (id, checksum, migration_name, started_at)
        VALUES (gen_random_uuid()::text, $1, $2, now()) RETURNING id]], m.checksum, m.name)
      local ok, err = pcall(conn.transaction, conn, function(tx)
        tx:exec(m.sql)
        tx:exec([[UPDATE "_prisma_migrations" SET finished_at = now(), applied_steps_count = 1
          WHERE id = $1]], id)
      end)
      if not ok then
        local why = database_error(err)
        conn:exec([[UPDATE "_prisma_migrations" SET logs = $2 WHERE id = $1]], id, why)
        fail(1, ("Error: P3018\n\nA migration failed to apply. New migrations cannot be applied before "
          .. "the error is recovered from.\n\nMigration name: %s\n\nDatabase error:\n%s"):format(m.name, why))
      end
      done[#done + 1] = m.name
    end
  end
  if #done == 0 then
    print("No pending migrations to apply.")
  else
    print(("The following migration(s) have been applied:\n  %s"):format(table.concat(done, "\n  ")))
  end
end

-- ---- rollback ----

-- "20240101120000_init", "20240101120000" or the seed's "20240101_120000".
local function matches(name, version)
  if name == version then return true end
  local stamp = version:gsub("_", "")
  return stamp:match("^%d+$") ~= nil and name:sub(1, #stamp + 1) == stamp .. "_"
end

local function rollback(migrations, version)
  local status = pg.migrations.prisma(conn)
  if #status.failed > 0 then
    fail(1, ("migrate.lua: %s failed and was not resolved: resolve it before rolling back"):format(status.failed[1]))
  end
  local target
  for idx, name in ipairs(status.applied) do
    if matches(name, version) then target = idx end
  end
  if not target then
    fail(1, ("migrate.lua: %s is not an applied migration (applied: %s)"):format(version,
      #status.applied > 0 and table.concat(status.applied, ", ") or "none"))
  end
  local undo = {}
  for idx = #status.applied, target + 1, -1 do
    local name = status.applied[idx]
    local down = read(dir .. "/" .. name .. "/down.sql")
    if not down then fail(1, ("migrate.lua: %s has no down.sql in %s: it cannot be rolled back"):format(name, dir)) end
    undo[#undo + 1] = { name = name, sql = down }
  end
  if #undo == 0 then
    print(("Already at %s: nothing to roll back."):format(status.applied[target]))
    return
  end
  for _, m in ipairs(undo) do
    print(("Rolling back migration `%s`"):format(m.name))
    -- rolled_back_at keeps the attempt in the history: Prisma reads such a row as "not
    -- applied", and a later deploy applies the migration again
    local ok, err = pcall(conn.transaction, conn, function(tx)
      tx:exec(m.sql)
      tx:exec([[UPDATE "_prisma_migrations" SET rolled_back_at = now(),
          logs = coalesce(logs || E'\n', '') || 'rolled back by migrate.lua rollback'
        WHERE migration_name = $1 AND finished_at IS NOT NULL AND rolled_back_at IS NULL]], m.name)
    end)
    if not ok then
      fail(1, ("Rolling back %s failed; it is still applied (the migrations after it are rolled back).\n\nDatabase error:\n%s")
        :format(m.name, database_error(err)))
    end
  end
  print(("The database is at %s."):format(status.applied[target]))
end

-- ---- resolve ----

local function resolve(migrations)
  conn:exec(TABLE)
  local name = opts["rolled-back"] or opts.applied
  if not name then fail(2, USAGE) end
  local status = pg.migrations.prisma(conn)
  local failed = false
  for _, n in ipairs(status.failed) do if n == name then failed = true end end
  if opts["rolled-back"] then
    if not failed then fail(1, ("migrate.lua: %s is not a failed migration"):format(name)) end
    conn:exec([[UPDATE "_prisma_migrations" SET rolled_back_at = now()
      WHERE migration_name = $1 AND finished_at IS NULL AND rolled_back_at IS NULL]], name)
    print(("Migration %s marked as rolled back."):format(name))
  else
    local m
    for _, x in ipairs(migrations) do if x.name == name then m = x end end
    if not m then fail(1, ("migrate.lua: %s is not in %s"):format(name, dir)) end
    conn:transaction(function(tx)
      tx:exec([[UPDATE "_prisma_migrations" SET rolled_back_at = now()
        WHERE migration_name = $1 AND finished_at IS NULL AND rolled_back_at IS NULL]], name)
      tx:exec([[INSERT INTO "_prisma_migrations" (id, checksum, migration_name, started_at, finished_at,
          applied_steps_count, logs)
        VALUES (gen_random_uuid()::text, $1, $2, now(), now(), 0, 'marked applied by migrate.lua resolve')]],
        m.checksum, name)
    end)
    print(("Migration %s marked as applied."):format(name))
  end
end

-- ---- main ----

local migrations = local_migrations()
local ok, err = pcall(function()
  if command == "status" then
    print_status(pg.migrations.prisma(conn), migrations)
    return
  end
  pg.with_advisory_lock(conn, PRISMA_LOCK, function()
    if command == "deploy" then
      deploy(migrations)
    elseif command == "rollback" then
      if not opts["to-version"] then fail(2, USAGE) end
      rollback(migrations, opts["to-version"])
    else
      resolve(migrations)
    end
  end)
end)
conn:close()
if not ok then fail(1, "migrate.lua: " .. database_error(err)) end
