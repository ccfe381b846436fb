-- migrate-rollback: the seed's database rollback (`pnpm db:migrate:rollback
-- --to-version=20240101_120000`), which it marks destructive. Show what will be lost (the
-- migrations to undo, their down.sql, the rows of what they drop), make the person type
-- the environment's name (CI: --yes and i_understand_data_loss=true), back up, roll back
-- under the migration lock, and verify that the database is at the target version.
local database = require("database")

-- Keywords matched whatever their case: ci("drop table") -> "[Dd][Rr][Oo][Pp] [Tt]...".
local function ci(words)
  return (words:gsub("%a", function(c) return "[" .. c:upper() .. c:lower() .. "]" end))
end

local IDENT = '"?([%w_]+)"?'

-- What a down.sql throws away, as sentences: the rows of the tables it drops, the values
-- of the columns it drops. Counting gives up after 5 s and uses the planner's estimate.
local function losses(conn, sql)
  local out = {}
  local function exists(t)
    return conn:value({ "SELECT to_regclass($1) IS NOT NULL", read_only = true }, pg.quote_ident(t))
  end
  local function count(what, query, t)
    local ok, n = pcall(conn.value, conn, { query, timeout = "5s", read_only = true })
    if ok then
      local unit = what:match("column") and "value" or "row"
      out[#out + 1] = string.format("%s (%d %s%s)", what, n, unit, n == 1 and "" or "s")
    else
      local estimate = conn:value({ "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass($1)",
        read_only = true }, pg.quote_ident(t))
      out[#out + 1] = string.format("%s (about %s rows)", what, tostring(estimate or "?"))
    end
  end
  for statement in (sql .. ";"):gmatch("([^;]+);") do
    local s = statement:gsub("%-%-[^\n]*", ""):gsub("%s+", " "):gsub("^ ", ""):gsub(ci("if exists") .. " ", "")
    local tables = s:match("^" .. ci("drop table") .. " (.*)$")
    if tables then
      for t in (tables:gsub(" " .. ci("cascade") .. ".*$", "") .. ","):gmatch(" ?" .. IDENT .. " ?,") do
        if exists(t) then count("drops table " .. t, "SELECT count(*) FROM " .. pg.quote_ident(t), t) end
      end
    end
    local t, c = s:match("^" .. ci("alter table") .. " " .. IDENT .. " " .. ci("drop column") .. " " .. IDENT)
    if t and exists(t) and conn:value({ [[SELECT count(*) > 0 FROM information_schema.columns
        WHERE table_name = $1 AND column_name = $2]], read_only = true }, t, c) then
      count(string.format("drops column %s.%s", t, c), string.format("SELECT count(%s) FROM %s",
        pg.quote_ident(c), pg.quote_ident(t)), t)
    end
  end
  return out
end

local function statements(sql)
  local out = {}
  for statement in (sql .. ";"):gmatch("([^;]+);") do
    local s = statement:gsub("%-%-[^\n]*", ""):gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")
    if s ~= "" then out[#out + 1] = s .. ";" end
  end
  return out
end

return playbook {
  description = "DESTRUCTIVE: roll the database back to a migration; shows what is lost, asks for the environment's name",
  params = {
    to_version = { type = "string", required = true, pattern = "^[%w_]+$",
      help = "an applied migration: its name, its timestamp (20240101120000) or 20240101_120000" },
    i_understand_data_loss = { type = "boolean", default = false,
      help = "with --yes (CI), accept the data loss without typing the environment's name" },
    lock_timeout = { type = "duration", default = "5m", help = "how long to wait for another migrator's lock" },
    rollback_timeout = { type = "duration", default = "30m" },
    verify_within = { type = "duration", default = "1m", help = "how long /api/health/database may take to pass" },
    restore_on_failure = { type = "boolean", default = false,
      help = "if the rollback fails, restore the backup (the answer under --yes; asked otherwise)" },
  },
  lock = "database",
  steps = {
    step "work out what the rollback undoes" {
      read_only = true,
      run = function(ctx)
        local conn <close> = database.connect(ctx)
        local s = database.status(conn, ctx.env)
        local failed = database.failure_of(s)
        if failed then
          error(string.format("migration %s failed and was never resolved: resolve it (prisma migrate resolve) " ..
            "before rolling back", failed.name), 0)
        end
        local target, index = database.resolve_version(s, ctx.params.to_version)
        if not target then
          error(string.format("to_version: %s is not an applied migration on %s (applied: %s)", ctx.params.to_version,
            ctx.env.name, #s.applied > 0 and table.concat(s.applied, ", ") or "none"), 0)
        end
        ctx.state.target = target
        database.command(ctx.env, "rollback", { version = target, timestamp = target:match("^%d+") })
        ctx.state.before = { latest = s.latest, applied = s.applied }
        local undo = {}
        for i = #s.applied, index + 1, -1 do
          local name = s.applied[i]
          local down = database.down_sql(ctx.env, name)
          if not down then
            error(string.format("%s has no down.sql in %s: a rollback cannot undo it", name,
              ctx.env.database.migrations), 0)
          end
          undo[#undo + 1] = { name = name, statements = statements(down), losses = losses(conn, down) }
        end
        ctx.state.undo = undo
        if #undo == 0 then
          ctx.log.info(string.format("%s is already at %s: nothing to roll back", ctx.env.name, target))
          return
        end
        for _, m in ipairs(undo) do
          ctx.log.warn(string.format("undo %s: %s", m.name, table.concat(m.statements, " ")))
          for _, loss in ipairs(m.losses) do ctx.log.warn("  " .. m.name .. " " .. loss) end
        end
      end,
    },

    step "confirm the data loss" {
      read_only = true,
      when = function(ctx) return #ctx.state.undo > 0 end,
      run = function(ctx)
        local names, lost = {}, {}
        for _, m in ipairs(ctx.state.undo) do
          names[#names + 1] = m.name
          for _, loss in ipairs(m.losses) do lost[#lost + 1] = loss end
        end
        local summary = string.format("Rolling %s back from %s to %s undoes %s; it %s.", ctx.env.name,
          ctx.state.before.latest, ctx.state.target, table.concat(names, ", "),
          #lost > 0 and table.concat(lost, ", ") or "drops no table or column the database has")
        database.confirm_data_loss(ctx, summary)
      end,
    },

    step "back up the database" {
      when = function(ctx) return #ctx.state.undo > 0 end,
      run = function(ctx)
        ctx.state.backup = database.backup(ctx, "before-rollback")
      end,
    },

    step "roll back under the migration lock" {
      when = function(ctx) return #ctx.state.undo > 0 end,
      run = function(ctx)
        local target = ctx.state.target
        database.run_under_lock(ctx, "rollback", { version = target, timestamp = target:match("^%d+") },
          { lock_timeout = ctx.params.lock_timeout, timeout = ctx.params.rollback_timeout,
            what = "the rollback to " .. target })
      end,
    },

    step "verify the database is at the target version" {
      read_only = true,
      run = function(ctx)
        database.verify(ctx, ctx.params.verify_within, function(s)
          if #s.failed > 0 then error("failed migrations: " .. table.concat(s.failed, ", "), 0) end
          if s.latest ~= ctx.state.target then
            error(string.format("the database is at %s, not %s", tostring(s.latest), ctx.state.target), 0)
          end
        end)
      end,
    },
  },
}
