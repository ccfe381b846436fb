-- The data-recovery runbook, run by the real binary against a real PostgreSQL (one server
-- for the file, a fresh database per test) holding the sample Multiship schema, and the
-- simulated cluster (the admin API's read-only flag, a writer deployment). Damage: a bad
-- deploy negated order totals. Backups: one from before the damage, one after it.
package.path = "spec/support/?.lua;" .. package.path
local harness = require("playbook_harness")
local postgres = require("postgres")
local child = require("child")
local project = require("project")
local db = require("database_playbooks")
local runs = require("playbook_runs")

local CLEAN = "sim-20240501T090000Z-nightly.dump"   -- before the damage
local DAMAGED = "sim-20240501T110000Z-hourly.dump"  -- after it
local SINCE = "2024-05-01T10:00:00Z"
local INTEGRITY = "SELECT bool_and(total >= 0) AS no_negative_totals FROM orders"

describe("data-recovery on PostgreSQL", function()
  local server, h, url
  local count = 0

  local admin, template -- a superuser session; the prepared database every test copies

  setup(function()
    server = postgres.start()
    server:psql("ALTER ROLE app CREATEDB")
    admin = pg.connect(server.url)
  end)

  teardown(function()
    admin:close()
    server:stop()
    if template then exec.run({ "rm", "-rf", template.dir }) end
  end)

  local function sql(...) return db.query(url, ...) end
  local function value(...) return db.value(url, ...) end

  -- a backup as the database playbooks make them: custom format, FILE.sha256 beside it
  local function backup(dir, name)
    local file = dir .. "/" .. name
    local d = pg.dump(url, file)
    local f = assert(io.open(file .. ".sha256", "w"))
    f:write(d.checksum, "  ", name, "\n")
    f:close()
    return file
  end

  local function write_env(extra)
    h:write_env(string.format([[
database_url: "%s"
database:
  migrations: %s/examples/multiship/prisma/migrations
  backup_dir: %s/backups
  writers: [deployment/worker]
  integrity_query: "%s"
%s]], url, harness.ROOT, h.dir, INTEGRITY, extra or ""))
  end

  -- Once: the sample schema with its data, a backup, the damage, a backup after it.
  local function prepare()
    harness.ROOT = harness.ROOT or exec.run({ "pwd" }).stdout:gsub("\n$", "")
    template = { db = "recovery_template", dir = exec.run({ "mktemp", "-d", "/tmp/tug-recovery-XXXXXX" }).stdout:gsub("%s+$", "") }
    admin:exec("CREATE DATABASE recovery_template OWNER app")
    url = server.app_url:gsub("/postgres$", "/recovery_template")
    local r = exec.run({ child.tug, "lua", harness.ROOT .. "/examples/multiship/migrate.lua", "deploy" },
      { env = { DATABASE_URL = url } })
    assert.are.equal(0, r.code, r.stderr)
    sql([[INSERT INTO users (email) VALUES ('a@multiship.com'), ('b@multiship.com')]])
    sql([[INSERT INTO orders (user_id, provider, total, updated_at)
      SELECT 1 + i % 2, 'easypost', i * 10, '2024-05-01T08:00:00Z' FROM generate_series(1, 20) i]])
    sql([[INSERT INTO shipments (order_id, carrier, tracking_number, updated_at)
      VALUES (1, 'USPS', 'T1', '2024-05-01T08:00:00Z')]])
    backup(template.dir, CLEAN)
    sql([[UPDATE orders SET total = -total, updated_at = '2024-05-01T10:30:00Z' WHERE id <= 5]])
    backup(template.dir, DAMAGED)
  end

  before_each(function()
    if not template then prepare() end
    count = count + 1
    local db = "recovery_" .. count
    admin:exec("CREATE DATABASE " .. db .. " TEMPLATE recovery_template OWNER app")
    url = server.app_url:gsub("/postgres$", "/" .. db)
    h = harness.new()
    write_env()
    exec.run({ "cp", "-r", template.dir, h.dir .. "/backups" }, { check = true })
    -- a writer: the worker that processes orders
    h.cluster:create({ apiVersion = "apps/v1", kind = "Deployment",
      metadata = { name = "worker", namespace = "multiship" },
      spec = { replicas = 2, selector = { matchLabels = { app = "worker" } },
        template = { metadata = { labels = { app = "worker" } },
          spec = { containers = { { name = "worker", image = "multiship/worker:v1.0.0" } } } } } })
  end)

  after_each(function() h:close() end)

  local function flag()
    local status, _, body = h.cluster:request({ method = "GET",
      path = "/svc/multiship/api-service/admin/features/read-only-mode",
      headers = { authorization = "Bearer sim-admin-token" } })
    if status == 404 then return nil end
    return json.decode(body).enabled
  end

  local function worker()
    local d = h.cluster:get("deployments", "multiship", "worker")
    return d.spec.replicas, d.metadata.annotations and d.metadata.annotations["multiship.tug/replicas-before-recovery"]
  end

  local function negative() return value("SELECT count(*) FROM orders WHERE total < 0") end

  local function state_of(r, step) return db.state_of(h, r, step) end
  local function logs(r) return db.logs(h, r) end
  local function backups() return db.backups(h.dir .. "/backups") end

  local RECOVER = { "run", "data-recovery", "--no-step", "--yes", "i_understand_data_loss=true",
    "tables=orders,shipments", "since=" .. SINCE }

  local function recover_args(extra)
    local args = {}
    for _, a in ipairs(RECOVER) do args[#args + 1] = a end
    for _, a in ipairs(extra or {}) do args[#args + 1] = a end
    return args
  end
  local function recover(extra) return h:tug(recover_args(extra)) end

  it("stops writes, assesses, restores the newest clean backup, verifies and resumes writes", function()
    local r = recover()
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local a = state_of(r, "assess the damage").assessment
    assert.are.same({ "orders", "shipments" }, a.tables)
    assert.are.equal(SINCE, a.since)
    assert.are.same({ rows = 20, changed_since = 5 }, a.counts.orders)
    assert.matches("now: integrity query: no_negative_totals is false", logs(r))
    -- the newest backup from before the damage, not the newest backup
    assert.are.equal(CLEAN, state_of(r, "choose the backup").backup.name)
    assert.matches("1%. " .. DAMAGED:gsub("%p", "%%%0") .. ".*%(taken after the damage started%)", logs(r))
    assert.are.equal(0, negative())
    assert.are.equal(20, value("SELECT count(*) FROM orders"))
    assert.are.equal(2, value("SELECT count(*) FROM users"))
    -- new orders continue after the restored ids
    sql([[INSERT INTO orders (user_id, provider, total) VALUES (1, 'shippo', 5)]])
    assert.are.equal(21, value("SELECT max(id) FROM orders"))
    -- the damaged state was backed up before it was replaced
    local files = backups()
    assert.are.equal(3, #files)
    assert.matches("before%-recovery", files[3])
    -- writes were stopped (the flag exists) and are on again; the worker is back
    assert.is_false(flag())
    local replicas, kept = worker()
    assert.are.equal(2, replicas)
    assert.is_nil(kept)
    assert.matches("integrity verified", logs(r))
    -- the damaged state backed up by the recovery is never offered as the clean backup
    r = h:tug({ "plan", "data-recovery", "tables=orders,shipments" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal(DAMAGED, state_of(r, "choose the backup").backup.name)
    assert.matches("before%-recovery.*%(the damaged state a recovery replaced%)", logs(r))
  end)

  it("refuses bad params before writes are stopped", function()
    local r = recover({ "since=last tuesday" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches('since: "last tuesday" is not a time PostgreSQL understands', h:run_end(r).reason)
    r = recover({ "tables=ordrs" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("tables: ordrs is not a table of the application %(orders, shipments, users%)", h:run_end(r).reason)
    r = recover({ "backup=nightly.dump" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("backup: nightly%.dump is not a backup in ", h:run_end(r).reason)
    assert.is_nil(flag())
    assert.are.equal(2, (worker()))
  end)

  it("refuses a backup whose checksum does not match; nothing is restored and writes stay stopped until resumed", function()
    local f = assert(io.open(h.dir .. "/backups/" .. CLEAN, "ab"))
    f:write("tampered")
    f:close()
    local r = recover()
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    local e = h:run_end(r)
    assert.matches("check that the backup restores cleanly", e.reason)
    assert.matches(CLEAN:gsub("%p", "%%%0") .. " does not restore cleanly: .*does not match its checksum", e.reason)
    assert.are.equal(5, negative())
    assert.is_true(flag())
    assert.are.equal(0, (worker()))
    assert.matches('writes stay stopped on sim; to resume them: tug run data%-recovery %-%-env sim %-%-from "resume operations"', logs(r))

    r = h:tug({ "run", "data-recovery", "--no-step", "--yes", "--from", "resume operations" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.is_false(flag())
    assert.are.equal(2, (worker()))
  end)

  it("refuses to restore a backup that holds the damage, found in a scratch database first", function()
    local r = recover({ "backup=" .. DAMAGED })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    local reason = h:run_end(r).reason
    assert.matches(DAMAGED:gsub("%p", "%%%0") .. " does not restore cleanly: query: column no_negative_totals is false", reason)
    assert.are.equal(5, negative())
    assert.matches("taken after the damage started: it may hold damaged data", logs(r))
  end)

  it("finds no clean backup when every backup is newer than the damage", function()
    local r = recover({ "since=2024-05-01T08:30:00Z" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("no backup in .* was taken before 2024%-05%-01T08:30:00Z: none is known to be clean",
      h:run_end(r).reason)
    assert.are.equal(5, negative())
  end)

  it("with --yes needs i_understand_data_loss=true to replace live data, and changes nothing without it", function()
    local r = h:tug({ "run", "data-recovery", "--no-step", "--yes", "tables=orders,shipments", "since=" .. SINCE })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("data%-recovery destroys data: with %-%-yes it also needs i_understand_data_loss=true",
      h:run_end(r).reason)
    assert.are.equal(5, negative())
    assert.are.equal(2, #backups())
  end)

  it("restores nothing when a table others reference is restored alone: the restore is all or nothing", function()
    local r = recover({ "tables=orders" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("cannot truncate a table referenced in a foreign key constraint", h:run_end(r).reason)
    assert.are.equal(5, negative())
    assert.are.equal(1, value("SELECT count(*) FROM shipments"))
  end)

  it("restores the whole database with scope=full, dropping tables created since the backup", function()
    sql([[CREATE TABLE audit_scratch (id int)]])
    local r = recover({ "scope=full" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal(0, negative())
    assert.is_false(value("SELECT to_regclass('audit_scratch') IS NOT NULL"))
    assert.matches("dropped tables created since: public%.audit_scratch", logs(r))
  end)

  it("plans a recovery: the flag, the scratch restore, the backup and the restore; changes nothing", function()
    local r = h:tug({ "plan", "data-recovery", "tables=orders,shipments", "since=" .. SINCE })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local text = h:changes(r)
    assert.matches('http: POST .*/admin/features', text)
    assert.matches("k8s: patch deployment multiship/worker", text)
    assert.matches("pg: verify .*" .. CLEAN:gsub("%p", "%%%0") .. " by restoring it into a scratch database", text)
    assert.matches("pg: dump .*before%-recovery", text)
    assert.matches("step: restore the rows of orders, shipments from .*" .. CLEAN:gsub("%p", "%%%0"), text)
    assert.is_nil(flag())
    assert.are.equal(2, (worker()))
    assert.are.equal(5, negative())
    assert.are.equal(2, #backups())
  end)

  it("resumes a recovery killed with -9 while it verifies: the data stays restored and writes resume", function()
    write_env("")
    local slow = "SELECT bool_and(total >= 0) AS no_negative_totals, pg_sleep(1) IS NOT NULL AS slow FROM orders"
    local run_id = runs.kill_when(h, recover_args({ "integrity_query=" .. slow }),
      function(e) return e.event == "step_start" and e.name == "verify integrity" end)
    assert.is_truthy(run_id)
    assert.is_true(flag())
    assert.are.equal(0, negative())
    local r = exec.run({ child.tug, "resume", run_id, "--no-step", "--yes", "--playbooks", harness.ROOT .. "/playbooks",
      "--output", "json" },
      { env = { CI = "true", TUG_ENVIRONMENTS = h.dir .. "/environments", TUG_HOME = h.dir .. "/.tug",
        GITHUB_ACTIONS = false }, timeout = 60 })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("succeeded", h:run_end(r).status)
    assert.is_false(flag())
    assert.are.equal(2, (worker()))
    assert.are.equal(0, negative())
  end)

  it("on a terminal asks before every step and records each answer as a decision", function()
    local socket = "tug-recovery-spec"
    finally(function() exec.run({ "tmux", "-L", socket, "kill-server" }) end)
    local screen, keys = db.terminal(h, socket, { "run", "data-recovery" })
    local seen = 0
    -- waits for text that appears after everything seen so far
    local function expect(text)
      assert.is_true(project.wait_for(function()
        local at = screen():find(text, seen + 1, true)
        if at then seen = at end
        return at ~= nil
      end), "waiting for " .. text .. " in:\n" .. screen())
    end
    expect("Next: stop writes")
    keys("r", "Enter")
    expect("Next: assess the damage")
    keys("r", "Enter")
    expect("Which tables hold damaged data?")
    keys("ordrs", "Enter")
    expect("tables: ordrs is not a table of the application")
    expect("Which tables hold damaged data?")
    keys("orders,shipments", "Enter")
    expect("Since when is the data damaged?")
    keys(SINCE, "Enter")
    expect("Run these queries?")
    keys("yes", "Enter")
    expect("Next: choose the backup")
    keys("r", "Enter")
    expect("Restore from which backup?")
    keys("Enter") -- the default: the newest clean one
    expect("Next: check that the backup restores cleanly")
    keys("r", "Enter")
    expect("Next: restore from the backup")
    keys("r", "Enter")
    expect("Type the environment's name (sim) to go ahead:")
    keys("sim", "Enter")
    expect("Next: verify integrity")
    keys("r", "Enter")
    expect("Next: resume operations")
    keys("r", "Enter")
    expect("EXIT=")
    assert.matches("EXIT=0", screen())
    assert.are.equal(0, negative())
    assert.is_false(flag())
    local runs = tug.sys.listdir(h.dir .. "/.tug/runs")
    local journal = assert(io.open(h.dir .. "/.tug/runs/" .. runs[1].name)):read("a")
    local answers = {}
    for _, d in ipairs(h:events({ stdout = journal }, "decision")) do answers[#answers + 1] = d.answer end
    assert.are.same({ "run", "run", "ordrs", "orders,shipments", SINCE, "yes", "run", CLEAN, "run", "run", "sim", "run",
      "run" },
      answers)
  end)

  it("on a terminal, aborting after writes stopped asks whether to resume them", function()
    local socket = "tug-recovery-spec"
    finally(function() exec.run({ "tmux", "-L", socket, "kill-server" }) end)
    local screen, keys = db.terminal(h, socket, { "run", "data-recovery" })
    local function expect(text)
      assert.is_true(project.wait_for(function() return screen():find(text, 1, true) end),
        "waiting for " .. text .. " in:\n" .. screen())
    end
    expect("Next: stop writes")
    keys("r", "Enter")
    expect("Next: assess the damage")
    assert.is_true(flag())
    assert.are.equal(0, (worker()))
    keys("a", "Enter")
    expect("Writes are still stopped on sim: resume them now? [keep-stopped/resume]")
    keys("resume", "Enter")
    expect("EXIT=")
    assert.matches("EXIT=4", screen())
    assert.is_false(flag())
    assert.are.equal(2, (worker()))
  end)
end)
