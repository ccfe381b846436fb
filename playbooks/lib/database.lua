-- database.lua: what the database playbooks (migrate, migrate-rollback, data-recovery)
-- share: the environment's database: block, the migrations in the repository and in the
-- database, backups with their checksums, restores that either happen whole or not at
-- all, the migrator (a local process or an exec into a pod) under the migration lock,
-- and the API's view of the database.
--
-- The database: block of an environment:
--   migrations: DIR            the application's prisma/migrations (names and down.sql)
--   backup_dir: DIR            where backups go (default .tug/backups), kept owner-only
--   migrate:  { command: [argv] }                       a local process, DATABASE_URL set
--          or { exec: { target: deployment/api, command: [argv] } }   in a pod
--   rollback: the same; in its words "{version}" is the target migration's name and
--             "{timestamp}" its leading digits
--   scratch_url: URL           a role that may create databases, for checking that a
--                              backup restores (default database_url)
--   read_only_flag: NAME       the admin API's feature flag that stops writes
--                              (default read-only-mode)
--   writers: [deployment/x]    deployments scaled to 0 while writes are stopped
--   integrity_query: SQL       passes when its first row has no false or NULL column
-- In a local command, a first word `tug` is this very tug binary.
local multiship = require("multiship")

local M = {}

M.LOCK = "migrations" -- the advisory lock every migrator run holds

local function where(env, key)
  return string.format("the %s environment's database.%s", env.name, key)
end

-- The database: block, checked; raises naming the key at fault.
function M.config(env)
  local db = env.database
  if type(db) ~= "table" then
    error(string.format("the %s environment has no database: block (migrations, migrate, backup_dir)", env.name), 0)
  end
  if type(env.database_url) ~= "string" or env.database_url == "" then
    error(string.format("the %s environment has no database_url", env.name), 0)
  end
  if type(db.migrations) ~= "string" then
    error(where(env, "migrations") .. " must be the directory of the application's migrations", 0)
  end
  return db
end

function M.url(env)
  M.config(env)
  return env.database_url
end

function M.connect(ctx)
  return pg.connect(M.url(ctx.env), { timeout = "5m",
    application_name = string.format("tug %s %s", ctx.playbook, ctx.run_id) })
end

-- ---- migrations ----

-- A file's contents, or nil when it cannot be read.
local function read_file(path)
  local f <close> = io.open(path, "rb")
  return f and f:read("a")
end
M.read_file = read_file

