-- health_spec.lua: health.check, health.load and health.gate against real servers started
-- here: tug's own http.server in this process, whose handler each test controls (flapping,
-- slow, failing one request in ten), and nginx (spec/support/nginx.lua) for a web server that
-- is not ours. Load tests run for a second or two; figures are checked within tolerances wide
-- enough for a busy 2-core machine.
package.path = "spec/support/?.lua;" .. package.path

local exec = require("exec")
local health = require("health")
local http = require("http")
local json = require("json")
local task = require("task")
local time = require("time")
local nginx = require("nginx")

-- A port nothing listens on: bound by a server that is closed at once.
local function closed_port()
  local srv = http.server({ handler = function() return 200 end })
  local port = srv.port
  srv:close()
  return port
end

-- A raw server for what neither nginx nor http.server will do: a body that ends when the
-- connection closes (/eof), a response cut short (/truncated), bytes that are not HTTP
-- (/garbage). It prints its port first.
local RAW_SERVER = [==[
import socket, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(128)
print("PORT %d" % s.getsockname()[1], flush=True)
REPLIES = {
    b"/eof": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nthe body ends with the connection",
    b"/truncated": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b",
    b"/garbage": b"SPDY/9 what is this\r\n\r\n",
}
def serve(c):
    try:
        data = b""
        while b"\r\n\r\n" not in data:
            d = c.recv(65536)
            if not d:
                return
            data += d
        c.sendall(REPLIES.get(data.split(b" ")[1], b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))
    except OSError:
        pass
    finally:
        c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
]==]

local function start_raw_server()
  local proc = exec.spawn({ "/usr/bin/python3", "-c", RAW_SERVER }, { lines = true, capture = false })
  local lines = task.timeout(10, proc.next_lines, proc)
  local port = lines and lines[1] and lines[1].line:match("^PORT (%d+)$")
  if not port then
    proc:kill("KILL")
    proc:wait()
    proc:close()
    error("the raw test server did not say its port")
  end
  return proc, "http://127.0.0.1:" .. port
end

local function elapsed(fn, ...)
  local start = time.monotonic()
  local r = fn(...)
  return time.monotonic() - start, r
end

