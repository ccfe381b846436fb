---@meta pg
-- pg: PostgreSQL for playbooks, on libpq and the loop (modules/pg/README.md).
-- Failures raise `{ kind = "pg", message, sqlstate, reason, doing, detail, hint, constraint,
-- table, column, schema, position, severity, timed_out, connection_lost }`.

---@class tug.pg.ConnectOptions
---@field connect_timeout? tug.Duration default 10 (or the URL's)
---@field timeout? tug.Duration the default per-statement timeout of this connection
---@field statement_timeout? tug.Duration the session's statement_timeout, enforced by the server
---@field cancel_grace? tug.Duration how long a server may take to act on a cancel (default 5)
---@field application_name? string default "tug"

---A statement: the SQL, or a table `{ "SELECT ...", timeout = "2s", read_only = true }`.
---@alias tug.pg.Statement string|{ [1]: string, timeout?: tug.Duration, read_only?: boolean }

---@class tug.pg.Info
---@field command string "INSERT 0 1"
---@field columns string[]
---@field count integer rows returned
---@field affected integer?
---@field duration number seconds
---@field notices string[]?

---@class tug.pg.ConnectionInfo
---@field state string
---@field transaction string
---@field server_version integer
---@field backend_pid integer
---@field user string
---@field host string
---@field port string
---@field database string
---@field label string

---@class tug.pg.TransactionOptions
---@field isolation? "serializable"|"repeatable read"|"read committed"|"read uncommitted"
---@field read_only? boolean

---A session (`pg.connect`); `local conn <close> = pg.connect(...)` closes it at scope end.
---Parameters ($1, $2...) travel apart from the SQL: nil and json.null are NULL, tables go
---as JSON, `pg.array{...}` as an array.
---@class tug.pg.Connection
local Connection = {}

---@param sql tug.pg.Statement
---@param ... any parameters
---@return table[] rows NULL columns are absent
---@return tug.pg.Info info
function Connection:query(sql, ...) end

---@param sql tug.pg.Statement
---@param ... any parameters
---@return integer affected rows inserted, updated, deleted (or returned)
---@return tug.pg.Info info
function Connection:exec(sql, ...) end

---The first row, or nil.
---@param sql tug.pg.Statement
---@param ... any parameters
---@return table?
function Connection:row(sql, ...) end

---The first column of the first row, or nil (no row, or NULL).
---@param sql tug.pg.Statement
---@param ... any parameters
---@return any
function Connection:value(sql, ...) end

---BEGIN, fn(conn), COMMIT; ROLLBACK and raise again when fn raises. Nested calls use savepoints.
---@param fn fun(conn: tug.pg.Connection): ...
---@param opts? tug.pg.TransactionOptions
---@return any ...
function Connection:transaction(fn, opts) end

---A new session with the same parameters (after a lost connection).
---@param timeout? tug.Duration
function Connection:reconnect(timeout) end

---@return tug.pg.ConnectionInfo
function Connection:info() end

---Closes the session; closing twice is harmless.
function Connection:close() end

---@class tug.pg.LockOptions
---@field timeout? tug.Duration then a `pg` error naming the holder

---@class tug.pg.DumpOptions
---@field format? "custom"|"plain"|"directory"|"tar" default "custom"
---@field tables? string[]
---@field schema_only? boolean
---@field jobs? integer
---@field timeout? tug.Duration
---@field args? string[] more pg_dump arguments

---@class tug.pg.Dump
---@field file string
---@field format string
---@field checksum string SHA-256, 64 hex digits
---@field bytes integer
---@field duration number

---@class tug.pg.RestoreOptions
---@field clean? boolean
---@field create? boolean
---@field single_transaction? boolean
---@field no_owner? boolean
---@field jobs? integer
---@field checksum? string refuse a file whose SHA-256 differs
---@field timeout? tug.Duration
---@field args? string[]

---@class tug.pg.VerifyOptions
---@field url string a role that may create databases
---@field tables? string[]|table<string, integer> names, or `{ name = expected count }`
---@field query? string passes when it returns a row with no false or NULL column
---@field database? string default tug_verify_<time>_<n>
---@field checksum? string
---@field timeout? tug.Duration
---@field keep? boolean

---@class tug.pg.Verification
---@field ok boolean
---@field failures string[]
---@field database string
---@field tables table<string, integer>
---@field rows integer
---@field duration number

---@class tug.pg
pg = {}

---Opens a session: a postgresql:// URL or a libpq `key=value` string. A password in it
---is registered with `log.secret` first.
---@param url string
---@param opts? tug.pg.ConnectOptions
---@return tug.pg.Connection
function pg.connect(url, opts) end

---A value sent as a PostgreSQL array parameter.
---@param list any[]
---@return table
function pg.array(list) end

---Whether `sql` only reads (it then runs under `tug plan`).
---@param sql string
---@return boolean
function pg.is_read(sql) end

---`"public.users"` -> `"public"."users"` (each dotted part quoted).
---@param name string
---@return string
function pg.quote_ident(name) end

---Waits until this session holds the advisory lock `key`.
---@param conn tug.pg.Connection
---@param key string|integer
---@param opts? tug.pg.LockOptions
function pg.advisory_lock(conn, key, opts) end

---true, or false when another session holds it.
---@param conn tug.pg.Connection
---@param key string|integer
---@return boolean
function pg.try_advisory_lock(conn, key) end

---true, or false when this session did not hold it.
---@param conn tug.pg.Connection
---@param key string|integer
---@return boolean
function pg.advisory_unlock(conn, key) end

---Lock, fn(conn), unlock (also when fn fails or the task is cancelled); fn's results.
---@param conn tug.pg.Connection
---@param key string|integer
---@param fn fun(conn: tug.pg.Connection): ...
---@param opts? tug.pg.LockOptions
---@return any ...
function pg.with_advisory_lock(conn, key, fn, opts) end

---Runs pg_dump.
---@param url string
---@param file string
---@param opts? tug.pg.DumpOptions
---@return tug.pg.Dump
function pg.dump(url, file, opts) end

---pg_restore --exit-on-error (custom, tar, directory) or psql -v ON_ERROR_STOP=1 (plain SQL).
---@param url string
---@param file string
---@param opts? tug.pg.RestoreOptions
---@return { file: string, format: string, duration: number, planned: boolean? }
function pg.restore(url, file, opts) end

---Restores into a scratch database, checks it, drops it.
---@param file string
---@param opts tug.pg.VerifyOptions
---@return tug.pg.Verification
function pg.verify_restore(file, opts) end

---SHA-256 as 64 hex digits (a directory dump: over its files).
---@param path string
---@return string
function pg.checksum(path) end

---Where pg_dump and friends are: PATH, else /usr/lib/postgresql/*/bin, newest first.
---@param name string
---@return string
function pg.program(name) end

---Probes, connection use, long-running and blocked sessions, slow queries, replication.
---@class tug.pg.health
pg.health = {}

---The database thresholds of `pg.health.check`.
---@type { slow_share: number, utilisation: number, replication_lag: number, slow_threshold: number }
pg.health.defaults = {}

---A probe: failure is a value (`{ ok = false, error, message }`).
---@param target string|tug.pg.Connection a URL or a connection
---@param opts? { timeout?: tug.Duration }
---@return { ok: boolean, rtt: number?, connect_time: number?, server_version: integer?, standby: boolean?, error: string?, message: string? }
function pg.health.ping(target, opts) end

---Client connections against max_connections.
---@param conn tug.pg.Connection
---@return { in_use: integer, max: integer, reserved: integer, available: integer, utilisation: number, active: integer, idle: integer, idle_in_transaction: integer, waiting: integer }
function pg.health.connections(conn) end

---Statements or transactions older than `min_duration` (default "5m").
---@param conn tug.pg.Connection
---@param opts? { min_duration?: tug.Duration, limit?: integer }
---@return table[]
function pg.health.long_running(conn, opts) end

---Sessions waiting on another's lock, with `blocked_by` (pids), `seconds`, `query`.
---@param conn tug.pg.Connection
---@return table[]
function pg.health.blocked(conn) end

---From pg_stat_statements: `{ installed, calls, slow_calls, share, threshold, top }`.
---@param conn tug.pg.Connection
---@param opts? { threshold?: tug.Duration, limit?: integer, all_databases?: boolean }
---@return table
function pg.health.slow_queries(conn, opts) end

---Primary: `{ role = "primary", replicas, lag, lag_bytes }`; standby: `{ role = "standby", lag, caught_up, ... }`.
---@param conn tug.pg.Connection
---@return table
function pg.health.replication(conn) end

---All of the above against the thresholds: `{ ok, problems, rtt, connections, slow_queries, replication }`.
---@param conn tug.pg.Connection
---@param thresholds? { slow_share?: number, utilisation?: number, replication_lag?: number, slow_threshold?: tug.Duration }
---@return { ok: boolean, problems: string[], rtt: number?, connections: table?, slow_queries: table?, replication: table? }
function pg.health.check(conn, thresholds) end

---Reading migration tables (Prisma's, and version tables).
---@class tug.pg.migrations
pg.migrations = {}

---The version-table presets of `pg.migrations.versions`: rails, golang-migrate, flyway, knex, sequelize.
---@type table<string, table>
pg.migrations.presets = {}

---Prisma's `_prisma_migrations`: `{ exists, migrations, applied, failed, rolled_back, pending, latest, ok }`.
---@param conn tug.pg.Connection
---@param opts? { table?: string, expected?: string[] }
---@return table
function pg.migrations.prisma(conn, opts) end

---A version table: a preset name or `{ table, column, order_by, dirty, success }`;
---returns `{ exists, versions, current, dirty, failed }`.
---@param conn tug.pg.Connection
---@param spec string|table
---@return table
function pg.migrations.versions(conn, spec) end

---What changed between two readings: `{ applied, failed, rolled_back }`.
---@param before table
---@param after table
---@return table
function pg.migrations.diff(before, after) end

return pg