-- The Prisma migrations in dir (each a directory holding a migration.sql), in name order,
-- which is the order of their timestamps; nil and why when dir is not a directory.
function M.migrations_in(dir)
  local entries, err = tug.sys.listdir(dir)
  if not entries then return nil, tostring(err) end
  local names = {}
  for _, e in ipairs(entries) do
    if e.type == "dir" and read_file(dir .. "/" .. e.name .. "/migration.sql") then names[#names + 1] = e.name end
  end
  table.sort(names)
  return names
end

-- The names of the environment's migrations (database.migrations), in order.
function M.migration_names(env)
  local dir = M.config(env).migrations
  local names, err = M.migrations_in(dir)
  if not names then
    error(string.format("%s: %s is not a directory (%s)", where(env, "migrations"), dir, err), 0)
  end
  return names
end

function M.down_sql(env, name)
  return read_file(M.config(env).migrations .. "/" .. name .. "/down.sql")
end

-- The database's migrations as pg.migrations.prisma reads them, the repository's names
-- expected.
function M.status(conn, env)
  return pg.migrations.prisma(conn, { expected = M.migration_names(env) })
end

-- A short sentence for the log: "at 2024..._init (3 applied, 1 pending)".
function M.describe(status)
  return string.format("at %s (%d applied, %d pending%s)", status.latest or "no migration",
    #status.applied, #status.pending, #status.failed > 0 and (", FAILED: " .. table.concat(status.failed, ", ")) or "")
end

-- The applied migration a version names: its full name, its timestamp ("20240101120000")
-- or the seed's form ("20240101_120000"). Returns the name and its index in applied.
function M.resolve_version(status, version)
  local stamp = version:gsub("_", "")
  for i = #status.applied, 1, -1 do
    local name = status.applied[i]
    if name == version or (stamp:match("^%d+$") and name:sub(1, #stamp + 1) == stamp .. "_") then
      return name, i
    end
  end
  return nil
end

-- The failed migration's row, for messages.
function M.failure_of(status)
  for _, m in ipairs(status.migrations) do
    if m.status == "failed" then return m end
  end
end

-- ---- the migrator ----

-- The command of database.migrate or database.rollback: { argv, target (a pod, or nil),
-- text }. vars fill "{name}" in its words.
function M.command(env, which, vars)
  local spec = M.config(env)[which]
  local key = which
  if type(spec) ~= "table" then
    error(where(env, key) .. " is missing: set { command: [program, args...] } (a local process) or " ..
      "{ exec: { target: deployment/NAME, command: [...] } } (run in a pod)", 0)
  end
  local words, target = spec.command, nil
  if spec.exec ~= nil then
    if type(spec.exec) ~= "table" or type(spec.exec.target) ~= "string" then
      error(where(env, key .. ".exec") .. " needs a target (deployment/NAME or a pod) and a command", 0)
    end
    words, target, key = spec.exec.command, spec.exec.target, key .. ".exec"
  end
  if type(words) ~= "table" or #words == 0 then
    error(where(env, key .. ".command") .. " must be a list of words: [program, args...]", 0)
  end
  local argv = {}
  for i, w in ipairs(words) do
    if type(w) ~= "string" and type(w) ~= "number" then
      error(string.format("%s[%d] must be a word, not a %s", where(env, key .. ".command"), i, type(w)), 0)
    end
    argv[i] = tostring(w):gsub("{(%w+)}", function(k)
      if vars and vars[k] ~= nil then return tostring(vars[k]) end
      error(string.format("%s[%d]: nothing fills {%s}", where(env, key .. ".command"), i, k), 0)
    end)
  end
  local text = table.concat(argv, " ")
  if not target and argv[1] == "tug" then argv[1] = tug.executable end
  return { argv = argv, target = target, text = target and (target .. ": " .. text) or text }
end

-- Runs the migrator (database.migrate) or the rollback command, streaming its output to
-- the run's log. Raises when it fails, with its last lines.
function M.run_command(ctx, which, vars, timeout)
  local c = M.command(ctx.env, which, vars)
  if ctx:would("run " .. c.text) then return { planned = true } end
  local code, out, err
  if c.target then
    if type(k8s.exec) ~= "function" then
      error("database." .. which .. ".exec needs k8s.exec, which this tug does not have: use a command", 0)
    end
    local r = k8s.exec(c.target, c.argv, { timeout = timeout })
    for line in (r.stdout or ""):gmatch("[^\n]+") do ctx.log.info(line, { stream = "stdout" }) end
    for line in (r.stderr or ""):gmatch("[^\n]+") do ctx.log.warn(line, { stream = "stderr" }) end
    code, out, err = r.code, r.stdout, r.stderr
  else
    local r = exec.run(c.argv, { timeout = timeout, env = { DATABASE_URL = ctx.env.database_url },
      on_line = function(line, stream) ctx.log[stream == "stderr" and "warn" or "info"](line, { stream = stream }) end })
    code, out, err = r.code, r.stdout, r.stderr
    if r.timed_out then code = "timeout" end
  end
  if code ~= 0 then
    local lines = {}
    for line in ((err or "") .. "\n" .. (out or "")):gmatch("[^\n]+") do lines[#lines + 1] = line end
    local last = table.concat(lines, " | ", math.max(1, #lines - 5))
    error(string.format("%s %s: %s", c.text, code == "timeout" and "timed out" or
      ("exited with code " .. tostring(code)), last), 0)
  end
  return { stdout = out, stderr = err }
end

-- Runs fn while this run's session holds the migration lock; another holder makes it wait
-- up to timeout, then fail naming who holds it.
function M.with_migration_lock(ctx, timeout, fn)
  local conn <close> = M.connect(ctx)
  return pg.with_advisory_lock(conn, M.LOCK, fn, { timeout = timeout })
end

-- ---- backups ----

local STAMP = "%d%d%d%d%d%d%d%dT%d%d%d%d%d%dZ"

function M.backup_dir(env)
  return M.config(env).backup_dir or ".tug/backups"
end

-- Backs the whole database up into backup_dir as ENV-UTCSTAMP-WHY-RUN.dump (custom format),
-- with its SHA-256 beside it in FILE.sha256 (sha256sum's format). Returns { file,
-- checksum, bytes, taken_at }. A backup holds every row: backup_dir is made owner-only
-- (0700) and the dump is 0600 (pg.dump), whatever the umask.
function M.backup(ctx, why)
  local dir = M.backup_dir(ctx.env)
  local now = time.now()
  local file = string.format("%s/%s-%s-%s-%s.dump", dir, ctx.env.name, time.format(now, "%Y%m%dT%H%M%SZ"), why,
    ctx.run_id:match("(%x+)$") or "run")
  if ctx.plan then
    pg.dump(ctx.env.database_url, file)
    return { file = file, planned = true }
  end
  require("tug.journal").private_dir(dir, "backup", ctx.log.warn)
  local d = pg.dump(ctx.env.database_url, file, { timeout = "1h" })
  local f = assert(io.open(file .. ".sha256", "w"))
  f:write(d.checksum, "  ", file:match("[^/]+$"), "\n")
  f:close()
  ctx.log.info(string.format("backed up to %s (%d bytes, sha256 %s)", file, d.bytes or 0, d.checksum))
  return { file = file, checksum = d.checksum, bytes = d.bytes, taken_at = time.format(now) }
end

local function iso_of(stamp)
  local y, mo, d, h, mi, s = stamp:match("^(%d%d%d%d)(%d%d)(%d%d)T(%d%d)(%d%d)(%d%d)Z$")
  return string.format("%s-%s-%sT%s:%s:%sZ", y, mo, d, h, mi, s)
end

-- The backups in backup_dir (*.dump: pg_dump's custom format), newest first: { file,
-- name, taken_at (ISO, UTC), checksum (from FILE.sha256, or nil) }. The time is the one in
-- a name tug gave, else the file's modification time.
function M.backups(env)
  local dir = M.backup_dir(env)
  local out = {}
  for _, e in ipairs(tug.sys.listdir(dir) or {}) do
    if e.type == "file" and e.name:match("%.dump$") then
      local file = dir .. "/" .. e.name
      local stamp = e.name:match("%-(" .. STAMP .. ")%-")
      local taken_at
      if stamp then
        taken_at = iso_of(stamp)
      else
        local r = exec.run({ "stat", "-c", "%Y", "--", file }, { read_only = true })
        taken_at = time.format(tonumber(r.stdout:match("%d+")) or 0)
      end
      local sidecar = read_file(file .. ".sha256")
      out[#out + 1] = { file = file, name = e.name, taken_at = taken_at,
        checksum = sidecar and sidecar:match("^(%x+)") }
    end
  end
  table.sort(out, function(a, b)
    if a.taken_at ~= b.taken_at then return a.taken_at > b.taken_at end
    return a.name > b.name
  end)
  return out
end

-- "2024-05-01T10:00:00.5Z" -> "2024-05-01T10:00:00", for comparing times as text.
function M.second(iso)
  return iso and iso:sub(1, 19)
end

-- ---- restores ----

local function tables_in_dump(file)
  local r = exec.run({ pg.program("pg_restore"), "--list", "--", file }, { read_only = true })
  if r.code ~= 0 then error("pg_restore --list " .. file .. ": " .. r.stderr, 0) end
  local set = {}
  for schema, name in r.stdout:gmatch("\n%d+; %d+ %d+ TABLE (%S+) (%S+)") do set[schema .. "." .. name] = true end
  return set
end

local function quote(qualified)
  local schema, name = qualified:match("^([^.]+)%.(.+)$")
  return pg.quote_ident(schema) .. "." .. pg.quote_ident(name)
end

-- Restores a backup into the live database in one transaction: it happens whole or not at
-- all. opts.tables (names, schema public unless qualified): only those tables' rows (and
-- their sequences) are replaced (TRUNCATE, then the backup's rows); without it the whole
-- backup is restored over the database (its objects dropped and recreated, and tables the
-- backup does not have, created since, dropped). The file must match checksum when one is
-- known. Returns { file, mode, dropped = { tables } }.
function M.restore(ctx, backup, opts)
  opts = opts or {}
  local scope = opts.tables and ("the rows of " .. table.concat(opts.tables, ", ")) or "the whole database"
  if ctx:would(string.format("restore %s from %s", scope, backup.file)) then return { planned = true } end
  if backup.checksum then
    local actual = pg.checksum(backup.file)
    if actual ~= backup.checksum then
      error(string.format("%s: its SHA-256 is %s, not the %s recorded for it: refusing to restore", backup.file,
        tostring(actual), backup.checksum), 0)
    end
  end
  local conn <close> = M.connect(ctx)
  local body = backup.file .. "." .. ctx.run_id .. ".body.sql"
  local wrapper = backup.file .. "." .. ctx.run_id .. ".restore.sql"
  local lines, dropped = {}, {}
  local argv = { pg.program("pg_restore"), "--file=" .. body }
  if opts.tables then
    local names = {}
    for _, t in ipairs(opts.tables) do
      local qualified = t:find(".", 1, true) and t or ("public." .. t)
      names[#names + 1] = quote(qualified)
      argv[#argv + 1] = "--table=" .. qualified:match("%.(.+)$")
      -- the sequences the table's columns own, so new ids continue from the backup's
      for _, s in ipairs(conn:query([[
SELECT s.relname AS name FROM pg_class s JOIN pg_depend d ON d.objid = s.oid
 WHERE s.relkind = 'S' AND d.deptype IN ('a', 'i') AND d.refobjid = $1::regclass]], quote(qualified))) do
        argv[#argv + 1] = "--table=" .. s.name
      end
    end
    table.insert(argv, 2, "--data-only")
    lines[#lines + 1] = "TRUNCATE " .. table.concat(names, ", ") .. ";"
  else
    local in_dump = tables_in_dump(backup.file)
    local schemas = {}
    for qualified in pairs(in_dump) do schemas[qualified:match("^([^.]+)")] = true end
    local list = {}
    for s in pairs(schemas) do list[#list + 1] = s end
    for _, r in ipairs(conn:query([[SELECT schemaname || '.' || tablename AS name FROM pg_tables
      WHERE schemaname::text = ANY($1::text[]) ORDER BY 1]], pg.array(list))) do
      if not in_dump[r.name] then
        dropped[#dropped + 1] = r.name
        lines[#lines + 1] = "DROP TABLE IF EXISTS " .. quote(r.name) .. " CASCADE;"
      end
    end
    table.insert(argv, 2, "--clean")
    table.insert(argv, 3, "--if-exists")
  end
  conn:close()
  argv[#argv + 1] = backup.file
  lines[#lines + 1] = "\\ir " .. body:match("[^/]+$")
  local ok, err = pcall(function()
    assert(tug.sys.open_private(body, "w")):close() -- it holds the backup's rows: pg_restore keeps the mode
    local r = exec.run(argv)
    if r.code ~= 0 then error("pg_restore " .. backup.file .. ": " .. r.stderr, 0) end
    local f = assert(tug.sys.open_private(wrapper, "w"))
    f:write(table.concat(lines, "\n"), "\n")
    f:close()
    pg.restore(ctx.env.database_url, wrapper, { single_transaction = true, timeout = "1h" })
  end)
  os.remove(body)
  os.remove(wrapper)
  if not ok then error(err, 0) end
  ctx.log.warn(string.format("restored %s from %s%s", scope, backup.file,
    #dropped > 0 and ("; dropped tables created since: " .. table.concat(dropped, ", ")) or ""))
  return { file = backup.file, mode = opts.tables and "tables" or "full", dropped = dropped }
end

-- ---- after a failed migration ----

local function cancelled(err)
  return type(err) == "table" and err.kind == "cancelled"
end
M.cancelled = cancelled

-- A migration or rollback failed. Restoring the backup taken just before is a decision,
-- never automatic: on a live database it also discards every write made since. Asks
-- (keep or restore; restore_on_failure=true makes restore the answer under --yes), acts,
-- and raises the failure with what was done.
function M.fail_after_backup(ctx, what, err, backup, before)
  if cancelled(err) then error(err, 0) end
  local message = type(err) == "table" and (err.message or tostring(err)) or tostring(err)
  if not backup or not backup.file or backup.planned then error(message, 0) end
  local default = ctx.params.restore_on_failure and "restore" or "keep"
  local ok, answer = pcall(ctx.ask, ctx, string.format(
    "%s failed on %s. Restore the backup taken before it (%s)? It also discards every write made since.",
    what, ctx.env.name, backup.file), { choices = { "keep", "restore" }, default = default })
  if not ok and cancelled(answer) then error(answer, 0) end
  if ok and answer == "restore" then
    M.restore(ctx, backup)
    ctx.state.restored = backup.file
    error(string.format("%s; restored %s: the database is back %s", message, backup.file,
      before and ("at " .. (before.latest or "no migration")) or "where it was"), 0)
  end
  error(string.format("%s; the database was left as it is (to restore the backup taken before: " ..
    "tug run data-recovery --env %s backup=%s scope=full)", message, ctx.env.name, backup.file), 0)
end

-- Runs the migrator or the rollback command (run_command's which and vars) under the
-- migration lock. When it fails, explain(err) may say why better than its error does (the
-- database knows which migration failed); fail_after_backup then decides about the backup
-- the run took (ctx.state.backup). opts: lock_timeout, timeout, what (for the question),
-- explain.
function M.run_under_lock(ctx, which, vars, opts)
  M.with_migration_lock(ctx, opts.lock_timeout, function()
    local ok, err = pcall(M.run_command, ctx, which, vars, opts.timeout)
    if ok then return end
    if cancelled(err) then error(err, 0) end
    M.fail_after_backup(ctx, opts.what, opts.explain and opts.explain(err) or err, ctx.state.backup,
      ctx.state.before)
  end)
end

-- A migrator's run verified: the database's migrations now (kept in ctx.state.after),
-- check(status) raising when they are not what the run meant, then the API's view of the
-- database. Nothing to verify in a plan.
function M.verify(ctx, within, check)
  if ctx.plan then return end
  local conn <close> = M.connect(ctx)
  local s = M.status(conn, ctx.env)
  ctx.state.after = { latest = s.latest, applied = s.applied }
  check(s)
  local url = M.check_api(ctx, within)
  ctx.log.info(string.format("the database is %s; %s answers healthy", M.describe(s), url))
end

-- ---- destructive steps ----

-- Before a step that destroys data: a person types the environment's name; under --yes,
-- i_understand_data_loss=true must be given as well. summary says what is lost. Raises,
-- having changed nothing, on any other answer.
function M.confirm_data_loss(ctx, summary)
  local question = summary .. " Type the environment's name (" .. ctx.env.name .. ") to go ahead:"
  if ctx.plan then
    ctx:ask(question)
    return
  end
  if ctx.yes then
    if not ctx.params.i_understand_data_loss then
      error(string.format("%s destroys data: with --yes it also needs i_understand_data_loss=true " ..
        "(nothing was changed). %s", ctx.playbook, summary), 0)
    end
    ctx.log.warn("data loss accepted with i_understand_data_loss=true: " .. summary)
    return
  end
  local answer = ctx:ask(question)
  if answer ~= ctx.env.name then
    error(string.format("the answer was %q, not %q: nothing was changed", tostring(answer), ctx.env.name), 0)
  end
end

-- ---- writes: the admin API's read-only flag and the writer deployments ----

M.REPLICAS_ANNOTATION = "multiship.tug/replicas-before-recovery"

local function admin(ctx, method, path, body)
  local token = ctx.env.admin_token
  if not token then error("the " .. ctx.env.name .. " environment has no admin_token", 0) end
  local r = http.request({ method = method, url = multiship.api_url(ctx.env) .. path, json = body,
    headers = { authorization = "Bearer " .. token }, timeout = "10s", retries = 2 })
  if not r.status and not r.planned then error(r.message, 0) end
  return r
end

function M.read_only_flag(env)
  return M.config(env).read_only_flag or "read-only-mode"
end

local function writer_names(env)
  local out = {}
  for i, w in ipairs(M.config(env).writers or {}) do
    if type(w) ~= "string" then error(string.format("%s[%d] must be a deployment name", where(env, "writers"), i), 0) end
    out[#out + 1] = w:gsub("^deployments?/", "")
  end
  return out
end

-- Turns the read-only flag on and scales the writers to 0 (their replicas kept in an
-- annotation, so that resuming needs nothing but the cluster). Returns what it found.
function M.stop_writes(ctx)
  local flag = M.read_only_flag(ctx.env)
  local r = admin(ctx, "GET", "/admin/features/" .. flag)
  local previous = false
  if r.status ~= 404 then
    r:raise()
    previous = r:json().enabled == true
  end
  admin(ctx, "POST", "/admin/features", { feature = flag, enabled = true }):raise()
  local writers = {}
  for _, name in ipairs(writer_names(ctx.env)) do
    local d = k8s.get("deployment", name)
    local replicas = d.spec.replicas or 1
    writers[name] = replicas
    if replicas > 0 then
      k8s.patch("deployment", name, { metadata = { annotations = { [M.REPLICAS_ANNOTATION] = tostring(replicas) } } })
      k8s.scale(name, 0)
    end
  end
  if ctx.plan then return { flag = flag, previous = previous, writers = writers } end
  ctx.log.warn(string.format("writes stopped on %s: %s on%s", ctx.env.name, flag,
    next(writers) and (", writers scaled to 0: " .. table.concat(writer_names(ctx.env), ", ")) or ""))
  return { flag = flag, previous = previous, writers = writers }
end

-- Turns the flag back off and scales each writer back to the replicas its annotation kept.
function M.resume_writes(ctx)
  local flag = M.read_only_flag(ctx.env)
  admin(ctx, "POST", "/admin/features", { feature = flag, enabled = false }):raise()
  local resumed = {}
  for _, name in ipairs(writer_names(ctx.env)) do
    local d = k8s.get("deployment", name)
    local kept = d.metadata.annotations and tonumber(d.metadata.annotations[M.REPLICAS_ANNOTATION])
    if kept then
      k8s.scale(name, kept)
      k8s.patch("deployment", name, { metadata = { annotations = { [M.REPLICAS_ANNOTATION] = json.null } } })
      resumed[#resumed + 1] = string.format("%s to %d", name, kept)
    end
  end
  if ctx.plan then return end
  ctx.log.info(string.format("writes resumed on %s: %s off%s", ctx.env.name, flag,
    #resumed > 0 and (", scaled " .. table.concat(resumed, ", ")) or ""))
end

-- ---- the API's view ----

-- /api/health/database through the API, within `within`; raises the reason.
function M.check_api(ctx, within)
  local url = multiship.api_url(ctx.env) .. "/api/health/database"
  local r = health.check({ url, within = within or "1m", interval = "1s" })
  if not r.ok then error(r.reason, 0) end
  return url
end

-- The env's integrity query (or opts.query): ok when its first row has no false or NULL
-- column. Returns ok, a sentence.
function M.integrity(conn, query)
  if not query or query == "" then return true, "no integrity query" end
  local ok, rows, info = pcall(conn.query, conn, { query, read_only = true })
  if not ok then
    return false, "integrity query: " .. (type(rows) == "table" and (rows.reason or rows.message) or tostring(rows))
  end
  local first = rows[1]
  if not first then return false, "integrity query returned no row" end
  local bad = {}
  for _, c in ipairs(info.columns) do
    if first[c] == nil or first[c] == false then bad[#bad + 1] = c .. " is " .. (first[c] == nil and "NULL" or "false") end
  end
  if #bad > 0 then return false, "integrity query: " .. table.concat(bad, ", ") end
  return true, "integrity query passed"
end

return M