describe("health.check", function()
  it("passes a healthy endpoint at the first attempt, with its status and latency", function()
    local srv <close> = http.server({ handler = function() return 200, {}, "ok" end })
    local r = health.check({ url = srv.url .. "/health", within = "2s", interval = "50ms" })
    assert.is_true(r.ok)
    assert.is_nil(r.reason)
    assert.are.equal(1, #r.checks)
    local c = r.checks[1]
    assert.is_true(c.ok)
    assert.are.equal(200, c.status)
    assert.are.equal(1, c.attempts)
    assert.are.equal(srv.url .. "/health", c.url)
    assert.is_true(c.latency > 0 and c.latency < 1)
  end)

  it("keeps probing a flapping endpoint until it becomes healthy", function()
    local hits = 0
    local srv <close> = http.server({ handler = function()
      hits = hits + 1
      if hits <= 3 then return 503, {}, "starting" end
      return 200, {}, "ok"
    end })
    local took, r = elapsed(health.check, { srv.url .. "/health", within = "5s", interval = "50ms" })
    assert.is_true(r.ok, r.reason)
    assert.are.equal(4, r.checks[1].attempts)
    assert.are.equal(200, r.checks[1].status)
    assert.is_true(took >= 0.15 and took < 2, "took " .. took)
  end)

  it("gives up after `within` and names the URL, the last status and the body", function()
    local srv <close> = http.server({ handler = function() return 503, {}, "database unreachable\n" end })
    local url = srv.url .. "/health"
    local took, r = elapsed(health.check, { url = url, within = "400ms", interval = "100ms" })
    assert.is_false(r.ok)
    assert.is_true(took >= 0.3 and took < 1.5, "took " .. took)
    local c = r.checks[1]
    assert.is_false(c.ok)
    assert.are.equal(503, c.status)
    assert.is_true(c.attempts >= 3 and c.attempts <= 5, "attempts " .. c.attempts)
    assert.are.equal("status 503, expected 200: database unreachable", c.reason)
    assert.are.equal(("health check failed within 400ms: %s: status 503, expected 200: "
      .. "database unreachable (%d attempts)"):format(url, c.attempts), r.reason)
    local ok, sentence = health.gate(r)
    assert.is_false(ok)
    assert.are.equal(r.reason, sentence)
  end)

  it("reports a refused connection as the reason", function()
    local url = ("http://127.0.0.1:%d/health"):format(closed_port())
    local r = health.check({ url, within = "300ms", interval = "100ms" })
    assert.is_false(r.ok)
    assert.is_nil(r.checks[1].status)
    assert.are.equal("connect", r.checks[1].error)
    assert.matches("^connect: ", r.checks[1].reason)
    assert.matches(url, r.reason, 1, true)
  end)

  it("cuts a probe short at its timeout and says so", function()
    local srv <close> = http.server({ handler = function() task.sleep(2) return 200 end })
    local took, r = elapsed(health.check, { srv.url, timeout = "150ms", within = "400ms", interval = "50ms" })
    assert.is_false(r.ok)
    assert.is_true(took < 1.2, "took " .. took)
    assert.matches("^timeout: ", r.checks[1].reason)
  end)

  describe("expect_json", function()
    local doc = {
      status = "degraded",
      checks = { database = { status = "down", latency_ms = 12 }, cache = { status = "ok" } },
      providers = { { name = "veeqo", up = true }, { name = "shipstation", up = false } },
    }
    local srv
    setup(function()
      srv = http.server({ handler = function(req)
        if req.path == "/html" then return 200, { ["content-type"] = "text/html" }, "<html>hi</html>" end
        return { json = doc }
      end })
    end)
    teardown(function() srv:close() end)

    it("passes when every path holds the expected value", function()
      local r = health.check({ srv.url, within = "1s", expect_json = {
        status = "degraded", ["checks.cache.status"] = "ok", ["checks.database.latency_ms"] = 12,
        ["providers[0].name"] = "veeqo", ["providers[1].up"] = false,
      } })
      assert.is_true(r.ok, r.reason)
    end)

    it("names the path, what it holds and what was expected", function()
      local r = health.check({ srv.url, within = "200ms", interval = "100ms",
        expect_json = { ["checks.database.status"] = "ok" } })
      assert.is_false(r.ok)
      assert.are.equal('JSON checks.database.status is "down", expected "ok"', r.checks[1].reason)
    end)

    it("says when a path is missing, through objects and arrays", function()
      local r = health.check({ srv.url, within = "100ms",
        expect_json = { ["providers[2].name"] = "dhl" } })
      assert.are.equal('JSON providers[2].name is missing, expected "dhl"', r.checks[1].reason)
      r = health.check({ srv.url, within = "100ms", expect_json = { ["checks.queue.status"] = "ok" } })
      assert.are.equal('JSON checks.queue.status is missing, expected "ok"', r.checks[1].reason)
    end)

    it("says when the body is not JSON", function()
      local r = health.check({ srv.url .. "/html", within = "100ms", expect_json = { status = "ok" } })
      assert.is_false(r.ok)
      assert.matches('^the body is not JSON %(.*%): "<html>hi</html>"$', r.checks[1].reason)
    end)

    it("refuses a malformed path at once", function()
      assert.has_error(function()
        health.check({ srv.url, expect_json = { ["providers[x].name"] = 1 } })
      end, "health.check: expect_json: bad index in path 'providers[x].name'")
    end)
  end)

  it("matches expect_body as a Lua pattern and quotes the body when it does not", function()
    local srv <close> = http.server({ handler = function() return 200, {}, "version: v2.1.0\nstatus: ok" end })
    assert.is_true(health.check({ srv.url, within = "1s", expect_body = "version: v2%.1%.%d" }).ok)
    local r = health.check({ srv.url, within = "100ms", expect_body = "version: v2%.2" })
    assert.is_false(r.ok)
    assert.are.equal('the body does not match "version: v2%.2": "version: v2.1.0 status: ok"',
      r.checks[1].reason)
  end)

  it("takes a list of URLs and specs, probes them at once, and sends each spec's headers", function()
    local srv <close> = http.server({ handler = function(req)
      task.sleep(0.3)
      if req.path == "/auth" then
        return req.headers["authorization"] == "Bearer t0ken" and 200 or 401, {}, "auth"
      end
      if req.path == "/created" then return 201, {}, "made" end
      return 200, {}, "ok"
    end })
    local took, r = elapsed(health.check, {
      srv.url .. "/a",
      { url = srv.url .. "/auth", headers = { Authorization = "Bearer t0ken" } },
      { url = srv.url .. "/created", expect_status = { 200, 201 } },
      within = "3s",
    })
    assert.is_true(r.ok, r.reason)
    assert.are.equal(3, #r.checks)
    assert.are.equal(srv.url .. "/auth", r.checks[2].url)
    assert.are.equal(201, r.checks[3].status)
    assert.is_true(took < 0.8, "the three 300 ms probes took " .. took .. " s: not concurrent")
    local ok, sentence = health.gate(r)
    assert.is_true(ok)
    assert.matches("^all 3 health checks passed %(slowest answer [%d.]+ ms%)$", sentence)
  end)

  it("waits for all checks and reports only the failing ones", function()
    local srv <close> = http.server({ handler = function(req)
      if req.path == "/db" then return 500, {}, "db down" end
      return 200, {}, "ok"
    end })
    local r = health.check({ srv.url .. "/web", srv.url .. "/db", within = "250ms", interval = "100ms" })
    assert.is_false(r.ok)
    assert.is_true(r.checks[1].ok)
    assert.is_false(r.checks[2].ok)
    assert.matches("^1 of 2 health checks failed within 250ms: " .. srv.url:gsub("%p", "%%%0")
      .. "/db: status 500, expected 200: db down %(%d attempts%)$", r.reason)
  end)

  it("runs in plan mode: a health check is a read", function()
    local hits = 0
    local srv <close> = http.server({ handler = function() hits = hits + 1 return 200 end })
    tug.plan.set(true)
    local ok, r = pcall(health.check, { srv.url, within = "1s" })
    tug.plan.set(false)
    assert.is_true(ok, tostring(r))
    assert.is_true(r.ok)
    assert.are.equal(1, hits)
  end)

  it("refuses unknown options and bad durations, naming them", function()
    assert.has_error(function() health.check({ "http://127.0.0.1:1/", whithin = "1s" }) end,
      "health.check: unknown option 'whithin'")
    assert.has_error(function() health.check({ "http://127.0.0.1:1/", within = "soon" }) end,
      "health.check: within: 'soon' is not a duration (try \"30s\", \"500ms\")")
    assert.has_error(function() health.check({ "ftp://x/" }) end,
      "health.check: a check's url must be an http:// or https:// URL (got ftp://x/)")
    assert.has_error(function() health.check({}) end, "health.check: give a url or a list of checks")
  end)
end)

describe("health.load", function()
  it("measures a server whose latency the spec controls (closed-loop)", function()
    local srv <close> = http.server({ handler = function() task.sleep(0.02) return 200, {}, "ok" end })
    local r = health.load({ url = srv.url .. "/slow", duration = "1s", concurrency = 10 })
    assert.are.equal("closed", r.mode)
    assert.are.equal(0, r.errors)
    assert.are.equal(0, r.error_rate)
    assert.are.equal(r.count, r.statuses[200])
    -- a 20 ms handler (task.sleep rounds up by about a millisecond)
    assert.is_true(r.p50 >= 0.019 and r.p50 < 0.035, "p50 " .. r.p50)
    assert.is_true(r.min >= 0.019, "min " .. r.min)
    assert.is_true(r.p50 <= r.p95 and r.p95 <= r.p99 and r.p99 <= r.max)
    -- ten connections, each waiting for its answer: about 10 / 0.021 s = 476 requests a second
    local expected = 10 / r.mean
    assert.is_true(math.abs(r.rps - expected) / expected < 0.15, ("rps %.0f, expected %.0f"):format(r.rps, expected))
    assert.is_true(r.rps > 300 and r.rps < 520, "rps " .. r.rps)
    assert.are.equal(10, r.connects) -- keep-alive: one connection each
    assert.is_true(r.elapsed >= 1 and r.elapsed < 1.3, "elapsed " .. r.elapsed)
    local ok, sentence = health.gate(r)
    assert.is_true(ok)
    assert.matches("^p95 %d+%.%d ms is within the 500 ms limit; error rate 0%% %(0 of [%d,]+ requests%) "
      .. "is within the 0.1%% limit$", sentence)
  end)

  it("counts an injected 10% of 500s as the error rate, and the gate names them", function()
    local n = 0
    local srv <close> = http.server({ handler = function()
      n = n + 1
      if n % 10 == 0 then return 500, {}, "boom" end
      return 200, {}, "ok"
    end })
    local r = health.load({ url = srv.url, duration = "1s", concurrency = 8 })
    assert.is_true(r.count > 200, "count " .. r.count)
    assert.is_true(math.abs(r.error_rate - 0.1) < 0.01, "error rate " .. r.error_rate)
    assert.are.equal(r.statuses[500], r.errors)
    assert.are.equal(r.count, r.statuses[200] + r.statuses[500])
    local ok, sentence = health.gate(r)
    assert.is_false(ok)
    assert.matches("^error rate [%d.]+%% %([%d,]+ of [%d,]+ requests: [%d,]+ x status 500%) is over the "
      .. "0.1%% limit by [%d.]+ percentage points$", sentence)
    -- ok_status says which statuses are fine
    local r2 = health.load({ url = srv.url, duration = "300ms", concurrency = 4, ok_status = { 200, 500 } })
    assert.are.equal(0, r2.errors)
  end)

  it("starts requests on schedule at `rate` (open-loop)", function()
    local srv <close> = http.server({ handler = function() return 200, {}, "ok" end })
    local r = health.load({ url = srv.url, duration = "1s", rate = 200 })
    assert.are.equal("open", r.mode)
    assert.are.equal(200, r.scheduled)
    assert.are.equal(200, r.count)
    assert.are.equal(0, r.errors)
    assert.is_true(r.rps > 170 and r.rps < 215, "rps " .. r.rps)
    assert.is_true(r.connects < 20, "connections " .. r.connects) -- idle ones are reused
  end)

  it("counts latency from the scheduled start when the server falls behind", function()
    -- two connections to a 50 ms server carry 40 requests a second; 60 are asked for. A
    -- closed-loop tool would report about 50 ms; the queue behind it is the real wait.
    local srv <close> = http.server({ handler = function() task.sleep(0.05) return 200, {}, "ok" end })
    local r = health.load({ url = srv.url, duration = "1s", rate = 60, max_connections = 2 })
    assert.are.equal(60, r.count)
    assert.are.equal(0, r.errors)
    assert.is_true(r.min >= 0.045 and r.min < 0.09, "min " .. r.min)
    assert.is_true(r.max > 0.3, "max " .. r.max) -- the last ones waited for 20-odd before them
    assert.is_true(r.p50 > 0.1, "p50 " .. r.p50)
  end)

  it("fails each request in flight past its timeout", function()
    local srv <close> = http.server({ handler = function() task.sleep(5) return 200 end })
    local took, r = elapsed(health.load, { url = srv.url, duration = "300ms", concurrency = 2, timeout = "200ms" })
    assert.is_true(took < 1, "took " .. took)
    assert.are.equal(0, r.responses)
    assert.is_true(r.transport_errors.timeout >= 2, "timeouts " .. r.transport_errors.timeout)
    assert.are.equal(1, r.error_rate)
    local ok, sentence = health.gate(r)
    assert.is_false(ok)
    assert.matches("x timeout %(first: timeout: no response within the timeout%)", sentence)
  end)

  it("counts refused connections as errors without spinning", function()
    local url = ("http://127.0.0.1:%d/"):format(closed_port())
    local r = health.load({ url = url, duration = "300ms", concurrency = 2 })
    assert.are.equal(0, r.responses)
    assert.are.equal(r.count, r.transport_errors.connect)
    assert.is_true(r.count >= 2 and r.count < 200, "attempts " .. r.count) -- paced, ~10 ms apart
    assert.matches("first: connect: connection refused", r.error_summary)
    assert.is_false((health.gate(r)))
  end)

  it("reports a host that does not resolve as a failure to run", function()
    local r = health.load({ url = "http://no-such-host.invalid/", duration = "200ms", concurrency = 1 })
    assert.are.equal("dns", r.error)
    assert.matches("^dns: no%-such%-host%.invalid: ", r.message)
    local ok, sentence = health.gate(r)
    assert.is_false(ok)
    assert.matches("^the load check could not run: dns: ", sentence)
  end)

  it("reads chunked responses and bodies that end when the server closes", function()
    local srv <close> = http.server({ handler = function()
      return 200, {}, function(write) write("part one, ") task.sleep(0.001) write("part two") end
    end })
    local r = health.load({ url = srv.url, duration = "300ms", concurrency = 2 })
    assert.are.equal(0, r.errors)
    assert.is_true(r.count > 10, "count " .. r.count)
  end)

  it("sends the method, headers and body given", function()
    local seen
    local srv <close> = http.server({ handler = function(req)
      seen = { method = req.method, path = req.path, query = req.raw_query, body = req.body,
        token = req.headers["x-token"], host = req.headers["host"] }
      return 201, {}, "made"
    end })
    local r = health.load({ url = srv.url .. "/orders?dry_run=1", method = "post", body = '{"n":1}',
      headers = { ["X-Token"] = "abc" }, duration = "200ms", concurrency = 1 })
    assert.are.equal(0, r.errors)
    assert.are.same({ method = "POST", path = "/orders", query = "dry_run=1", body = '{"n":1}',
      token = "abc", host = "127.0.0.1:" .. srv.port }, seen)
  end)

  it("does not send in plan mode: it records what it would send", function()
    local hits = 0
    local srv <close> = http.server({ handler = function() hits = hits + 1 return 200 end })
    tug.plan.set(true)
    tug.plan.take()
    local ok, r = pcall(health.load, { url = srv.url .. "/x", duration = "30s", rate = 200 })
    local ok2, r2 = pcall(health.load, { url = srv.url .. "/x", duration = "1m", concurrency = 50 })
    local records = tug.plan.take()
    tug.plan.set(false)
    assert.is_true(ok, tostring(r))
    assert.is_true(ok2, tostring(r2))
    assert.are.equal(0, hits)
    assert.is_true(r.planned)
    assert.are.equal(6000, r.would_send)
    assert.are.equal(2, #records)
    assert.are.equal("health", records[1].module)
    assert.are.equal(("GET %s/x: would send 6,000 requests (200 a second for 30s, open-loop)"):format(srv.url),
      records[1].summary)
    assert.are.equal(("GET %s/x: would send requests for 1m from 50 connections (closed-loop)"):format(srv.url),
      records[2].summary)
    local pass, sentence = health.gate(r)
    assert.is_true(pass)
    assert.matches("^planned, not measured: ", sentence)
  end)

  it("stops at once, closing its connections, when its task is cancelled", function()
    local srv <close> = http.server({ handler = function() task.sleep(0.01) return 200 end })
    local took, ok, err = nil, nil, nil
    local start = time.monotonic()
    ok, err = pcall(task.timeout, 0.2, health.load, { url = srv.url, duration = "10s", concurrency = 4 })
    took = time.monotonic() - start
    assert.is_false(ok)
    assert.are.equal("timeout", err.kind)
    assert.is_true(took < 1, "took " .. took)
    -- the server still answers: nothing was left half-open on our side
    assert.are.equal(200, http.get(srv.url).status)
  end)

  it("refuses bad options, naming them", function()
    assert.has_error(function() health.load({ url = "http://127.0.0.1:1/", concurency = 5 }) end,
      "health.load: unknown option 'concurency'")
    assert.has_error(function() health.load({ url = "http://127.0.0.1:1/", concurrency = 5, rate = 10 }) end,
      "health.load: give concurrency (closed-loop) or rate (open-loop), not both")
    assert.has_error(function() health.load({ url = "http://127.0.0.1:1/", duration = "long" }) end,
      "health.load: duration: 'long' is not a duration (try \"30s\", \"500ms\")")
    assert.has_error(function() health.load({ url = "https://127.0.0.1:1/", engine = "native" }) end,
      "health.load: the native engine speaks plain HTTP only; https goes through engine = \"http\"")
    assert.has_error(function() health.load({ url = "http://u:p@127.0.0.1:1/" }) end,
      "health.load: credentials in the URL are not supported; send an Authorization header")
    assert.has_error(function()
      health.load({ url = "http://127.0.0.1:1/", headers = { ["X-A"] = "1\r\nX-B: 2" } })
    end, "health.load: headers.X-A contains a line break or NUL byte")
  end)
end)

describe("health.load against nginx", function()
  local server
  setup(function()
    server = nginx.start({ tls = false, locations = [[
    location = /close { keepalive_timeout 0; default_type text/plain; return 200 "bye"; }
]] })
  end)
  teardown(function() if server then server:stop() end end)

  it("keeps one connection per worker and reads every response", function()
    local r = health.load({ url = server.url .. "/hello.txt", duration = "500ms", concurrency = 20 })
    assert.are.equal(0, r.errors)
    assert.are.equal(20, r.connects)
    assert.is_true(r.count > 500, "count " .. r.count)
    assert.is_true(r.bytes > r.count * #"hello from nginx\n")
  end)

  it("opens a new connection when the server closes after each response", function()
    local r = health.load({ url = server.url .. "/close", duration = "300ms", concurrency = 4 })
    assert.are.equal(0, r.errors)
    assert.is_true(r.count > 20, "count " .. r.count)
    assert.is_true(math.abs(r.connects - r.count) <= 4, ("connects %d, count %d"):format(r.connects, r.count))
  end)

  it("reads HEAD responses without a body and counts a 404 as an error", function()
    local r = health.load({ url = server.url .. "/hello.txt", method = "HEAD", duration = "200ms", concurrency = 2 })
    assert.are.equal(0, r.errors)
    assert.is_true(r.count > 10)
    local missing = health.load({ url = server.url .. "/missing", duration = "200ms", concurrency = 2 })
    assert.are.equal(1, missing.error_rate)
    assert.are.equal(missing.count, missing.statuses[404])
  end)
end)

describe("health.load against a server that misbehaves", function()
  local proc, base
  setup(function() proc, base = start_raw_server() end)
  teardown(function()
    if proc then
      proc:kill("KILL")
      proc:wait()
      proc:close()
    end
  end)

  it("reads a body that ends when the server closes, then reconnects", function()
    local r = health.load({ url = base .. "/eof", duration = "300ms", concurrency = 2 })
    assert.are.equal(0, r.errors, r.error_summary)
    assert.is_true(r.count > 5, "count " .. r.count)
    assert.is_true(math.abs(r.connects - r.count) <= 2, ("connects %d, count %d"):format(r.connects, r.count))
  end)

  it("counts a response cut short as a closed connection", function()
    local r = health.load({ url = base .. "/truncated", duration = "200ms", concurrency = 1 })
    assert.are.equal(0, r.responses)
    assert.are.equal(r.count, r.transport_errors.closed)
    assert.matches("first: closed: the server closed the connection before the response ended",
      r.error_summary, 1, true)
  end)

  it("counts bytes that are not HTTP as a protocol error", function()
    local r = health.load({ url = base .. "/garbage", duration = "200ms", concurrency = 1 })
    assert.are.equal(0, r.responses)
    assert.are.equal(r.count, r.transport_errors.protocol)
    assert.matches("first: protocol: ", r.error_summary, 1, true)
  end)
end)

describe("health.load over https (the http engine)", function()
  it("measures an https server through the http client", function()
    local secure <close> = nginx.start({ tls = true })
    local before = http.configure().max_host_connections
    local r = health.load({ url = secure.url .. "/hello.txt", duration = "500ms", concurrency = 4,
      tls = { ca = secure.ca } })
    assert.are.equal("http", r.engine)
    assert.are.equal(0, r.errors, r.error_summary)
    assert.is_true(r.count > 20, "count " .. r.count)
    assert.is_true(r.p50 > 0 and r.p50 < 0.1)
    assert.are.equal(before, http.configure().max_host_connections) -- put back as it was
  end)

  it("keeps an open-loop rate through the http client too", function()
    local srv <close> = http.server({ handler = function() return 200, {}, "ok" end })
    local r = health.load({ url = srv.url, rate = 50, duration = "500ms", engine = "http" })
    assert.are.equal("http", r.engine)
    assert.are.equal(25, r.scheduled)
    assert.are.equal(25, r.count)
    assert.are.equal(0, r.errors)
  end)
end)

describe("health.gate", function()
  local function load_result(fields)
    local r = { url = "http://api/health", count = 1000, errors = 0, error_rate = 0, rps = 100,
      p50 = 0.1, p90 = 0.2, p95 = 0.3, p99 = 0.4, max = 0.9, mean = 0.12 }
    for k, v in pairs(fields) do r[k] = v end
    return r
  end

  it("passes within the seed's thresholds (p95 < 500 ms, error rate < 0.1%) and says so", function()
    local ok, sentence = health.gate(load_result({ p95 = 0.3, errors = 1, error_rate = 0.001 }))
    assert.is_true(ok)
    assert.are.equal("p95 300 ms is within the 500 ms limit; error rate 0.1% (1 of 1,000 requests) "
      .. "is within the 0.1% limit", sentence)
  end)

  it("fails p95 over its limit by how much", function()
    local ok, sentence = health.gate(load_result({ p95 = 0.612 }), { p95_ms = 500 })
    assert.is_false(ok)
    assert.are.equal("p95 612 ms is over the 500 ms limit by 112 ms (22%)", sentence)
  end)

  it("fails the error rate over its limit by how much", function()
    local ok, sentence = health.gate(load_result({ errors = 25, error_rate = 0.025,
      error_summary = "25 x status 503" }))
    assert.is_false(ok)
    assert.are.equal("error rate 2.5% (25 of 1,000 requests: 25 x status 503) is over the 0.1% limit "
      .. "by 2.4 percentage points", sentence)
  end)

  it("checks p99, max and throughput when asked, and lists every failure", function()
    local ok, sentence = health.gate(load_result({ p99 = 1.25, rps = 80 }),
      { p99_ms = 1000, max_ms = 2000, min_rps = 100, error_rate = false })
    assert.is_false(ok)
    assert.are.equal("p99 1250 ms is over the 1,000 ms limit by 250 ms (25%); "
      .. "throughput 80 requests/s is under the 100 requests/s floor by 20 (20%)", sentence)
  end)

  it("fails a load check that got no responses", function()
    local ok, sentence = health.gate(load_result({ count = 0 }))
    assert.is_false(ok)
    assert.are.equal("the load check got no responses from http://api/health", sentence)
  end)

  it("refuses unknown limits and results it does not know", function()
    assert.has_error(function() health.gate(load_result({}), { p95 = 500 }) end,
      "health.gate: unknown limit 'p95'")
    assert.has_error(function() health.gate({}) end,
      "health.gate: result must be a health.check or health.load result")
  end)
end)

describe("health.histogram", function()
  it("keeps percentiles within 0.4% of the exact values, in fixed memory", function()
    local h = health.histogram()
    local values = {}
    for i = 1, 20000 do
      local v = (i * 7919 % 20000 + 1) / 1e4 -- 0.1 ms .. 2 s, shuffled
      values[i] = v
      h:record(v)
    end
    table.sort(values)
    assert.are.equal(20000, h:count())
    for _, p in ipairs({ 50, 90, 95, 99, 99.9 }) do
      local exact = values[math.ceil(p / 100 * #values)]
      local got = h:percentile(p)
      assert.is_true(math.abs(got - exact) / exact <= 0.004, ("p%s %f vs %f"):format(p, got, exact))
    end
    assert.are.equal(values[#values], h:max())
    assert.is_true(math.abs(h:min() - values[1]) < 1e-6)
    assert.is_nil(health.histogram():percentile(50))
  end)
end)
