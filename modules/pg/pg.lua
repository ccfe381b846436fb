-- pg.lua: the public pg module, PostgreSQL for playbooks. The C half (pg.core) owns the
-- mechanism: libpq's asynchronous protocol on the loop, the statement queue, timeouts,
-- cancellation and the conversion of results into Lua values. This file is the policy an SRE
-- may want to read: how URLs become connection parameters and which parts are secret, what
-- counts as a write in plan mode, transactions, advisory locks, the health and metrics
-- queries behind the seed's database thresholds, backups through pg_dump/pg_restore, and the
-- readers of migration tables (Prisma's and the common "version table" kinds).

local core = require("pg.core")
local json = require("json")
local time = require("time")
local log = require("log")
local exec = require("exec")
local task = require("task")

local pg = {}

local Connection = core.methods
-- conn -> { timeout = default per-call timeout, label = "user@host:port/db",
--          depth = { [task id] = open transaction levels } }
local settings = setmetatable({}, { __mode = "k" })

-- ---- connection URLs and secrets ----

local function percent_decode(s)
  return (s:gsub("%%(%x%x)", function(hex) return string.char(tonumber(hex, 16)) end))
end

-- Registers the password of a URL (as written and decoded) and the whole URL before anything
-- can print them; returns libpq's parameters for it.
local function parse_url(url, caller)
  if type(url) ~= "string" then
    error(("%s: url must be a string such as postgresql://user:password@host:5432/db (got %s)")
      :format(caller, type(url)), 3)
  end
  local userinfo = url:match("^%a[%w+.-]*://([^@/?#]*)@")
  local password = userinfo and userinfo:match(":(.*)$")
  if password and password ~= "" then
    log.secret(url)
    log.secret(password)
    log.secret(percent_decode(password))
  end
  local params, err = core.parse(url)
  if not params then
    error(tug.error.new("pg", ("pg: invalid connection URL: %s"):format(err)), 3)
  end
  if params.password and params.password ~= "" then
    log.secret(url)
    log.secret(params.password)
  end
  return params
end

local function quote_conninfo(value)
  return "'" .. value:gsub("\\", "\\\\"):gsub("'", "\\'") .. "'"
end

-- A key='value' connection string without the password, and the environment that carries it,
-- for pg_dump, pg_restore and psql (so the password is in no command line).
local function child_connection(params, overrides)
  local parts, env = {}, {}
  local merged = {}
  for k, v in pairs(params) do merged[k] = v end
  for k, v in pairs(overrides or {}) do merged[k] = v end
  local keys = {}
  for k in pairs(merged) do
    if k ~= "password" then keys[#keys + 1] = k end
  end
  table.sort(keys)
  for _, k in ipairs(keys) do parts[#parts + 1] = k .. "=" .. quote_conninfo(merged[k]) end
  if merged.password then env.PGPASSWORD = merged.password end
  return table.concat(parts, " "), env
end

local function target_label(params)
  return ("%s@%s:%s/%s"):format(params.user or os.getenv("PGUSER") or os.getenv("USER") or "?",
    params.host or params.hostaddr or os.getenv("PGHOST") or "localhost",
    params.port or os.getenv("PGPORT") or "5432",
    params.dbname or os.getenv("PGDATABASE") or params.user or "?")
end

-- ---- connecting ----

local CONNECT_OPTIONS = {
  connect_timeout = true, statement_timeout = true, timeout = true, application_name = true,
  cancel_grace = true,
}

local function check_options(opts, allowed, caller)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    error(("%s: opts must be a table (got %s)"):format(caller, type(opts)), 3)
  end
  for key in pairs(opts) do
    if not allowed[key] then
      error(("%s: unknown option '%s'"):format(caller, tostring(key)), 3)
    end
  end
  return opts
end

-- Seconds from a number or a duration string ("30s", "1m30s", "500ms"); raises naming `what`
-- at the line that called the public function.
local function seconds(value, what)
  local n = value
  if type(value) == "string" then n = time.parse_duration(value) end
  if type(n) ~= "number" or n < 0 or n ~= n then
    error(("%s must be seconds or a duration such as \"30s\" (got %s)"):format(what, tostring(value)), 3)
  end
  return n
end

-- pg.connect(url, opts) -> connection
function pg.connect(url, opts)
  local params = parse_url(url, "pg.connect")
  opts = check_options(opts, CONNECT_OPTIONS, "pg.connect")
  -- Every session speaks UTF-8 and reports times in UTC with ISO dates, so values read the
  -- same whatever the server's defaults; in plan mode the session is read-only, so a read
  -- that was misjudged (a SELECT of a function that writes) fails instead of writing.
  local extra = { "-c TimeZone=UTC", "-c DateStyle=ISO,YMD" }
  if opts.statement_timeout ~= nil then
    local ms = math.floor(seconds(opts.statement_timeout, "pg.connect: opts.statement_timeout") * 1000 + 0.5)
    extra[#extra + 1] = "-c statement_timeout=" .. math.max(ms, 1)
  end
  if tug.plan.active() then extra[#extra + 1] = "-c default_transaction_read_only=on" end
  params.options = ((params.options or "") .. " " .. table.concat(extra, " ")):gsub("^ ", "")
  params.client_encoding = "UTF8"
  params.fallback_application_name = "tug"
  if opts.application_name then params.application_name = tostring(opts.application_name) end
  local connect_timeout = 10
  if opts.connect_timeout ~= nil then
    connect_timeout = seconds(opts.connect_timeout, "pg.connect: opts.connect_timeout")
  elseif tonumber(params.connect_timeout) then
    connect_timeout = tonumber(params.connect_timeout)
  end
  if opts.timeout ~= nil then seconds(opts.timeout, "pg.connect: opts.timeout") end
  local grace = opts.cancel_grace ~= nil and seconds(opts.cancel_grace, "pg.connect: opts.cancel_grace") or nil
  local ok, conn = pcall(core.connect, params, connect_timeout, grace)
  if not ok then error(conn, type(conn) == "string" and 2 or 0) end
  settings[conn] = { timeout = opts.timeout, label = target_label(params), depth = {} }
  return conn
end

-- ---- reads and writes (plan mode) ----

-- Splits SQL into statements of upper-case words and brackets, skipping comments, string
-- literals (including E'' and dollar quotes) and quoted identifiers.
local function statements(sql)
  local list, words = {}, {}
  local i, n = 1, #sql
  while i <= n do
    local c = sql:sub(i, i)
    if c:match("%s") then
      i = i + 1
    elseif sql:sub(i, i + 1) == "--" then
      i = (sql:find("\n", i, true) or n) + 1
    elseif sql:sub(i, i + 1) == "/*" then
      local depth = 0
      repeat
        if sql:sub(i, i + 1) == "/*" then
          depth, i = depth + 1, i + 2
        elseif sql:sub(i, i + 1) == "*/" then
          depth, i = depth - 1, i + 2
        else
          i = i + 1
        end
      until depth == 0 or i > n
    elseif c == "'" or ((c == "E" or c == "e") and sql:sub(i + 1, i + 1) == "'") then
      local escapes = c ~= "'"
      i = i + (escapes and 2 or 1)
      while i <= n do
        local d = sql:sub(i, i)
        if escapes and d == "\\" then
          i = i + 2
        elseif d == "'" and sql:sub(i + 1, i + 1) == "'" then
          i = i + 2
        elseif d == "'" then
          break
        else
          i = i + 1
        end
      end
      i = i + 1
      words[#words + 1] = "'"
    elseif c == '"' then
      local close = sql:find('"', i + 1, true)
      while close and sql:sub(close + 1, close + 1) == '"' do close = sql:find('"', close + 2, true) end
      i = (close or n) + 1
      words[#words + 1] = '"'
    elseif c == "$" and (sql:match("^%$%$", i) or sql:match("^%$[%a_][%w_]*%$", i)) then
      local tag = sql:match("^%$%$", i) or sql:match("^%$[%a_][%w_]*%$", i)
      local close = sql:find(tag, i + #tag, true)
      i = (close and close + #tag) or n + 1
      words[#words + 1] = "'"
    elseif c == ";" then
      if #words > 0 then list[#list + 1] = words end
      words = {}
      i = i + 1
    elseif c:match("[%a_]") then
      local word = sql:match("^[%w_$]+", i)
      words[#words + 1] = word:upper()
      i = i + #word
    else
      words[#words + 1] = c
      i = i + 1
    end
  end
  if #words > 0 then list[#list + 1] = words end
  return list
end

local WRITES_IN_CTE = { INSERT = true, UPDATE = true, DELETE = true, MERGE = true }

local function statement_is_read(words, from)
  local i = from or 1
  while words[i] == "(" do i = i + 1 end
  local first = words[i]
  if first == nil then return true end
  if first == "SHOW" or first == "VALUES" or first == "TABLE" then return true end
  if first == "SELECT" then
    local depth = 0
    for j = i + 1, #words do
      local w = words[j]
      if w == "(" then
        depth = depth + 1
      elseif w == ")" then
        depth = depth - 1
      elseif w == "INTO" and depth <= 0 then
        return false -- SELECT ... INTO creates a table
      end
    end
    return true
  end
  if first == "WITH" then
    for j = i + 1, #words do
      if WRITES_IN_CTE[words[j]] then return false end
    end
    return true
  end
  if first == "EXPLAIN" then
    local j, analyze = i + 1, false
    if words[j] == "(" then
      local depth = 0
      repeat
        if words[j] == "(" then depth = depth + 1 elseif words[j] == ")" then depth = depth - 1 end
        if words[j] == "ANALYZE" or words[j] == "ANALYSE" then analyze = true end
        j = j + 1
      until depth == 0 or j > #words
    end
    while words[j] == "ANALYZE" or words[j] == "ANALYSE" or words[j] == "VERBOSE" do
      if words[j] ~= "VERBOSE" then analyze = true end
      j = j + 1
    end
    return not analyze or statement_is_read(words, j)
  end
  return false
end

-- pg.is_read(sql) -> true when every statement in sql only reads: SELECT (not SELECT INTO),
-- SHOW, VALUES, TABLE, EXPLAIN without ANALYZE (with ANALYZE: what it explains), and WITH
-- queries without INSERT/UPDATE/DELETE/MERGE. Everything else counts as a write.
function pg.is_read(sql)
  for _, words in ipairs(statements(sql)) do
    if not statement_is_read(words) then return false end
  end
  return true
end

local function show_param(v)
  if v == nil or v == json.null then return "NULL" end
  if type(v) == "string" then return "'" .. v:gsub("'", "''") .. "'" end
  return tostring(v)
end

-- ---- parameters ----

local ARRAY_MT = { __name = "pg.array" }

-- pg.array(list) -> a parameter sent as a PostgreSQL array ('{1,2,3}'); tables that are not
-- marked this way are sent as JSON (for json and jsonb parameters).
function pg.array(list)
  if type(list) ~= "table" then
    error(("pg.array: expected a table (got %s)"):format(type(list)), 2)
  end
  return setmetatable({ list = list }, ARRAY_MT)
end

local function array_literal(list)
  local parts = {}
  for i = 1, #list do
    local v = list[i]
    if v == json.null then
      parts[i] = "NULL"
    elseif type(v) == "table" then
      parts[i] = array_literal(getmetatable(v) == ARRAY_MT and v.list or v)
    elseif type(v) == "boolean" then
      parts[i] = v and "t" or "f"
    elseif type(v) == "number" then
      parts[i] = math.type(v) == "integer" and tostring(v) or ("%.17g"):format(v)
    else
      parts[i] = '"' .. tostring(v):gsub("\\", "\\\\"):gsub('"', '\\"') .. '"'
    end
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

local function convert_params(n, ...)
  local params = table.pack(...)
  for i = 1, n do
    local v = params[i]
    if type(v) == "table" then
      if getmetatable(v) == ARRAY_MT then
        params[i] = array_literal(v.list)
      else
        params[i] = json.encode(v)
      end
    end
  end
  return params
end

-- ---- statements ----

local CALL_OPTIONS = { timeout = true, read_only = true }

local function statement_args(caller, statement)
  if type(statement) == "string" then return statement, nil end
  if type(statement) == "table" and type(statement[1]) == "string" then
    for key in pairs(statement) do
      if key ~= 1 and not CALL_OPTIONS[key] then
        error(("%s: unknown option '%s'"):format(caller, tostring(key)), 4)
      end
    end
    return statement[1], statement
  end
  error(("%s: the statement must be a string or { sql, timeout =, read_only = } (got %s)")
    :format(caller, type(statement)), 4)
end

local function planned(conn, sql, n, params, caller)
  local lines = { sql }
  for i = 1, n do lines[#lines + 1] = ("$%d = %s"):format(i, show_param(params[i])) end
  local first = sql:match("^%s*([^\r\n]*)") or sql
  if #first > 100 then first = first:sub(1, 100) .. "..." end
  local label = settings[conn] and settings[conn].label or tostring(conn)
  tug.plan.record("pg", ("%s on %s: %s"):format(caller, label, first), table.concat(lines, "\n"))
end

local PLANNED_INFO = { command = "", columns = json.array({}), count = 0, affected = 0,
  duration = 0, notices = json.array({}), planned = true }

local current_task = task.current

local function task_id()
  local t = current_task()
  return t and t.id or 0
end

local function run(conn, mode, caller, statement, ...)
  local sql, opts = statement_args(caller, statement)
  local n = select("#", ...)
  local s = settings[conn]
  local timeout = opts and opts.timeout
  if timeout == nil and s then timeout = s.timeout end
  local params = nil
  for i = 1, n do
    if type((select(i, ...))) == "table" then params = convert_params(n, ...) break end
  end
  if tug.plan.active() and not (opts and opts.read_only) and not pg.is_read(sql) then
    planned(conn, sql, n, params or table.pack(...), caller)
    local info = {}
    for k, v in pairs(PLANNED_INFO) do info[k] = v end
    if mode == "count" then return 0, info end
    if mode == "row" or mode == "value" then return nil end
    return json.array({}), info
  end
  local ok, a, b
  if params then
    ok, a, b = pcall(core.query, conn, mode, timeout, task_id(), nil, sql, table.unpack(params, 1, n))
  else
    ok, a, b = pcall(core.query, conn, mode, timeout, task_id(), nil, sql, ...)
  end
  if not ok then error(a, type(a) == "string" and 3 or 0) end
  return a, b
end

-- conn:query(sql, ...) -> rows, info
function Connection:query(statement, ...)
  return run(self, "rows", "query", statement, ...)
end

-- conn:exec(sql, ...) -> affected rows, info
function Connection:exec(statement, ...)
  return run(self, "count", "exec", statement, ...)
end

-- conn:row(sql, ...) -> the first row, or nil
function Connection:row(statement, ...)
  return (run(self, "row", "query", statement, ...))
end

-- conn:value(sql, ...) -> the first column of the first row, or nil (no row, or NULL)
function Connection:value(statement, ...)
  return (run(self, "value", "query", statement, ...))
end

function Connection:info()
  local info = core.info(self)
  info.label = settings[self] and settings[self].label
  return info
end

function Connection:reconnect(timeout)
  local ok, err = pcall(core.reconnect, self, timeout or 10)
  if not ok then error(err, type(err) == "string" and 2 or 0) end
  if settings[self] then settings[self].depth = {} end
  return self
end

-- Queued behind whatever runs, with nobody waiting: a ROLLBACK that must happen even when the
-- task that wanted it is being cancelled.
local function send_and_forget(conn, sql, ownership)
  pcall(core.query, conn, "discard", nil, task_id(), ownership, sql)
end

-- BEGIN (ownership "hold") and COMMIT (ownership "release") of a transaction.
local function transaction_statement(conn, sql, ownership)
  local ok, n, info = pcall(core.query, conn, "count", nil, task_id(), ownership, sql)
  if not ok then error(n, 0) end
  return n, info
end

local ISOLATION = {
  ["read committed"] = "READ COMMITTED", ["repeatable read"] = "REPEATABLE READ",
  serializable = "SERIALIZABLE",
}

-- conn:transaction(fn, opts) -> fn's results. BEGIN, fn(conn), COMMIT; on an error in fn,
-- ROLLBACK and raise the error again. Nested calls use savepoints. From BEGIN to COMMIT or
-- ROLLBACK the transaction owns the connection: statements other tasks send meanwhile wait,
-- so they never land inside it (use the connection only from the task that opened the
-- transaction while it lasts).
function Connection:transaction(fn, opts)
  if type(fn) ~= "function" then
    error(("conn:transaction: expected a function (got %s)"):format(type(fn)), 2)
  end
  opts = check_options(opts, { isolation = true, read_only = true }, "conn:transaction")
  if tug.plan.active() then return fn(self) end -- each statement inside is judged on its own
  local s = settings[self] or { depth = {} }
  settings[self] = s
  local me = task_id()
  local depth = s.depth[me] or 0 -- another task's transaction is not ours to nest in
  if depth == 0 then
    local begin = "BEGIN"
    if opts.isolation then
      local level = ISOLATION[opts.isolation]
      if not level then
        error(("conn:transaction: unknown isolation '%s' (read committed, repeatable read, "
          .. "serializable)"):format(tostring(opts.isolation)), 2)
      end
      begin = begin .. " ISOLATION LEVEL " .. level
    end
    if opts.read_only then begin = begin .. " READ ONLY" end
    local ok, err = pcall(transaction_statement, self, begin, "hold")
    if not ok then
      -- the BEGIN may have reached the server even though this task stopped waiting for it
      send_and_forget(self, "ROLLBACK", "release")
      error(err, 2)
    end
  else
    self:exec(("SAVEPOINT tug_%d"):format(depth))
  end
  s.depth[me] = depth + 1
  local results = table.pack(pcall(fn, self))
  s.depth[me] = depth > 0 and depth or nil
  if not results[1] then
    if depth == 0 then
      send_and_forget(self, "ROLLBACK", "release")
    else
      send_and_forget(self, ("ROLLBACK TO SAVEPOINT tug_%d; RELEASE SAVEPOINT tug_%d"):format(depth, depth))
    end
    error(results[2], 0)
  end
  if depth == 0 then
    local _, info = transaction_statement(self, "COMMIT", "release")
    if info.command == "ROLLBACK" then
      error(tug.error.new("pg", "pg: COMMIT: the transaction was rolled back because a statement "
        .. "in it failed (the error was caught inside the transaction)", { sqlstate = "25P02",
          doing = "COMMIT" }), 2)
    end
  else
    self:exec(("RELEASE SAVEPOINT tug_%d"):format(depth))
  end
  return table.unpack(results, 2, results.n)
end

-- pg.quote_ident("public.users") -> "public"."users" (each dotted part quoted)
function pg.quote_ident(name)
  if type(name) ~= "string" or name == "" then
    error(("pg.quote_ident: expected a name (got %s)"):format(type(name)), 2)
  end
  local parts = {}
  for part in (name .. "."):gmatch("(.-)%.") do
    parts[#parts + 1] = '"' .. part:gsub('"', '""') .. '"'
  end
  return table.concat(parts, ".")
end

-- ---- advisory locks ----

-- Advisory lock keys are bigints; a string key is hashed by the server (hashtextextended), so
-- every client derives the same number from the same name.
local function lock_key(conn, key, caller)
  if math.type(key) == "integer" then return key end
  if type(key) == "string" and key ~= "" then
    return conn:value({ "SELECT hashtextextended($1, 0) AS key", read_only = true }, key)
  end
  error(("%s: key must be an integer or a non-empty string (got %s)"):format(caller, type(key)), 3)
end

local function show_key(key)
  return type(key) == "string" and ("'%s'"):format(key) or tostring(key)
end

-- Who holds an advisory lock: { pid, user, application_name, client, since } or nil.
local function lock_holder(conn, k)
  return conn:row({ [[
SELECT l.pid, a.usename AS user, a.application_name, a.client_addr::text AS client,
       a.backend_start AS since
  FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
   AND l.classid = (($1::int8 >> 32) & 4294967295)::oid AND l.objid = ($1::int8 & 4294967295)::oid
 LIMIT 1]], read_only = true }, k)
end

local function plan_lock(conn, key)
  tug.plan.record("pg", ("advisory lock %s on %s"):format(show_key(key),
    settings[conn] and settings[conn].label or tostring(conn)))
end

local function lock(conn, key, k, timeout)
  local ok, err = pcall(conn.exec, conn, { "SELECT pg_advisory_lock($1::int8)", timeout = timeout,
    read_only = true }, k)
  if ok then return true end
  if type(err) == "table" and err.timed_out then
    local holder = lock_holder(conn, k)
    local by = holder and (" (held by pid %s%s%s)"):format(tostring(holder.pid),
      holder.application_name and holder.application_name ~= "" and (", " .. holder.application_name) or "",
      holder.client and (", from " .. holder.client) or "") or ""
    error(tug.error.new("pg", ("pg: advisory lock %s: not acquired within %s%s"):format(show_key(key),
      time.format_duration(seconds(timeout or (settings[conn] and settings[conn].timeout) or 0,
        "timeout")), by), { key = key, timed_out = true,
        holder = holder, doing = "advisory lock " .. show_key(key) }), 3)
  end
  error(err, 0)
end

local function unlock(conn, k)
  return conn:value({ "SELECT pg_advisory_unlock($1::int8) AS unlocked", read_only = true }, k)
end

-- pg.advisory_lock(conn, key, { timeout = }) -> true. Waits until this session holds the lock
-- (session-level: it lasts until unlocked or the connection ends). With a timeout, raises a
-- pg error naming the session that holds it.
function pg.advisory_lock(conn, key, opts)
  opts = check_options(opts, { timeout = true }, "pg.advisory_lock")
  if tug.plan.active() then
    plan_lock(conn, key)
    return true
  end
  return lock(conn, key, lock_key(conn, key, "pg.advisory_lock"), opts.timeout)
end

-- pg.try_advisory_lock(conn, key) -> true if this session now holds the lock, false if another does
function pg.try_advisory_lock(conn, key)
  if tug.plan.active() then
    plan_lock(conn, key)
    return true
  end
  local k = lock_key(conn, key, "pg.try_advisory_lock")
  return conn:value({ "SELECT pg_try_advisory_lock($1::int8) AS locked", read_only = true }, k)
end

-- pg.advisory_unlock(conn, key) -> true, or false when this session did not hold it
function pg.advisory_unlock(conn, key)
  if tug.plan.active() then return true end
  return unlock(conn, lock_key(conn, key, "pg.advisory_unlock"))
end

-- pg.with_advisory_lock(conn, key, fn, { timeout = }) -> fn's results; unlocks afterwards,
-- whether fn succeeds or fails (even when the task is cancelled: the unlock is then queued on
-- the connection without waiting).
function pg.with_advisory_lock(conn, key, fn, opts)
  if type(fn) ~= "function" then
    error(("pg.with_advisory_lock: expected a function (got %s)"):format(type(fn)), 2)
  end
  opts = check_options(opts, { timeout = true }, "pg.with_advisory_lock")
  if tug.plan.active() then
    plan_lock(conn, key)
    return fn(conn)
  end
  local k = lock_key(conn, key, "pg.with_advisory_lock")
  lock(conn, key, k, opts.timeout)
  local results = table.pack(pcall(fn, conn))
  if not pcall(unlock, conn, k) then
    send_and_forget(conn, ("SELECT pg_advisory_unlock(%d)"):format(k))
  end
  if not results[1] then error(results[2], 0) end
  return table.unpack(results, 2, results.n)
end

-- ---- health and metrics ----

pg.health = {}

-- The seed's thresholds for database metrics: slow queries under 5 %, connection pool under
-- 80 %, replication lag under 100 ms.
pg.health.defaults = { slow_share = 0.05, utilisation = 0.80, replication_lag = 0.100,
  slow_threshold = 0.5 }

local function with_connection(target, opts, fn)
  if type(target) == "string" then
    local conn = pg.connect(target, { connect_timeout = opts.timeout or 5, timeout = opts.timeout or 5 })
    local results = table.pack(pcall(fn, conn))
    conn:close()
    if not results[1] then error(results[2], 0) end
    return table.unpack(results, 2, results.n)
  end
  return fn(target)
end

local function read(conn, sql, ...)
  return conn:query({ sql, read_only = true }, ...)
end

-- pg.health.ping(url or conn, { timeout = 5 }) -> { ok = true, rtt, connect_time, server_version,
-- standby } or { ok = false, error = "pg", message }. A probe: failure is a value, not an error.
function pg.health.ping(target, opts)
  opts = check_options(opts, { timeout = true }, "pg.health.ping")
  local started = time.monotonic()
  local ok, result = pcall(with_connection, target, opts, function(conn)
    local connected = time.monotonic()
    local t0 = time.monotonic()
    local row = read(conn, "SELECT current_setting('server_version') AS version, pg_is_in_recovery() AS standby")[1]
    local rtt = time.monotonic() - t0
    return { ok = true, rtt = rtt, connect_time = type(target) == "string" and connected - started or 0,
      server_version = row.version, standby = row.standby }
  end)
  if ok then return result end
  return { ok = false, error = type(result) == "table" and result.kind or "error",
    message = tostring(type(result) == "table" and result.message or result) }
end

-- pg.health.connections(conn) -> { in_use, max, reserved, available, utilisation, active,
-- idle, idle_in_transaction, waiting }. Client connections of the whole server against
-- max_connections: what a connection pool runs out of.
function pg.health.connections(conn)
  local row = read(conn, [[
SELECT count(*) FILTER (WHERE backend_type = 'client backend') AS in_use,
       count(*) FILTER (WHERE backend_type = 'client backend' AND state = 'active') AS active,
       count(*) FILTER (WHERE backend_type = 'client backend' AND state = 'idle') AS idle,
       count(*) FILTER (WHERE backend_type = 'client backend'
                          AND state LIKE 'idle in transaction%') AS idle_in_transaction,
       count(*) FILTER (WHERE backend_type = 'client backend' AND wait_event_type = 'Lock') AS waiting,
       current_setting('max_connections')::int AS max,
       current_setting('superuser_reserved_connections')::int AS reserved
  FROM pg_stat_activity]])[1]
  row.available = row.max - row.reserved - row.in_use
  row.utilisation = row.in_use / row.max
  return row
end

-- pg.health.long_running(conn, { min_duration = "5m", limit = 20 }) -> rows of statements (and
-- open transactions) running longer than min_duration: pid, user, database, application_name,
-- client, state, seconds, transaction_seconds, wait_event_type, wait_event, query.
function pg.health.long_running(conn, opts)
  opts = check_options(opts, { min_duration = true, limit = true }, "pg.health.long_running")
  local min = seconds(opts.min_duration or 300, "pg.health.long_running: opts.min_duration")
  return (read(conn, [[
SELECT pid, usename AS user, datname AS database, application_name, client_addr::text AS client,
       state, extract(epoch FROM now() - query_start)::float8 AS seconds,
       extract(epoch FROM now() - xact_start)::float8 AS transaction_seconds,
       wait_event_type, wait_event, left(query, 1000) AS query
  FROM pg_stat_activity
 WHERE backend_type = 'client backend' AND state IS DISTINCT FROM 'idle' AND pid <> pg_backend_pid()
   AND (query_start < now() - make_interval(secs => $1) OR xact_start < now() - make_interval(secs => $1))
 ORDER BY least(query_start, xact_start)
 LIMIT $2]], min, opts.limit or 20))
end

-- pg.health.blocked(conn) -> rows of sessions waiting for a lock another session holds: pid,
-- user, database, blocked_by (array of pids), seconds, wait_event_type, wait_event, query.
function pg.health.blocked(conn)
  return (read(conn, [[
SELECT pid, usename AS user, datname AS database, pg_blocking_pids(pid) AS blocked_by,
       extract(epoch FROM now() - query_start)::float8 AS seconds, wait_event_type, wait_event,
       left(query, 1000) AS query
  FROM pg_stat_activity
 WHERE cardinality(pg_blocking_pids(pid)) > 0
 ORDER BY query_start]]))
end

-- pg.health.slow_queries(conn, { threshold = "500ms", limit = 10, all_databases = false }) ->
-- { installed = true, calls, slow_calls, share, threshold, top = rows } from pg_stat_statements,
-- or { installed = false, reason } when the extension is not there (not an error).
-- A call counts as slow when its statement's mean execution time is above the threshold
-- (pg_stat_statements keeps no per-call histogram).
function pg.health.slow_queries(conn, opts)
  opts = check_options(opts, { threshold = true, limit = true, all_databases = true },
    "pg.health.slow_queries")
  local threshold = seconds(opts.threshold or pg.health.defaults.slow_threshold,
    "pg.health.slow_queries: opts.threshold")
  local installed = read(conn, [[
SELECT e.extversion, n.nspname AS schema FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
 WHERE e.extname = 'pg_stat_statements']])[1]
  if not installed then
    return { installed = false, reason = ("pg_stat_statements is not installed in database %s "
      .. "(CREATE EXTENSION pg_stat_statements; the server also needs it in "
      .. "shared_preload_libraries)"):format(conn:value({ "SELECT current_database()", read_only = true })) }
  end
  local view = pg.quote_ident(installed.schema) .. ".pg_stat_statements"
  local new = conn:value({ "SELECT current_setting('server_version_num')::int >= 130000", read_only = true })
  local mean = new and "mean_exec_time" or "mean_time"
  local total = new and "total_exec_time" or "total_time"
  local scope = opts.all_databases and "true"
    or "dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
  local ok, summary = pcall(read, conn, ([[
SELECT coalesce(sum(calls), 0)::int8 AS calls,
       coalesce(sum(calls) FILTER (WHERE %s > $1), 0)::int8 AS slow_calls
  FROM %s WHERE %s]]):format(mean, view, scope), threshold * 1000)
  if not ok then
    if type(summary) == "table" and summary.sqlstate == "55000" then
      return { installed = false, reason = summary.reason }
    end
    error(summary, 0)
  end
  local row = summary[1]
  local top = read(conn, ([[
SELECT queryid::text AS queryid, calls, %s::float8 / 1000 AS mean_seconds,
       %s::float8 / 1000 AS total_seconds, rows, left(query, 500) AS query
  FROM %s WHERE %s AND %s > $1
 ORDER BY %s DESC LIMIT $2]]):format(mean, total, view, scope, mean, mean), threshold * 1000,
    opts.limit or 10)
  return { installed = true, calls = row.calls, slow_calls = row.slow_calls,
    share = row.calls > 0 and row.slow_calls / row.calls or 0, threshold = threshold, top = top }
end

-- pg.health.replication(conn) -> on a primary { role = "primary", replicas = rows (name,
-- client, state, sync_state, lag_bytes, replay_lag, write_lag, flush_lag), lag = the largest
-- replay lag in seconds, lag_bytes }; on a standby { role = "standby", lag (seconds, 0 when
-- caught up), caught_up, receiver (the WAL receiver's status, nil when not streaming),
-- pending_bytes, receive_lsn, replay_lsn }.
function pg.health.replication(conn)
  if not conn:value({ "SELECT pg_is_in_recovery()", read_only = true }) then
    local replicas = read(conn, [[
SELECT application_name AS name, client_addr::text AS client, state, sync_state,
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::int8 AS lag_bytes,
       coalesce(extract(epoch FROM replay_lag)::float8, 0) AS replay_lag,
       coalesce(extract(epoch FROM write_lag)::float8, 0) AS write_lag,
       coalesce(extract(epoch FROM flush_lag)::float8, 0) AS flush_lag
  FROM pg_stat_replication ORDER BY application_name]])
    local lag, lag_bytes = 0, 0
    for _, r in ipairs(replicas) do
      lag = math.max(lag, r.replay_lag or 0)
      lag_bytes = math.max(lag_bytes, r.lag_bytes or 0)
    end
    return { role = "primary", replicas = replicas, lag = lag, lag_bytes = lag_bytes }
  end
  local row = read(conn, [[
SELECT pg_last_wal_receive_lsn()::text AS receive_lsn, pg_last_wal_replay_lsn()::text AS replay_lsn,
       coalesce(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::int8, 0) AS pending_bytes,
       pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() AS caught_up,
       extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 AS since_replay,
       (SELECT status FROM pg_stat_wal_receiver LIMIT 1) AS receiver]])[1]
  -- with nothing left to replay, the time since the last replayed transaction is only how
  -- quiet the primary has been, not lag
  row.lag = row.caught_up and 0 or (row.since_replay or 0)
  row.role = "standby"
  return row
end

-- pg.health.check(conn, thresholds) -> { ok, problems = { "..." }, connections, slow_queries,
-- replication, rtt }: the seed's database metrics against thresholds (pg.health.defaults).
function pg.health.check(conn, thresholds)
  thresholds = check_options(thresholds, { slow_share = true, utilisation = true,
    replication_lag = true, slow_threshold = true }, "pg.health.check")
  local limits = {}
  for k, v in pairs(pg.health.defaults) do limits[k] = v end
  for k, v in pairs(thresholds) do limits[k] = k == "replication_lag" or k == "slow_threshold"
    and seconds(v, "pg.health.check: " .. k) or v end
  local report = { problems = {} }
  local t0 = time.monotonic()
  conn:value({ "SELECT 1", read_only = true })
  report.rtt = time.monotonic() - t0
  report.connections = pg.health.connections(conn)
  report.slow_queries = pg.health.slow_queries(conn, { threshold = limits.slow_threshold })
  report.replication = pg.health.replication(conn)
  local c = report.connections
  if c.utilisation >= limits.utilisation then
    report.problems[#report.problems + 1] = ("connections: %d of %d in use (%.0f%%, limit %.0f%%)")
      :format(c.in_use, c.max, c.utilisation * 100, limits.utilisation * 100)
  end
  local sq = report.slow_queries
  if sq.installed and sq.share >= limits.slow_share then
    report.problems[#report.problems + 1] = ("slow queries: %.1f%% of calls (limit %.1f%%)")
      :format(sq.share * 100, limits.slow_share * 100)
  end
  local r = report.replication
  if r.lag >= limits.replication_lag then
    report.problems[#report.problems + 1] = ("replication lag: %.3fs (limit %.3fs)")
      :format(r.lag, limits.replication_lag)
  end
  report.ok = #report.problems == 0
  return report
end

-- ---- backups ----

-- A PostgreSQL program: on PATH, else under /usr/lib/postgresql/VERSION/bin (newest first).
function pg.program(name)
  for dir in (os.getenv("PATH") or ""):gmatch("[^:]+") do
    local f = io.open(dir .. "/" .. name)
    if f then
      f:close()
      return dir .. "/" .. name
    end
  end
  for version = 20, 10, -1 do
    local path = ("/usr/lib/postgresql/%d/bin/%s"):format(version, name)
    local f = io.open(path)
    if f then
      f:close()
      return path
    end
  end
  error(tug.error.new("pg", ("pg: %s not found on PATH or in /usr/lib/postgresql/*/bin "
    .. "(install postgresql-client)"):format(name)), 3)
end

local function tail(text, lines)
  text = (text or ""):gsub("%s+$", "")
  local list = {}
  for line in (text .. "\n"):gmatch("(.-)\n") do list[#list + 1] = line end
  if #list > lines then list = { "...", table.unpack(list, #list - lines + 1) } end
  return table.concat(list, "\n")
end

local function run_tool(argv, env, doing, opts)
  local r = exec.run(argv, { env = env, timeout = opts.timeout, stdin = opts.stdin })
  if r.code ~= 0 then
    local why = r.timed_out and ("timed out after %ss"):format(tostring(opts.timeout))
      or r.signal and ("was killed by %s"):format(r.signal)
      or ("exited with code %d"):format(r.code)
    local err = tail(r.stderr, 10)
    error(tug.error.new("pg", ("pg: %s: %s %s%s"):format(doing, argv[1]:match("[^/]+$"), why,
      err ~= "" and (":\n" .. err) or ""), { doing = doing, code = r.code, stderr = r.stderr,
        timed_out = r.timed_out }), 0)
  end
  return r
end

-- pg.checksum(path) -> the SHA-256 of a file as 64 hex digits (a directory-format dump: of
-- its files' names and checksums, in name order).
function pg.checksum(path)
  if type(path) ~= "string" then
    error(("pg.checksum: expected a path (got %s)"):format(type(path)), 2)
  end
  local r = exec.run({ "sha256sum", "--", path })
  if r.code == 0 then return r.stdout:match("^(%x+)") end
  r = run_tool({ "sh", "-c", 'cd "$1" && find . -type f | LC_ALL=C sort | xargs -d "\n" sha256sum | sha256sum',
    "sh", path }, nil, "checksum of " .. path, {})
  return r.stdout:match("^(%x+)")
end

local DUMP_FORMATS = { custom = "c", plain = "p", directory = "d", tar = "t" }

-- pg.dump(url, file, { format = "custom", tables = {...}, schema_only, jobs, timeout, args })
-- -> { file, format, checksum, bytes, duration }
function pg.dump(url, file, opts)
  local params = parse_url(url, "pg.dump")
  if type(file) ~= "string" or file == "" then
    error(("pg.dump: expected a file name (got %s)"):format(type(file)), 2)
  end
  opts = check_options(opts, { format = true, tables = true, schema_only = true, jobs = true,
    timeout = true, args = true }, "pg.dump")
  local format = opts.format or "custom"
  if not DUMP_FORMATS[format] then
    error(("pg.dump: unknown format '%s' (custom, plain, directory, tar)"):format(tostring(format)), 2)
  end
  local label = target_label(params)
  if tug.plan.active() then
    tug.plan.record("pg", ("dump %s to %s (%s format)"):format(label, file, format))
    return { file = file, format = format, planned = true }
  end
  if format ~= "directory" then
    -- a dump holds every row: owner-only from its first byte, whatever the umask (pg_dump
    -- truncates the file and keeps its mode; a directory dump it makes 0700 itself)
    local f, ferr = tug.sys.open_private(file, "w")
    if not f then error(tug.error.new("pg", ("pg: dumping %s: cannot create %s"):format(label, ferr)), 0) end
    f:close()
  end
  local conninfo, env = child_connection(params)
  local argv = { pg.program("pg_dump"), "--format=" .. DUMP_FORMATS[format], "--file=" .. file,
    "--no-password", "--dbname=" .. conninfo }
  for _, t in ipairs(opts.tables or {}) do argv[#argv + 1] = "--table=" .. t end
  if opts.schema_only then argv[#argv + 1] = "--schema-only" end
  if opts.jobs then argv[#argv + 1] = "--jobs=" .. tostring(opts.jobs) end
  for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = a end
  local t0 = time.monotonic()
  run_tool(argv, env, ("dumping %s to %s"):format(label, file), opts)
  local duration = time.monotonic() - t0
  local size = exec.run({ "du", "-sb", "--", file }).stdout:match("^(%d+)")
  return { file = file, format = format, checksum = pg.checksum(file), bytes = tonumber(size),
    duration = duration }
end

-- What kind of dump a file is: "custom", "tar", "directory" or "plain".
local function dump_format(file)
  local toc = io.open(file .. "/toc.dat")
  if toc then
    toc:close()
    return "directory"
  end
  local f = io.open(file, "rb")
  if not f then
    error(tug.error.new("pg", ("pg: restoring %s: no such file"):format(file)), 0)
  end
  local head = f:read(512) or ""
  f:close()
  if head:sub(1, 5) == "PGDMP" then return "custom" end
  if #head >= 262 and head:sub(258, 262) == "ustar" then return "tar" end
  return "plain"
end

-- pg.restore(url, file, { clean, create, single_transaction, no_owner, jobs, checksum, timeout,
-- args }) -> { file, format, duration }. Plain SQL dumps go through psql, the others through
-- pg_restore; both stop at the first error. With checksum, the file must match it first.
function pg.restore(url, file, opts)
  local params = parse_url(url, "pg.restore")
  if type(file) ~= "string" or file == "" then
    error(("pg.restore: expected a file name (got %s)"):format(type(file)), 2)
  end
  opts = check_options(opts, { clean = true, create = true, single_transaction = true,
    no_owner = true, jobs = true, checksum = true, timeout = true, args = true }, "pg.restore")
  local label = target_label(params)
  if tug.plan.active() then
    tug.plan.record("pg", ("restore %s into %s%s"):format(file, label, opts.clean and " (clean: drops objects first)" or ""))
    return { file = file, planned = true }
  end
  local doing = ("restoring %s into %s"):format(file, label)
  if opts.checksum then
    local actual = pg.checksum(file)
    if actual ~= opts.checksum then
      error(tug.error.new("pg", ("pg: %s: the file's SHA-256 is %s, expected %s (refusing to restore)")
        :format(doing, tostring(actual), opts.checksum), { doing = doing, checksum = actual }), 2)
    end
  end
  local format = dump_format(file)
  local conninfo, env = child_connection(params)
  local argv
  if format == "plain" then
    argv = { pg.program("psql"), "--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1",
      "--no-password", "--dbname=" .. conninfo, "--file=" .. file }
    if opts.single_transaction then argv[#argv + 1] = "--single-transaction" end
  else
    argv = { pg.program("pg_restore"), "--exit-on-error", "--no-password", "--dbname=" .. conninfo }
    if opts.clean then
      argv[#argv + 1] = "--clean"
      argv[#argv + 1] = "--if-exists"
    end
    if opts.create then argv[#argv + 1] = "--create" end
    if opts.single_transaction then argv[#argv + 1] = "--single-transaction" end
    if opts.no_owner then
      argv[#argv + 1] = "--no-owner"
      argv[#argv + 1] = "--no-privileges"
    end
    if opts.jobs then argv[#argv + 1] = "--jobs=" .. tostring(opts.jobs) end
    for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = a end
    argv[#argv + 1] = file
  end
  local t0 = time.monotonic()
  run_tool(argv, env, doing, opts)
  return { file = file, format = format, duration = time.monotonic() - t0 }
end

-- pg.verify_restore(file, { url = admin url, tables = { "users", ... } or { users = 3 },
-- query = sql, database = scratch name, checksum, timeout, keep = false }) -> { ok, failures,
-- database, tables = { name = rows }, rows = the query's rows, duration }.
-- Restores the dump into a new scratch database, counts the rows of the named tables
-- (checking the expected counts when given), runs the query (it passes when it returns a row
-- whose columns are all true or non-NULL), then drops the scratch database, even on failure.
function pg.verify_restore(file, opts)
  if type(file) ~= "string" or file == "" then
    error(("pg.verify_restore: expected a file name (got %s)"):format(type(file)), 2)
  end
  opts = check_options(opts, { url = true, tables = true, query = true, database = true,
    checksum = true, timeout = true, keep = true }, "pg.verify_restore")
  local params = parse_url(opts.url, "pg.verify_restore: opts.url")
  local name = opts.database or ("tug_verify_%d_%d"):format(os.time(), math.random(1e6))
  if tug.plan.active() then
    tug.plan.record("pg", ("verify %s by restoring it into a scratch database %s on %s")
      :format(file, name, target_label(params)))
    return { ok = true, planned = true, database = name, failures = {}, tables = {} }
  end
  local t0 = time.monotonic()
  local result = { ok = false, failures = {}, database = name, tables = {} }
  local admin = pg.connect(opts.url)
  local created = false
  local ok, err = pcall(function()
    admin:exec("CREATE DATABASE " .. pg.quote_ident(name))
    created = true
    local scratch = {}
    for k, v in pairs(params) do scratch[k] = v end
    scratch.dbname = name
    local restored, why = pcall(function()
      local conninfo, env = child_connection(scratch)
      local format = dump_format(file)
      if opts.checksum and pg.checksum(file) ~= opts.checksum then
        error(tug.error.new("pg", ("pg: %s does not match its checksum"):format(file)), 0)
      end
      local argv
      if format == "plain" then
        argv = { pg.program("psql"), "--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1",
          "--no-password", "--dbname=" .. conninfo, "--file=" .. file }
      else
        argv = { pg.program("pg_restore"), "--exit-on-error", "--no-owner", "--no-privileges",
          "--no-password", "--dbname=" .. conninfo, file }
      end
      run_tool(argv, env, ("restoring %s into scratch database %s"):format(file, name), opts)
    end)
    if not restored then
      result.failures[#result.failures + 1] = tostring(type(why) == "table" and why.message or why)
      return
    end
    local keywords = {}
    for k, v in pairs(scratch) do keywords[#keywords + 1] = k .. "=" .. quote_conninfo(v) end
    local conn = pg.connect(table.concat(keywords, " "))
    local checked, problem = pcall(function()
      local tables = opts.tables or {}
      local names = {}
      for k, v in pairs(tables) do
        if math.type(k) == "integer" then names[#names + 1] = { name = v } else names[#names + 1] = { name = k, expect = v } end
      end
      table.sort(names, function(a, b) return a.name < b.name end)
      for _, t in ipairs(names) do
        local counted, n = pcall(conn.value, conn, "SELECT count(*) FROM " .. pg.quote_ident(t.name))
        if not counted then
          result.failures[#result.failures + 1] = ("table %s: %s"):format(t.name,
            type(n) == "table" and n.reason or tostring(n))
        else
          result.tables[t.name] = n
          if t.expect ~= nil and t.expect ~= true and n ~= t.expect then
            result.failures[#result.failures + 1] = ("table %s: %d rows, expected %s"):format(t.name, n, tostring(t.expect))
          end
        end
      end
      if opts.query then
        local done, rows, info = pcall(conn.query, conn, opts.query)
        if not done then
          result.failures[#result.failures + 1] = "query: " .. (type(rows) == "table" and rows.reason or tostring(rows))
        else
          result.rows = rows
          local first = rows[1]
          if first == nil then
            result.failures[#result.failures + 1] = "query: returned no rows"
          else
            for _, column in ipairs(info.columns) do
              if first[column] == nil or first[column] == false then
                result.failures[#result.failures + 1] = ("query: column %s is %s"):format(column,
                  first[column] == nil and "NULL" or "false")
              end
            end
          end
        end
      end
    end)
    conn:close()
    if not checked then error(problem, 0) end
  end)
  -- the scratch database goes even when this task was cancelled: then a task of its own drops it
  local function drop()
    if created and not opts.keep then
      admin:exec("DROP DATABASE IF EXISTS " .. pg.quote_ident(name) .. " WITH (FORCE)")
    end
    admin:close()
  end
  local dropped, why = pcall(drop)
  if not dropped and type(why) == "table" and why.kind == "cancelled" then
    task.spawn(function() pcall(drop) end)
  elseif not dropped then
    admin:close()
  end
  if not ok then error(err, 0) end
  result.ok = #result.failures == 0
  result.duration = time.monotonic() - t0
  return result
end

-- ---- migration tables ----

pg.migrations = {}

local function table_exists(conn, name)
  return conn:value({ "SELECT to_regclass($1) IS NOT NULL", read_only = true }, name)
end

-- pg.migrations.prisma(conn, { table = "_prisma_migrations", expected = { names... } }) ->
-- { exists, migrations = { { name, status, started_at, finished_at, rolled_back_at, logs,
-- checksum, steps } ... }, applied = names, failed = names, rolled_back = names, pending =
-- names (with expected), latest = the last applied name, ok = nothing failed }.
-- Prisma keeps a row per attempt: a name is applied when an attempt finished and was not rolled
-- back, failed when an attempt started and neither finished nor was marked rolled back, and
-- rolled back otherwise.
function pg.migrations.prisma(conn, opts)
  opts = check_options(opts, { table = true, expected = true }, "pg.migrations.prisma")
  local name = opts.table or "_prisma_migrations"
  local status = { exists = false, migrations = {}, applied = {}, failed = {}, rolled_back = {},
    pending = {}, ok = true }
  if not table_exists(conn, name) then
    for _, m in ipairs(opts.expected or {}) do status.pending[#status.pending + 1] = m end
    return status
  end
  status.exists = true
  local rows = read(conn, ([[
SELECT id, checksum, migration_name, logs, started_at, finished_at, rolled_back_at,
       applied_steps_count
  FROM %s ORDER BY started_at, migration_name]]):format(pg.quote_ident(name)))
  local by_name, order = {}, {}
  for _, r in ipairs(rows) do
    local m = by_name[r.migration_name]
    if not m then
      m = { name = r.migration_name, attempts = 0 }
      by_name[r.migration_name] = m
      order[#order + 1] = m
    end
    m.attempts = m.attempts + 1
    local state = r.rolled_back_at and "rolled_back" or r.finished_at and "applied" or "failed"
    local rank = { applied = 3, failed = 2, rolled_back = 1 }
    if m.status == nil or rank[state] >= rank[m.status] then
      m.status, m.started_at, m.finished_at, m.rolled_back_at = state, r.started_at, r.finished_at, r.rolled_back_at
      m.logs, m.checksum, m.steps = r.logs, r.checksum, r.applied_steps_count
    end
  end
  for _, m in ipairs(order) do
    status.migrations[#status.migrations + 1] = m
    local list = status[m.status]
    list[#list + 1] = m.name
    if m.status == "applied" then status.latest = m.name end
  end
  for _, expected in ipairs(opts.expected or {}) do
    if not (by_name[expected] and by_name[expected].status == "applied") then
      status.pending[#status.pending + 1] = expected
    end
  end
  status.ok = #status.failed == 0
  return status
end

-- Where common tools keep their applied versions.
pg.migrations.presets = {
  rails = { table = "schema_migrations", column = "version" },
  ["golang-migrate"] = { table = "schema_migrations", column = "version", dirty = "dirty" },
  flyway = { table = "flyway_schema_history", column = "version", order_by = "installed_rank",
    success = "success" },
  knex = { table = "knex_migrations", column = "name", order_by = "id" },
  sequelize = { table = "SequelizeMeta", column = "name" },
}

-- pg.migrations.versions(conn, preset name or { table, column, order_by, dirty, success }) ->
-- { exists, versions = { applied versions as strings, in order }, current = the last one,
-- dirty = true when a dirty flag is set, failed = versions whose success flag is false }
function pg.migrations.versions(conn, spec)
  if type(spec) == "string" then
    local preset = pg.migrations.presets[spec]
    if not preset then
      local names = {}
      for k in pairs(pg.migrations.presets) do names[#names + 1] = k end
      table.sort(names)
      error(("pg.migrations.versions: unknown preset '%s' (%s)"):format(spec, table.concat(names, ", ")), 2)
    end
    spec = preset
  end
  spec = check_options(spec, { table = true, column = true, order_by = true, dirty = true,
    success = true }, "pg.migrations.versions")
  if type(spec.table) ~= "string" or type(spec.column) ~= "string" then
    error("pg.migrations.versions: table and column must be names (strings)", 2)
  end
  local status = { exists = false, versions = {}, failed = {}, dirty = false }
  if not table_exists(conn, pg.quote_ident(spec.table)) then return status end
  status.exists = true
  local column = pg.quote_ident(spec.column)
  local order = spec.order_by and pg.quote_ident(spec.order_by) or column
  local extra = ""
  if spec.dirty then extra = extra .. ", " .. pg.quote_ident(spec.dirty) .. " AS dirty" end
  if spec.success then extra = extra .. ", " .. pg.quote_ident(spec.success) .. " AS success" end
  local rows = read(conn, ("SELECT %s::text AS version%s FROM %s WHERE %s IS NOT NULL ORDER BY %s")
    :format(column, extra, pg.quote_ident(spec.table), column, order))
  for _, r in ipairs(rows) do
    if r.dirty then status.dirty = true end
    if r.success == false then
      status.failed[#status.failed + 1] = r.version
    else
      status.versions[#status.versions + 1] = r.version
    end
  end
  status.current = status.versions[#status.versions]
  return status
end

-- pg.migrations.diff(before, after) -> { applied = names applied since, failed = names failed
-- since, rolled_back = names rolled back since }: what a deploy did, from two readings.
function pg.migrations.diff(before, after)
  local function set(list)
    local s = {}
    for _, v in ipairs(list or {}) do s[v] = true end
    return s
  end
  local out = { applied = {}, failed = {}, rolled_back = {} }
  for _, kind in ipairs({ "applied", "failed", "rolled_back" }) do
    local was = set(before[kind] or (kind == "applied" and before.versions))
    for _, v in ipairs(after[kind] or (kind == "applied" and after.versions) or {}) do
      if not was[v] then out[kind][#out[kind] + 1] = v end
    end
  end
  return out
end

return pg
