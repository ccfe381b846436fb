-- http_server_spec.lua: http.server driven by real, independent clients: curl, raw sockets
-- from a small python3 script (malformed and pipelined requests, slow and vanishing
-- clients, a thousand connections at once) and tug's own http client. Every server runs
-- on tug's loop, in this very process, beside the clients it is talking to.

local exec = require("exec")
local http = require("http")
local log = require("log")
local task = require("task")
local time = require("time")

-- Raw-socket clients, one mode per behaviour no ordinary client has.
local PY = [==[
import selectors, socket, sys, time

mode, port = sys.argv[1], int(sys.argv[2])
out = sys.stdout.buffer

def connect():
    return socket.create_connection(("127.0.0.1", port), timeout=10)

def read_until_close(s, quiet):
    """Reads until the server closes, or `quiet` seconds pass with nothing."""
    s.settimeout(quiet)
    data = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                return data, "closed"
            data += d
    except socket.timeout:
        return data, "open"
    except (ConnectionResetError, BrokenPipeError):
        return data, "closed"

if mode == "raw":
    # stdin in a single write; prints what came back and whether the server closed
    s = connect()
    s.sendall(sys.stdin.buffer.read())
    data, state = read_until_close(s, float(sys.argv[3]))
    out.write(data + b"\n<<" + state.encode() + b">>\n")

elif mode == "slowloris":
    # a header byte every `gap` seconds; reports when and how the server gave up
    gap = float(sys.argv[3])
    s = connect()
    start = time.time()
    payload = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    sent = 0
    try:
        for b in payload:
            s.sendall(bytes([b]))
            sent += 1
            time.sleep(gap)
            s.setblocking(False)
            try:
                if s.recv(65536, socket.MSG_PEEK) is not None:
                    break
            except BlockingIOError:
                pass
            finally:
                s.setblocking(True)
    except (BrokenPipeError, ConnectionResetError):
        pass
    data, state = read_until_close(s, 5)
    out.write(b"elapsed=%.2f sent=%d state=%s\n" % (time.time() - start, sent, state.encode()))
    out.write(data)

elif mode == "idle":
    # connects, sends nothing; reports when the server closed the connection
    s = connect()
    start = time.time()
    data, state = read_until_close(s, 10)
    out.write(b"elapsed=%.2f state=%s\n" % (time.time() - start, state.encode()))

elif mode == "disconnect":
    # reads `lines` lines of a streamed response, then goes away
    want = int(sys.argv[3])
    s = connect()
    s.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while data.count(b"tick") < want:
        d = s.recv(65536)
        if not d:
            break
        data += d
    s.close()
    out.write(b"got=%d\n" % data.count(b"tick"))

elif mode == "many":
    # n connections at once, one request each; counts the right answers
    n = int(sys.argv[3])
    sel = selectors.DefaultSelector()
    socks = []
    start = time.time()
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        socks.append(s)
    for i, s in enumerate(socks):
        s.sendall(b"GET /n/%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % i)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, [i, b""])
    left, ok = n, 0
    deadline = time.time() + 60
    while left and time.time() < deadline:
        for key, _ in sel.select(timeout=1):
            i, buf = key.data
            try:
                d = key.fileobj.recv(65536)
            except ConnectionResetError:
                d = b""
            if d:
                key.data[1] = buf + d
                continue
            sel.unregister(key.fileobj)
            key.fileobj.close()
            left -= 1
            if buf.startswith(b"HTTP/1.1 200 ") and buf.endswith(b"n=%d" % i):
                ok += 1
    out.write(b"ok=%d of %d in %.2fs\n" % (ok, n, time.time() - start))
]==]

local function py(args, opts)
  local argv = { "python3", "-c", PY }
  for _, a in ipairs(args) do argv[#argv + 1] = tostring(a) end
  opts = opts or {}
  opts.timeout = opts.timeout or 90
  local r = exec.run(argv, opts)
  assert(r.code == 0, "python client failed: " .. r.stderr)
  return r.stdout
end

-- A raw request (or several) in one write: the bytes that came back and whether the server
-- closed the connection.
local function raw(srv, bytes, quiet)
  local out = py({ "raw", srv.port, quiet or 3 }, { stdin = bytes })
  local data, state = out:match("^(.*)\n<<(%a+)>>\n$")
  return data, state
end

local function curl(args)
  local argv = { "curl", "-sS", "--max-time", "20" }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return exec.run(argv)
end

local function elapsed(fn)
  local start = time.monotonic()
  local a, b, c = fn()
  return time.monotonic() - start, a, b, c
end

-- Collects log records for the duration of fn.
local function capture_log(fn)
  local records = {}
  log.set_sink(function(record) records[#records + 1] = record end)
  local ok, err = pcall(fn)
  log.set_sink(nil)
  if not ok then error(err, 0) end
  return records
end

local function wait_for(pred, within)
  local deadline = time.monotonic() + (within or 5)
  while not pred() do
    if time.monotonic() > deadline then return false end
    task.sleep(0.02)
  end
  return true
end

-- The server most tests share: routes by path.
local function app(req)
  local path = req.path
  if path == "/echo" then
    return 200, { ["content-type"] = "application/octet-stream" }, req.body
  elseif path == "/query" then
    return { json = { query = req.query, raw = req.raw_query } }
  elseif path == "/headers" then
    return { json = req.headers }
  elseif path == "/info" then
    return { status = 201, json = {
      method = req.method, path = req.path, remote_addr = req.remote_addr,
      remote_port = req.remote_port, version = req.version,
    } }
  elseif path == "/sleep" then
    task.sleep(tonumber(req.query.s) or 0.5)
    return 200, {}, "slept"
  elseif path:match("^/n/") then
    task.sleep(0.2) -- every one of the thousand is in flight at once
    return 200, {}, "n=" .. path:match("^/n/(%d+)")
  elseif path == "/fail" then
    error("the handler broke on purpose")
  elseif path == "/nothing" then
    return
  end
  return 200, { ["x-route"] = "default" }, "hello from " .. path
end

describe("http.server", function()
  local srv

  before_each(function()
    srv = http.server({ handler = app })
  end)

  after_each(function()
    srv:close()
  end)

  it("listens on 127.0.0.1 with a port of its own and says where", function()
    assert.is_true(srv.port > 0)
    assert.are.equal("http://127.0.0.1:" .. srv.port, srv.url)
    assert.matches("^http.server http://127.0.0.1:%d+ %(listening", tostring(srv))
  end)

  it("serves GET with the query decoded, repeated keys keeping the last value", function()
    local r = curl({ srv.url .. "/query?a=1&b=hello+world&c=%41%42%2F&a=2&flag" })
    assert.are.equal(0, r.code, r.stderr)
    local body = json.decode(r.stdout)
    assert.are.same({ a = "2", b = "hello world", c = "AB/", flag = "" }, body.query)
    assert.are.equal("a=1&b=hello+world&c=%41%42%2F&a=2&flag", body.raw)
  end)

  it("gives the handler method, path, version and the client's address", function()
    local r = curl({ "-i", srv.url .. "/info?x=1" })
    assert.matches("^HTTP/1.1 201 Created\r\n", r.stdout)
    local info = json.decode(r.stdout:match("\r\n\r\n(.*)$"))
    assert.are.equal("GET", info.method)
    assert.are.equal("/info", info.path)
    assert.are.equal("1.1", info.version)
    assert.are.equal("127.0.0.1", info.remote_addr)
    assert.is_true(info.remote_port > 0)
  end)

  it("echoes a POST body byte for byte", function()
    local body = "line one\nline two\0with a NUL\r\n" .. string.rep("x", 100000)
    local r = exec.run({ "curl", "-sS", "--data-binary", "@-", srv.url .. "/echo" },
      { stdin = body })
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal(#body, #r.stdout)
    assert.is_true(body == r.stdout)
  end)

  it("answers JSON with the JSON content type and Content-Length", function()
    local r = curl({ "-i", srv.url .. "/query?k=v" })
    local head, body = r.stdout:match("^(.-\r\n)\r\n(.*)$")
    assert.matches("\r\ncontent%-type: application/json\r\n", head)
    assert.matches("\r\nContent%-Length: " .. #body .. "\r\n", head)
    assert.matches("\r\nDate: %a%a%a, %d%d %a%a%a %d%d%d%d %d%d:%d%d:%d%d GMT\r\n", head)
    assert.matches("\r\nServer: tug/", head)
    assert.are.same({ k = "v" }, json.decode(body).query)
  end)

  it("lower-cases request header names", function()
    local r = curl({ "-H", "X-Custom-Header: Some Value", "-H", "ACCEPT: text/plain",
      srv.url .. "/headers" })
    local headers = json.decode(r.stdout)
    assert.are.equal("Some Value", headers["x-custom-header"])
    assert.are.equal("text/plain", headers["accept"])
    for name in pairs(headers) do assert.are.equal(name:lower(), name) end
  end)

  it("is reachable from tug's own http client", function()
    local r = http.get(srv.url .. "/query", { query = { name = "tug" } })
    assert.are.equal(200, r.status)
    assert.are.equal("tug", json.decode(r.body).query.name)
    r = http.post(srv.url .. "/echo", { body = "posted" })
    assert.are.equal("posted", r.body)
  end)

  it("keeps the connection alive between requests (curl reuses it)", function()
    local r = curl({ "-v", srv.url .. "/info", srv.url .. "/info" })
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("Re%-using existing connection", r.stderr)
    local first, second = r.stdout:match("^(%b{})(%b{})$")
    assert.are.equal(json.decode(first).remote_port, json.decode(second).remote_port)
  end)

  it("closes after an HTTP/1.0 request without keep-alive", function()
    local data, state = raw(srv, "GET /plain HTTP/1.0\r\n\r\n")
    assert.matches("^HTTP/1.1 200 OK\r\n", data)
    assert.matches("\r\nConnection: close\r\n", data)
    assert.matches("hello from /plain$", data)
    assert.are.equal("closed", state)
  end)

  it("keeps an HTTP/1.0 keep-alive connection open, and honours Connection: close", function()
    local data, state = raw(srv, "GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 1)
    assert.matches("\r\nConnection: keep%-alive\r\n", data)
    assert.are.equal("open", state)
    data, state = raw(srv, "GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert.matches("\r\nConnection: close\r\n", data)
    assert.are.equal("closed", state)
  end)

  it("answers pipelined requests in order, even when a later one finishes first", function()
    local data, state = raw(srv,
      "GET /sleep?s=0.3 HTTP/1.1\r\nHost: x\r\n\r\n" ..
      "GET /second HTTP/1.1\r\nHost: x\r\n\r\n" ..
      "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nthird" ..
      "GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert.are.equal("closed", state)
    local bodies = {}
    for body in data:gmatch("Content%-Length: %d+\r\n[^\r]*\r?\n?.-\r\n\r\n([^H]*)") do
      bodies[#bodies + 1] = body
    end
    local _, count = data:gsub("HTTP/1.1 200 OK", "")
    assert.are.equal(4, count)
    local a = data:find("slept", 1, true)
    local b = data:find("hello from /second", 1, true)
    local c = data:find("third", 1, true)
    local d = data:find("hello from /last", 1, true)
    assert.is_true(a < b and b < c and c < d, data)
  end)

  it("answers a malformed request with 400 and closes", function()
    local data, state = raw(srv, "THIS IS NOT HTTP\r\n\r\n")
    assert.matches("^HTTP/1.1 400 Bad Request\r\n", data)
    assert.matches("\r\nConnection: close\r\n", data)
    assert.are.equal("closed", state)
    data, state = raw(srv, "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
    assert.matches("^HTTP/1.1 400 ", data)
    assert.are.equal("closed", state)
  end)

  it("answers 431 to headers larger than http-parser accepts (80 KiB)", function()
    local data, state = raw(srv, "GET / HTTP/1.1\r\nHost: x\r\nX-Big: "
      .. string.rep("h", 100 * 1024) .. "\r\n\r\n")
    assert.matches("^HTTP/1.1 431 ", data)
    assert.are.equal("closed", state)
  end)

  it("answers the requests before a malformed one, then 400", function()
    local data, state = raw(srv, "GET /fine HTTP/1.1\r\nHost: x\r\n\r\nBROKEN\1\2\r\n\r\n")
    assert.matches("^HTTP/1.1 200 OK\r\n.-hello from /fine" .. "HTTP/1.1 400 ", data)
    assert.are.equal("closed", state)
  end)

  it("answers a handler error with 500, logs it, and keeps serving", function()
    local r
    local records = capture_log(function()
      r = curl({ "-i", srv.url .. "/fail" })
    end)
    assert.matches("^HTTP/1.1 500 Internal Server Error\r\n", r.stdout)
    assert.matches("internal server error\n$", r.stdout)
    assert.is_nil(r.stdout:find("on purpose", 1, true)) -- no details leak to the client
    local logged = false
    for _, rec in ipairs(records) do
      if rec.level == "error" and rec.message:find("handler failed", 1, true)
        and tostring(rec.fields.error):find("on purpose", 1, true) then
        logged = true
        assert.are.equal("/fail", rec.fields.path)
      end
    end
    assert.is_true(logged)
    r = curl({ srv.url .. "/after" })
    assert.are.equal("hello from /after", r.stdout)
  end)

  it("answers 204 when the handler returns nothing", function()
    local r = curl({ "-i", srv.url .. "/nothing" })
    assert.matches("^HTTP/1.1 204 No Content\r\n", r.stdout)
    assert.is_nil(r.stdout:find("Content-Length", 1, true))
  end)

  it("runs each request in its own task: a sleeping handler does not block another", function()
    local slow_time, fast_time
    task.parallel({
      function() slow_time = elapsed(function() return curl({ srv.url .. "/sleep?s=1" }) end) end,
      function()
        task.sleep(0.1)
        fast_time = elapsed(function() return curl({ srv.url .. "/fast" }) end)
      end,
    })
    assert.is_true(slow_time >= 1, slow_time)
    assert.is_true(fast_time < 0.5, fast_time)
  end)

  it("serves a thousand concurrent connections", function()
    local out = py({ "many", srv.port, 1000 })
    assert.matches("^ok=1000 of 1000 ", out)
  end)

  it("stops accepting when closed", function()
    local url = srv.url
    assert.are.equal(0, curl({ url .. "/x" }).code)
    srv:close()
    srv:close() -- idempotent
    assert.matches("%(closed%)$", tostring(srv))
    local r = curl({ url .. "/x" })
    assert.are.equal(7, r.code) -- curl: could not connect
  end)
end)

describe("http.server responses", function()
  it("accepts status, headers, body; a table; and lists for repeated headers", function()
    local srv <close> = http.server({ handler = function(req)
      if req.path == "/table" then
        return { status = 202, headers = { ["x-kind"] = "table" }, body = "from a table" }
      end
      return 409, { ["set-cookie"] = { "a=1", "b=2" }, ["x-number"] = 42 }, "teapot"
    end })
    local r = curl({ "-i", srv.url .. "/" })
    assert.matches("^HTTP/1.1 409 Conflict\r\n", r.stdout)
    assert.matches("\r\nset%-cookie: a=1\r\nset%-cookie: b=2\r\n", r.stdout)
    assert.matches("\r\nx%-number: 42\r\n", r.stdout)
    assert.matches("\r\n\r\nteapot$", r.stdout)
    r = curl({ "-i", srv.url .. "/table" })
    assert.matches("^HTTP/1.1 202 Accepted\r\n", r.stdout)
    assert.matches("\r\nx%-kind: table\r\n", r.stdout)
    assert.matches("from a table$", r.stdout)
  end)

  it("leaves out Date and Server when the handler sets them to false", function()
    local srv <close> = http.server({ handler = function()
      return 200, { date = false, server = false, ["content-type"] = false }, "bare"
    end })
    local r = curl({ "-i", srv.url .. "/" })
    assert.is_nil(r.stdout:lower():find("\r\ndate:", 1, true))
    assert.is_nil(r.stdout:lower():find("\r\nserver:", 1, true))
    assert.is_nil(r.stdout:lower():find("\r\ncontent-type:", 1, true))
    assert.matches("\r\n\r\nbare$", r.stdout)
  end)

  it("answers HEAD with the headers and no body", function()
    local srv <close> = http.server({ handler = function() return 200, {}, "twelve bytes" end })
    local data = raw(srv, "HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert.matches("\r\nContent%-Length: 12\r\n", data)
    assert.matches("\r\n\r\n$", data)
  end)

  it("refuses a header that would inject a line, with 500", function()
    local srv <close> = http.server({ handler = function()
      return 200, { ["x-evil"] = "a\r\nset-cookie: pwned=1" }, "no"
    end })
    local r
    capture_log(function() r = curl({ "-i", srv.url .. "/" }) end)
    assert.matches("^HTTP/1.1 500 ", r.stdout)
    assert.is_nil(r.stdout:find("pwned", 1, true))
  end)
end)

describe("http.server request bodies", function()
  it("answers a body over max_body with 413", function()
    local called = false
    local srv <close> = http.server({ max_body = 1000, handler = function()
      called = true
      return 200, {}, "no"
    end })
    local r = exec.run({ "curl", "-sS", "-i", "--data-binary", "@-", srv.url .. "/" },
      { stdin = string.rep("b", 5000) })
    assert.matches("^HTTP/1.1 413 Payload Too Large\r\n", r.stdout)
    local data, state = raw(srv, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
      .. "3e8\r\n" .. string.rep("c", 1000) .. "\r\n1\r\nc\r\n0\r\n\r\n")
    assert.matches("^HTTP/1.1 413 ", data)
    assert.are.equal("closed", state)
    assert.is_false(called)
    r = exec.run({ "curl", "-sS", "--data-binary", "@-", srv.url .. "/" },
      { stdin = string.rep("d", 1000) })
    assert.are.equal("no", r.stdout) -- exactly the cap is fine
  end)

  it("sends 100 Continue to a client that expects it", function()
    local srv <close> = http.server({ handler = function(req) return 200, {}, tostring(#req.body) end })
    local body = string.rep("e", 2 * 1024 * 1024)
    local r = exec.run({ "curl", "-sS", "-v", "-H", "Expect: 100-continue", "--data-binary", "@-",
      srv.url .. "/" }, { stdin = body })
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("HTTP/1.1 100 Continue", r.stderr)
    assert.are.equal(tostring(#body), r.stdout)
  end)

  it("decodes a chunked request body", function()
    local srv <close> = http.server({ handler = function(req) return 200, {}, req.body end })
    local data = raw(srv, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
      .. "Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    assert.matches("\r\n\r\nhello world$", data)
  end)
end)

describe("http.server streaming", function()
  it("streams chunks that curl receives in order, as they are written", function()
    local srv <close> = http.server({ handler = function()
      return 200, { ["content-type"] = "application/json" }, function(write)
        for i = 1, 5 do
          assert.is_true(write(json.encode({ n = i }) .. "\n"))
          task.sleep(0.15)
        end
      end
    end })
    local arrivals = {}
    local start = time.monotonic()
    local r = exec.run({ "curl", "-sS", "-N", "-v", srv.url .. "/watch" }, {
      on_line = function(line, stream)
        if stream == "stdout" then arrivals[#arrivals + 1] = { line, time.monotonic() - start } end
      end,
    })
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("< Transfer%-Encoding: chunked", r.stderr)
    assert.are.equal(5, #arrivals)
    for i, a in ipairs(arrivals) do assert.are.equal(i, json.decode(a[1]).n) end
    -- incremental: the first line came long before the last was written
    assert.is_true(arrivals[5][2] - arrivals[1][2] > 0.4)
  end)

  it("accepts { stream = fn } and a stream that writes a lot (back-pressure)", function()
    local big = string.rep("z", 64 * 1024)
    local srv <close> = http.server({ handler = function()
      return { status = 200, stream = function(write)
        for _ = 1, 64 do write(big) end -- 4 MiB through a client that reads at its pace
      end }
    end })
    local r = curl({ srv.url .. "/" })
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal(64 * #big, #r.stdout)
  end)

  it("makes write return false once the client has gone, so the stream stops", function()
    local stopped, last = false, nil
    local srv <close> = http.server({ handler = function()
      return 200, {}, function(write)
        local n = 0
        while true do
          n = n + 1
          last = write("tick " .. n .. "\n")
          if not last then break end
          task.sleep(0.05)
        end
        stopped = true
      end
    end })
    local out = py({ "disconnect", srv.port, 3 })
    assert.matches("^got=%d+", out)
    assert.is_true(wait_for(function() return stopped end, 5))
    assert.is_false(last)
  end)

  it("cuts the connection when a stream fails half-way", function()
    local srv <close> = http.server({ handler = function()
      return 200, {}, function(write)
        write("partial\n")
        error("stream broke")
      end
    end })
    local r
    capture_log(function() r = curl({ srv.url .. "/" }) end)
    assert.are_not.equal(0, r.code) -- curl sees the chunked body end early
    assert.are.equal("partial\n", r.stdout)
  end)

  it("cancels a stream's task when the server closes", function()
    local cancelled = false
    local srv = http.server({ handler = function()
      return 200, {}, function(write)
        write("first\n")
        local ok, err = pcall(task.sleep, 30)
        cancelled = not ok and err.kind == "cancelled"
        error(err, 0)
      end
    end })
    local curl_task = task.spawn(curl, { srv.url .. "/" })
    task.sleep(0.3)
    srv:close()
    local r = curl_task:wait()
    assert.are.equal("first\n", r.stdout)
    assert.is_true(wait_for(function() return cancelled end, 2))
  end)
end)

describe("http.server closing", function()
  it("cancels in-flight handlers at once by default", function()
    local finished = false
    local srv = http.server({ handler = function()
      task.sleep(30)
      finished = true
      return 200, {}, "late"
    end })
    local curl_task = task.spawn(curl, { srv.url .. "/" })
    task.sleep(0.3)
    local took = elapsed(function() srv:close() return curl_task:wait() end)
    assert.is_true(took < 2, took)
    assert.is_false(finished)
  end)

  it("lets in-flight handlers finish within a grace period", function()
    local srv = http.server({ handler = function()
      task.sleep(0.3)
      return 200, {}, "finished in time"
    end })
    local curl_task = task.spawn(curl, { "-i", srv.url .. "/" })
    task.sleep(0.1)
    srv:close("5s")
    assert.are.equal(7, curl({ srv.url .. "/" }).code) -- no new connections
    local r = curl_task:wait()
    assert.matches("^HTTP/1.1 200 OK\r\n", r.stdout)
    assert.matches("\r\nConnection: close\r\n", r.stdout)
    assert.matches("finished in time$", r.stdout)
  end)

  it("can be closed by its own handler, which answers within the grace period", function()
    local srv
    srv = http.server({ handler = function(req)
      if req.path == "/now" then
        srv:close() -- no grace: this very request is cancelled with the rest
      else
        srv:close("2s")
      end
      return 200, {}, "bye"
    end })
    local r = curl({ "-i", srv.url .. "/shutdown" })
    assert.matches("\r\nConnection: close\r\n\r\nbye$", r.stdout)
    assert.are.equal(7, curl({ srv.url .. "/" }).code)
    srv = http.server({ handler = function() srv:close() return 200, {}, "bye" end })
    r = curl({ srv.url .. "/now" })
    assert.are.equal(52, r.code) -- curl: empty reply
  end)

  it("keeps serving after the main chunk returns, and stops on SIGTERM", function()
    local tug_bin = os.getenv("TUG_UNDER_TEST") or tug.executable
    local proc = exec.spawn({ tug_bin, "lua", "-e", [[
      local srv = http.server({ handler = function() return 200, {}, "daemon" end })
      print(srv.port)
    ]] }, { lines = true })
    local port
    repeat
      local batch = proc:next_lines()
      for _, entry in ipairs(batch or {}) do
        if entry.stream == "stdout" then port = entry.line end
      end
    until port or batch == nil
    assert.is_truthy(port)
    assert.are.equal("daemon", curl({ "http://127.0.0.1:" .. port .. "/" }).stdout)
    proc:kill("TERM")
    local r = proc:wait()
    proc:close()
    assert.are.equal(130, r.code)
  end)

  it("closes with a <close> variable", function()
    local url
    do
      local srv <close> = http.server({ handler = app })
      url = srv.url
      assert.are.equal(0, curl({ url .. "/" }).code)
    end
    assert.are.equal(7, curl({ url .. "/" }).code)
  end)
end)

describe("http.server timeouts", function()
  it("serves others promptly while a slow client trickles its headers, then drops it", function()
    local srv <close> = http.server({ handler = app, idle_timeout = 1 })
    local slow = task.spawn(py, { "slowloris", srv.port, 0.1 })
    task.sleep(0.3)
    local took, r = elapsed(function() return curl({ srv.url .. "/prompt" }) end)
    assert.are.equal("hello from /prompt", r.stdout)
    assert.is_true(took < 0.5, took)
    local out = slow:wait()
    local waited, state = out:match("^elapsed=([%d.]+) sent=%d+ state=(%a+)\n")
    assert.are.equal("closed", state)
    assert.is_true(tonumber(waited) < 3, out)
    assert.matches("HTTP/1.1 408 Request Timeout", out)
  end)

  it("closes an idle keep-alive connection after idle_timeout", function()
    local srv <close> = http.server({ handler = app, idle_timeout = "500ms" })
    local out = py({ "idle", srv.port })
    local waited, state = out:match("^elapsed=([%d.]+) state=(%a+)")
    assert.are.equal("closed", state)
    assert.is_true(tonumber(waited) >= 0.4 and tonumber(waited) < 2, out)
  end)
end)

describe("http.server options", function()
  it("rejects mistakes with a clear message", function()
    assert.has_error(function() http.server({ port = 0 }) end,
      "http.server: opts.handler must be a function(req)")
    assert.has_error(function() http.server({ handler = app, prot = 1 }) end,
      "http.server: unknown option 'prot'")
    assert.has_error(function() http.server({ handler = app, port = 70000 }) end)
    assert.has_error(function() http.server({ handler = app, host = "not-an-ip" }) end)
  end)

  it("raises an http error when the port is taken", function()
    local srv <close> = http.server({ handler = app })
    local ok, err = pcall(http.server, { handler = app, port = srv.port })
    assert.is_false(ok)
    assert.are.equal("http", err.kind)
    assert.matches("address already in use", err.message)
  end)
end)
