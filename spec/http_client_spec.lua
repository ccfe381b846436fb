-- http_client_spec.lua: the http client against real servers started here: nginx (plain,
-- TLS with a CA made by openssl, and a unix socket) for what a web server does, and a small
-- Python server (spec/support/http_test_server.py) for what nginx will not do on cue:
-- failing twice, closing mid-body, streaming split lines, hanging and noticing a hang-up.
-- Only 127.0.0.1 is used; nothing depends on the internet.
package.path = "spec/support/?.lua;" .. package.path

local http = require("http")
local exec = require("exec")
local json = require("json")
local task = require("task")
local time = require("time")
local nginx = require("nginx")

local plain, secure -- nginx servers
local py, py_proc   -- the Python server's base URL and process

local function elapsed(fn, ...)
  local start = time.monotonic()
  local a, b = fn(...)
  return time.monotonic() - start, a, b
end

-- A key no other test uses, for the Python server's counters.
local keys = 0
local function key(name)
  keys = keys + 1
  return ("%s-%d-%d"):format(name, keys, math.random(1e9))
end

-- Polls until fn() is true or `within` seconds pass; returns the last value.
local function eventually(fn, within)
  local deadline = time.monotonic() + (within or 3)
  repeat
    local v = fn()
    if v then return v end
    task.sleep(0.02)
  until time.monotonic() > deadline
  return fn()
end

local function py_count(k) return tonumber(http.get(py .. "/count?key=" .. k).body) end
local function py_closed(k) return http.get(py .. "/closed?key=" .. k).body == "yes" end

local function start_python()
  local proc = exec.spawn({ "/usr/bin/python3", "spec/support/http_test_server.py" },
    { lines = true, capture = false })
  local deadline = time.monotonic() + 10
  while time.monotonic() < deadline do
    local lines = task.timeout(10, proc.next_lines, proc)
    assert(lines, "the Python test server exited before saying its port")
    for _, entry in ipairs(lines) do
      local port = entry.line:match("^PORT (%d+)$")
      if port then return proc, "http://127.0.0.1:" .. port end
    end
  end
  error("the Python test server did not say its port")
end

