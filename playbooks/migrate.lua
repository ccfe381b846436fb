-- migrate: the seed's database migration (`pnpm prisma:migrate:deploy` in the migrator, then
-- /api/health/database). Read what is applied and what is pending, back the database up,
-- run the migrator while holding the migration lock, and verify that every migration of
-- the repository is applied and the API reaches its database.
--
-- A migration that fails is not undone behind anyone's back: with Prisma it is usually
-- fixed forward (repair, then `prisma migrate resolve`), and restoring the backup on a
-- live database also throws away every write made since it was taken. So the run stops
-- and asks: keep the database as the migrator left it (the default, and the answer under
-- --yes) or restore the backup (restore_on_failure=true makes that the answer under --yes).
local database = require("database")

return playbook {
  description = "back up, run the pending database migrations under the migration lock, verify",
  params = {
    lock_timeout = { type = "duration", default = "5m", help = "how long to wait for another migrator's lock" },
    migrate_timeout = { type = "duration", default = "30m", help = "how long the migrator may run" },
    verify_within = { type = "duration", default = "1m", help = "how long /api/health/database may take to pass" },
    restore_on_failure = { type = "boolean", default = false,
      help = "if the migration fails, restore the backup (the answer under --yes; asked otherwise)" },
  },
  lock = "database",
  steps = {
    step "read the applied migrations" {
      read_only = true,
      run = function(ctx)
        database.command(ctx.env, "migrate") -- a mistake in the environment stops the run here
        local conn <close> = database.connect(ctx)
        local s = database.status(conn, ctx.env)
        ctx.state.before = { latest = s.latest, applied = s.applied, pending = s.pending }
        local failed = database.failure_of(s)
        if failed then
          error(string.format("migration %s failed on %s and was never resolved (%s): repair the database, " ..
            "then mark it rolled back or applied (prisma migrate resolve) before migrating again",
            failed.name, tostring(failed.started_at), (failed.logs or "no log"):match("[^\n]*")), 0)
        end
        local known = {}
        for _, name in ipairs(database.migration_names(ctx.env)) do known[name] = true end
        for _, name in ipairs(s.applied) do
          if not known[name] then
            ctx.log.warn(name .. " is applied in the database but not in " .. ctx.env.database.migrations)
          end
        end
        if #s.pending == 0 then
          ctx.log.info("nothing to migrate: the database is " .. database.describe(s))
        else
          ctx.log.info(string.format("the database is %s; to apply: %s", database.describe(s),
            table.concat(s.pending, ", ")))
        end
      end,
    },

    step "back up the database" {
      when = function(ctx) return #ctx.state.before.pending > 0 end,
      run = function(ctx)
        ctx.state.backup = database.backup(ctx, "before-migrate")
      end,
    },

    step "apply the pending migrations under the migration lock" {
      when = function(ctx) return #ctx.state.before.pending > 0 end,
      run = function(ctx)
        database.run_under_lock(ctx, "migrate", nil, { lock_timeout = ctx.params.lock_timeout,
          timeout = ctx.params.migrate_timeout, what = "the migration",
          explain = function(err)
            -- the database says which migration failed and why
            local conn <close> = database.connect(ctx)
            local failed = database.failure_of(database.status(conn, ctx.env))
            return failed and string.format("migration %s failed: %s", failed.name,
              (failed.logs or "no log"):match("[^\n]*")) or tostring(type(err) == "table" and err.message or err)
          end })
      end,
    },

    step "verify the migrations and the database's health" {
      read_only = true,
      run = function(ctx)
        database.verify(ctx, ctx.params.verify_within, function(s)
          ctx.state.applied = pg.migrations.diff({ applied = ctx.state.before.applied }, s).applied
          local failed = database.failure_of(s)
          if failed then error("migration " .. failed.name .. " failed: " .. (failed.logs or "no log"):match("[^\n]*"), 0) end
          if #s.pending > 0 then error("not applied: " .. table.concat(s.pending, ", "), 0) end
        end)
      end,
    },
  },
}
