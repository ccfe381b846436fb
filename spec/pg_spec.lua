-- pg_spec.lua: the pg module against a real PostgreSQL 15 started here (spec/support/postgres.lua:
-- initdb and pg_ctl as the unprivileged postgres user, a private port and socket directory,
-- stopped at the end even when a test fails). Checks what a playbook author notices: values
-- and their Lua types, parameters kept apart from SQL, several tasks at once, timeouts and
-- cancellation, a server restart, advisory locks between two tug processes, backups that
-- restore, migration tables, health figures, secrets kept out of output, and plan mode.
package.path = "spec/support/?.lua;" .. package.path

local pg = require("pg")
local json = require("json")
local task = require("task")
local time = require("time")
local exec = require("exec")
local child = require("child")
local postgres = require("postgres")

local server -- the PostgreSQL server for the whole file
local work   -- a scratch directory for dumps and child scripts

local function elapsed(fn, ...)
  local start = time.monotonic()
  local a, b = fn(...)
  return time.monotonic() - start, a, b
end

-- Polls until fn() is truthy or `within` seconds pass; returns the last value.
local function eventually(fn, within)
  local deadline = time.monotonic() + (within or 3)
  repeat
    local v = fn()
    if v then return v end
    task.sleep(0.02)
  until time.monotonic() > deadline
  return fn()
end

-- A URL for the same server and another database.
local function url_for(database, base)
  return ((base or server.url):gsub("/[^/]*$", "/" .. database))
end

local function connect(url, opts)
  return pg.connect(url or server.url, opts)
end

