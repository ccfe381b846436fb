-- The preflight playbook end to end: the real tug binary against the simulated cluster
-- (staging's /health), the AWS fixture (ECR images and scans, signatures checked by
-- botocore), a real PostgreSQL holding Prisma's migration table, and copies of an
-- application repository (spec/fixtures/preflight/app). The checklist is read back from
-- the run's events, item by item, as an SRE would read the printed list.
package.path = "spec/support/?.lua;" .. package.path
local harness = require("playbook_harness")
local postgres = require("postgres")
local aws_fixture = require("aws_fixture")
local fixture = require("fixture")

local HUMAN = { "tests", "lint", "dependencies", "api_docs", "migration_guide", "runbooks", "migrations_tested",
  "backup_strategy", "rollback_plan", "data_migrations", "infrastructure_tested", "resource_limits",
  "scaling_policies", "alerts" }
local ALL_HUMAN = "confirmed=" .. table.concat(HUMAN, ",")

local PRISMA_TABLE = [[
CREATE TABLE "_prisma_migrations" (
    "id" VARCHAR(36) NOT NULL, "checksum" VARCHAR(64) NOT NULL, "finished_at" TIMESTAMPTZ,
    "migration_name" VARCHAR(255) NOT NULL, "logs" TEXT, "rolled_back_at" TIMESTAMPTZ,
    "started_at" TIMESTAMPTZ NOT NULL DEFAULT now(), "applied_steps_count" INTEGER NOT NULL DEFAULT 0,
    CONSTRAINT "_prisma_migrations_pkey" PRIMARY KEY ("id"));
INSERT INTO _prisma_migrations (id, checksum, migration_name, finished_at, applied_steps_count)
  VALUES ('a1', 'c1', '20240101120000_init', now(), 1);
]]

