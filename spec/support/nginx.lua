-- nginx.lua: a real nginx for specs and benchmarks, on a free loopback port, with its own
-- config, pid, logs and temp paths in a fresh directory under /tmp. Serves the files given
-- plus a few test locations (below); `tls = true` adds a CA and a server certificate made
-- with the openssl command line, and serves HTTPS (HTTP/2 offered) with them.
--
--   local server = nginx.start{ files = { ["hello.txt"] = "hello\n" }, tls = false }
--   http.get(server.url .. "/hello.txt")      -- server.ca is the CA file when tls = true
--   server:stop()                             -- stops nginx and removes the directory
--
-- Locations: /conn answers "$connection $connection_requests"; /uri the request URI;
-- /method the method; /json a JSON object; /html an HTML page; /headers repeated headers
-- and the X-Test request header back; /redirect a 302 to /hello.txt; /loop a redirect to
-- itself; /missing a 404.

local nginx = {}

local NGINX = "/usr/sbin/nginx"

local fixture = require("fixture")
local write = fixture.write
local function run(argv, what) return fixture.run(argv, what, "nginx") end

local free_port = fixture.free

-- A CA and a certificate for 127.0.0.1 and localhost signed by it; returns the paths.
local function make_certificates(dir)
  local ec = { "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes" }
  local function openssl(args, what)
    local argv = { "openssl" }
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    run(argv, what)
  end
  local ca_key, ca_crt = dir .. "/ca.key", dir .. "/ca.crt"
  local key, csr, crt = dir .. "/server.key", dir .. "/server.csr", dir .. "/server.crt"
  openssl({ "req", "-x509", ec[1], ec[2], ec[3], ec[4], ec[5], "-keyout", ca_key, "-out", ca_crt,
    "-days", "2", "-subj", "/CN=tug spec CA",
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign" },
    "making the CA")
  openssl({ "req", ec[1], ec[2], ec[3], ec[4], ec[5], "-keyout", key, "-out", csr,
    "-subj", "/CN=127.0.0.1" }, "making the server key")
  write(dir .. "/server.ext", table.concat({
    "basicConstraints=CA:FALSE",
    "keyUsage=critical,digitalSignature,keyEncipherment",
    "extendedKeyUsage=serverAuth",
    "subjectAltName=IP:127.0.0.1,DNS:localhost",
  }, "\n") .. "\n")
  openssl({ "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial",
    "-out", crt, "-days", "2", "-extfile", dir .. "/server.ext" }, "signing the server certificate")
  return { ca = ca_crt, cert = crt, key = key }
end

local function config(prefix, port, opts, certs)
  local listen = ("listen 127.0.0.1:%d%s;"):format(port, certs and " ssl http2" or "")
  if opts.unix_socket then listen = listen .. ("\n    listen unix:%s/nginx.sock;"):format(prefix) end
  local tls = certs and ("ssl_certificate %s;\n    ssl_certificate_key %s;"):format(certs.cert, certs.key) or ""
  local user = opts.root_user and "user root;" or ""
  return ([[
%s
worker_processes 1;
pid %s/nginx.pid;
error_log %s/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path %s/tmp/body;
  proxy_temp_path %s/tmp/proxy;
  fastcgi_temp_path %s/tmp/fastcgi;
  uwsgi_temp_path %s/tmp/uwsgi;
  scgi_temp_path %s/tmp/scgi;
  types { text/html html; text/plain txt; application/json json; }
  default_type application/octet-stream;
  keepalive_requests 100000;
  keepalive_timeout 60s;
  server {
    %s
    %s
    root %s/html;
    location = /conn { default_type text/plain; return 200 "$connection $connection_requests"; }
    location = /uri { default_type text/plain; return 200 "$request_uri"; }
    location = /method { default_type text/plain; return 200 "$request_method"; }
    location = /json { default_type application/json; return 200 '{"ok":true,"n":42,"list":[]}'; }
    location = /html { default_type text/html; return 200 "<html>not json</html>"; }
    location = /headers {
      default_type text/plain;
      add_header X-Multi one;
      add_header X-Multi two;
      add_header Set-Cookie "a=1; Path=/";
      add_header Set-Cookie "b=2; Path=/";
      return 200 "x-test=$http_x_test";
    }
    location = /redirect { return 302 /hello.txt; }
    location = /loop { return 302 /loop; }
    location = /missing { default_type text/plain; return 404 "not here"; }
    %s
  }
}
]]):format(user, prefix, prefix, prefix, prefix, prefix, prefix, prefix, listen, tls, prefix,
    opts.locations or "")
end

local Server = {}
Server.__index = Server

-- Stops nginx (TERM, then KILL) and removes its directory. Safe to call twice.
function Server:stop()
  if self.proc then
    self.proc:stop()
    self.proc:wait()
    self.proc:close()
    self.proc = nil
  end
  if self.prefix then
    exec.run({ "rm", "-rf", self.prefix })
    self.prefix = nil
  end
end

Server.__close = Server.stop

function Server:error_log()
  local f = io.open(self.prefix .. "/logs/error.log")
  if not f then return "" end
  local text = f:read("a")
  f:close()
  return text
end

-- nginx.start{ files = { [name] = content }, tls = bool, unix_socket = bool (also listen on
-- server.socket), locations = "extra nginx config" }
function nginx.start(opts)
  opts = opts or {}
  local prefix = run({ "mktemp", "-d", "/tmp/tug-nginx.XXXXXX" }, "mktemp"):gsub("%s+$", "")
  for _, dir in ipairs({ "conf", "logs", "html", "tmp" }) do run({ "mkdir", "-p", prefix .. "/" .. dir }, "mkdir") end
  write(prefix .. "/html/hello.txt", "hello from nginx\n")
  for name, content in pairs(opts.files or {}) do write(prefix .. "/html/" .. name, content) end
  local certs = opts.tls and make_certificates(prefix .. "/conf") or nil
  opts.root_user = run({ "id", "-u" }, "id -u"):match("^0%s") ~= nil

  local last_log = ""
  for _ = 1, 5 do
    local port = free_port()
    local conf = prefix .. "/conf/nginx.conf"
    write(prefix .. "/logs/error.log", "")
    os.remove(prefix .. "/nginx.sock") -- left behind by an attempt that failed
    write(conf, config(prefix, port, opts, certs))
    local proc = exec.spawn({ NGINX, "-p", prefix .. "/", "-c", conf, "-g", "daemon off;" },
      { capture = false })
    local scheme = certs and "https" or "http"
    local server = setmetatable({
      proc = proc, prefix = prefix, port = port, url = ("%s://127.0.0.1:%d"):format(scheme, port),
      ca = certs and certs.ca, root = prefix .. "/html",
      socket = opts.unix_socket and prefix .. "/nginx.sock" or nil,
    }, Server)
    -- ready once it answers; a port taken meanwhile shows up as a bind error in the log
    local deadline = time.monotonic() + 5
    while time.monotonic() < deadline do
      local r = http.get(server.url .. "/hello.txt", { tls = { insecure = true }, timeout = 1 })
      if r.status == 200 then return server end
      last_log = server:error_log()
      if last_log:find("bind%(%)") or last_log:find("emerg") then break end
      task.sleep(0.02)
    end
    proc:stop()
    proc:wait()
    proc:close()
  end
  exec.run({ "rm", "-rf", prefix })
  error("nginx helper: nginx did not start: " .. last_log, 2)
end

return nginx