describe("pg", function()
  setup(function()
    server = postgres.start()
    work = exec.run({ "mktemp", "-d", "/tmp/tug-pg-spec.XXXXXX" }).stdout:gsub("%s+$", "")
  end)

  teardown(function()
    if server then server:stop() end
    if work then exec.run({ "rm", "-rf", work }) end
  end)

  describe("values", function()
    it("converts every common type to the Lua value a playbook expects", function()
      local conn <close> = connect()
      local rows, info = conn:query([==[
SELECT 9223372036854775807::int8 AS big, (-32768)::int2 AS small, 2147483647::int4 AS int,
       12345678901234567890.000000000001::numeric AS exact, 1.5::float8 AS f8, 0.25::float4 AS f4,
       'Infinity'::float8 AS inf, 'it''s "text"'::text AS t, 'v'::varchar AS vc, true AS yes, false AS no,
       NULL::text AS missing, '2024-01-02 03:04:05.123456+02'::timestamptz AS at,
       '2024-01-02 03:04:05'::timestamp AS local_at, '2024-02-29'::date AS day,
       '{"a": [1, 2, {}], "b": null, "n": 9007199254740993}'::jsonb AS doc, '[]'::json AS empty,
       ARRAY[1, NULL, 3] AS ints, ARRAY['a b', 'c"d', 'e\f', NULL] AS texts,
       ARRAY[[1, 2], [3, 4]] AS matrix, '{}'::int[] AS none, ARRAY[true, false] AS flags,
       ARRAY[1.5, 2]::numeric[] AS decimals, '\x00ff41'::bytea AS bytes,
       'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS id]==])
      local r = rows[1]
      assert.are.equal(1, #rows)
      assert.are.equal(9223372036854775807, r.big)
      assert.are.equal("integer", math.type(r.big))
      assert.are.equal(-32768, r.small)
      assert.are.equal(2147483647, r.int)
      assert.are.equal("12345678901234567890.000000000001", r.exact) -- exact, as a string
      assert.are.equal(1.5, r.f8)
      assert.are.equal("float", math.type(r.f8))
      assert.are.equal(0.25, r.f4)
      assert.are.equal(math.huge, r.inf)
      assert.are.equal('it\'s "text"', r.t)
      assert.are.equal("v", r.vc)
      assert.is_true(r.yes)
      assert.is_false(r.no)
      assert.is_nil(r.missing) -- NULL is nil in rows
      assert.are.equal("2024-01-02T01:04:05.123456Z", r.at)
      assert.are.equal("2024-01-02T03:04:05", r.local_at)
      assert.are.equal("2024-02-29", r.day)
      assert.are.equal(9007199254740993, r.doc.n)
      assert.are.equal(json.null, r.doc.b)
      assert.are.equal('{"a":[1,2,{}],"b":null,"n":9007199254740993}', json.encode(r.doc))
      assert.are.equal("[]", json.encode(r.empty))
      assert.are.same({ 1, json.null, 3 }, { r.ints[1], r.ints[2], r.ints[3] })
      assert.are.equal(3, #r.ints)
      assert.are.same({ "a b", 'c"d', "e\\f", json.null }, { r.texts[1], r.texts[2], r.texts[3], r.texts[4] })
      assert.are.equal("[[1,2],[3,4]]", json.encode(r.matrix))
      assert.are.equal("[]", json.encode(r.none))
      assert.are.equal("[true,false]", json.encode(r.flags))
      assert.are.equal('["1.5","2"]', json.encode(r.decimals))
      assert.are.equal("\0\255A", r.bytes)
      assert.are.equal("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", r.id)
      assert.are.equal("big", info.columns[1])
      assert.are.equal(25, #info.columns)
      assert.are.equal("SELECT 1", info.command)
      assert.are.equal(1, info.count)
    end)

    it("sends parameters as values, never as SQL: quotes and injections are stored verbatim", function()
      local conn <close> = connect()
      conn:exec("CREATE TABLE notes (id serial PRIMARY KEY, body text, doc jsonb, tags text[], n int8, f float8, ok bool)")
      local nasty = {
        "it's", [["double" quotes]], "'; DROP TABLE notes; --", "$1", "\\x00 backslash \\",
        "Robert'); DELETE FROM notes WHERE ('1'='1", "ünïcødé ✓", "",
      }
      for _, body in ipairs(nasty) do
        assert.are.equal(1, conn:exec("INSERT INTO notes (body) VALUES ($1)", body))
      end
      local rows = conn:query("SELECT body FROM notes ORDER BY id")
      assert.are.equal(#nasty, #rows)
      for i, body in ipairs(nasty) do assert.are.equal(body, rows[i].body) end
      -- tables go as JSON, pg.array as an array, numbers and booleans keep their meaning
      conn:exec("INSERT INTO notes (doc, tags, n, f, ok, body) VALUES ($1, $2, $3, $4, $5, $6)",
        { list = json.array({}), quote = "a'b" }, pg.array({ "x,y", 'q"uote', json.null }),
        9223372036854775807, 0.1, false, nil)
      local r = conn:row("SELECT doc, tags, n, f, ok, body FROM notes WHERE doc IS NOT NULL")
      assert.are.equal('{"list":[],"quote":"a\'b"}', json.encode(r.doc))
      assert.are.equal('["x,y","q\\"uote",null]', json.encode(r.tags))
      assert.are.equal(9223372036854775807, r.n)
      assert.are.equal(0.1, r.f)
      assert.is_false(r.ok)
      assert.is_nil(r.body)
      assert.are.equal(json.null == nil, false)
      assert.are.equal(#nasty + 1, conn:value("SELECT count(*) FROM notes"))
      conn:exec("DROP TABLE notes")
    end)

    it("runs several statements in one string when there are no parameters (a migration file)", function()
      local conn <close> = connect()
      local n, info = conn:exec([[
CREATE TABLE multi (id int);
INSERT INTO multi VALUES (1), (2), (3);
DO $$ BEGIN RAISE NOTICE 'migrated %', 3; END $$;
UPDATE multi SET id = id + 10 WHERE id > 1;]])
      assert.are.equal(2, n)
      assert.are.equal("UPDATE 2", info.command)
      assert.are.same({ "NOTICE: migrated 3" }, { table.unpack(info.notices) })
      assert.are.equal(13, conn:value("SELECT max(id) FROM multi"))
      conn:exec("DROP TABLE multi")
    end)
  end)

  describe("errors", function()
    it("raises a pg error with the SQLSTATE, the server's fields and the statement's first line", function()
      local conn <close> = connect()
      conn:exec("CREATE TABLE uniq (id int PRIMARY KEY)")
      conn:exec("INSERT INTO uniq VALUES (1)")
      local ok, err = pcall(conn.exec, conn, "INSERT INTO uniq VALUES ($1)\n-- second line", 1)
      assert.is_false(ok)
      assert.are.equal("pg", err.kind)
      assert.are.equal("23505", err.sqlstate)
      assert.are.equal("uniq_pkey", err.constraint)
      assert.are.equal("Key (id)=(1) already exists.", err.detail)
      assert.are.equal("INSERT INTO uniq VALUES ($1)", err.doing)
      assert.are.equal('pg: INSERT INTO uniq VALUES ($1): duplicate key value violates unique '
        .. 'constraint "uniq_pkey" (SQLSTATE 23505)', tostring(err))
      ok, err = pcall(conn.query, conn, "SELEC 1")
      assert.are.equal("42601", err.sqlstate)
      assert.are.equal(1, err.position)
      assert.matches("syntax error", err.message)
      -- the connection is still usable after errors
      assert.are.equal(1, conn:value("SELECT 1"))
      conn:exec("DROP TABLE uniq")
    end)

    it("says which server it could not reach, and rejects bad URLs and arguments clearly", function()
      local ok, err = pcall(pg.connect, "postgresql://postgres@127.0.0.1:1/postgres")
      assert.is_false(ok)
      assert.are.equal("pg", err.kind)
      assert.matches("pg: connecting to postgres@127.0.0.1:1/postgres: .*refused", err.message)
      ok, err = pcall(pg.connect, "postgresql://h/db?bogus=1")
      assert.matches("invalid connection URL", tostring(err))
      ok, err = pcall(function()
        local conn = pg.connect(42)
        return conn
      end)
      assert.matches("pg_spec.lua:%d+: pg.connect: url must be a string", err)
      ok, err = pcall(pg.connect, server.url, { time_out = 1 })
      assert.matches("unknown option 'time_out'", err)
      local conn <close> = connect()
      ok, err = pcall(conn.query, conn, "SELECT $1", function() end)
      assert.matches("parameter $1 is a function", err)
      ok, err = pcall(conn.query, conn, { "SELECT 1", timeot = 1 })
      assert.matches("unknown option 'timeot'", err)
    end)

    it("closes idempotently, with __close and __gc, and refuses to use a closed connection", function()
      local conn = connect()
      assert.matches("^pg.connection postgres@127.0.0.1:%d+/postgres %(idle%)$", tostring(conn))
      conn:close()
      conn:close()
      assert.matches("%(closed%)$", tostring(conn))
      local ok, err = pcall(conn.query, conn, "SELECT 1")
      assert.is_false(ok)
      assert.matches("the connection is closed", err)
      local pid
      do
        local scoped <close> = connect()
        pid = scoped:info().backend_pid
      end
      local other <close> = connect()
      assert.is_true(eventually(function()
        return other:value("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid) == 0
      end))
      for _ = 1, 20 do connect() end -- dropped without close: __gc closes them
      collectgarbage()
      collectgarbage()
      assert.is_true(eventually(function()
        return other:value("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'") <= 2
      end))
    end)
  end)

  describe("tasks", function()
    it("runs statements from several tasks on one connection, in order, each getting its own result", function()
      local conn <close> = connect()
      local fns = {}
      for i = 1, 20 do
        fns[i] = function() return conn:value("SELECT $1::int * 10 AS v", i) end
      end
      local results = { task.parallel(fns) }
      for i = 1, 20 do assert.are.equal(i * 10, results[i]) end
    end)

    it("runs statements on several connections at the same time", function()
      local conns = {}
      for i = 1, 5 do conns[i] = connect() end
      local took = elapsed(function()
        local fns = {}
        for i = 1, 5 do fns[i] = function() return conns[i]:exec("SELECT pg_sleep(0.4)") end end
        task.parallel(fns)
      end)
      for i = 1, 5 do conns[i]:close() end
      assert.is_true(took < 1.6, "five 0.4 s sleeps took " .. took .. " s")
    end)

    it("drops a queued statement whose task was cancelled before it was sent", function()
      local conn <close> = connect()
      conn:exec("CREATE TABLE queued (id int)")
      local busy = task.spawn(function() return conn:exec("SELECT pg_sleep(0.3)") end)
      local queued = task.spawn(function() return conn:exec("INSERT INTO queued VALUES (1)") end)
      task.sleep(0.05)
      queued:cancel()
      busy:wait()
      assert.are.equal("cancelled", queued:status())
      assert.are.equal(0, conn:value("SELECT count(*) FROM queued"))
      conn:exec("DROP TABLE queued")
    end)
  end)

  describe("timeouts and cancellation", function()
    it("cancels a statement after a per-call timeout and keeps the connection usable", function()
      local conn <close> = connect()
      local took, ok, err = elapsed(pcall, conn.query, conn, { "SELECT pg_sleep(5)", timeout = "200ms" })
      assert.is_false(ok)
      assert.is_true(err.timed_out)
      assert.are.equal("57014", err.sqlstate)
      assert.matches("pg: SELECT pg_sleep%(5%): timed out after 0.2s", err.message)
      assert.is_true(took < 2, "took " .. took)
      assert.are.equal(7, conn:value("SELECT 7"))
    end)

    it("applies a connection-wide timeout and the server's statement_timeout", function()
      local conn <close> = connect(nil, { timeout = 0.2 })
      local ok, err = pcall(conn.exec, conn, "SELECT pg_sleep(3)")
      assert.is_true(err.timed_out)
      local server_side <close> = connect(nil, { statement_timeout = "150ms" })
      assert.are.equal("150ms", server_side:value("SHOW statement_timeout"))
      ok, err = pcall(server_side.exec, server_side, "SELECT pg_sleep(3)")
      assert.is_false(ok)
      assert.is_true(err.timed_out)
      assert.are.equal("57014", err.sqlstate)
      assert.matches("statement timeout", err.message)
    end)

    it("sends a cancel to the server when the waiting task is cancelled, and drains the result", function()
      local conn <close> = connect()
      local other <close> = connect()
      local pid = conn:info().backend_pid
      local ok, err = pcall(task.timeout, 0.2, conn.exec, conn, "SELECT pg_sleep(30)")
      assert.is_false(ok)
      assert.are.equal("timeout", err.kind)
      -- the server stopped sleeping: nothing runs on that backend any more
      assert.is_true(eventually(function()
        return other:value("SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active'", pid) == 0
      end))
      local took, value = elapsed(conn.value, conn, "SELECT 'after' AS v")
      assert.are.equal("after", value)
      assert.is_true(took < 1, "the next statement waited " .. took .. " s")
    end)

    it("gives up connecting after connect_timeout to a server that never answers", function()
      -- a listener that accepts connections and never says a word
      local silent = exec.spawn({ "/usr/bin/python3", "-c", [[
import socket, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(16)
print(s.getsockname()[1], flush=True)
held = []
while True:
    c, _ = s.accept(); held.append(c)
]] }, { lines = true })
      local port = task.timeout(10, silent.next_lines, silent)[1].line
      local took, ok, err = elapsed(pcall, pg.connect, ("postgresql://u@127.0.0.1:%s/db"):format(port),
        { connect_timeout = 0.3 })
      silent:kill("KILL")
      silent:wait()
      silent:close()
      assert.is_false(ok)
      assert.are.equal("pg", err.kind)
      assert.are.equal(("pg: connecting to u@127.0.0.1:%s/db: timed out after 0.3s"):format(port), err.message)
      assert.is_true(err.timed_out)
      assert.is_true(took >= 0.25 and took < 2, "took " .. took)
    end)

    it("drops the connection when the server does not answer a cancel within cancel_grace", function()
      local conn <close> = connect(nil, { cancel_grace = 0.3 })
      local pid = conn:info().backend_pid
      exec.run({ "kill", "-STOP", tostring(pid) })
      local took, ok, err = elapsed(pcall, conn.query, conn, { "SELECT 1", timeout = 0.2 })
      exec.run({ "kill", "-CONT", tostring(pid) })
      assert.is_false(ok)
      assert.is_true(err.timed_out)
      assert.is_true(err.connection_lost)
      assert.matches("pg: SELECT 1: timed out after 0.2s; the server did not answer the cancel request "
        .. "within 0.3s, so the connection was dropped; the connection is lost", err.message)
      assert.is_true(took >= 0.45 and took < 2, "took " .. took)
      conn:reconnect()
      assert.are.equal(1, conn:value("SELECT 1"))
    end)

    it("fails the statements of other tasks when the connection is closed under them", function()
      local conn = connect()
      local other <close> = connect()
      local waiting = task.spawn(function() return pcall(conn.exec, conn, "SELECT pg_sleep(5)") end)
      task.sleep(0.1)
      local pid = conn:info().backend_pid
      conn:close()
      local ok, err = waiting:wait()
      assert.is_false(ok)
      assert.are.equal("pg: SELECT pg_sleep(5): the connection was closed", err.message)
      -- the statement was cancelled on the server rather than left running
      assert.is_true(eventually(function()
        return other:value("SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active'", pid) == 0
      end))
    end)

    it("refuses COPY to and from the client but stays usable", function()
      local conn <close> = connect()
      conn:exec("CREATE TABLE copied (id int)")
      local ok, err = pcall(conn.query, conn, "COPY (SELECT g FROM generate_series(1, 1000) g) TO STDOUT")
      assert.is_false(ok)
      assert.matches("COPY TO STDOUT is not supported", err.message)
      ok, err = pcall(conn.exec, conn, "COPY copied FROM STDIN")
      assert.is_false(ok)
      assert.matches("COPY FROM STDIN is not supported", err.message)
      assert.are.equal(0, conn:value("SELECT count(*) FROM copied"))
      conn:exec("DROP TABLE copied")
    end)
  end)

  describe("transactions", function()
    it("commits on success, rolls back on error, and nests with savepoints", function()
      local conn <close> = connect()
      conn:exec("CREATE TABLE accounts (name text PRIMARY KEY, balance int)")
      local result = conn:transaction(function(tx)
        tx:exec("INSERT INTO accounts VALUES ('a', 100), ('b', 0)")
        return "done"
      end)
      assert.are.equal("done", result)
      local ok, err = pcall(conn.transaction, conn, function(tx)
        tx:exec("UPDATE accounts SET balance = balance - 50 WHERE name = 'a'")
        error("transfer refused")
      end)
      assert.is_false(ok)
      assert.matches("transfer refused", err)
      assert.are.equal(100, conn:value("SELECT balance FROM accounts WHERE name = 'a'"))
      conn:transaction(function(tx)
        tx:exec("UPDATE accounts SET balance = 90 WHERE name = 'a'")
        pcall(tx.transaction, tx, function(inner)
          inner:exec("UPDATE accounts SET balance = 0 WHERE name = 'a'")
          inner:exec("INSERT INTO accounts VALUES ('a', 1)") -- fails: the savepoint rolls back
        end)
      end)
      assert.are.equal(90, conn:value("SELECT balance FROM accounts WHERE name = 'a'"))
      assert.are.equal("idle", conn:info().transaction)
      conn:exec("DROP TABLE accounts")
    end)

    it("refuses to report a commit when a failed statement was caught inside the transaction", function()
      local conn <close> = connect()
      conn:exec("CREATE TABLE aborted (id int PRIMARY KEY)")
      local ok, err = pcall(conn.transaction, conn, function(tx)
        tx:exec("INSERT INTO aborted VALUES (1)")
        pcall(tx.exec, tx, "INSERT INTO aborted VALUES (1)")
      end)
      assert.is_false(ok)
      assert.matches("the transaction was rolled back", err.message)
      assert.are.equal(0, conn:value("SELECT count(*) FROM aborted"))
      conn:exec("DROP TABLE aborted")
    end)

    it("keeps other tasks' statements out of a transaction until it ends", function()
      local conn <close> = connect()
      conn:exec("CREATE TABLE owned (id int)")
      local events = {}
      local writer = task.spawn(function()
        conn:transaction(function(tx)
          tx:exec("INSERT INTO owned VALUES (1)")
          task.sleep(0.2)
          events[#events + 1] = "commit"
        end)
      end)
      task.sleep(0.05)
      -- sent while the transaction is open: it waits, so it sees the committed row
      local seen = conn:value("SELECT count(*) FROM owned")
      events[#events + 1] = "read"
      writer:wait()
      assert.are.same({ "commit", "read" }, events)
      assert.are.equal(1, seen)
      -- two tasks' transactions on one connection take turns instead of nesting
      local function add(id)
        return function()
          return conn:transaction(function(tx)
            tx:exec("INSERT INTO owned VALUES ($1)", id)
            task.sleep(0.05)
            return tx:value("SELECT count(*) FROM owned")
          end)
        end
      end
      local a, b = task.parallel({ add(2), add(3) })
      assert.are.same({ 2, 3 }, { a, b })
      assert.are.equal(3, conn:value("SELECT count(*) FROM owned"))
      conn:exec("DROP TABLE owned")
    end)

    it("rolls back when the task is cancelled in the middle of a transaction", function()
      local conn <close> = connect()
      conn:exec("CREATE TABLE cancelled_tx (id int)")
      pcall(task.timeout, 0.2, conn.transaction, conn, function(tx)
        tx:exec("INSERT INTO cancelled_tx VALUES (1)")
        tx:exec("SELECT pg_sleep(10)")
      end)
      assert.are.equal(0, conn:value("SELECT count(*) FROM cancelled_tx"))
      assert.are.equal("idle", conn:info().transaction)
      conn:exec("DROP TABLE cancelled_tx")
    end)
  end)

  describe("a server restart", function()
    it("fails the statement in flight with a clear error, and reconnect opens a new session", function()
      local conn <close> = connect()
      local idle <close> = connect()
      conn:exec("CREATE TABLE survives (id int)")
      conn:exec("INSERT INTO survives VALUES (1)")
      local before = conn:info().backend_pid
      local running = task.spawn(function() return pcall(conn.query, conn, "SELECT pg_sleep(10)") end)
      task.sleep(0.2)
      server:restart()
      local ok, err = running:wait()
      assert.is_false(ok)
      assert.are.equal("pg", err.kind)
      assert.is_true(err.connection_lost)
      assert.matches("pg: SELECT pg_sleep%(10%): .*the connection is lost: conn:reconnect%(%) opens a new session",
        err.message)
      assert.matches("%(lost%)$", tostring(conn))
      -- an idle connection notices too, the next time it is used
      ok, err = pcall(idle.value, idle, "SELECT 1")
      assert.is_false(ok)
      assert.is_true(err.connection_lost)
      conn:reconnect()
      idle:reconnect()
      assert.are_not.equal(before, conn:info().backend_pid)
      local busy = task.spawn(function() return conn:exec("SELECT pg_sleep(0.2)") end)
      task.sleep(0.05)
      local refused, why = pcall(conn.reconnect, conn)
      assert.is_false(refused)
      assert.matches("statements are still running on this connection", why)
      busy:wait()
      assert.are.equal(1, conn:value("SELECT count(*) FROM survives"))
      assert.are.equal(1, idle:value("SELECT 1"))
      conn:exec("DROP TABLE survives")
    end)
  end)

  describe("advisory locks", function()
    it("keeps a second tug process out while the first holds the lock", function()
      local holder = exec.spawn({ child.tug, "lua", "-e", [[
        local conn = pg.connect(os.getenv("PG_URL"), { application_name = "first-migration" })
        pg.advisory_lock(conn, "migrations")
        print("locked") io.stdout:flush()
        task.sleep(1.2)
        conn:close()
      ]] }, { env = { PG_URL = server.url }, lines = true })
      local lines = task.timeout(10, holder.next_lines, holder)
      assert.are.equal("locked", lines and lines[1] and lines[1].line)

      local conn <close> = connect()
      assert.is_false(pg.try_advisory_lock(conn, "migrations"))
      local ok, err = pcall(pg.advisory_lock, conn, "migrations", { timeout = 0.2 })
      assert.is_false(ok)
      assert.is_true(err.timed_out)
      assert.matches("pg: advisory lock 'migrations': not acquired within 200ms %(held by pid %d+, first%-migration",
        err.message)
      assert.are.equal("first-migration", err.holder.application_name)
      -- waits for the other process to let go, then holds it
      local took = elapsed(pg.advisory_lock, conn, "migrations", { timeout = 10 })
      assert.is_true(took > 0.3, "got the lock after " .. took .. " s")
      assert.are.equal(0, holder:wait().code)
      holder:close()
      assert.is_true(pg.advisory_unlock(conn, "migrations"))
      assert.is_false(pg.advisory_unlock(conn, "migrations"))
    end)

    it("releases the lock after with_advisory_lock, even when the function fails", function()
      local conn <close> = connect()
      local other <close> = connect()
      local seen = pg.with_advisory_lock(conn, 42, function()
        return pg.try_advisory_lock(other, 42)
      end)
      assert.is_false(seen)
      assert.is_true(pg.try_advisory_lock(other, 42))
      pg.advisory_unlock(other, 42)
      local ok = pcall(pg.with_advisory_lock, conn, 42, function() error("migration failed") end)
      assert.is_false(ok)
      assert.is_true(pg.try_advisory_lock(other, 42))
    end)
  end)

  describe("backups", function()
    local shop_url

    setup(function()
      local admin <close> = connect()
      admin:exec("CREATE DATABASE shop OWNER app")
      shop_url = url_for("shop", server.app_url)
      local shop <close> = connect(shop_url)
      shop:exec([[
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE orders (id serial PRIMARY KEY, customer int REFERENCES customers, total numeric NOT NULL,
                     placed_at timestamptz NOT NULL DEFAULT now());
INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 10) g;
INSERT INTO orders (customer, total) SELECT 1 + g % 10, g * 1.25 FROM generate_series(1, 100) g;]])
    end)

    it("dumps, survives a dropped database and restores with the data intact", function()
      local file = work .. "/shop.dump"
      -- under umask 000, the dump holding every row is still owner-only
      local r = exec.run({ "sh", "-c", 'umask 000; exec "$@"', "sh", child.tug, "lua", "-e",
        "print(json.encode(pg.dump(...)))", shop_url, file })
      assert.are.equal(0, r.code, r.stderr)
      local dump = json.decode(r.stdout)
      assert.are.equal(384, tug.sys.stat(file).mode) -- 0600
      assert.are.equal(file, dump.file)
      assert.are.equal("custom", dump.format)
      assert.is_true(dump.bytes > 0)
      -- an independent SHA-256 of the same file
      local digest = exec.run({ "openssl", "dgst", "-sha256", "-r", file }).stdout:match("^(%x+)")
      assert.are.equal(digest, dump.checksum)

      local admin <close> = connect()
      admin:exec("DROP DATABASE shop WITH (FORCE)")
      admin:exec("CREATE DATABASE shop OWNER app")
      -- a dump that does not match its checksum is refused before anything happens
      local ok, err = pcall(pg.restore, shop_url, file, { checksum = string.rep("0", 64) })
      assert.is_false(ok)
      assert.matches("refusing to restore", err.message)
      local restored = pg.restore(shop_url, file, { checksum = dump.checksum })
      assert.are.equal("custom", restored.format)
      local shop <close> = connect(shop_url)
      assert.are.equal(100, shop:value("SELECT count(*) FROM orders"))
      assert.are.equal("6312.50", shop:value("SELECT sum(total) FROM orders"))
      assert.are.equal(10, shop:value("SELECT count(*) FROM customers"))
    end)

    it("restores over existing objects with clean, and plain SQL dumps through psql", function()
      local file = work .. "/shop.sql"
      local dump = pg.dump(shop_url, file, { format = "plain" })
      assert.are.equal("plain", dump.format)
      local shop <close> = connect(shop_url)
      shop:exec("DELETE FROM orders WHERE id > 50")
      local custom = work .. "/shop-clean.dump"
      local admin <close> = connect()
      admin:exec("CREATE DATABASE shop_copy OWNER app")
      pg.restore(url_for("shop_copy", server.app_url), file)
      local copy <close> = connect(url_for("shop_copy", server.app_url))
      assert.are.equal(100, copy:value("SELECT count(*) FROM orders"))
      copy:close()
      pg.dump(url_for("shop_copy", server.app_url), custom)
      pg.restore(shop_url, custom, { clean = true })
      assert.are.equal(100, shop:value("SELECT count(*) FROM orders"))
      admin:exec("DROP DATABASE shop_copy WITH (FORCE)")
    end)

    it("verifies a backup in a scratch database and drops it afterwards", function()
      local file = work .. "/verify.dump"
      pg.dump(shop_url, file)
      local result = pg.verify_restore(file, {
        url = server.url,
        tables = { orders = 100, "customers" },
        query = "SELECT count(*) = 100 AS all_orders, bool_and(total > 0) AS positive_totals FROM orders",
      })
      assert.is_true(result.ok, table.concat(result.failures, "; "))
      assert.are.same({ orders = 100, customers = 10 }, result.tables)
      assert.is_true(result.rows[1].all_orders)
      local admin <close> = connect()
      assert.are.equal(0, admin:value("SELECT count(*) FROM pg_database WHERE datname = $1", result.database))

      local bad = pg.verify_restore(file, {
        url = server.url,
        tables = { orders = 99, "missing_table" },
        query = "SELECT bool_and(total > 100) AS all_large FROM orders",
      })
      assert.is_false(bad.ok)
      assert.are.same({ "table missing_table: relation \"missing_table\" does not exist",
        "table orders: 100 rows, expected 99", "query: column all_large is false" }, bad.failures)
      assert.are.equal(0, admin:value("SELECT count(*) FROM pg_database WHERE datname = $1", bad.database))

      local corrupt = work .. "/corrupt.dump"
      local f = assert(io.open(corrupt, "wb"))
      f:write("PGDMP not really a dump")
      f:close()
      local broken = pg.verify_restore(corrupt, { url = server.url, tables = { "orders" } })
      assert.is_false(broken.ok)
      assert.matches("pg_restore exited with code 1", broken.failures[1])
      assert.are.equal(0, admin:value("SELECT count(*) FROM pg_database WHERE datname = $1", broken.database))
    end)

    it("drops the scratch database even when the verifying task is cancelled", function()
      local file = work .. "/cancelled.dump"
      pg.dump(shop_url, file)
      local ok, err = pcall(task.timeout, 0.5, pg.verify_restore, file, { url = server.url,
        database = "tug_verify_cancelled", query = "SELECT pg_sleep(10) IS NULL AS slept" })
      assert.is_false(ok)
      assert.are.equal("timeout", err.kind)
      local admin <close> = connect()
      assert.is_true(eventually(function()
        return admin:value("SELECT count(*) FROM pg_database WHERE datname = 'tug_verify_cancelled'") == 0
      end, 5))
    end)

    it("refuses a verification without the right to create databases, and a missing file", function()
      local ok, err = pcall(pg.verify_restore, work .. "/verify.dump", { url = server.app_url, tables = { "orders" } })
      assert.is_false(ok)
      assert.are.equal("42501", err.sqlstate)
      assert.matches("permission denied to create database", err.message)
      ok, err = pcall(pg.restore, shop_url, work .. "/no-such.dump")
      assert.is_false(ok)
      assert.matches("no%-such.dump: no such file", err.message)
    end)

    it("reports a failing pg_dump as a pg error with its stderr", function()
      local ok, err = pcall(pg.dump, url_for("no_such_db"), work .. "/none.dump")
      assert.is_false(ok)
      assert.are.equal("pg", err.kind)
      assert.matches("pg: dumping postgres@127.0.0.1:%d+/no_such_db to .*none.dump: pg_dump exited with code 1", err.message)
      assert.matches('database "no_such_db" does not exist', err.message)
    end)
  end)

  describe("migration tables", function()
    it("reads Prisma's _prisma_migrations: applied, failed and rolled back", function()
      local admin <close> = connect()
      admin:exec("CREATE DATABASE prisma_app")
      local conn <close> = connect(url_for("prisma_app"))
      local before = pg.migrations.prisma(conn)
      assert.is_false(before.exists)
      -- the table exactly as Prisma creates it
      conn:exec([[
CREATE TABLE "_prisma_migrations" (
    "id" VARCHAR(36) NOT NULL,
    "checksum" VARCHAR(64) NOT NULL,
    "finished_at" TIMESTAMPTZ,
    "migration_name" VARCHAR(255) NOT NULL,
    "logs" TEXT,
    "rolled_back_at" TIMESTAMPTZ,
    "started_at" TIMESTAMPTZ NOT NULL DEFAULT now(),
    "applied_steps_count" INTEGER NOT NULL DEFAULT 0,
    CONSTRAINT "_prisma_migrations_pkey" PRIMARY KEY ("id")
);]])
      local insert = [[INSERT INTO _prisma_migrations (id, checksum, migration_name, logs, started_at,
        finished_at, rolled_back_at, applied_steps_count) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)]]
      conn:exec(insert, "a1", "c1", "20240101120000_init", nil, "2024-01-01T12:00:00Z", "2024-01-01T12:00:01Z", nil, 1)
      conn:exec(insert, "a2", "c2", "20240115090000_add_orders", nil, "2024-01-15T09:00:00Z", "2024-01-15T09:00:02Z", nil, 1)
      local mid = pg.migrations.prisma(conn)
      conn:exec(insert, "a3", "c3", "20240201100000_add_user_preferences", "column exists",
        "2024-02-01T10:00:00Z", nil, "2024-02-01T10:05:00Z", 0)
      conn:exec(insert, "a4", "c3", "20240201100000_add_user_preferences", nil,
        "2024-02-01T10:10:00Z", "2024-02-01T10:10:01Z", nil, 1)
      conn:exec(insert, "a5", "c5", "20240220080000_experiment", "bad idea", "2024-02-20T08:00:00Z",
        nil, "2024-02-20T08:01:00Z", 0)
      conn:exec(insert, "a6", "c6", "20240301080000_add_index", "ERROR: could not create unique index",
        "2024-03-01T08:00:00Z", nil, nil, 0)
      local status = pg.migrations.prisma(conn, { expected = { "20240101120000_init",
        "20240301080000_add_index", "20240401000000_next" } })
      assert.is_true(status.exists)
      assert.are.same({ "20240101120000_init", "20240115090000_add_orders",
        "20240201100000_add_user_preferences" }, status.applied)
      assert.are.same({ "20240301080000_add_index" }, status.failed)
      assert.are.same({ "20240220080000_experiment" }, status.rolled_back)
      assert.are.same({ "20240301080000_add_index", "20240401000000_next" }, status.pending)
      assert.are.equal("20240201100000_add_user_preferences", status.latest)
      assert.is_false(status.ok)
      local index = status.migrations[5]
      assert.are.equal("20240301080000_add_index", index.name)
      assert.are.equal("failed", index.status)
      assert.are.equal("ERROR: could not create unique index", index.logs)
      assert.are.equal("2024-03-01T08:00:00Z", index.started_at)
      assert.are.equal(2, status.migrations[3].attempts)
      -- what the deploy did, and which version a rollback must reach
      local diff = pg.migrations.diff(mid, status)
      assert.are.same({ "20240201100000_add_user_preferences" }, diff.applied)
      assert.are.same({ "20240301080000_add_index" }, diff.failed)
      assert.are.equal("20240115090000_add_orders", mid.latest)
      conn:close()
      admin:exec("DROP DATABASE prisma_app WITH (FORCE)")
    end)

    it("reads a generic version table, with presets for common tools", function()
      local conn <close> = connect()
      assert.is_false(pg.migrations.versions(conn, "rails").exists)
      conn:exec([[CREATE TABLE schema_migrations (version bigint PRIMARY KEY, dirty boolean NOT NULL);
        INSERT INTO schema_migrations VALUES (20240101120000, false)]])
      local s = pg.migrations.versions(conn, "golang-migrate")
      assert.are.same({ "20240101120000" }, s.versions)
      assert.are.equal("20240101120000", s.current)
      assert.is_false(s.dirty)
      conn:exec("UPDATE schema_migrations SET dirty = true")
      assert.is_true(pg.migrations.versions(conn, "golang-migrate").dirty)
      conn:exec([[CREATE TABLE flyway_schema_history (installed_rank int, version text, success bool);
        INSERT INTO flyway_schema_history VALUES (1, '1', true), (2, '2', true), (3, NULL, true), (4, '3', false)]])
      local f = pg.migrations.versions(conn, "flyway")
      assert.are.same({ "1", "2" }, f.versions)
      assert.are.same({ "3" }, f.failed)
      assert.are.equal("2", f.current)
      local custom = pg.migrations.versions(conn, { table = "flyway_schema_history", column = "installed_rank" })
      assert.are.equal("4", custom.current)
      local ok, err = pcall(pg.migrations.versions, conn, "liquibase")
      assert.matches("unknown preset 'liquibase'", err)
      conn:exec("DROP TABLE schema_migrations; DROP TABLE flyway_schema_history")
    end)
  end)

  describe("health and metrics", function()
    it("pings with a round-trip time, and reports an unreachable server as a value", function()
      local up = pg.health.ping(server.url)
      assert.is_true(up.ok)
      assert.is_true(up.rtt > 0 and up.rtt < 1)
      assert.matches("^15%.", up.server_version)
      assert.is_false(up.standby)
      local down = pg.health.ping("postgresql://postgres@127.0.0.1:1/postgres", { timeout = 1 })
      assert.is_false(down.ok)
      assert.are.equal("pg", down.error)
      assert.matches("refused", down.message)
    end)

    it("counts connections in use against max_connections", function()
      local conn <close> = connect()
      local extra = {}
      for i = 1, 4 do extra[i] = connect() end
      local c = pg.health.connections(conn)
      for i = 1, 4 do extra[i]:close() end
      assert.are.equal(50, c.max)
      assert.is_true(c.in_use >= 5, "in use: " .. c.in_use)
      assert.are.equal(c.in_use / 50, c.utilisation)
      assert.are.equal(c.max - c.reserved - c.in_use, c.available)
      assert.is_true(c.active >= 1)
    end)

    it("finds long-running and blocked statements", function()
      local conn <close> = connect()
      local a <close> = connect()
      local b <close> = connect()
      conn:exec("CREATE TABLE contended (id int PRIMARY KEY, v int); INSERT INTO contended VALUES (1, 0)")
      local a_pid, b_pid = a:info().backend_pid, b:info().backend_pid
      a:exec("BEGIN")
      a:exec("UPDATE contended SET v = 1 WHERE id = 1")
      local waiting = task.spawn(function() return b:exec("UPDATE contended SET v = 2 WHERE id = 1") end)
      local blocked = eventually(function()
        local rows = pg.health.blocked(conn)
        return #rows > 0 and rows[1].wait_event_type and rows
      end)
      assert.are.equal(b_pid, blocked[1].pid)
      assert.are.same({ a_pid }, { table.unpack(blocked[1].blocked_by) })
      assert.are.equal("Lock", blocked[1].wait_event_type)
      assert.matches("UPDATE contended SET v = 2", blocked[1].query)
      task.sleep(0.3)
      local long = pg.health.long_running(conn, { min_duration = "200ms" })
      local pids = {}
      for _, r in ipairs(long) do pids[r.pid] = r end
      assert.is_not_nil(pids[b_pid])
      assert.is_true(pids[b_pid].seconds >= 0.2)
      assert.is_not_nil(pids[a_pid]) -- idle in transaction for too long counts too
      assert.are.equal("idle in transaction", pids[a_pid].state)
      assert.are.same({}, pg.health.long_running(conn, { min_duration = "1h" }))
      a:exec("COMMIT")
      assert.are.equal(1, waiting:wait())
      conn:exec("DROP TABLE contended")
    end)

    it("reports the slow-query share from pg_stat_statements, or that it is not installed", function()
      local conn <close> = connect()
      local missing = pg.health.slow_queries(conn)
      assert.is_false(missing.installed)
      assert.matches("pg_stat_statements is not installed in database postgres", missing.reason)
      conn:exec("CREATE EXTENSION pg_stat_statements")
      conn:exec("SELECT pg_stat_statements_reset()")
      for _ = 1, 3 do conn:exec("SELECT pg_sleep(0.03)") end
      for i = 1, 17 do conn:value("SELECT $1::int + 1", i) end
      local slow = pg.health.slow_queries(conn, { threshold = "20ms" })
      assert.is_true(slow.installed)
      assert.are.equal(3, slow.slow_calls)
      assert.is_true(slow.calls >= 20)
      assert.is_true(slow.share > 0 and slow.share <= 3 / 20)
      assert.matches("pg_sleep", slow.top[1].query)
      assert.is_true(slow.top[1].mean_seconds >= 0.03)
      local report = pg.health.check(conn, { slow_threshold = "20ms", slow_share = 0.01 })
      assert.is_false(report.ok)
      assert.matches("^slow queries: ", report.problems[1])
      assert.is_true(pg.health.check(conn, { slow_threshold = "20ms", slow_share = 0.9 }).ok)
      conn:exec("DROP EXTENSION pg_stat_statements")
    end)

    it("reports replication lag on a primary and on its standby", function()
      local standby = server:standby({ preload = false })
      local ok, err = pcall(function()
        local primary <close> = connect()
        local replica <close> = connect(standby.url)
        primary:exec("CREATE TABLE replicated (id int); INSERT INTO replicated VALUES (1)")
        local on_primary = eventually(function()
          local r = pg.health.replication(primary)
          return r.replicas[1] and r.replicas[1].state == "streaming" and r.replicas[1].lag_bytes and r
        end, 10)
        assert.are.equal("primary", on_primary.role)
        assert.are.equal(1, #on_primary.replicas)
        assert.is_number(on_primary.lag)
        assert.is_true(on_primary.replicas[1].lag_bytes >= 0)
        local on_standby = eventually(function()
          local r = pg.health.replication(replica)
          return r.caught_up and r
        end, 10)
        assert.are.equal("standby", on_standby.role)
        assert.are.equal("streaming", on_standby.receiver)
        assert.are.equal(0, on_standby.lag)
        assert.is_true(pg.health.ping(standby.url).standby)
        -- the extension replicates, but this standby does not load its library
        primary:exec("CREATE EXTENSION pg_stat_statements")
        local unloaded = eventually(function()
          local r = pg.health.slow_queries(replica)
          return r.reason and r.reason:find("must be loaded", 1, true) and r
        end, 5)
        assert.is_false(unloaded.installed)
        assert.matches("must be loaded via shared_preload_libraries", unloaded.reason)
        primary:exec("DROP EXTENSION pg_stat_statements")
        assert.are.equal(1, eventually(function()
          local seen, n = pcall(replica.value, replica, "SELECT count(*) FROM replicated")
          return seen and n
        end, 5))
        primary:exec("DROP TABLE replicated")
      end)
      standby:stop()
      if not ok then error(err, 0) end
    end)
  end)

  describe("secrets", function()
    it("reports a wrong password clearly, with the password nowhere in the output", function()
      local at = server.app_url:find(server.app_password, 1, true)
      local wrong = server.app_url:sub(1, at - 1) .. "Wr0ng-Secret-xyz"
        .. server.app_url:sub(at + #server.app_password)
      local r = child.lua([[
        local url = os.getenv("PG_URL")
        local ok, err = pcall(pg.connect, url)
        print(err.kind, err.message)
        log.error("connect failed", { url = url, err = err.message })
        print("url: " .. url)
        pg.connect(url) -- uncaught: the traceback goes to stderr
      ]], { env = { PG_URL = wrong } })
      assert.are.equal(1, r.code)
      local output = r.stdout .. r.stderr
      assert.matches('pg\tpg: connecting to app@127.0.0.1:%d+/postgres: .*password authentication failed for user "app"',
        r.stdout)
      assert.matches("url: %*%*%*", r.stdout)
      assert.is_nil(output:find("Wr0ng-Secret-xyz", 1, true), output)
      assert.is_nil(output:find(server.app_password, 1, true))
    end)

    it("connects with the right password and keeps it out of errors and plans", function()
      local r = child.lua([[
        local conn = pg.connect(os.getenv("PG_URL"))
        print(conn:value("SELECT current_user"))
        print(tostring(conn))
        local ok, err = pcall(conn.query, conn, "SELECT 1/0")
        print(err.message)
        print(os.getenv("PG_URL"))
      ]], { env = { PG_URL = server.app_url } })
      assert.are.equal(0, r.code, r.stderr)
      assert.matches("^app\n", r.stdout)
      assert.matches("division by zero", r.stdout)
      assert.is_nil((r.stdout .. r.stderr):find(server.app_password, 1, true))
    end)
  end)

  describe("plan mode", function()
    it("classifies statements: reads run, everything else is a write", function()
      local reads = {
        "SELECT 1", "  -- comment\n select * from t", "SHOW server_version", "VALUES (1)", "TABLE t",
        "EXPLAIN SELECT 1", "EXPLAIN (COSTS off) DELETE FROM t", "EXPLAIN ANALYZE SELECT 1",
        "WITH x AS (SELECT 1) SELECT * FROM x", "(SELECT 1) UNION (SELECT 2)",
        "SELECT 'DELETE FROM t; INSERT'", "SELECT 1; SELECT 2", "/* DROP */ SELECT \"update\" FROM t",
        "SELECT $$ DROP TABLE x $$",
      }
      local writes = {
        "INSERT INTO t VALUES (1)", "UPDATE t SET a = 1", "DELETE FROM t", "DROP TABLE t",
        "CREATE INDEX ON t (a)", "EXPLAIN ANALYZE DELETE FROM t", "EXPLAIN (ANALYZE) UPDATE t SET a = 1",
        "WITH gone AS (DELETE FROM t RETURNING *) SELECT * FROM gone", "SELECT * INTO copy FROM t",
        "SELECT 1; DROP TABLE t", "TRUNCATE t", "BEGIN", "SET search_path = x", "VACUUM", "CALL p()",
        "COPY t FROM '/tmp/x'", "GRANT SELECT ON t TO app", "ALTER TABLE t ADD COLUMN b int",
      }
      for _, sql in ipairs(reads) do assert.is_true(pg.is_read(sql), sql) end
      for _, sql in ipairs(writes) do assert.is_false(pg.is_read(sql), sql) end
    end)

    it("records a write instead of doing it, while a read runs", function()
      local conn <close> = connect()
      conn:exec("CREATE TABLE planned (id int)")
      tug.plan.take()
      tug.plan.set(true)
      local ok, err = pcall(function()
        local n, info = conn:exec("INSERT INTO planned VALUES ($1)", 7)
        assert.are.equal(0, n)
        assert.is_true(info.planned)
        local rows = conn:query("DELETE FROM planned RETURNING *")
        assert.are.equal(0, #rows)
        assert.are.equal(0, conn:value("SELECT count(*) FROM planned")) -- a read runs
        assert.is_true(pg.try_advisory_lock(conn, "planned")) -- recorded, not taken
        local dump = pg.dump(server.url, work .. "/planned.dump")
        assert.is_true(dump.planned)
      end)
      local records = tug.plan.take()
      tug.plan.set(false)
      if not ok then error(err, 0) end
      assert.are.equal(4, #records)
      assert.are.equal("pg", records[1].module)
      assert.matches("^exec on postgres@127.0.0.1:%d+/postgres: INSERT INTO planned VALUES %(%$1%)$", records[1].summary)
      assert.matches("%$1 = 7", records[1].detail)
      assert.matches("^query on .*DELETE FROM planned", records[2].summary)
      assert.matches("^advisory lock 'planned'", records[3].summary)
      assert.matches("^dump postgres@.* to .*planned.dump", records[4].summary)
      assert.are.equal(0, conn:value("SELECT count(*) FROM planned"))
      assert.is_nil(io.open(work .. "/planned.dump"))
      assert.is_true(pg.try_advisory_lock(conn, "planned"))
      conn:exec("DROP TABLE planned")
    end)

    it("opens read-only sessions under `tug plan`, so a misjudged read cannot write", function()
      local admin <close> = connect()
      admin:exec("CREATE TABLE plan_e2e (id int)")
      local project = require("project").new()
      project:write("environments/local.yaml", "name: local\ndatabase_url: ${env:PG_URL}\n")
      project:write("playbooks/migrate.lua", [[
return playbook { steps = {
  step "count rows" { run = function(ctx)
    local conn <close> = pg.connect(ctx.env.database_url)
    ctx.state.before = conn:value("SELECT count(*) FROM plan_e2e")
    print("rows before: " .. ctx.state.before)
  end },
  step "insert a row" { run = function(ctx)
    local conn <close> = pg.connect(ctx.env.database_url)
    conn:exec("INSERT INTO plan_e2e VALUES (1)")
    local ok, err = pcall(conn.query, conn, { "INSERT INTO plan_e2e VALUES (2)", read_only = true })
    print("forced: " .. tostring(err and err.sqlstate))
  end },
} }]])
      local r = project:tug({ "plan", "migrate" }, { env = { PG_URL = server.url } })
      exec.run({ "rm", "-rf", project.dir })
      assert.are.equal(0, r.code, r.stdout .. r.stderr)
      assert.matches("rows before: 0", r.stdout)
      assert.matches("would pg: exec on postgres@127.0.0.1:%d+/postgres: INSERT INTO plan_e2e VALUES %(1%)", r.stdout)
      assert.matches("forced: 25006", r.stdout) -- read-only transaction
      assert.are.equal(0, admin:value("SELECT count(*) FROM plan_e2e"))
      admin:exec("DROP TABLE plan_e2e")
    end)
  end)
end)
