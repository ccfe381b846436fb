-- s3rver.lua: a real S3 server for specs and benchmarks: @20minutes/s3rver (which verifies
-- SigV4 signatures) from vendor/node/node_modules, started with a few lines of node on a
-- free port with a temporary directory. Credentials S3RVER / S3RVER.
--
--   local server = s3rver.start({ buckets = { "site" } })
--   ... server.url, server.port ...
--   server:stop()   -- in teardown/finally: kills node and removes the directory

local exec = require("exec")
local task = require("task")
local time = require("time")

local s3rver = {}

s3rver.ACCESS_KEY, s3rver.SECRET_KEY = "S3RVER", "S3RVER"

local SCRIPT = [[
const S3rver = require(process.argv[1]);
const buckets = JSON.parse(process.argv[3]).map((name) => ({ name }));
const server = new S3rver({ address: '127.0.0.1', port: 0, directory: process.argv[2],
  silent: true, configureBuckets: buckets });
server.run().then((address) => { console.log('listening ' + address.port); },
  (err) => { console.error(String(err)); process.exit(1); });
process.on('SIGTERM', () => process.exit(0));
]]

local function node_modules()
  return (os.getenv("TUG_ROOT") or ".") .. "/vendor/node/node_modules"
end

local function module_dir()
  return node_modules() .. "/@20minutes/s3rver"
end

-- The Node.js 20 that vendor/install.sh put beside s3rver (Debian 12's node is 18, too
-- old for it); the node on PATH when that is missing.
local function node()
  local vendored = node_modules() .. "/.bin/node"
  local f = io.open(vendored)
  if f then f:close() return vendored end
  return "node"
end

function s3rver.available()
  local f = io.open(module_dir() .. "/package.json")
  if f then f:close() end
  return f ~= nil
end

local Server = {}
Server.__index = Server

function Server:stop()
  if self.proc then
    require("child").stop(self.proc, "s3rver") -- SIGKILL after 5 s
    self.proc = nil
  end
  if self.dir then
    exec.run({ "rm", "-rf", self.dir })
    self.dir = nil
  end
end

-- Environment for /usr/bin/aws pointed at this server.
function Server:cli_env()
  return {
    AWS_ACCESS_KEY_ID = s3rver.ACCESS_KEY, AWS_SECRET_ACCESS_KEY = s3rver.SECRET_KEY,
    AWS_EC2_METADATA_DISABLED = "true", AWS_DEFAULT_REGION = "us-east-1",
    AWS_PROFILE = false, AWS_SESSION_TOKEN = false, AWS_CONFIG_FILE = "/dev/null",
    AWS_SHARED_CREDENTIALS_FILE = "/dev/null",
  }
end

-- Runs /usr/bin/aws --endpoint-url URL ARGS...; returns exec.run's result.
function Server:cli(args, opts)
  local argv = { "/usr/bin/aws", "--endpoint-url", self.url }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return exec.run(argv, { env = self:cli_env(), timeout = (opts and opts.timeout) or 60 })
end

-- s3rver.start{ buckets = { "name", ... } } -> server { url, port, dir, stop, cli }
function s3rver.start(opts)
  opts = opts or {}
  local dir = exec.run({ "mktemp", "-d", "/tmp/tug-s3rver.XXXXXX" }, { check = true }).stdout:gsub("%s+$", "")
  local json = require("json")
  -- s3rver makes continuation tokens with DES, which node 20's OpenSSL 3 only has in its
  -- legacy provider: without it every truncated listing is a 500 InternalError.
  local proc = exec.spawn({ node(), "--openssl-legacy-provider", "-e", SCRIPT, module_dir(), dir, json.encode(opts.buckets or { "bucket" }) },
    { lines = true, kill_grace = 1 })
  local server = setmetatable({ proc = proc, dir = dir }, Server)
  local ok, port = pcall(require("fixture").wait_for_line, proc, "^listening (%d+)$", "s3rver")
  if not ok then
    server:stop()
    error(port, 0)
  end
  server.port = tonumber(port)
  server.url = "http://127.0.0.1:" .. port
  -- node has bound the port when it prints; one HTTP answer makes sure the app is routing
  local deadline = time.monotonic() + 10
  repeat
    local r = require("http").get(server.url .. "/", { timeout = 2 })
    if r.status then break end
    task.sleep(0.05)
  until time.monotonic() > deadline
  return server
end

return s3rver
