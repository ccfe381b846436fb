-- database-issues: the on-call runbook for the database (the seed's critical alert
-- "database connection failures" and its database metrics: slow queries under 5%, the
-- connection pool under 80%, replication lag under 100 ms; the environment's
-- thresholds.database). Assess what the API reports at /api/health/database and what
-- PostgreSQL itself shows (connections, blocked and long-running sessions, slow queries,
-- replication); page and post status; mitigate by cancelling or terminating the session
-- that blocks the others (after a confirmation: neither can be undone) or by scaling the
-- API down to relieve the pool; investigate; verify; scale back up; resolve.
--
-- It connects with database.admin_url when the environment has one (a role that may
-- signal other sessions), else database_url. Failing over to a standby is not offered:
-- promoting a replica belongs to the database's own manager (RDS, Patroni), which tug
-- does not drive. Damaged data is the data-recovery runbook's: it stops writes, restores
-- from a backup and resumes.
local multiship = require("multiship")
local incident = require("incident")

local MITIGATIONS = { "cancel", "terminate", "scale-down", "none" }

local function database_url(env)
  local url = type(env.database) == "table" and env.database.admin_url or env.database_url
  if not url then
    error("the " .. env.name .. " environment has no database_url (or database.admin_url)", 0)
  end
  return url
end

local function connect(ctx)
  return pg.connect(database_url(ctx.env), { application_name = "tug " .. ctx.playbook, connect_timeout = 5,
    timeout = "30s" })
end

local function limits(env)
  local t = incident.thresholds(env).database
  return { slow_share = t.slow_share, utilisation = t.utilisation,
    replication_lag = t.replication_lag_ms and t.replication_lag_ms / 1000 or nil }
end

local function excerpt(query)
  query = (query or ""):gsub("%s+", " ")
  return #query > 80 and (query:sub(1, 77) .. "...") or query
end

local function describe_session(s)
  return string.format("session %d (%s, %s, %s for %.0fs%s): %s", s.pid, s.user or "?", s.application_name or "?",
    s.state or "?", s.seconds or 0, s.blocks > 0 and (", blocking " .. s.blocks) or "", excerpt(s.query))
end