describe("http client", function()
  setup(function()
    plain = nginx.start({
      unix_socket = true,
      files = { ["big.bin"] = string.rep("x", 2 * 1024 * 1024) },
    })
    secure = nginx.start({ tls = true })
    py_proc, py = start_python()
  end)

  teardown(function()
    if plain then plain:stop() end
    if secure then secure:stop() end
    if py_proc then
      py_proc:kill("KILL")
      py_proc:wait()
      py_proc:close()
    end
  end)

  describe("requests and responses", function()
    it("GETs a file: status, headers, body, url, version and timings", function()
      local r = http.get(plain.url .. "/hello.txt")
      assert.are.equal(200, r.status)
      assert.are.equal("hello from nginx\n", r.body)
      assert.are.equal("text/plain", r.headers["content-type"])
      assert.are.equal(plain.url .. "/hello.txt", r.url)
      assert.are.equal("1.1", r.http_version)
      assert.are.equal("GET", r.method)
      assert.is_nil(r.error)
      assert.is_true(r:ok())
      for _, phase in ipairs({ "dns", "connect", "tls", "ttfb", "total" }) do
        assert.is_true(r.timings[phase] >= 0 and r.timings[phase] < 5, phase)
      end
      assert.is_true(r.timings.total >= r.timings.ttfb)
    end)

    it("looks headers up ignoring case, joins repeats, and keeps set-cookie a list", function()
      local r = http.get(plain.url .. "/headers", { headers = { ["X-Test"] = "sent" } })
      assert.are.equal("x-test=sent", r.body)
      assert.are.equal("text/plain", r.headers["Content-Type"])
      assert.are.equal("text/plain", r.headers["CONTENT-TYPE"])
      assert.are.equal("one, two", r.headers["x-multi"])
      assert.are.same({ "a=1; Path=/", "b=2; Path=/" }, r.headers["Set-Cookie"])
      for name in pairs(r.headers) do assert.are.equal(name:lower(), name) end
    end)

    it("sends json and decodes the answer with r:json()", function()
      local payload = { name = "web", replicas = 3, tags = json.array and json.array() or {} }
      local r = http.post(py .. "/echo", { json = payload })
      assert.are.equal(200, r.status)
      local seen = r:json()
      assert.are.equal("POST", seen.method)
      assert.are.equal("application/json", seen.headers["content-type"])
      assert.are.same(payload, json.decode(seen.body))
      assert.are.equal('{"name":"web","replicas":3,"tags":[]}', seen.body)
    end)

    it("sends a form url-encoded and a raw body with no invented content type", function()
      local seen = http.put(py .. "/echo", { form = { b = "x y", a = "1&2=3" } }):json()
      assert.are.equal("PUT", seen.method)
      assert.are.equal("application/x-www-form-urlencoded", seen.headers["content-type"])
      assert.are.equal("a=1%262%3D3&b=x%20y", seen.body)
      seen = http.patch(py .. "/echo", { body = "raw\0bytes" }):json()
      assert.are.equal("PATCH", seen.method)
      assert.is_nil(seen.headers["content-type"])
      assert.is_nil(seen.headers["expect"])
      assert.are.equal("raw\0bytes", seen.body)
      seen = http.request({ method = "delete", url = py .. "/echo",
        headers = { ["Content-Type"] = "text/csv" }, body = "a,b" }):json()
      assert.are.equal("DELETE", seen.method)
      assert.are.equal("text/csv", seen.headers["content-type"])
    end)

    it("sends a large body at once, without waiting for 100-continue", function()
      local body = string.rep("0123456789abcdef", 128 * 1024) -- 2 MiB
      local took, r = elapsed(http.post, py .. "/echo", { body = body })
      assert.are.equal(200, r.status)
      assert.are.equal(#body, #r:json().body)
      assert.is_true(took < 0.9, "took " .. took)
    end)

    it("escapes the query, sorted by key, repeating keys for lists", function()
      local r = http.get(plain.url .. "/uri", {
        query = { b = "x y&z", a = { "1", 2 }, ["ü"] = "é/?", flag = true },
      })
      assert.are.equal("/uri?a=1&a=2&b=x%20y%26z&flag=true&%C3%BC=%C3%A9%2F%3F", r.body)
      r = http.get(plain.url .. "/uri?keep=1", { query = { add = "2" } })
      assert.are.equal("/uri?keep=1&add=2", r.body)
    end)

    it("does HEAD and OPTIONS", function()
      local r = http.request({ method = "HEAD", url = plain.url .. "/big.bin" })
      assert.are.equal(200, r.status)
      assert.are.equal("", r.body)
      assert.are.equal(tostring(2 * 1024 * 1024), r.headers["content-length"])
      r = http.request({ method = "OPTIONS", url = py .. "/echo" })
      assert.are.equal("OPTIONS", r:json().method)
    end)

    it("treats an HTTP error status as a normal response", function()
      local r = http.get(plain.url .. "/missing")
      assert.are.equal(404, r.status)
      assert.are.equal("not here", r.body)
      assert.is_false(r:ok())
      assert.is_nil(r.error)
    end)

    it("reuses one keep-alive connection for 20 sequential requests", function()
      local first = http.get(plain.url .. "/conn").body:match("^(%d+)")
      for _ = 1, 20 do
        assert.are.equal(first, http.get(plain.url .. "/conn").body:match("^(%d+)"))
      end
      local conn = http.get(py .. "/conn").body
      for _ = 1, 20 do assert.are.equal(conn, http.get(py .. "/conn").body) end
    end)

    it("follows redirects only when asked, at most 10", function()
      local r = http.get(plain.url .. "/redirect")
      assert.are.equal(302, r.status)
      assert.are.equal(plain.url .. "/hello.txt", r.headers.location)
      r = http.get(plain.url .. "/redirect", { follow = true })
      assert.are.equal(200, r.status)
      assert.are.equal("hello from nginx\n", r.body)
      assert.are.equal(plain.url .. "/hello.txt", r.url)
      r = http.get(plain.url .. "/loop", { follow = true })
      assert.is_nil(r.status)
      assert.are.equal("protocol", r.error)
      assert.matches("redirects", r.message)
    end)

    it("talks to a server on a unix socket", function()
      local r = http.get("http://localhost/hello.txt", { unix_socket = plain.socket })
      assert.are.equal(200, r.status)
      assert.are.equal("hello from nginx\n", r.body)
    end)

    it("goes through a proxy", function()
      local r = http.get("http://tug-spec.invalid/echo?via=proxy", { proxy = py })
      assert.are.equal(200, r.status)
      assert.are.equal("http://tug-spec.invalid/echo?via=proxy", r:json().target)
    end)
  end)

  describe("transport failures are values", function()
    it("times out quickly with error = timeout", function()
      local took, r = elapsed(http.get, py .. "/slow?delay=3", { timeout = 0.2 })
      assert.is_true(took < 1, "took " .. took)
      assert.is_nil(r.status)
      assert.are.equal("timeout", r.error)
      assert.matches("^GET " .. py:gsub("%p", "%%%0") .. "/slow%?delay=3: timeout: ", r.message)
      assert.is_false(r:ok())
      took, r = elapsed(http.get, py .. "/slow?delay=3", { timeout = "150ms" })
      assert.is_true(took < 1, "took " .. took)
      assert.are.equal("timeout", r.error)
    end)

    it("reports a refused connection with error = connect", function()
      local r = http.get("http://127.0.0.1:1/x")
      assert.is_nil(r.status)
      assert.are.equal("connect", r.error)
      assert.are.equal("GET http://127.0.0.1:1/x: connect: Connection refused", r.message)
      assert.are.same({}, r.headers)
      assert.are.equal("", r.body)
    end)

    it("reports a name that does not resolve with error = dns", function()
      local r = http.get("http://no-such-host.tug-spec.invalid/")
      assert.is_nil(r.status)
      assert.are.equal("dns", r.error)
      assert.matches("no-such-host.tug-spec.invalid", r.message, 1, true)
    end)

    it("fails, not truncates, when the server closes mid-body", function()
      local r = http.get(py .. "/truncated")
      assert.is_nil(r.status)
      assert.are.equal("protocol", r.error)
      assert.matches("/truncated: protocol: ", r.message, 1, true)
      assert.are.equal("", r.body)
    end)

    it("refuses a body over max_body with error = too_large", function()
      -- chunked, so the size is only known while reading
      local r = http.get(py .. "/big?size=" .. 2 * 1024 * 1024, { max_body = 1024 * 1024 })
      assert.is_nil(r.status)
      assert.are.equal("too_large", r.error)
      assert.matches("max_body", r.message)
      -- a Content-Length over the cap is refused before reading
      r = http.get(plain.url .. "/big.bin", { max_body = 1024 * 1024 })
      assert.are.equal("too_large", r.error)
      r = http.get(plain.url .. "/big.bin", { max_body = 4 * 1024 * 1024 })
      assert.are.equal(2 * 1024 * 1024, #r.body)
    end)

    it("takes the default max_body from http.configure", function()
      local before = http.configure()
      assert.are.equal(64 * 1024 * 1024, before.max_body)
      assert.are.equal(16, before.max_host_connections)
      http.configure({ max_body = 1000 })
      local r = http.get(plain.url .. "/big.bin")
      http.configure({ max_body = before.max_body })
      assert.are.equal("too_large", r.error)
      assert.are.equal(200, http.get(plain.url .. "/big.bin").status)
    end)

    it("turns any failure into a structured error with r:raise()", function()
      local ok, err = pcall(function() return http.get(plain.url .. "/missing"):raise() end)
      assert.is_false(ok)
      assert.are.equal("http", err.kind)
      assert.are.equal(404, err.status)
      assert.are.equal(plain.url .. "/missing", err.url)
      assert.are.equal("GET " .. plain.url .. "/missing: HTTP 404 Not Found: not here", tostring(err))
      ok, err = pcall(function() return http.get("http://127.0.0.1:1/"):raise() end)
      assert.is_false(ok)
      assert.are.equal("http", err.kind)
      assert.are.equal("connect", err.error)
      assert.are.equal("GET http://127.0.0.1:1/: connect: Connection refused", tostring(err))
      local r = http.get(plain.url .. "/json")
      assert.are.equal(r, r:raise())
      assert.are.same({ ok = true, n = 42, list = {} }, r:raise():json())
    end)

    it("says which URL and content type were not JSON", function()
      local ok, err = pcall(function() return http.get(plain.url .. "/html"):json() end)
      assert.is_false(ok)
      assert.are.equal("http", err.kind)
      assert.matches(plain.url .. "/html", tostring(err), 1, true)
      assert.matches("content-type text/html", tostring(err), 1, true)
    end)

    it("never shows credentials from the URL", function()
      local r = http.get("http://deployer:s3cr3t-pw@127.0.0.1:1/x")
      assert.are.equal("connect", r.error)
      assert.are.equal("GET http://127.0.0.1:1/x: connect: Connection refused", r.message)
      r = http.get("http://deployer:s3cr3t-pw@no-such-host.tug-spec.invalid/x")
      assert.are.equal("dns", r.error)
      assert.is_nil(r.message:find("s3cr3t", 1, true))
      assert.is_nil(r.message:find("deployer", 1, true))
      local url = plain.url:gsub("://", "://deployer:s3cr3t-pw@")
      r = http.get(url .. "/missing")
      assert.are.equal(404, r.status)
      assert.are.equal(plain.url .. "/missing", r.url)
      local ok, err = pcall(r.raise, r)
      assert.is_false(ok)
      assert.is_nil(tostring(err):find("s3cr3t", 1, true))
    end)

    it("rejects mistakes in the options, naming them", function()
      local cases = {
        { { url = plain.url, time_out = 1 }, "unknown option 'time_out'" },
        { { url = "ftp://x/" }, "url must start with http:// or https://" },
        { { url = plain.url, timeout = "soon" }, "timeout: 'soon' is not a duration" },
        { { url = plain.url, body = "a", json = {} }, "only one of body, json and form" },
        { { url = plain.url, headers = { ["Bad Name"] = "x" } }, "not a valid header name" },
        { { url = plain.url, headers = { X = "a\r\nInjected: 1" } }, "line break" },
        { { url = plain.url, retry_on = { "sometimes" } }, "retry_on: sometimes" },
        { { url = plain.url, tls = { verify = false } }, "unknown tls option 'verify'" },
      }
      for _, case in ipairs(cases) do
        local ok, err = pcall(function()
          local r = http.request(case[1]) -- not a tail call: the error names this line
          return r
        end)
        assert.is_false(ok)
        assert.matches(case[2], err, 1, true)
        assert.matches("^spec/http_client_spec.lua:%d+: http.request: ", err)
      end
    end)
  end)

  describe("retries", function()
    it("retries a 503 with growing delays until it succeeds", function()
      local k = key("flaky")
      local r = http.get(py .. "/flaky?fail=2&key=" .. k, { retries = 3, backoff = 0.1 })
      assert.are.equal(200, r.status)
      assert.are.equal("ok after 3", r.body)
      assert.are.equal(3, r.attempts)
      local at = http.get(py .. "/attempts?key=" .. k):json()
      assert.are.equal(3, #at)
      local first, second = at[2] - at[1], at[3] - at[2]
      assert.is_true(first >= 0.07, "first delay " .. first)
      assert.is_true(second > first, ("delays %.3f then %.3f"):format(first, second))
    end)

    it("gives up after `retries` and returns the last response", function()
      local k = key("down")
      local r = http.get(py .. "/flaky?fail=10&status=502&key=" .. k, { retries = 2, backoff = 0.01 })
      assert.are.equal(502, r.status)
      assert.are.equal(3, r.attempts)
      assert.are.equal(3, py_count(k))
    end)

    it("retries connection failures", function()
      local took, r = elapsed(http.get, "http://127.0.0.1:1/", { retries = 2, backoff = 0.05 })
      assert.are.equal("connect", r.error)
      assert.are.equal(3, r.attempts)
      assert.is_true(took >= 0.1, "took " .. took)
    end)

    it("does not retry a POST unless retry_on says so", function()
      local k = key("post")
      local r = http.post(py .. "/flaky?fail=1&key=" .. k, { retries = 3, backoff = 0.01 })
      assert.are.equal(503, r.status)
      assert.are.equal(1, py_count(k))
      k = key("post-explicit")
      r = http.post(py .. "/flaky?fail=1&key=" .. k, { retries = 3, backoff = 0.01, retry_on = { 503 } })
      assert.are.equal(200, r.status)
      assert.are.equal(2, py_count(k))
    end)

    it("does not retry statuses outside retry_on", function()
      local k = key("500")
      local r = http.get(py .. "/flaky?fail=1&status=500&key=" .. k, { retries = 3, backoff = 0.01 })
      assert.are.equal(500, r.status)
      assert.are.equal(1, r.attempts)
    end)

    it("honours Retry-After on a 503", function()
      local k = key("retry-after")
      local took, r = elapsed(http.get, py .. "/flaky?fail=1&retry_after=1&key=" .. k,
        { retries = 1, backoff = 0.01 })
      assert.are.equal(200, r.status)
      assert.is_true(took >= 0.95 and took < 3, "took " .. took)
    end)
  end)

  describe("streaming", function()
    it("delivers lines split across chunks whole and in order", function()
      local lines = {}
      local r = http.get(py .. "/lines", { on_line = function(line) lines[#lines + 1] = line end })
      assert.are.equal(200, r.status)
      assert.are.same({ "alpha", "beta", "gamma", "", "delta" }, lines)
      assert.are.equal("", r.body)
    end)

    it("delivers chunks that add up to the body", function()
      local parts = {}
      local r = http.get(py .. "/lines", { on_chunk = function(c) parts[#parts + 1] = c end })
      assert.are.equal(200, r.status)
      assert.are.equal("alpha\nbeta\ngamma\r\n\ndelta", table.concat(parts))
    end)

    it("lets the callback wait, and keeps up with a long stream", function()
      local n = 0
      local r = http.get(py .. "/big?size=" .. 4 * 1024 * 1024, {
        on_chunk = function(c)
          n = n + #c
          task.sleep(0.001)
        end,
        max_body = 1024 * 1024, -- a cap on what is buffered, not on what streams through
      })
      assert.are.equal(200, r.status)
      assert.are.equal(4 * 1024 * 1024, n)
    end)

    it("stops when on_line returns false and drops the connection", function()
      local k = key("forever")
      local seen = {}
      local r = http.get(py .. "/forever?key=" .. k, {
        on_line = function(line)
          seen[#seen + 1] = line
          if #seen == 3 then return false end
        end,
      })
      assert.are.equal(200, r.status)
      assert.is_true(r.stopped)
      assert.is_nil(r.error)
      assert.are.same({ "tick 1", "tick 2", "tick 3" }, seen)
      assert.is_true(eventually(function() return py_closed(k) end), "server saw no hang-up")
    end)

    it("ends a stream at its timeout, with what came so far delivered", function()
      local seen = 0
      local r = http.get(py .. "/forever?key=" .. key("timeout"), {
        timeout = 0.3, on_line = function() seen = seen + 1 end,
      })
      assert.are.equal("timeout", r.error)
      assert.is_true(seen > 0)
    end)

    it("keeps an error response whole instead of streaming it", function()
      local called = false
      local r = http.get(py .. "/status?code=500&body=oops", { on_line = function() called = true end })
      assert.are.equal(500, r.status)
      assert.are.equal("oops", r.body)
      assert.is_false(called)
    end)

    it("closes the request when the callback raises", function()
      local k = key("raise")
      local ok, err = pcall(http.get, py .. "/forever?key=" .. k, {
        on_line = function() error("callback failed") end,
      })
      assert.is_false(ok)
      assert.matches("callback failed", err)
      assert.is_true(eventually(function() return py_closed(k) end), "server saw no hang-up")
    end)
  end)

  describe("cancellation", function()
    it("returns promptly from task.timeout and drops the connection", function()
      local k = key("hang")
      local took, ok, err = elapsed(pcall, task.timeout, 0.2, http.get, py .. "/hang?key=" .. k)
      assert.is_false(ok)
      assert.are.equal("timeout", err.kind)
      assert.is_true(took < 1, "took " .. took)
      assert.is_true(eventually(function() return py_closed(k) end), "server saw no hang-up")
    end)

    it("cancels a request when a sibling in task.parallel fails", function()
      local k = key("sibling")
      local took, ok, err = elapsed(pcall, task.parallel, {
        function() return http.get(py .. "/hang?key=" .. k) end,
        function()
          task.sleep(0.1)
          error("sibling failed")
        end,
      })
      assert.is_false(ok)
      assert.matches("sibling failed", tostring(err))
      assert.is_true(took < 1, "took " .. took)
      assert.is_true(eventually(function() return py_closed(k) end), "server saw no hang-up")
    end)

    it("cancels a stream", function()
      local k = key("stream-cancel")
      local ok, err = pcall(task.timeout, 0.3, http.get, py .. "/forever?key=" .. k,
        { on_line = function() end })
      assert.is_false(ok)
      assert.are.equal("timeout", err.kind)
      assert.is_true(eventually(function() return py_closed(k) end), "server saw no hang-up")
    end)
  end)

  describe("TLS", function()
    it("verifies the server with the given CA, over HTTP/2", function()
      local r = http.get(secure.url .. "/hello.txt", { tls = { ca = secure.ca } })
      assert.are.equal(200, r.status)
      assert.are.equal("hello from nginx\n", r.body)
      assert.are.equal("2", r.http_version)
    end)

    it("fails with error = tls without the CA, and passes with insecure", function()
      local r = http.get(secure.url .. "/hello.txt")
      assert.is_nil(r.status)
      assert.are.equal("tls", r.error)
      assert.matches("^GET https://127.0.0.1:%d+/hello.txt: tls: ", r.message)
      r = http.get(secure.url .. "/hello.txt", { tls = { insecure = true } })
      assert.are.equal(200, r.status)
    end)

    it("accepts the CA as PEM text", function()
      local f = assert(io.open(secure.ca))
      local pem = f:read("a")
      f:close()
      assert.are.equal(200, http.get(secure.url .. "/hello.txt", { tls = { ca = pem } }).status)
    end)
  end)

  describe("plan mode", function()
    after_each(function() tug.plan.set(false) end)

    it("records a POST and sends nothing, while a GET still goes", function()
      local k = key("plan")
      tug.plan.take()
      tug.plan.set(true)
      local url = py:gsub("://", "://deployer:s3cr3t-pw@") .. "/echo?key=" .. k
      local r = http.post(url, { json = { replicas = 5 } })
      assert.is_true(r.planned)
      assert.is_true(r:ok())
      assert.is_nil(r.status)
      assert.are.equal("", r.body)
      assert.are.equal(r, r:raise())
      local got = http.get(py .. "/echo?key=" .. k)
      assert.are.equal(200, got.status)
      tug.plan.set(false)
      assert.are.equal(1, py_count(k)) -- only the GET
      local records = tug.plan.take()
      assert.are.equal(1, #records)
      assert.are.equal("http", records[1].module)
      assert.are.equal("POST " .. py .. "/echo?key=" .. k, records[1].summary)
      assert.are.equal('{"replicas":5}', records[1].detail)
    end)

    it("sends a write marked read_only", function()
      local k = key("read-only")
      tug.plan.take()
      tug.plan.set(true)
      local r = http.post(py .. "/echo?key=" .. k, { body = "query", read_only = true })
      tug.plan.set(false)
      assert.are.equal(200, r.status)
      assert.are.equal(1, py_count(k))
      assert.are.same({}, tug.plan.take())
    end)
  end)

  it("keeps working when the module is loaded again (busted reloads modules for each file)", function()
    for _, name in ipairs({ "http", "http.core", "http.server" }) do package.loaded[name] = nil end
    local again = require("http")
    collectgarbage()
    collectgarbage()
    local server = again.server({ handler = function() return 200, {}, "still here" end })
    local r = again.get(server.url, { timeout = 5 })
    server:close()
    assert.are.equal("still here", r.body)
  end)

  describe("many at once", function()
    it("runs 200 concurrent requests, at most 16 connections to the host", function()
      local fns = {}
      for i = 1, 200 do
        fns[i] = function()
          local r = http.get(plain.url .. "/conn")
          assert(r.status == 200, r.message)
          return r.body:match("^(%d+)")
        end
      end
      local results = { task.parallel(fns) }
      assert.are.equal(200, #results)
      local connections = {}
      for _, c in ipairs(results) do connections[c] = true end
      local n = 0
      for _ in pairs(connections) do n = n + 1 end
      assert.is_true(n >= 1 and n <= 16, n .. " connections")
    end)

    it("sends concurrent requests to a new plain-HTTP host at once, not one after another", function()
      local server = http.server({ handler = function() task.sleep(0.3); return 200, {}, "slow" end })
      local t0 = time.monotonic()
      local a, b, c = task.parallel({
        function() return http.get(server.url .. "/a").status end,
        function() return http.get(server.url .. "/b").status end,
        function() return http.get(server.url .. "/c").status end,
      })
      local took = time.monotonic() - t0
      server:close()
      assert.are.same({ 200, 200, 200 }, { a, b, c })
      assert.is_true(took < 0.55, "took " .. took .. " s: the requests queued behind each other")
    end)

    it("multiplexes concurrent requests over one HTTP/2 connection", function()
      local tls = { ca = secure.ca }
      local warm = http.get(secure.url .. "/conn", { tls = tls })
      assert.are.equal("2", warm.http_version)
      local fns = {}
      for i = 1, 50 do
        fns[i] = function() return http.get(secure.url .. "/conn", { tls = tls }).body:match("^(%d+)") end
      end
      local results = { task.parallel(fns) }
      for i = 1, 50 do assert.are.equal(warm.body:match("^(%d+)"), results[i]) end
    end)
  end)
end)