describe("the preflight playbook", function()
  local server, fx, h, dir, app

  setup(function()
    server = postgres.start()
    fx = aws_fixture.start()
    server:psql("CREATE DATABASE multiship")
    server:psql("CREATE DATABASE broken")
    server:psql(PRISMA_TABLE .. [[INSERT INTO _prisma_migrations (id, checksum, migration_name, finished_at,
      applied_steps_count) VALUES ('a2', 'c2', '20240115090000_add_orders', now(), 1);]], "multiship")
    -- add_orders started and neither finished nor was rolled back: a failed migration
    server:psql(PRISMA_TABLE .. [[INSERT INTO _prisma_migrations (id, checksum, migration_name, logs,
      applied_steps_count) VALUES ('a2', 'c2', '20240115090000_add_orders', 'ERROR: relation exists', 0);]], "broken")
  end)

  teardown(function()
    fx:stop()
    server:stop()
  end)

  local function db_url(name) return (server.url:gsub("/postgres$", "/" .. name)) end

  -- The environment a preflight runs in: ECR through the fixture, the database, and staging
  -- (the simulated cluster's api Service, which runs multiship/api:v2.1.0).
  local function full_env(overrides)
    overrides = overrides or {}
    return string.format([[
ecr_repository: multiship/api
aws: { endpoint_url: %s, region: us-east-1 }
database_url: %s
database: { migrations: prisma/migrations }
staging_url: %s/svc/multiship/api/
]], fx.url, overrides.database_url or db_url("multiship"), h.cluster.url)
  end

  before_each(function()
    h = harness.new()
    h:write_env(full_env())
    dir = h.dir
    app = dir .. "/app"
    exec.run({ "cp", "-r", harness.ROOT .. "/spec/fixtures/preflight/app", app }, { check = true })
  end)

  after_each(function() h:close() end)

  local AWS = { AWS_ACCESS_KEY_ID = aws_fixture.ACCESS_KEY, AWS_SECRET_ACCESS_KEY = aws_fixture.SECRET_KEY,
    AWS_SESSION_TOKEN = false, AWS_PROFILE = false, AWS_ENDPOINT_URL = false, AWS_REGION = false }

  local function preflight(args, env)
    local all = { "run", "preflight", "repo=" .. app }
    for _, a in ipairs(args) do all[#all + 1] = a end
    local vars = {}
    for k, v in pairs(AWS) do vars[k] = v end
    for k, v in pairs(env or {}) do vars[k] = v end
    return h:tug(all, { env = vars })
  end

  -- The printed checklist: item id -> { status, reason, line }.
  local function checklist(r)
    local items = {}
    for _, e in ipairs(h:events(r, "log")) do
      if e.fields and e.fields.item then
        items[e.fields.item] = { status = e.fields.status, reason = e.fields.reason, line = e.message }
      end
    end
    return items
  end

  local write = fixture.write

  it("passes when every check passes and people confirmed the rest, and prints the checklist", function()
    local summary = dir .. "/summary.md"
    local r = preflight({ "version=v2.1.0", ALL_HUMAN }, { GITHUB_ACTIONS = "true", GITHUB_STEP_SUMMARY = summary })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("succeeded", h:run_end(r).status)
    local items = checklist(r)
    local count = 0
    for id, it in pairs(items) do
      count = count + 1
      assert.are.equal("pass", it.status, id .. ": " .. tostring(it.reason))
    end
    assert.are.equal(20, count)
    assert.are.equal("  ✓ Code coverage at or above 90%: 93.4% of lines (coverage/coverage-summary.json)", items.coverage.line)
    assert.are.equal("multiship/api:v2.1.0 is in ECR", items.image.reason)
    assert.are.equal("no CRITICAL findings (nothing else)", items.security_scan.reason)
    assert.matches('CHANGELOG.md, "## %[2.1.0%] %- 2026%-10%-02" %(4 lines%)', items.release_notes.reason)
    assert.are.equal("1 pending: 20240301080000_add_user_preferences", items.pending_migrations.reason)
    assert.matches("/svc/multiship/api/health: v2.1.0 in 5 of 5 answers", items.staging.reason)
    assert.are.equal("confirmed on the command line", items.tests.reason)
    assert.matches("ready to deploy v2.1.0: all 20 items pass", r.stdout)
    -- ECR was asked with signed requests
    for _, req in ipairs(fx:requests()) do assert.is_true(req.verified, req.reason) end
    -- CI's job summary carries the checklist
    local f = assert(io.open(summary))
    local md = f:read("a")
    f:close()
    assert.matches("| ✓ | Staging runs v2.1.0 |", md, 1, true)
    assert.matches("**ready to deploy v2.1.0: all 20 items pass**", md, 1, true)
  end)

  it("fails naming every failed item: critical findings, staging on another version, coverage, release notes", function()
    exec.run({ "rm", app .. "/coverage/coverage-summary.json" }, { check = true })
    write(app .. "/coverage/lcov.info", "TN:\nSF:src/a.ts\nLF:120\nLH:100\nend_of_record\nSF:src/b.ts\nLF:80\nLH:70\nend_of_record\n")
    write(app .. "/CHANGELOG.md", "# Changelog\n\n## [2.2.0] - 2026-11-28\n\n## [2.1.0] - 2026-10-02\n- preferences\n")
    local r = preflight({ "version=v2.2.0", ALL_HUMAN .. ",coverage" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    local e = h:run_end(r)
    assert.are.equal("failed", e.status)
    assert.matches("not ready to deploy v2.2.0: 4 failed %(coverage, security_scan, release_notes, staging%)$", e.reason)
    local items = checklist(r)
    assert.are.equal("fail", items.coverage.status)
    -- a person's confirmed= does not turn a check tug made into a pass
    assert.are.equal("85.0% of lines (coverage/lcov.info), below 90% (tug checked it: confirmed= does not override a check)",
      items.coverage.reason)
    assert.are.equal("2 CRITICAL findings (and 5 HIGH, 1 LOW)", items.security_scan.reason)
    assert.are.equal('CHANGELOG.md has a heading for 2.2.0 ("## [2.2.0] - 2026-11-28") with nothing under it',
      items.release_notes.reason)
    assert.matches("staging answers with v2.1.0 %(5 of 5%), not only v2.2.0$", items.staging.reason)
    assert.matches("  ✗ Security scan passed %(no CRITICAL findings%): 2 CRITICAL", items.security_scan.line)
    assert.are.equal("pass", items.image.status)
  end)

  it("fails the migrations item with the reason when the database is unreachable or has a failed migration", function()
    h:write_env(full_env({ database_url = "postgresql://app:Unreachable-pw-77@127.0.0.1:1/multiship" }))
    local r = preflight({ "version=v2.1.0", ALL_HUMAN })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("1 failed %(pending_migrations%)$", h:run_end(r).reason)
    local items = checklist(r)
    assert.matches("^cannot read the database: pg: connecting to .*127%.0%.0%.1.*refused", items.pending_migrations.reason)
    assert.not_matches("Unreachable%-pw", r.stdout .. r.stderr)

    h:write_env(full_env({ database_url = db_url("broken") }))
    r = preflight({ "version=v2.1.0", ALL_HUMAN })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("^the database has failed migrations: 20240115090000_add_orders", checklist(r).pending_migrations.reason)
  end)

  it("fails the image items when the image is not in ECR or was never scanned", function()
    local r = preflight({ "version=v9.9.9", ALL_HUMAN })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    local items = checklist(r)
    assert.are.equal("multiship/api:v9.9.9 is not in ECR", items.image.reason)
    assert.are.equal("no image to scan", items.security_scan.reason)

    r = preflight({ "version=v2.0.0", ALL_HUMAN })
    items = checklist(r)
    assert.are.equal("pass", items.image.status)
    assert.matches("^no scan result: .*ScanNotFoundException", items.security_scan.reason)
  end)

  it("says why a check could not pass: no report, no notes, no migrations, a scan in progress, staging down", function()
    local empty = dir .. "/empty"
    exec.run({ "mkdir", "-p", empty }, { check = true })
    h:write_env(full_env():gsub("staging_url: [^\n]+", "staging_url: http://127.0.0.1:1"))
    local r = h:tug({ "run", "preflight", "version=v2.3.0-rc1", "repo=" .. empty, "scan_wait=0s", ALL_HUMAN }, { env = AWS })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    local items = checklist(r)
    assert.are.equal("no coverage report in " .. empty .. " (looked for coverage/coverage-summary.json and " ..
      "coverage/lcov.info)", items.coverage.reason)
    assert.matches("^no release notes for v2.3.0%-rc1: none of CHANGELOG.md, RELEASE_NOTES.md, ", items.release_notes.reason)
    assert.are.equal("no migrations directory " .. empty .. "/prisma/migrations (database.migrations)",
      items.pending_migrations.reason)
    assert.are.equal("the scan of multiship/api:v2.3.0-rc1 is IN_PROGRESS after 0s", items.security_scan.reason)
    assert.matches("^staging did not answer: GET http://127.0.0.1:1/health: connect", items.staging.reason)

    -- a report without line figures, notes in a file of their own, and an unhealthy staging
    h:write_env(full_env())
    write(app .. "/coverage/coverage-summary.json", '{"total": {"lines": {"total": 0, "covered": 0, "pct": "Unknown"}}}')
    exec.run({ "mkdir", "-p", app .. "/release-notes" }, { check = true })
    write(app .. "/release-notes/v2.1.0.md", "# Multiship 2.1.0\n\nPreferences for notifications.\n")
    h.cluster:fault({ type = "unhealthy", version = "v2.1.0", status = 503 })
    r = preflight({ "version=v2.1.0", "release_notes=release-notes/v2.1.0.md", ALL_HUMAN })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    items = checklist(r)
    assert.are.equal("coverage/coverage-summary.json reports no line coverage (total.lines.pct is Unknown)",
      items.coverage.reason)
    assert.are.equal('release-notes/v2.1.0.md, "# Multiship 2.1.0" (1 line)', items.release_notes.reason)
    assert.matches("^staging runs v2.1.0 but .*/health answered 503$", items.staging.reason)
    assert.matches("2 failed %(coverage, staging%)$", h:run_end(r).reason)

    r = preflight({ "version=v2.1.0", "repo=" .. dir .. "/nowhere" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("param 'repo': .*/nowhere is not a directory", h:run_end(r).reason)
  end)

  it("without a terminal, leaves unconfirmed items open and fails; --yes does not confirm them", function()
    -- an environment that names no registry and no staging: tug cannot tell those items
    h:write_env(string.format("database_url: %s\ndatabase: { migrations: prisma/migrations }\n", db_url("multiship")))
    local r = preflight({ "version=v2.1.0", "confirmed=tests,lint,image" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    local items = checklist(r)
    assert.are.equal("confirmed on the command line (tug cannot tell: the sim environment has no ecr_repository)",
      items.image.reason)
    assert.are.equal("pass", items.tests.status)
    assert.are.equal("unknown", items.staging.status)
    assert.are.equal("not confirmed (no terminal to ask on; affirm with confirmed=staging) (tug cannot tell: the sim " ..
      "environment has no staging_url)", items.staging.reason)
    assert.matches("  %? Dependencies updated: not confirmed", items.dependencies.line)
    assert.matches("not ready to deploy v2.1.0: 14 not confirmed %(security_scan, dependencies, ", h:run_end(r).reason)

    r = preflight({ "version=v2.1.0", "--yes" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.are.equal("not confirmed (--yes does not answer checklist items; affirm with confirmed=tests)",
      checklist(r).tests.reason)

    r = preflight({ "version=v2.1.0", "confirmed=tests,lnit" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("param 'confirmed': unknown item 'lnit' %(items: tests, coverage, lint,", h:run_end(r).reason)
  end)

  it("on a terminal, asks each item only a person can tell and records the answers", function()
    local env_args = { "-e", "CI=", "-e", "GITHUB_ACTIONS=", "-e", "TUG_ENVIRONMENTS=" .. dir .. "/environments",
      "-e", "TUG_HOME=" .. dir .. "/.tug" }
    for k, v in pairs(AWS) do
      if v then env_args[#env_args + 1] = "-e"; env_args[#env_args + 1] = k .. "=" .. v end
    end
    local command = string.format("%s run preflight version=v2.1.0 repo=%s --env sim --playbooks %s/playbooks " ..
      "--output plain; echo EXIT=$?; sleep 60", require("child").tug, app, harness.ROOT)
    local argv = { "tmux", "-L", "tug-preflight-spec", "new-session", "-d", "-x", "220", "-y", "50" }
    for _, a in ipairs(env_args) do argv[#argv + 1] = a end
    argv[#argv + 1] = command
    finally(function() exec.run({ "tmux", "-L", "tug-preflight-spec", "kill-server" }) end)
    exec.run(argv, { check = true })
    local function screen()
      return exec.run({ "tmux", "-L", "tug-preflight-spec", "capture-pane", "-p", "-J" }).stdout
    end
    local function wait_for(text)
      local deadline = time.monotonic() + 20
      while time.monotonic() < deadline do
        if screen():find(text, 1, true) then return true end
        task.sleep(0.02)
      end
      return false
    end
    local answers = { rollback_plan = "no", migration_guide = "n/a", data_migrations = "n/a" }
    local questions = {
      tests = "All tests pass", lint = "No linting errors", dependencies = "Dependencies updated",
      api_docs = "API documentation updated", migration_guide = "Migration guide created (for breaking changes)",
      runbooks = "Runbooks updated", migrations_tested = "Database migrations tested",
      backup_strategy = "Backup strategy verified", rollback_plan = "Rollback plan documented",
      data_migrations = "Data migration scripts ready", infrastructure_tested = "Infrastructure changes tested in staging",
      resource_limits = "Resource limits reviewed", scaling_policies = "Scaling policies updated",
      alerts = "Monitoring alerts configured",
    }
    for _, id in ipairs(HUMAN) do
      assert.is_true(wait_for("Preflight v2.1.0: " .. questions[id] .. "?"), screen())
      exec.run({ "tmux", "-L", "tug-preflight-spec", "send-keys", answers[id] or "yes", "Enter" }, { check = true })
    end
    assert.is_true(wait_for("EXIT="), screen())
    local text = screen()
    assert.matches("EXIT=1", text)
    assert.matches("not ready to deploy v2.1.0: 1 failed %(rollback_plan%)", text)
    assert.matches("✗ Rollback plan documented: answered no", text)
    assert.matches("✓ Migration guide created %(for breaking changes%): not applicable %(answered n/a%)", text)
    -- every answer is in the journal
    local runs = exec.run({ "sh", "-c", "ls " .. dir .. "/.tug/runs/*.jsonl" }).stdout:gsub("\n$", "")
    local decisions = {}
    for line in io.lines(runs) do
      local e = json.decode(line)
      if e.event == "decision" then decisions[#decisions + 1] = e.answer end
    end
    assert.are.equal(14, #decisions)
    assert.are.equal("no", decisions[9])
  end)

  it("plans: runs the checks, lists the questions it would ask, and changes nothing", function()
    local r = h:tug({ "plan", "preflight", "version=v2.1.0", "repo=" .. app }, { env = AWS })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("planned", h:run_end(r).status)
    local changes = h:changes(r)
    local asked = 0
    for line in changes:gmatch("[^\n]+") do
      assert.matches("^confirm: would ask: Preflight v2%.1%.0: ", line)
      asked = asked + 1
    end
    assert.are.equal(14, asked)
    local items = checklist(r)
    assert.are.equal("pass", items.security_scan.status)
    assert.are.equal("would ask", items.tests.reason)
    assert.matches("plan: not ready to deploy v2.1.0: 14 to ask", r.stdout)
    -- nothing was journaled and the database is as it was
    assert.are.equal("", exec.run({ "sh", "-c", "ls " .. dir .. "/.tug/runs 2>/dev/null" }).stdout)
    assert.are.equal("2", (server:psql("SELECT count(*) FROM _prisma_migrations", "multiship"):gsub("%s+", "")))
  end)
end)