-- The sessions worth ending, worst first: those that block others without waiting
-- themselves (by how many they block), then statements and transactions running for
-- longer than min_duration.
local function suspects(conn, blocked, min_duration)
  local waiting, blocks = {}, {}
  for _, b in ipairs(blocked) do
    waiting[b.pid] = true
    for _, pid in ipairs(b.blocked_by) do blocks[pid] = (blocks[pid] or 0) + 1 end
  end
  local roots = {}
  for pid in pairs(blocks) do
    if not waiting[pid] then roots[#roots + 1] = pid end
  end
  local out, seen = {}, {}
  if #roots > 0 then
    local rows = conn:query({ [[
SELECT pid, usename AS user, application_name, state,
       extract(epoch FROM now() - coalesce(xact_start, query_start))::float8 AS seconds, left(query, 1000) AS query
  FROM pg_stat_activity WHERE pid = ANY($1)]], read_only = true }, pg.array(roots))
    for _, r in ipairs(rows) do
      r.blocks = blocks[r.pid]
      out[#out + 1] = r
      seen[r.pid] = true
    end
    table.sort(out, function(a, b) return a.blocks > b.blocks end)
  end
  for _, r in ipairs(pg.health.long_running(conn, { min_duration = min_duration })) do
    if not seen[r.pid] and not waiting[r.pid] then
      out[#out + 1] = { pid = r.pid, user = r.user, application_name = r.application_name, state = r.state,
        seconds = math.max(r.seconds or 0, r.transaction_seconds or 0), query = r.query, blocks = 0 }
      seen[r.pid] = true
    end
  end
  return out
end

local function session_of(ctx)
  for _, s in ipairs(ctx.state.sessions or {}) do
    if s.pid == ctx.state.pid then return s end
  end
end

-- Waits up to `within` seconds for fn(conn) to be true; returns whether it became true.
local function wait_until(conn, within, fn)
  local deadline = time.monotonic() + within
  while not fn(conn) do
    if time.monotonic() >= deadline then return false end
    task.sleep(0.2)
  end
  return true
end

-- The chosen session once the operator confirms `question` about it (%s: the session),
-- else an error saying what was `doing`; nil under tug plan, which shows the call that
-- would end it.
local function confirmed_session(ctx, question, doing, call)
  local s = session_of(ctx)
  if not ctx:confirm(string.format(question, describe_session(s))) then
    error(doing .. " session " .. s.pid .. " was not confirmed", 0)
  end
  if ctx:would(call .. "(" .. s.pid .. ")") then return nil end
  return s
end

-- Sends pg_cancel_backend or pg_terminate_backend (`call`) to a session.
local function signal(conn, call, pid)
  if not conn:value("SELECT " .. call .. "($1)", pid) then
    error("session " .. pid .. " is gone, or this role may not signal it", 0)
  end
end

local function still_blocking(conn, pid)
  for _, b in ipairs(pg.health.blocked(conn)) do
    for _, p in ipairs(b.blocked_by) do
      if p == pid then return true end
    end
  end
  return false
end

return playbook {
  description = "when the database fails: end the session blocking the others or relieve the pool, verify",
  step_by_step = true,
  params = incident.params({ "rollout_timeout" }, {
    mitigation = { type = "enum", values = MITIGATIONS, help = "answers \"Mitigation?\"" },
    pid = { type = "integer", min = 1, help = "answers \"Which session?\" (a pid from the assessment)" },
    deployment = { type = "string", default = "api", help = "the API's Deployment, scaled down to relieve the pool" },
    replicas = { type = "integer", min = 0, help = "replicas to scale the API down to (default: half, at least 1)" },
    long_running = { type = "duration", default = "5m", help = "how long a statement or transaction runs to be a suspect" },
    verify_within = { type = "duration", default = "1m", help = "how long the database may take to be healthy again" },
  }),
  lock = "database",
  steps = {
    step "assess the database" {
      read_only = true,
      run = function(ctx)
        local url = database_url(ctx.env)
        local api = incident.probe(multiship.api_url(ctx.env), { "/api/health/database" })[1]
        ctx.state.api_ok = api.ok
        if api.ok then
          local pool = api.doc and api.doc.pool
          ctx.log.info("the API reaches the database" .. (type(pool) == "table" and
            string.format(" (pool: %s of %s idle, %s waiting)", tostring(pool.idle), tostring(pool.total),
              tostring(pool.waiting)) or ""))
        else
          incident.finding(ctx, "the API reports its database: " .. api.reason)
        end
        local ping = pg.health.ping(url, { timeout = 5 })
        ctx.state.reachable = ping.ok
        if not ping.ok then
          incident.finding(ctx, "PostgreSQL does not answer: " .. ping.message)
          ctx.state.sessions = {}
          ctx.state.summary = "the database does not answer"
          incident.severity(ctx, "sev1")
          return
        end
        ctx.log.info(string.format("PostgreSQL %s answers in %.1f ms%s", ping.server_version, ping.rtt * 1000,
          ping.standby and " (a standby)" or ""))
        local conn <close> = connect(ctx)
        local check = pg.health.check(conn, limits(ctx.env))
        local c = check.connections
        ctx.log.info(string.format("connections: %d of %d (%.0f%%): %d active, %d idle, %d idle in transaction, %d waiting "
          .. "on a lock", c.in_use, c.max, c.utilisation * 100, c.active, c.idle, c.idle_in_transaction, c.waiting))
        ctx.state.connections = { in_use = c.in_use, max = c.max, utilisation = c.utilisation }
        ctx.state.pool_full = c.utilisation >= (limits(ctx.env).utilisation or pg.health.defaults.utilisation)
        for _, p in ipairs(check.problems) do incident.finding(ctx, p) end
        if not check.slow_queries.installed then ctx.log.info("slow queries: " .. check.slow_queries.reason) end
        local blocked = pg.health.blocked(conn)
        for _, b in ipairs(blocked) do
          incident.finding(ctx, string.format("session %d has waited %.0fs for session %s: %s", b.pid, b.seconds or 0,
            table.concat(b.blocked_by, ", "), excerpt(b.query)))
        end
        local sessions = suspects(conn, blocked, ctx.params.long_running)
        for _, s in ipairs(sessions) do incident.finding(ctx, describe_session(s)) end
        ctx.state.sessions = {}
        for i, s in ipairs(sessions) do
          ctx.state.sessions[i] = { pid = s.pid, user = s.user, application_name = s.application_name, state = s.state,
            seconds = s.seconds, query = excerpt(s.query), blocks = s.blocks }
        end
        ctx.state.blocked = #blocked
        ctx.state.summary = #blocked > 0 and string.format("%d session%s blocked by %d", #blocked,
          #blocked == 1 and "" or "s", #sessions)
          or (#(ctx.state.findings or {}) > 0 and ctx.state.findings[1]) or "the database looks healthy"
        local default = not api.ok and "sev1" or (#(ctx.state.findings or {}) > 0 and "sev2") or "sev3"
        incident.severity(ctx, default)
      end,
    },

    step "page the on-call engineers" {
      run = function(ctx)
        incident.page(ctx, "database issue: " .. ctx.state.summary, { findings = incident.findings_line(ctx) })
      end,
    },

    step "post to the status page" {
      run = function(ctx)
        incident.post_status(ctx, "Degraded performance", "We are investigating slow or failing requests.")
      end,
    },

    step "choose a mitigation" {
      read_only = true,
      run = function(ctx)
        local sessions = ctx.state.sessions
        -- an environment without a cluster cannot scale the API: that choice is left out
        local found, deployment = pcall(k8s.get, "deployment", ctx.params.deployment, { optional = true })
        if not found then deployment = nil end
        local choices = incident.offered(MITIGATIONS, function(m)
          return (m ~= "cancel" and m ~= "terminate" or #sessions > 0) and (m ~= "scale-down" or deployment ~= nil)
        end)
        local default = "none"
        if sessions[1] then
          default = sessions[1].state and sessions[1].state:match("^idle in transaction") and "terminate" or "cancel"
        elseif ctx.state.pool_full and deployment then
          default = "scale-down"
        end
        local m = incident.decide(ctx, "mitigation", "Mitigation?", { choices = choices, default = default })
        ctx.state.mitigation = m
        if m == "cancel" or m == "terminate" then
          local pids = {}
          for i, s in ipairs(sessions) do
            pids[i] = tostring(s.pid)
            ctx.log.info(describe_session(s))
          end
          ctx.state.pid = math.tointeger(tonumber(incident.decide(ctx, "pid", "Which session?",
            { choices = pids, default = pids[1] })))
        elseif m == "scale-down" then
          ctx.state.replicas_before = deployment.spec.replicas
          ctx.state.scale_to = ctx.params.replicas or math.max(1, deployment.spec.replicas // 2)
          incident.record(ctx, "Replicas to scale the API down to?", ctx.state.scale_to,
            ctx.params.replicas and "param replicas" or "half, at least 1")
        end
      end,
    },

    step "cancel the session's query" {
      -- a cancelled statement cannot be run again for its client: no undo
      when = function(ctx) return ctx.state.mitigation == "cancel" end,
      run = function(ctx)
        local s = confirmed_session(ctx, "Cancel the query of %s?", "cancelling", "pg_cancel_backend")
        if not s then return end
        local conn <close> = connect(ctx)
        if s.blocks > 0 and not still_blocking(conn, s.pid) then
          ctx.log.info("session " .. s.pid .. " no longer blocks anyone")
          return
        end
        signal(conn, "pg_cancel_backend", s.pid)
        if not wait_until(conn, ctx.params.verify_within, function(c)
          return not still_blocking(c, s.pid) and c:value({ "SELECT state = 'active' FROM pg_stat_activity WHERE pid = $1",
            read_only = true }, s.pid) ~= true
        end) then
          error(string.format("session %d still blocks others or runs after its query was cancelled (a transaction "
            .. "keeps its locks): terminate it instead", s.pid), 0)
        end
        ctx.log.info("session " .. s.pid .. ": query cancelled")
      end,
    },

    step "terminate the session" {
      -- an ended session's transaction is rolled back and cannot be brought back: no undo
      when = function(ctx) return ctx.state.mitigation == "terminate" end,
      run = function(ctx)
        local s = confirmed_session(ctx, "Terminate %s? Its open transaction is rolled back.", "terminating",
          "pg_terminate_backend")
        if not s then return end
        local conn <close> = connect(ctx)
        if not conn:value({ "SELECT true FROM pg_stat_activity WHERE pid = $1", read_only = true }, s.pid) then
          ctx.log.info("session " .. s.pid .. " has already ended")
          return
        end
        signal(conn, "pg_terminate_backend", s.pid)
        if not wait_until(conn, ctx.params.verify_within, function(c)
          return not c:value({ "SELECT true FROM pg_stat_activity WHERE pid = $1", read_only = true }, s.pid)
        end) then
          error(string.format("session %d did not end within %s", s.pid, time.format_duration(ctx.params.verify_within)), 0)
        end
        ctx.log.info("session " .. s.pid .. " terminated")
      end,
    },

    step "scale the API down to relieve the pool" {
      when = function(ctx) return ctx.state.mitigation == "scale-down" end,
      run = function(ctx)
        incident.scale(ctx, ctx.params.deployment, ctx.state.scale_to)
        ctx.log.info(string.format("%s scaled from %d to %d replicas", ctx.params.deployment, ctx.state.replicas_before,
          ctx.state.scale_to))
      end,
      undo = function(ctx)
        k8s.scale(ctx.params.deployment, ctx.state.replicas_before)
      end,
    },

    step "tell the status page the fix is in" {
      when = function(ctx) return ctx.state.mitigation ~= "none" and incident.status_open(ctx) end,
      run = function(ctx) incident.fix_in(ctx) end,
    },

    step "investigate: sessions, slow queries, replication" {
      read_only = true,
      run = function(ctx)
        if ctx.state.reachable then
          local conn <close> = connect(ctx)
          local rows = conn:query({ [[
SELECT coalesce(application_name, '') AS application_name, coalesce(state, '') AS state, count(*) AS sessions
  FROM pg_stat_activity WHERE backend_type = 'client backend'
 GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 10]], read_only = true })
          for _, r in ipairs(rows) do
            ctx.log.info(string.format("%d session%s of %s: %s", r.sessions, r.sessions == 1 and "" or "s",
              r.application_name ~= "" and r.application_name or "(no name)", r.state ~= "" and r.state or "?"))
          end
          local slow = pg.health.slow_queries(conn, { limit = 5 })
          if slow.installed then
            for _, q in ipairs(slow.top) do
              ctx.log.warn(string.format("slow: %.0f ms on average over %d calls: %s", q.mean_seconds * 1000, q.calls,
                excerpt(q.query)))
            end
          end
          local rep = pg.health.replication(conn)
          ctx.log.info(string.format("replication: %s, lag %.3fs%s", rep.role, rep.lag or 0,
            rep.replicas and (", " .. #rep.replicas .. " replicas") or ""))
        end
        ctx.state.evidence = incident.report_evidence(ctx, ctx.params.deployment)
      end,
    },

    step "verify the database is healthy" {
      read_only = true,
      run = function(ctx)
        if ctx.plan then return end
        local conn, last
        local healthy = wait_until(nil, ctx.params.verify_within, function()
          if not conn then
            local ok, c = pcall(connect, ctx)
            if not ok then
              last = { "PostgreSQL does not answer: " .. tostring(type(c) == "table" and c.message or c) }
              return false
            end
            conn = c
          end
          local check = pg.health.check(conn, limits(ctx.env))
          local blocked = pg.health.blocked(conn)
          last = check.problems
          if #blocked > 0 then
            last = { #blocked == 1 and "a session still waits on another's lock"
              or (#blocked .. " sessions still wait on others' locks") }
            return false
          end
          return check.ok
        end)
        if conn then conn:close() end
        if not healthy then error("not restored: " .. table.concat(last, "; "), 0) end
        local r = health.check({ multiship.api_url(ctx.env) .. "/api/health/database", within = ctx.params.verify_within,
          interval = "1s" })
        if not r.ok then error("not restored: " .. r.reason, 0) end
        ctx.log.info("the database passes its checks and the API reaches it")
      end,
    },

    step "restore: scale the API back up" {
      when = function(ctx) return ctx.state.mitigation == "scale-down" end,
      run = function(ctx) incident.scale(ctx, ctx.params.deployment, ctx.state.replicas_before) end,
    },

    step "resolve the incident" {
      run = function(ctx)
        incident.resolve(ctx, "The database is healthy again and requests are served normally.")
      end,
    },
  },
}
