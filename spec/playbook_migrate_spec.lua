-- The migrate and migrate-rollback playbooks, run by the real binary against a real
-- PostgreSQL (one server for the file, a fresh database per test), the sample Multiship
-- migrations and their local migrator (examples/multiship/migrate.lua), and the simulated
-- cluster's API for /api/health/database.
package.path = "spec/support/?.lua;" .. package.path
local harness = require("playbook_harness")
local postgres = require("postgres")
local child = require("child")
local project = require("project")
local db = require("database_playbooks")

local INIT = "20240101120000_init"
local SHIPMENTS = "20240115093000_add_shipments"
local PREFERENCES = "20240201100000_add_user_preferences"

describe("migrate and migrate-rollback on PostgreSQL", function()
  local server, h, url, dir
  local count = 0

  local admin -- a superuser session

  setup(function()
    server = postgres.start()
    admin = pg.connect(server.url)
  end)

  teardown(function()
    admin:close()
    server:stop()
  end)

  before_each(function()
    count = count + 1
    local db = "migrate_" .. count
    admin:exec("CREATE DATABASE " .. db .. " OWNER app")
    url = server.app_url:gsub("/postgres$", "/" .. db)
    h = harness.new()
    dir = h.dir .. "/migrations"
    exec.run({ "cp", "-r", harness.ROOT .. "/examples/multiship/prisma/migrations", dir }, { check = true })
    local migrator = harness.ROOT .. "/examples/multiship/migrate.lua"
    h:write_env(string.format([[
database_url: "%s"
database:
  migrations: %s
  backup_dir: %s/backups
  migrate: { command: [tug, lua, %s, deploy, --dir, %s] }
  rollback: { command: [tug, lua, %s, rollback, "--to-version={version}", --dir, %s] }
]], url, dir, h.dir, migrator, dir, migrator, dir))
  end)

  after_each(function() h:close() end)

  -- the local migrator, run directly to set a database up
  local function migrator(...)
    local argv = { child.tug, "lua", harness.ROOT .. "/examples/multiship/migrate.lua", ... }
    argv[#argv + 1] = "--dir"
    argv[#argv + 1] = dir
    local r = exec.run(argv, { env = { DATABASE_URL = url }, timeout = 30 })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
  end

  local function status()
    local conn <close> = pg.connect(url)
    return pg.migrations.prisma(conn)
  end

  local function sql(...) return db.query(url, ...) end
  local function value(...) return db.value(url, ...) end

  local function add_migration(name, up, down)
    exec.run({ "mkdir", "-p", dir .. "/" .. name }, { check = true })
    local f = assert(io.open(dir .. "/" .. name .. "/migration.sql", "w"))
    f:write(up)
    f:close()
    if down then
      f = assert(io.open(dir .. "/" .. name .. "/down.sql", "w"))
      f:write(down)
      f:close()
    end
  end

  -- The database at INIT (the later migrations undone and forgotten), and a new migration
  -- after them that fails half-way: it creates labels, then alters a table nothing creates.
  local function at_init_with_a_failing_migration()
    migrator("deploy")
    sql([[DELETE FROM _prisma_migrations WHERE migration_name <> $1]], INIT)
    sql([[DROP TABLE shipments; ALTER TABLE users DROP COLUMN preferences]])
    add_migration("20240301000000_add_labels", [[CREATE TABLE "labels" ("id" SERIAL PRIMARY KEY);
ALTER TABLE "parcels" ADD COLUMN "label_id" INTEGER;]])
  end

  local function backups() return db.backups(h.dir .. "/backups") end
  local function state_of(r, step) return db.state_of(h, r, step) end
  local function logs(r) return db.logs(h, r) end

  -- Starts tug in the background (for kill -9); returns the process.
  local function spawn(args)
    local argv = { child.tug }
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    for _, a in ipairs({ "--env", "sim", "--playbooks", harness.ROOT .. "/playbooks", "--output", "json" }) do
      argv[#argv + 1] = a
    end
    return exec.spawn(argv, { env = { CI = "true", TUG_ENVIRONMENTS = h.dir .. "/environments",
      TUG_HOME = h.dir .. "/.tug", GITHUB_ACTIONS = false } })
  end

  -- tug resume RUN_ID (the environment and params come from the journal)
  local function resume(id)
    return exec.run({ child.tug, "resume", id, "--playbooks", harness.ROOT .. "/playbooks", "--output", "json" },
      { timeout = 120, env = { CI = "true", TUG_ENVIRONMENTS = h.dir .. "/environments", TUG_HOME = h.dir .. "/.tug",
        GITHUB_ACTIONS = false } })
  end

  local function run_id()
    local entries = tug.sys.listdir(h.dir .. "/.tug/runs") or {}
    assert.are.equal(1, #entries)
    return entries[1].name:match("^(.*)%.jsonl$")
  end

  -- Starts tug ARGS, kills it with -9 once query counts 1 (the run is mid-way), and
  -- returns what `tug resume` of the run did.
  local function kill_then_resume(args, query)
    local proc = spawn(args)
    assert.is_true(project.wait_for(function()
      local ok, n = pcall(value, query)
      return ok and n == 1
    end, 20))
    proc:kill("KILL")
    proc:wait()
    return resume(run_id())
  end

  it("migrate backs up, applies the pending migrations in order and verifies; a second run has nothing to do", function()
    local r = h:tug({ "run", "migrate" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local s = status()
    assert.are.same({ INIT, SHIPMENTS, PREFERENCES }, s.applied)
    assert.are.same({}, s.failed)
    local verified = state_of(r, "verify the migrations and the database's health")
    assert.are.same({ INIT, SHIPMENTS, PREFERENCES }, verified.applied)
    assert.matches("answers healthy", logs(r))
    -- rows as Prisma writes them
    local rows = sql([[SELECT id, checksum, applied_steps_count FROM _prisma_migrations ORDER BY migration_name]])
    assert.are.equal(36, #rows[1].id)
    assert.are.equal(pg.checksum(dir .. "/" .. INIT .. "/migration.sql"), rows[1].checksum)
    assert.are.equal(1, rows[1].applied_steps_count)
    -- the backup, with its checksum beside it and in the run's state
    local files = backups()
    assert.are.equal(1, #files)
    assert.matches("^sim%-%d+T%d+Z%-before%-migrate%-%x+%.dump$", files[1])
    local file = h.dir .. "/backups/" .. files[1]
    assert.are.equal(verified.backup.checksum, pg.checksum(file))
    assert.are.same({ 448, 384 }, { tug.sys.stat(h.dir .. "/backups").mode, tug.sys.stat(file).mode }) -- 0700, 0600
    local sidecar = assert(io.open(file .. ".sha256")):read("a")
    assert.are.equal(verified.backup.checksum .. "  " .. files[1] .. "\n", sidecar)
    assert.is_nil(r.stdout:find(server.app_password, 1, true))

    r = h:tug({ "run", "migrate" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.matches("nothing to migrate: the database is at " .. PREFERENCES, logs(r))
    assert.are.equal(2, #h:events(r, "step_skip"))
    assert.are.equal(1, #backups())
  end)

  it("migrate stops at a failing migration, which stays failed as with Prisma, and refuses to go on until it is resolved", function()
    at_init_with_a_failing_migration()
    local r = h:tug({ "run", "migrate", "--yes" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    local e = h:run_end(r)
    assert.are.equal("failed", e.status)
    assert.matches('migration 20240301000000_add_labels failed: relation "parcels" does not exist', e.reason)
    assert.matches("the database was left as it is %(to restore the backup taken before: tug run data%-recovery", e.reason)
    -- the migrations before it are applied; it failed whole (no labels table) and says so
    local s = status()
    assert.are.same({ INIT, SHIPMENTS, PREFERENCES }, s.applied)
    assert.are.same({ "20240301000000_add_labels" }, s.failed)
    assert.is_false(value("SELECT to_regclass('labels') IS NOT NULL"))

    r = h:tug({ "run", "migrate", "--yes" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("migration 20240301000000_add_labels failed on .* and was never resolved", h:run_end(r).reason)
    assert.are.equal(1, #backups())
  end)

  it("migrate with restore_on_failure=true restores the backup after a failed migration: the database is back where it was", function()
    at_init_with_a_failing_migration()
    sql([[INSERT INTO users (email) VALUES ('ops@multiship.com')]])
    local r = h:tug({ "run", "migrate", "--yes", "restore_on_failure=true" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("restored .*before%-migrate.*: the database is back at " .. INIT, h:run_end(r).reason)
    local s = status()
    assert.are.same({ INIT }, s.applied)
    assert.are.same({}, s.failed)
    assert.is_false(value("SELECT to_regclass('shipments') IS NOT NULL"))
    assert.are.equal("ops@multiship.com", value("SELECT email FROM users"))
  end)

  it("migrate waits for the migration lock and fails naming its holder, applying nothing", function()
    local holder <close> = pg.connect(url, { application_name = "deploy-eu" })
    pg.advisory_lock(holder, "migrations")
    local r = h:tug({ "run", "migrate", "lock_timeout=1s" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("advisory lock 'migrations': not acquired within 1s %(held by pid %d+, deploy%-eu",
      h:run_end(r).reason)
    assert.is_false(status().exists)
  end)

  it("migrate fails its verification when the API cannot reach its database", function()
    h.cluster:fault({ type = "unhealthy", version = "v2.1.0", status = 503 })
    local r = h:tug({ "run", "migrate", "verify_within=1s" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    local e = h:run_end(r)
    assert.matches("verify the migrations and the database's health", e.reason)
    assert.matches("/api/health/database: status 503", e.reason)
    assert.are.same({ INIT, SHIPMENTS, PREFERENCES }, status().applied)
  end)

  it("a database block without a usable migrator is refused before anything changes", function()
    h:write_env(string.format('database_url: "%s"\ndatabase: { migrations: %s, backup_dir: %s/backups, ' ..
      'migrate: { command: "pnpm prisma:migrate:deploy" } }\n', url, dir, h.dir))
    local r = h:tug({ "run", "migrate" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("the sim environment's database%.migrate%.command must be a list of words", h:run_end(r).reason)
    assert.is_false(status().exists)
    migrator("deploy")
    h:write_env(string.format('database_url: "%s"\ndatabase: { migrations: %s }\n', url, dir))
    r = h:tug({ "run", "migrate-rollback", "to_version=" .. INIT })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("the sim environment's database%.rollback is missing: set { command: %[program, args%.%.%.%] }",
      h:run_end(r).reason)
    assert.are.equal(PREFERENCES, status().latest)
    assert.are.same({}, backups())
  end)

  it("plans migrate: lists the backup, the lock and the migrator, and changes nothing", function()
    local r = h:tug({ "plan", "migrate" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local text = h:changes(r)
    assert.matches("pg: dump app@127%.0%.0%.1:%d+/migrate_%d+ to .*before%-migrate", text)
    assert.matches("pg: advisory lock 'migrations'", text)
    assert.matches("step: run tug lua .*migrate%.lua deploy", text)
    assert.is_false(status().exists)
    assert.are.same({}, backups())
  end)

  it("resumes a migrate killed with -9 while the migrator runs: every migration ends applied", function()
    add_migration("20240301000000_backfill", [[SELECT pg_sleep(2);
CREATE TABLE "backfill_marks" ("id" SERIAL PRIMARY KEY);]])
    local r = kill_then_resume({ "run", "migrate" }, [[SELECT count(*) FROM _prisma_migrations
      WHERE migration_name = '20240301000000_backfill' AND finished_at IS NULL]])
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("succeeded", h:run_end(r).status)
    local s = status()
    assert.are.same({ INIT, SHIPMENTS, PREFERENCES, "20240301000000_backfill" }, s.applied)
    assert.are.same({}, s.failed)
  end)

  describe("through exec in the API's pod, as on a cluster", function()
    -- the simulated API pods run the local migrator for real when tug execs the seed's
    -- commands in them; DATABASE_URL is the pod's
    before_each(function()
      local migrator = harness.ROOT .. "/examples/multiship/migrate.lua"
      h.cluster:set_exec({ prefix = { "pnpm", "prisma:migrate:deploy" }, ["local"] = {
        command = { child.tug, "lua", migrator, "deploy", "--dir", dir }, env = { DATABASE_URL = url } } })
      h.cluster:set_exec({ prefix = { "pnpm", "db:migrate:rollback" }, ["local"] = {
        command = { child.tug, "lua", migrator, "rollback", "--dir", dir }, env = { DATABASE_URL = url } } })
      h:write_env(string.format([[
database_url: "%s"
database:
  migrations: %s
  backup_dir: %s/backups
  migrate: { exec: { target: deployment/api, command: [pnpm, "prisma:migrate:deploy"] } }
  rollback: { exec: { target: deployment/api, command: [pnpm, "db:migrate:rollback", "--to-version={version}"] } }
]], url, dir, h.dir))
      assert.is_truthy(h.cluster:wait_rollout("multiship", "api", 10))
    end)

    it("migrate and migrate-rollback run the seed's commands in a pod of deployment/api", function()
      local r = h:tug({ "run", "migrate" })
      assert.are.equal(0, r.code, r.stdout .. r.stderr)
      assert.are.same({ INIT, SHIPMENTS, PREFERENCES }, status().applied)
      assert.matches("Applying migration `" .. INIT .. "`", logs(r))
      local log = h.cluster.execs.log
      assert.are.equal(1, #log)
      assert.matches("^api%-", log[1].pod)
      assert.are.same({ "pnpm", "prisma:migrate:deploy" }, log[1].argv)

      r = h:tug({ "run", "migrate-rollback", "to_version=20240101_120000", "--yes", "i_understand_data_loss=true" })
      assert.are.equal(0, r.code, r.stdout .. r.stderr)
      assert.are.same({ "pnpm", "db:migrate:rollback", "--to-version=" .. INIT }, h.cluster.execs.log[2].argv)
      assert.are.equal(INIT, status().latest)
    end)

    it("a migration failing in the pod fails the run with the database's reason", function()
      add_migration("20240301000000_add_labels", [[ALTER TABLE "parcels" ADD COLUMN "label_id" INTEGER;]])
      local r = h:tug({ "run", "migrate", "--yes" })
      assert.are.equal(1, r.code, r.stdout .. r.stderr)
      assert.matches('migration 20240301000000_add_labels failed: relation "parcels" does not exist', h:run_end(r).reason)
      assert.are.same({ "20240301000000_add_labels" }, status().failed)
    end)
  end)

  describe("migrate-rollback", function()
    before_each(function()
      migrator("deploy")
      sql([[INSERT INTO users (email, preferences) VALUES ('a@multiship.com', '{"emailNotifications": true}'),
        ('b@multiship.com', NULL)]])
      sql([[INSERT INTO orders (user_id, provider, total) VALUES (1, 'easypost', 42.5)]])
      sql([[INSERT INTO shipments (order_id, carrier, tracking_number) VALUES (1, 'USPS', '9400100000000000000000')]])
    end)

    it("rolls back to 20240101_120000: shows what is lost, backs up, and leaves the database at that version", function()
      local r = h:tug({ "run", "migrate-rollback", "to_version=20240101_120000", "--yes", "i_understand_data_loss=true" })
      assert.are.equal(0, r.code, r.stdout .. r.stderr)
      local text = logs(r)
      assert.matches('undo 20240201100000_add_user_preferences: ALTER TABLE "users" DROP COLUMN "preferences";', text)
      assert.matches("drops column users%.preferences %(1 value%)", text)
      assert.matches("drops table shipments %(1 row%)", text)
      local s = status()
      assert.are.equal(INIT, s.latest)
      assert.are.same({ SHIPMENTS, PREFERENCES }, s.rolled_back)
      assert.is_false(value("SELECT to_regclass('shipments') IS NOT NULL"))
      assert.are.equal(0, value([[SELECT count(*) FROM information_schema.columns
        WHERE table_name = 'users' AND column_name = 'preferences']]))
      assert.are.equal(2, value("SELECT count(*) FROM users"))
      local files = backups()
      assert.are.equal(1, #files)
      assert.matches("before%-rollback", files[1])
      -- a later migrate applies them again
      r = h:tug({ "run", "migrate" })
      assert.are.equal(0, r.code, r.stdout .. r.stderr)
      assert.are.same({ INIT, SHIPMENTS, PREFERENCES }, status().applied)
    end)

    it("with --yes needs i_understand_data_loss=true, and without it changes nothing", function()
      local r = h:tug({ "run", "migrate-rollback", "to_version=" .. INIT, "--yes" })
      assert.are.equal(1, r.code, r.stdout .. r.stderr)
      local reason = h:run_end(r).reason
      assert.matches("destroys data: with %-%-yes it also needs i_understand_data_loss=true %(nothing was changed%)", reason)
      assert.matches("drops table shipments %(1 row%)", reason)
      assert.are.equal(PREFERENCES, status().latest)
      assert.are.same({}, backups())
    end)

    it("refuses a version that is not applied, naming the applied ones", function()
      local r = h:tug({ "run", "migrate-rollback", "to_version=20230101_000000", "--yes", "i_understand_data_loss=true" })
      assert.are.equal(1, r.code, r.stdout .. r.stderr)
      assert.matches("to_version: 20230101_000000 is not an applied migration on sim %(applied: " .. INIT,
        h:run_end(r).reason)
      assert.are.equal(PREFERENCES, status().latest)
    end)

    it("a failing down.sql with restore_on_failure=true restores the backup, data included", function()
      local f = assert(io.open(dir .. "/" .. SHIPMENTS .. "/down.sql", "w"))
      f:write('DROP TABLE "shipmentz";\n')
      f:close()
      local r = h:tug({ "run", "migrate-rollback", "to_version=" .. INIT, "--yes", "i_understand_data_loss=true",
        "restore_on_failure=true" })
      assert.are.equal(1, r.code, r.stdout .. r.stderr)
      local reason = h:run_end(r).reason
      assert.matches('table "shipmentz" does not exist', reason)
      assert.matches("the database is back at " .. PREFERENCES, reason)
      local s = status()
      assert.are.same({ INIT, SHIPMENTS, PREFERENCES }, s.applied)
      assert.are.equal(true, value([[SELECT (preferences->>'emailNotifications')::boolean FROM users
        WHERE email = 'a@multiship.com']]))
    end)

    it("plans a rollback: the question, the backup, the lock and the command, and changes nothing", function()
      local r = h:tug({ "plan", "migrate-rollback", "to_version=" .. INIT })
      assert.are.equal(0, r.code, r.stdout .. r.stderr)
      local text = h:changes(r)
      assert.matches("would ask: Rolling sim back from " .. PREFERENCES .. " to " .. INIT, text)
      assert.matches("pg: dump .*before%-rollback", text)
      assert.matches("pg: advisory lock 'migrations'", text)
      assert.matches("step: run tug lua .*migrate%.lua rollback %-%-to%-version=" .. INIT, text)
      assert.are.equal(PREFERENCES, status().latest)
      assert.are.same({}, backups())
    end)

    it("resumes a rollback killed with -9 during its down.sql: the database ends at the target version", function()
      local f = assert(io.open(dir .. "/" .. PREFERENCES .. "/down.sql", "w"))
      f:write('SELECT pg_sleep(2);\nALTER TABLE "users" DROP COLUMN "preferences";\n')
      f:close()
      local r = kill_then_resume({ "run", "migrate-rollback", "to_version=" .. INIT, "--yes",
        "i_understand_data_loss=true" }, [[SELECT count(*) FROM pg_stat_activity
          WHERE application_name = 'multiship-migrate' AND query LIKE '%pg_sleep%']])
      assert.are.equal(0, r.code, r.stdout .. r.stderr)
      local s = status()
      assert.are.equal(INIT, s.latest)
      assert.are.same({}, s.failed)
      assert.is_false(value("SELECT to_regclass('shipments') IS NOT NULL"))
    end)

    it("on a terminal asks for the environment's name: a wrong one changes nothing, the right one rolls back", function()
      local socket = "tug-migrate-spec"
      finally(function() exec.run({ "tmux", "-L", socket, "kill-server" }) end)
      local function terminal()
        local screen, keys = db.terminal(h, socket, { "run", "migrate-rollback", "to_version=" .. INIT })
        assert.is_true(project.wait_for(function()
          return screen():find("Type the environment's name (sim) to go ahead:", 1, true)
        end), screen())
        return keys, screen
      end

      local keys, screen = terminal()
      assert.matches("drops table shipments %(1 row%)", screen())
      keys("production", "Enter")
      assert.is_true(project.wait_for(function() return screen():find("EXIT=", 1, true) end), screen())
      assert.matches("EXIT=1", screen())
      assert.matches('the answer was "production", not "sim": nothing was changed', screen())
      assert.are.equal(PREFERENCES, status().latest)
      assert.are.same({}, backups())

      keys, screen = terminal()
      keys("sim", "Enter")
      assert.is_true(project.wait_for(function() return screen():find("EXIT=", 1, true) end, 20), screen())
      assert.matches("EXIT=0", screen())
      assert.are.equal(INIT, status().latest)
      -- both answers are decisions in the runs' journals
      local decisions = {}
      for _, e in ipairs(tug.sys.listdir(h.dir .. "/.tug/runs")) do
        local journal = assert(io.open(h.dir .. "/.tug/runs/" .. e.name)):read("a")
        for _, d in ipairs(h:events({ stdout = journal }, "decision")) do decisions[#decisions + 1] = d.answer end
      end
      table.sort(decisions)
      assert.are.same({ "production", "sim" }, decisions)
    end)
  end)
end)
