-- data-recovery: the seed's Data Recovery emergency procedure, as an on-call runbook that
-- asks before every step. 1 stop writes (prevent further corruption), 2 assess the damage
-- (which tables, since when, how many rows), 3 restore from the most recent clean backup
-- (chosen from the backups, checked in a scratch database first, the damaged state backed
-- up before it is replaced), 4 verify integrity, 5 resume operations. Every answer is a
-- decision in the journal.
--
-- Writes stay stopped when a step fails: re-enabling them on data that is still wrong is
-- what the procedure exists to prevent. The undo of "stop writes" asks (resume or keep;
-- keep under --yes), and "resume operations" needs nothing from the run, so
-- `tug run data-recovery --from "resume operations" --no-step` resumes writes later.
local database = require("database")

local function split(text)
  local out = {}
  for word in text:gmatch("[^,%s]+") do out[#out + 1] = word end
  return out
end

-- The application's tables: every table of the public schema but the migrations table.
local function app_tables(conn)
  local out = {}
  for _, r in ipairs(conn:query([[SELECT tablename FROM pg_tables
    WHERE schemaname = 'public' AND tablename <> '_prisma_migrations' ORDER BY 1]])) do
    out[#out + 1] = r.tablename
  end
  return out
end

local function has_column(conn, t, c)
  return conn:value([[SELECT count(*) > 0 FROM information_schema.columns
    WHERE table_schema = 'public' AND table_name = $1 AND column_name = $2]], t, c)
end

-- An answer naming tables: the list, or nil and what is wrong with it.
local function check_tables(known, answer)
  if answer == "all" then return known end
  local is_known, unknown = {}, {}
  for _, t in ipairs(known) do is_known[t] = true end
  local tables = split(answer)
  for _, t in ipairs(tables) do if not is_known[t] then unknown[#unknown + 1] = t end end
  if #unknown == 0 and #tables > 0 then return tables end
  return nil, string.format("tables: %s is not a table of the application (%s)",
    #unknown > 0 and table.concat(unknown, ", ") or "nothing", table.concat(known, ", "))
end

-- An answer giving a time: "unknown", or the time in UTC as PostgreSQL reads it.
local function check_since(conn, answer)
  if answer == "unknown" then return answer end
  local ok, iso = pcall(conn.value, conn, { "SELECT $1::timestamptz", read_only = true }, answer)
  if ok and iso then return iso end
  return nil, string.format("since: %q is not a time PostgreSQL understands (such as 2024-05-01T10:00:00Z)", answer)
end

-- Asks until check accepts the answer (three times at most); under --yes or a plan the
-- default must pass at once.
local function ask_valid(ctx, question, default, check)
  for _ = 1, 3 do
    local answer = ctx:ask(question, { default = default }) or default
    local value, problem = check(answer)
    if value then return value end
    if ctx.yes or ctx.plan then error(problem, 0) end
    ctx.log.warn(problem)
  end
  error("no valid answer to \"" .. question .. "\" after three tries", 0)
end

local function integrity_query(ctx)
  local q = ctx.params.integrity_query
  if q == "" then q = ctx.env.database and ctx.env.database.integrity_query or "" end
  return q
end

return playbook {
  description = "runbook: stop writes, assess the damage, restore from the last clean backup, verify, resume",
  step_by_step = true,
  params = {
    tables = { type = "list", default = "", help = "the damaged tables (asked; default: every table)" },
    since = { type = "string", default = "", help = "when the damage started, UTC (asked; default: unknown)" },
    backup = { type = "string", default = "",
      help = "the backup to restore (asked; default: the newest one from before `since`)" },
    scope = { type = "enum", values = { "tables", "full" }, default = "tables",
      help = "tables: replace the damaged tables' rows; full: restore the whole database" },
    integrity_query = { type = "string", default = "", help = "SQL that must pass afterwards (default: the environment's)" },
    i_understand_data_loss = { type = "boolean", default = false,
      help = "with --yes, accept replacing live data without typing the environment's name" },
    verify_within = { type = "duration", default = "1m" },
  },
  lock = "database",
  steps = {
    step "stop writes" {
      run = function(ctx)
        -- params given on the command line are checked before anything changes
        local conn <close> = database.connect(ctx)
        if #ctx.params.tables > 0 then
          local ok, problem = check_tables(app_tables(conn), table.concat(ctx.params.tables, ","))
          if not ok then error(problem, 0) end
        end
        if ctx.params.since ~= "" then
          local ok, problem = check_since(conn, ctx.params.since)
          if not ok then error(problem, 0) end
        end
        if ctx.params.backup ~= "" then
          local found = false
          for _, b in ipairs(database.backups(ctx.env)) do
            found = found or b.name == ctx.params.backup or b.file == ctx.params.backup
          end
          if not found then
            error(string.format("backup: %s is not a backup in %s", ctx.params.backup, database.backup_dir(ctx.env)), 0)
          end
        end
        conn:close()
        ctx.state.writes = database.stop_writes(ctx)
      end,
      undo = function(ctx)
        local ok, answer = pcall(ctx.ask, ctx, "The recovery stopped. Writes are still stopped on {env}: resume them now?",
          { choices = { "keep-stopped", "resume" }, default = "keep-stopped" })
        if not ok and database.cancelled(answer) then error(answer, 0) end
        if ok and answer == "resume" then
          database.resume_writes(ctx)
        else
          ctx.log.warn(string.format("writes stay stopped on %s; to resume them: tug run data-recovery --env %s " ..
            "--from \"resume operations\" --no-step", ctx.env.name, ctx.env.name))
        end
      end,
    },

    step "assess the damage" {
      read_only = true,
      run = function(ctx)
        local conn <close> = database.connect(ctx)
        local known = app_tables(conn)
        local tables = ask_valid(ctx, "Which tables hold damaged data? (comma-separated, or all; tables: " ..
          table.concat(known, ", ") .. ")", #ctx.params.tables > 0 and table.concat(ctx.params.tables, ",") or "all",
          function(answer) return check_tables(known, answer) end)
        local since = ask_valid(ctx, "Since when is the data damaged? (a UTC time such as 2024-05-01T10:00:00Z, or unknown)",
          ctx.params.since ~= "" and ctx.params.since or "unknown", function(answer) return check_since(conn, answer) end)
        -- the counting queries, shown before they run
        local queries = {}
        for _, t in ipairs(tables) do
          local q = { table = t, total = "SELECT count(*) FROM " .. pg.quote_ident(t) }
          if since ~= "unknown" then
            local column = has_column(conn, t, "updated_at") and "updated_at"
              or has_column(conn, t, "created_at") and "created_at"
            if column then
              q.changed = string.format("SELECT count(*) FROM %s WHERE %s >= '%s'", pg.quote_ident(t),
                pg.quote_ident(column), since)
            end
          end
          queries[#queries + 1] = q
        end
        local shown = {}
        for _, q in ipairs(queries) do
          shown[#shown + 1] = q.total .. ";"
          if q.changed then shown[#shown + 1] = q.changed .. ";" end
        end
        local go = ctx:ask("Count the rows with: " .. table.concat(shown, " ") .. " Run these queries?",
          { choices = { "yes", "no" }, default = "yes" }) or "yes"
        local counts = {}
        if go == "yes" then
          for _, q in ipairs(queries) do
            local c = { rows = conn:value({ q.total, read_only = true }) }
            if q.changed then c.changed_since = conn:value({ q.changed, read_only = true }) end
            counts[q.table] = c
            ctx.log.info(string.format("%s: %d row%s%s", q.table, c.rows, c.rows == 1 and "" or "s",
              c.changed_since and string.format(", %d changed since %s", c.changed_since, since) or ""))
          end
        end
        local ok, sentence = database.integrity(conn, integrity_query(ctx))
        if integrity_query(ctx) ~= "" then
          ctx.log[ok and "info" or "warn"]("now: " .. sentence)
        end
        ctx.state.assessment = { tables = tables, since = since ~= "unknown" and since or nil, counts = counts,
          integrity_now = sentence }
      end,
    },

    step "choose the backup" {
      read_only = true,
      run = function(ctx)
        local a = ctx.state.assessment
        local backups = database.backups(ctx.env)
        if #backups == 0 then error("no backups in " .. database.backup_dir(ctx.env), 0) end
        local by_name, names, newest_clean = {}, {}, nil
        for i, b in ipairs(backups) do
          -- a recovery backs the damaged state up before replacing it: never a clean one
          b.replaced = b.name:match("%-before%-recovery%-") ~= nil
          b.clean = not b.replaced and (not a.since or database.second(b.taken_at) < database.second(a.since))
          if b.clean and not newest_clean then newest_clean = b end
          by_name[b.name], by_name[b.file] = b, b
          if i <= 10 then
            names[#names + 1] = b.name
            ctx.log.info(string.format("%d. %s  taken %s  sha256 %s%s", i, b.name, b.taken_at,
              b.checksum and b.checksum:sub(1, 12) .. "..." or "not recorded",
              b.replaced and "  (the damaged state a recovery replaced)"
                or b.clean and "" or "  (taken after the damage started)"))
          end
        end
        local default = ctx.params.backup ~= "" and ctx.params.backup or (newest_clean and newest_clean.name)
        if not default then
          error(string.format("no backup in %s was taken before %s: none is known to be clean",
            database.backup_dir(ctx.env), a.since or "the damage"), 0)
        end
        if not by_name[default] then
          error(string.format("backup: %s is not a backup in %s (%s)", default, database.backup_dir(ctx.env),
            table.concat(names, ", ")), 0)
        end
        default = by_name[default].name
        local choices, listed = {}, false
        for _, n in ipairs(names) do
          choices[#choices + 1] = n
          listed = listed or n == default
        end
        if not listed then choices[#choices + 1] = default end
        local chosen = by_name[ctx:ask("Restore from which backup?", { choices = choices, default = default }) or default]
        if not chosen.clean then
          ctx.log.warn(chosen.name .. (chosen.replaced and " holds the damaged state a recovery replaced"
            or " was taken after the damage started: it may hold damaged data"))
        end
        if not chosen.checksum then
          ctx.log.warn(chosen.name .. " has no recorded checksum (" .. chosen.name .. ".sha256): its integrity is unknown")
        end
        ctx.state.backup = { file = chosen.file, name = chosen.name, taken_at = chosen.taken_at,
          checksum = chosen.checksum }
      end,
    },

    step "check that the backup restores cleanly" {
      read_only = true, -- a scratch database, dropped afterwards
      run = function(ctx)
        local b, a = ctx.state.backup, ctx.state.assessment
        local r = pg.verify_restore(b.file, { url = ctx.env.database.scratch_url or ctx.env.database_url,
          tables = a.tables, checksum = b.checksum, query = integrity_query(ctx) ~= "" and integrity_query(ctx) or nil,
          timeout = "1h" })
        if not r.ok then
          error(string.format("%s does not restore cleanly: %s", b.name, table.concat(r.failures, "; ")), 0)
        end
        ctx.state.backup_rows = r.tables
        if not ctx.plan then
          local counts = {}
          for _, t in ipairs(a.tables) do counts[#counts + 1] = string.format("%s %d rows", t, r.tables[t] or 0) end
          ctx.log.info(string.format("%s restores cleanly in a scratch database: %s", b.name, table.concat(counts, ", ")))
        end
      end,
    },

    step "restore from the backup" {
      run = function(ctx)
        local b, a = ctx.state.backup, ctx.state.assessment
        local full = ctx.params.scope == "full"
        database.confirm_data_loss(ctx, string.format("Restoring %s on %s from %s (taken %s) replaces %s; " ..
          "everything written since then is lost (the current state is backed up first).",
          full and "the whole database" or ("the rows of " .. table.concat(a.tables, ", ")), ctx.env.name,
          b.name, b.taken_at, full and "every table" or "those tables' rows"))
        ctx.state.damaged = database.backup(ctx, "before-recovery")
        ctx.state.restore = database.restore(ctx, b, { tables = not full and a.tables or nil })
      end,
    },

    step "verify integrity" {
      read_only = true,
      run = function(ctx)
        if ctx.plan then return end
        local a = ctx.state.assessment
        local conn <close> = database.connect(ctx)
        local problems = {}
        for _, t in ipairs(a.tables) do
          local want = ctx.state.backup_rows and ctx.state.backup_rows[t]
          local n = conn:value("SELECT count(*) FROM " .. pg.quote_ident(t))
          if want and n ~= want then
            problems[#problems + 1] = string.format("%s has %d rows, the backup %d", t, n, want)
          end
        end
        local ok, sentence = database.integrity(conn, integrity_query(ctx))
        if not ok then problems[#problems + 1] = sentence end
        local s = database.status(conn, ctx.env)
        if #s.failed > 0 then problems[#problems + 1] = "failed migrations: " .. table.concat(s.failed, ", ") end
        if #problems > 0 then error("after the restore: " .. table.concat(problems, "; "), 0) end
        database.check_api(ctx, ctx.params.verify_within)
        ctx.log.info(string.format("integrity verified: the row counts match the backup, %s, the database is %s",
          sentence, database.describe(s)))
      end,
    },

    step "resume operations" {
      run = function(ctx)
        database.resume_writes(ctx)
      end,
    },
  },
}
