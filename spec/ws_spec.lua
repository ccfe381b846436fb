-- ws_spec.lua: the ws module, client and server, on tug's loop in this process: the client
-- against ws.upgrade inside an http.server handler, TLS through a real nginx that proxies
-- the WebSocket, the failures a caller must be able to tell apart, and a child tug that
-- leaves a connection open and still exits at once. Host names are resolved off the loop:
-- by name over TLS (the certificate checked against the name, not the address), names that
-- do not resolve, and a lookup made slow with an LD_PRELOAD getaddrinfo that tug's other
-- tasks do not notice.

package.path = "spec/support/?.lua;" .. package.path
local child = require("child")
local exec = require("exec")
local fixture = require("fixture")
local http = require("http")
local task = require("task")
local time = require("time")
local ws = require("ws")

-- An echo server: every message back as it came, the request's headers on "headers?",
-- a close with code 4000 on "bye?". seen.* records what the server saw.
local function echo_server(protocols)
  local seen = { closes = {} }
  local srv = http.server({ port = 0, handler = function(req)
    local conn, status, message = ws.upgrade(req, { protocols = protocols or { "echo", "chat" } })
    if not conn then return status, { ["content-type"] = "text/plain" }, message end
    seen.protocol = conn.protocol
    seen.path = req.path
    while true do
      local data, kind = conn:recv()
      if not data then
        seen.closes[#seen.closes + 1] = kind
        return
      end
      if data == "headers?" then
        conn:send(require("json").encode({ test = req.headers["x-test"], auth = req.headers.authorization,
          host = req.headers.host, origin = req.headers.origin }))
      elseif data == "bye?" then
        conn:close(4000, "server says bye")
      else
        conn:send(data, kind == "binary")
      end
    end
  end })
  return srv, seen
end

local function wait_until(fn, seconds)
  local deadline = time.monotonic() + (seconds or 5)
  while not fn() do
    if time.monotonic() > deadline then return false end
    task.sleep(0.01)
  end
  return true
end

local function err_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return err
end

describe("ws client and server", function()
  local srv, seen

  setup(function() srv, seen = echo_server() end)
  teardown(function() srv:close() end)

  it("negotiates the first offered subprotocol the server has, and echoes text and binary", function()
    local conn <close> = ws.connect(srv.url .. "/echo?x=1", { protocols = { "nope", "chat", "echo" },
      headers = { ["X-Test"] = "42", Authorization = "Bearer s3cret" } })
    assert.are.equal("chat", conn.protocol)
    assert.are.equal("open", conn.state)
    assert.is_true(conn:send("hello"))
    assert.are.same({ "hello", "text" }, { conn:recv() })
    local bytes = "\0\1\2\255" .. string.rep("\0", 10)
    conn:send(bytes, true)
    assert.are.same({ bytes, "binary" }, { conn:recv() })
    conn:send("headers?")
    local h = require("json").decode((conn:recv()))
    local host = srv.url:gsub("^http://", "")
    assert.are.same({ test = "42", auth = "Bearer s3cret", host = host, origin = "http://" .. host }, h)
    assert.are.equal("/echo", seen.path)
  end)

  it("connects by host name, sending that name as Host and Origin", function()
    local url = srv.url:gsub("^http://127%.0%.0%.1:", "ws://localhost:")
    local conn <close> = ws.connect(url .. "/by-name", { protocols = { "echo" } })
    conn:send("headers?")
    local h = require("json").decode((conn:recv(5)))
    local port = srv.url:match(":(%d+)$")
    assert.are.equal("localhost:" .. port, h.host)
    assert.are.equal("http://localhost:" .. port, h.origin) -- lws makes it a URL
  end)

  it("keeps working when the module is loaded again (busted reloads modules for each file)", function()
    for _, name in ipairs({ "ws", "ws.core" }) do package.loaded[name] = nil end
    local again = require("ws")
    collectgarbage()
    collectgarbage()
    local conn <close> = again.connect(srv.url .. "/", { protocols = { "echo" } })
    conn:send("still here")
    assert.are.equal("still here", (conn:recv()))
  end)

  it("moves messages of several megabytes both ways, in order", function()
    local conn <close> = ws.connect(srv.url .. "/", { protocols = { "echo" } })
    local big = {}
    for i = 1, 3 do big[i] = string.rep(string.char(64 + i), 3 * 1024 * 1024 + i) end
    for i = 1, 3 do conn:send(big[i], true) end
    for i = 1, 3 do
      local data = conn:recv()
      assert.are.equal(#big[i], #data)
      assert.is_true(data == big[i])
    end
  end)

  it("carries close codes and reasons both ways", function()
    local conn = ws.connect(srv.url .. "/", { protocols = { "echo" } })
    conn:close(4001, "client leaves")
    local data, info = conn:recv()
    assert.is_nil(data)
    assert.are.equal("closed", conn.state)
    local c
    assert.is_true(wait_until(function()
      for _, x in ipairs(seen.closes) do if x.code == 4001 then c = x end end
      return c ~= nil
    end))
    assert.are.same({ 4001, "client leaves", true }, { c.code, c.reason, c.by_peer })
    assert.is_false(conn:send("late"))

    conn = ws.connect(srv.url .. "/", { protocols = { "echo" } })
    conn:send("bye?")
    data, info = conn:recv()
    assert.is_nil(data)
    assert.are.same({ 4000, "server says bye", true }, { info.code, info.reason, info.by_peer })
  end)

  it("recv with a timeout returns nil, timeout and leaves the connection usable", function()
    local conn <close> = ws.connect(srv.url .. "/", { protocols = { "echo" } })
    local t0 = time.monotonic()
    local data, info = conn:recv(0.2)
    assert.is_nil(data)
    assert.are.equal("timeout", info.error)
    assert.is_true(time.monotonic() - t0 >= 0.19)
    conn:send("still here")
    assert.are.equal("still here", (conn:recv(5)))
  end)

  it("releases a receiving task that is cancelled, and the connection goes on", function()
    local conn <close> = ws.connect(srv.url .. "/", { protocols = { "echo" } })
    local ok, err = pcall(task.timeout, 0.1, function() return conn:recv() end)
    assert.is_false(ok)
    assert.are.equal("timeout", err.kind)
    conn:send("after cancel")
    assert.are.equal("after cancel", (conn:recv(5)))
  end)

  it("frees every connection once closed", function()
    for _ = 1, 5 do
      local conn = ws.connect(srv.url .. "/", { protocols = { "echo" } })
      conn:send("x")
      conn:recv()
      conn:close()
      conn:recv()
    end
    collectgarbage()
    collectgarbage()
    assert.is_true(wait_until(function()
      collectgarbage()
      return ws.stats().connections <= 2 -- the test's own open ones, if any
    end), "connections left: " .. ws.stats().connections)
  end)

  it("refuses a message over max_message and closes with 1009", function()
    local conn <close> = ws.connect(srv.url .. "/", { protocols = { "echo" }, max_message = 1000 })
    conn:send(string.rep("y", 2000))
    local data, info = conn:recv(5)
    assert.is_nil(data)
    assert.are.equal("protocol", info.error)
    assert.matches("larger than max_message", info.message)
  end)
end)

describe("ws servers that send, close and return", function()
  -- The handler sends its messages, closes and returns at once: its connection's userdata
  -- is garbage then, usually before libwebsockets has written anything. What was queued
  -- and the close frame must still reach the client (sim.exec answers every exec so).
  local COUNT, MESSAGES = 50, 20
  local function sending_server(collect)
    return http.server({ port = 0, handler = function(req)
      local conn, status, message = ws.upgrade(req, { protocols = { "burst" } })
      if not conn then return status, {}, message end
      local id = req.query.id
      for i = 1, MESSAGES do conn:send(("%s:%d:"):format(id, i) .. string.rep("x", 100 * i), i % 2 == 0) end
      conn:close(1000, "done " .. id)
      if collect then
        conn = nil
        collectgarbage()
        collectgarbage()
      end
    end })
  end

  local function receive_all(url, id)
    local conn <close> = ws.connect(url .. "/?id=" .. id, { protocols = { "burst" } })
    local got = {}
    while true do
      local data, info = conn:recv(10)
      if not data then return got, info end
      got[#got + 1] = data
    end
  end

  local function check_every_client(srv)
    local fns = {}
    for id = 1, COUNT do
      fns[id] = function()
        local got, info = receive_all(srv.url, id)
        return { got = got, info = info }
      end
    end
    local results = { task.parallel(fns) }
    for id = 1, COUNT do
      local r = results[id]
      assert.are.equal(MESSAGES, #r.got, ("client %d got %d messages (%s)"):format(id, #r.got, tostring(r.info.message)))
      for i = 1, MESSAGES do
        assert.are.equal(("%d:%d:"):format(id, i) .. string.rep("x", 100 * i), r.got[i])
      end
      assert.are.same({ code = 1000, reason = "done " .. id, by_peer = true },
        { code = r.info.code, reason = r.info.reason, by_peer = r.info.by_peer, error = r.info.error })
    end
  end

  it("delivers every message, then the close, to 50 clients at once", function()
    local srv = sending_server(false)
    check_every_client(srv)
    srv:close()
  end)

  it("still does when the collector runs as soon as the handler lets go", function()
    local srv = sending_server(true)
    check_every_client(srv)
    srv:close()
    assert.is_true(wait_until(function()
      collectgarbage()
      return ws.stats().connections == 0
    end), "connections left: " .. ws.stats().connections)
  end)

  it("still does when Lua keeps the loop busy for longer than the close timeout", function()
    -- Between two turns of the loop Lua may run for seconds (50 handlers each running the
    -- collector over a large heap did): the 5 s the peer has counts from what it could see
    local srv = http.server({ port = 0, handler = function(req)
      local conn = ws.upgrade(req, { protocols = { "burst" } })
      for i = 1, MESSAGES do conn:send(("busy:%d"):format(i)) end
      conn:close(1000, "after a busy loop")
      local until_t = time.monotonic() + 5.5
      while time.monotonic() < until_t do end -- no yield: the loop is stuck meanwhile
    end })
    local got, info = receive_all(srv.url, "busy")
    assert.are.equal(MESSAGES, #got, ("got %d messages (%s)"):format(#got, tostring(info.message)))
    assert.are.equal("busy:" .. MESSAGES, got[MESSAGES])
    assert.are.same({ code = 1000, reason = "after a busy loop", by_peer = true },
      { code = info.code, reason = info.reason, by_peer = info.by_peer, error = info.error })
    srv:close()
  end)

  it("drops a closing connection whose peer takes nothing for 5 s", function()
    assert.is_true(wait_until(function()
      collectgarbage()
      return ws.stats().connections == 0
    end), "connections left from before: " .. ws.stats().connections)
    local closed_at, buffered, server_conn
    local srv = http.server({ port = 0, handler = function(req)
      local conn = ws.upgrade(req, { protocols = { "burst" } })
      server_conn = conn
      -- the client never reads: once the socket buffers are full, the queue stays
      for _ = 1, 400 do
        if conn.buffered > 512 * 1024 then break end
        conn:send(string.rep("p", 256 * 1024), true)
        task.sleep(0.01)
      end
      buffered = conn.buffered
      closed_at = time.monotonic()
      conn:close(1000, "never sent")
    end })
    local conn <close> = ws.connect(srv.url .. "/", { protocols = { "burst" } })
    assert.is_true(wait_until(function() return closed_at ~= nil end, 10), "the handler never closed")
    assert.is_true(buffered > 512 * 1024, "the queue never filled: " .. tostring(buffered))
    assert.is_true(wait_until(function() return server_conn.state == "closed" end, 10),
      "the closing connection was never dropped")
    local waited = time.monotonic() - closed_at
    assert.is_true(waited > 4.5 and waited < 8, ("dropped after %.2f s"):format(waited))
    -- the client reads what made it across, then sees the connection break
    local data, info
    repeat data, info = conn:recv(10) until not data
    assert.are.equal("closed", info.error)
    assert.is_false(info.by_peer)
    srv:close()
  end)

  it("sends the close frame after a large message libwebsockets could only partly write", function()
    local srv = http.server({ port = 0, handler = function(req)
      local conn <close> = ws.upgrade(req, { protocols = { "burst" } })
      conn:send(string.rep("z", 16 * 1024 * 1024), true)
      -- tug's queue is empty at once; most of the message still waits inside libwebsockets
      while conn.buffered > 0 do task.sleep(0.001) end
      conn:close(1000, "after the big one")
    end })
    local conn <close> = ws.connect(srv.url .. "/", { protocols = { "burst" } })
    local data = conn:recv(10)
    assert.are.equal(16 * 1024 * 1024, #data)
    local _, info = conn:recv(10)
    assert.are.same({ code = 1000, reason = "after the big one", by_peer = true },
      { code = info.code, reason = info.reason, by_peer = info.by_peer, error = info.error })
    srv:close()
  end)

  it("reports a connection that ends without a closing handshake as broken", function()
    -- a handler that lets go of an open connection: it is dropped, no close frame sent
    local srv = http.server({ port = 0, handler = function(req)
      local conn = ws.upgrade(req, { protocols = { "burst" } })
      conn:recv(5)
      conn = nil
      collectgarbage()
      collectgarbage()
    end })
    local conn <close> = ws.connect(srv.url .. "/", { protocols = { "burst" } })
    conn:send("drop me")
    local data, info = conn:recv(5)
    assert.is_nil(data)
    assert.are.same({ error = "closed", message = "the connection ended without a closing handshake",
      by_peer = false }, { error = info.error, message = info.message, by_peer = info.by_peer, code = info.code })
    srv:close()
  end)
end)

describe("ws failures", function()
  it("raises a connect error naming the address when nothing listens", function()
    local err = err_of(ws.connect, "ws://127.0.0.1:1/x")
    assert.are.equal("ws", err.kind)
    assert.are.equal("connect", err.error)
    assert.matches("ws://127.0.0.1:1/x: cannot connect to 127.0.0.1:1", err.message, 1, true)
  end)

  it("says which host name does not resolve, at once, without the URL's credentials", function()
    local t0 = time.monotonic()
    local err = err_of(ws.connect, "wss://user:pw@no-such-host.invalid:6443/api/x?y=1", { timeout = 5 })
    assert.are.equal("ws", err.kind)
    assert.are.equal("dns", err.error)
    -- the resolver's own words: here "Name or service not known"; without DNS, another reason
    assert.matches("^ws: cannot resolve no%-such%-host%.invalid: %a", err.message)
    assert.are.equal("wss://no-such-host.invalid:6443/api/x", err.url)
    assert.is_nil(err.message:find("pw", 1, true))
    assert.is_true(time.monotonic() - t0 < 4)
    -- a name that resolves but where nothing listens names the address it tried
    err = err_of(ws.connect, "ws://localhost:1/")
    assert.are.equal("connect", err.error)
    assert.matches("cannot connect to localhost:1 at 127.0.0.1", err.message, 1, true)
    -- an IPv6 literal is dialled as it is
    err = err_of(ws.connect, "ws://[::1]:1/")
    assert.are.equal("connect", err.error)
    assert.matches("cannot connect to [::1]:1", err.message, 1, true)
  end)

  it("reports the server's refusal of the upgrade with its HTTP status", function()
    local srv = echo_server({ "v5.channel.k8s.io" })
    local err = err_of(ws.connect, srv.url .. "/", { protocols = { "other" } })
    assert.are.equal("handshake", err.error)
    assert.are.equal(400, err.status)
    -- a server that is no WebSocket server at all
    local plain = http.server({ port = 0, handler = function() return 200, {}, "plain http\n" end })
    err = err_of(ws.connect, plain.url .. "/")
    assert.are.equal("handshake", err.error)
    assert.are.equal(200, err.status)
    plain:close()
    srv:close()
  end)

  it("answers a request that is no upgrade with 400 from the handler", function()
    local srv = echo_server()
    local r = http.get(srv.url .. "/")
    assert.are.equal(400, r.status)
    assert.matches("WebSocket upgrade", r.body)
    srv:close()
  end)

  it("times out a server that never answers the handshake", function()
    local stuck = http.server({ port = 0, handler = function() task.sleep(30) end })
    local t0 = time.monotonic()
    local err = err_of(ws.connect, stuck.url .. "/", { timeout = 0.3 })
    assert.are.equal("timeout", err.error)
    assert.is_true(time.monotonic() - t0 < 3)
    stuck:close()
  end)

  it("never shows credentials from the URL", function()
    local err = err_of(ws.connect, "ws://user:hunter2@127.0.0.1:1/")
    assert.is_nil(err.message:find("hunter2", 1, true))
    assert.is_nil(err.message:find("user", 1, true))
  end)

  it("rejects bad arguments, naming them", function()
    assert.matches("url must start with ws://", err_of(ws.connect, "ftp://x/"))
    assert.matches("unknown option 'time_out'", err_of(ws.connect, "ws://x/", { time_out = 1 }))
    assert.matches("header Upgrade belongs to the handshake", err_of(ws.connect, "ws://x/", { headers = { Upgrade = "x" } }))
    assert.matches("tls.cert and tls.key go together", err_of(ws.connect, "wss://x/", { tls = { cert = "a" } }))
    assert.matches("protocols%[1%] is not a valid subprotocol name", err_of(ws.connect, "ws://x/", { protocols = { "a b" } }))
  end)
end)

describe("ws over TLS (nginx in front)", function()
  local nginx = require("nginx")
  local srv, proxy

  setup(function()
    srv = echo_server()
    proxy = nginx.start({ tls = true, locations = ([[
    location /ws/ {
      proxy_pass http://127.0.0.1:%d;
      proxy_set_header X-Test "sni=$ssl_server_name host=$http_host";
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
    }]]):format(srv.port) })
  end)

  teardown(function()
    if proxy then proxy:stop() end
    srv:close()
  end)

  local function wss() return (proxy.url:gsub("^https", "wss")) .. "/ws/x" end

  it("connects with the CA as a file and as PEM text", function()
    local conn = ws.connect(wss(), { protocols = { "echo" }, tls = { ca = proxy.ca } })
    conn:send("over tls")
    assert.are.equal("over tls", (conn:recv(5)))
    conn:close()
    local f = assert(io.open(proxy.ca))
    local pem = f:read("a")
    f:close()
    conn = ws.connect(wss(), { protocols = { "echo" }, tls = { ca = pem } })
    assert.are.equal("echo", conn.protocol)
    conn:close()
  end)

  it("connects by host name with a certificate for that name, sending it as SNI and Host", function()
    local url = wss():gsub("^wss://127%.0%.0%.1:", "wss://localhost:")
    local conn <close> = ws.connect(url, { protocols = { "echo" }, tls = { ca = proxy.ca } })
    conn:send("headers?")
    local h = require("json").decode((conn:recv(5)))
    assert.are.equal(("sni=localhost host=localhost:%d"):format(proxy.port), h.test)
  end)

  it("refuses a server certificate no CA vouches for, unless insecure", function()
    local err = err_of(ws.connect, wss(), { protocols = { "echo" } })
    assert.are.equal("tls", err.error)
    assert.matches("certificate", err.message)
    local conn = ws.connect(wss(), { protocols = { "echo" }, tls = { insecure = true } })
    conn:send("insecure")
    assert.are.equal("insecure", (conn:recv(5)))
    conn:close()
  end)

  it("says which CA file it cannot read", function()
    local err = err_of(ws.connect, wss(), { tls = { ca = "/nonexistent/ca.crt" } })
    assert.are.equal("tls", err.error)
    assert.matches("cannot read the CA file /nonexistent/ca.crt", err.message, 1, true)
  end)
end)

describe("ws certificate names", function()
  local dir, server, port, ca

  -- A CA, and a certificate it signed for elsewhere.example and the address 127.0.0.1 but
  -- not for localhost, served by openssl s_server (the TLS handshake is what matters).
  setup(function()
    dir = fixture.run({ "mktemp", "-d", "/tmp/tug-ws-spec.XXXXXX" }, "mktemp", "ws spec"):gsub("%s+$", "")
    local function openssl(args)
      local argv = { "openssl" }
      for _, a in ipairs(args) do argv[#argv + 1] = a end
      fixture.run(argv, args[1], "ws spec")
    end
    local ec = { "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes" }
    ca = dir .. "/ca.crt"
    openssl({ "req", "-x509", ec[1], ec[2], ec[3], ec[4], ec[5], "-keyout", dir .. "/ca.key", "-out", ca,
      "-days", "2", "-subj", "/CN=tug ws spec CA", "-addext", "basicConstraints=critical,CA:TRUE",
      "-addext", "keyUsage=critical,keyCertSign,cRLSign" })
    openssl({ "req", ec[1], ec[2], ec[3], ec[4], ec[5], "-keyout", dir .. "/server.key",
      "-out", dir .. "/server.csr", "-subj", "/CN=elsewhere.example" })
    fixture.write(dir .. "/server.ext", "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n" ..
      "subjectAltName=DNS:elsewhere.example,IP:127.0.0.1\n")
    openssl({ "x509", "-req", "-in", dir .. "/server.csr", "-CA", ca, "-CAkey", dir .. "/ca.key",
      "-CAcreateserial", "-out", dir .. "/server.crt", "-days", "2", "-extfile", dir .. "/server.ext" })
    port = fixture.free()
    server = exec.spawn({ "openssl", "s_server", "-accept", "127.0.0.1:" .. port, "-cert", dir .. "/server.crt",
      "-key", dir .. "/server.key", "-www", "-quiet" }, { capture = false })
    assert.is_true(wait_until(function() return fixture.listening()[port] end), "openssl s_server did not start")
  end)

  teardown(function()
    if server then server:close() end
    if dir then exec.run({ "rm", "-rf", dir }) end
  end)

  it("checks the server's certificate against the name asked for, not the address dialled", function()
    -- by address, the certificate is accepted (s_server then answers HTTP, not WebSocket)
    local err = err_of(ws.connect, ("wss://127.0.0.1:%d/"):format(port), { tls = { ca = ca }, timeout = 5 })
    assert.are.equal("handshake", err.error, err.message)
    -- by a name that dials the very same address, it is not: it names elsewhere.example
    err = err_of(ws.connect, ("wss://localhost:%d/"):format(port), { tls = { ca = ca }, timeout = 5 })
    assert.are.equal("tls", err.error, err.message)
    assert.matches("the server's certificate was not accepted: hostname mismatch", err.message, 1, true)
    -- insecure skips the name check too
    err = err_of(ws.connect, ("wss://localhost:%d/"):format(port), { tls = { insecure = true }, timeout = 5 })
    assert.are.equal("handshake", err.error, err.message)
  end)
end)

describe("ws host names resolved off the loop", function()
  -- getaddrinfo for slow.tug.test takes 1 s, then answers as for localhost: preloaded into
  -- a child tug, it shows whether the lookup holds up the loop.
  local SHIM = [[
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netdb.h>
#include <string.h>
#include <unistd.h>
int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res) {
  int (*real)(const char *, const char *, const struct addrinfo *, struct addrinfo **) =
      (int (*)(const char *, const char *, const struct addrinfo *, struct addrinfo **))dlsym(
          RTLD_NEXT, "getaddrinfo");
  if (node && strcmp(node, "slow.tug.test") == 0) {
    usleep(1000000);
    node = "localhost";
  }
  return real(node, service, hints, res);
}
]]
  local dir, shim

  setup(function()
    dir = fixture.run({ "mktemp", "-d", "/tmp/tug-ws-shim.XXXXXX" }, "mktemp", "ws spec"):gsub("%s+$", "")
    fixture.write(dir .. "/slow_dns.c", SHIM)
    shim = dir .. "/slow_dns.so"
    fixture.run({ "cc", "-shared", "-fPIC", "-o", shim, dir .. "/slow_dns.c", "-ldl" }, "compiling the shim", "ws spec")
  end)

  teardown(function()
    if dir then exec.run({ "rm", "-rf", dir }) end
  end)

  it("keeps other tasks running during a slow lookup, times it out, and cancels it", function()
    local srv = echo_server()
    local port = srv.url:match(":(%d+)$")
    local asan = os.getenv("ASAN_OPTIONS")
    local r = child.lua(([[
      local ws, task, time = require("ws"), require("task"), require("time")
      local url = "ws://slow.tug.test:%s/"
      -- a ticker counts 50 ms steps while one task resolves, connects and echoes
      local ticks, done = 0, false
      local t0 = time.monotonic()
      task.parallel({
        function()
          local conn <close> = ws.connect(url, { protocols = { "echo" } })
          conn:send("resolved")
          print(conn:recv(5), ("%%.1f"):format(time.monotonic() - t0))
          done = true
        end,
        function()
          while not done do task.sleep(0.05); ticks = ticks + 1 end
        end,
      })
      print("ticks", ticks)
      -- the connect timeout covers the lookup
      t0 = time.monotonic()
      local ok, err = pcall(ws.connect, url, { timeout = 0.3 })
      print(err.error, err.message, time.monotonic() - t0 < 0.8)
      -- a task cancelled while its lookup runs lets go at once
      t0 = time.monotonic()
      ok, err = pcall(task.timeout, 0.2, ws.connect, url)
      print(err.kind, time.monotonic() - t0 < 0.7)
    ]]):format(port), {
      timeout = 20,
      env = { LD_PRELOAD = shim, ASAN_OPTIONS = (asan and asan .. ":" or "") .. "verify_asan_link_order=0" },
    })
    srv:close()
    assert.are.equal(0, r.code, r.stderr)
    local lines = {}
    for line in r.stdout:gmatch("[^\n]+") do lines[#lines + 1] = line end
    local echoed, took = lines[1]:match("^(%S+)\t(%S+)$")
    assert.are.equal("resolved", echoed, r.stdout)
    assert.is_true(tonumber(took) >= 0.9, r.stdout) -- the lookup did take its second
    local ticks = tonumber(lines[2]:match("^ticks\t(%d+)$"))
    assert.is_true(ticks >= 12, r.stdout) -- about 20 when the loop runs; 1 or 2 when blocked
    assert.are.equal("timeout\tws: ws://slow.tug.test:" .. port .. "/: slow.tug.test did not resolve in time\ttrue", lines[3])
    assert.are.equal("timeout\ttrue", lines[4])
    assert.are.equal("", r.stderr)
  end)
end)

describe("ws and the end of tug", function()
  it("lets a tug with an open connection nobody waits on exit at once, cleanly", function()
    local srv = echo_server()
    local t0 = time.monotonic()
    local r = child.lua(([[
      local conn = ws.connect(%q, { protocols = { "echo" } })
      conn:send("hi")
      print(conn:recv())
    ]]):format(srv.url .. "/"), { timeout = 20 })
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal("hi\ttext\n", r.stdout)
    assert.are.equal("", r.stderr)
    assert.is_true(time.monotonic() - t0 < 10)
    srv:close()
  end)
end)
