-- prometheus.lua: a real Prometheus (Debian's) for specs and benchmarks, scraping a
-- loopback target that the spec controls. The target is an http.server in this very
-- process serving /metrics in the text exposition format, with values the spec sets
-- (a number, "NaN", or a function called at every scrape). Prometheus gets a free port,
-- its own config and storage directory under /tmp, and is stopped with SIGTERM.
--
--   local target = prometheus.target()
--   target:set("canary_error_rate", 0.0004, { version = "v2" })
--   local prom = prometheus.start{ targets = { target }, scrape_interval = "200ms" }
--   ... metrics.query({ type = "prometheus", url = prom.url }, "canary_error_rate") ...
--   prom:stop()      -- SIGTERM, waits, removes the directory, closes the targets
--
-- start() returns once Prometheus answers /-/ready and the first scraped samples can be
-- queried (about 5 s after start on these machines: its scrape loop starts late).

local prometheus = {}

local BINARY = "/usr/bin/prometheus"

local fixture = require("fixture")
local write = fixture.write
local function run(argv, what) return fixture.run(argv, what, "prometheus") end

local free_port = fixture.free

-- ---- the target: /metrics with values the spec sets ----

local Target = {}
Target.__index = Target

local function label_text(labels)
  local keys = {}
  for k in pairs(labels or {}) do keys[#keys + 1] = k end
  if #keys == 0 then return "" end
  table.sort(keys)
  local parts = {}
  for i, k in ipairs(keys) do
    parts[i] = ('%s="%s"'):format(k, tostring(labels[k]):gsub("\\", "\\\\"):gsub('"', '\\"'))
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

local function value_text(v)
  if type(v) == "function" then v = v() end
  if type(v) == "string" then return v end
  if v ~= v then return "NaN" end
  if v == math.huge then return "+Inf" end
  if v == -math.huge then return "-Inf" end
  return string.format("%.17g", v)
end

-- target:set(name, value [, labels]): value is a number, "NaN", or a function called at
-- each scrape; nil removes that series.
function Target:set(name, value, labels)
  local key = name .. label_text(labels)
  if value == nil then
    self.series[key] = nil
  else
    self.series[key] = { name = name, labels = labels, value = value }
  end
  self.scrapes_at_set = self.scrapes
end

function Target:exposition()
  local keys = {}
  for k in pairs(self.series) do keys[#keys + 1] = k end
  table.sort(keys)
  local lines, typed = {}, {}
  for _, k in ipairs(keys) do
    local s = self.series[k]
    if not typed[s.name] then
      lines[#lines + 1] = "# TYPE " .. s.name .. " gauge"
      typed[s.name] = true
    end
    lines[#lines + 1] = k .. " " .. value_text(s.value)
  end
  return table.concat(lines, "\n") .. "\n"
end

function Target:close()
  if self.server then
    self.server:close()
    self.server = nil
  end
end

function prometheus.target()
  local target = setmetatable({ series = {}, scrapes = 0 }, Target)
  target.server = http.server({ port = 0, handler = function(req)
    if req.path ~= "/metrics" then return 404, {}, "not found\n" end
    target.scrapes = target.scrapes + 1
    return 200, { ["content-type"] = "text/plain; version=0.0.4" }, target:exposition()
  end })
  target.address = "127.0.0.1:" .. target.server.port
  return target
end

-- ---- Prometheus itself ----

local Server = {}
Server.__index = Server

-- Stops Prometheus (SIGTERM, KILL after 10 s) and removes its directory; closes the targets
-- it was given. Safe to call twice.
function Server:stop()
  if self.proc then
    require("child").stop(self.proc, "prometheus", { seconds = 10 })
    self.proc = nil
  end
  if self.dir then
    exec.run({ "rm", "-rf", self.dir })
    self.dir = nil
  end
  for _, t in ipairs(self.targets or {}) do t:close() end
end

Server.__close = Server.stop

-- The decoded answer of an instant query (for the spec's own checks).
function Server:query(expr)
  return http.get(self.url .. "/api/v1/query", { query = { query = expr }, timeout = 5 }):raise():json()
end

-- Waits until `expr` gives a result for which accept(result list) is true (default: any
-- series); returns the result list.
function Server:wait_for(expr, accept, within)
  local deadline = time.monotonic() + (within or 15)
  while true do
    local doc = self:query(expr)
    local result = doc.data and doc.data.result or {}
    if (accept and accept(result)) or (not accept and #result > 0) then return result end
    if time.monotonic() > deadline then
      error(("prometheus helper: %s did not give the expected result within %ss: %s"):format(expr,
        tostring(within or 15), json.encode(doc)), 2)
    end
    task.sleep(0.05)
  end
end

function Server:log()
  local f = io.open(self.dir .. "/prometheus.log")
  if not f then return "" end
  local text = f:read("a")
  f:close()
  return text
end

-- prometheus.start{ targets = { target, ... }, scrape_interval = "200ms" } -> server
-- { url, port, dir, proc, targets }
function prometheus.start(opts)
  opts = opts or {}
  local interval = opts.scrape_interval or "200ms"
  local dir = run({ "mktemp", "-d", "/tmp/tug-prometheus.XXXXXX" }, "mktemp"):gsub("%s+$", "")
  local addresses = {}
  for i, t in ipairs(opts.targets or {}) do addresses[i] = '"' .. t.address .. '"' end
  write(dir .. "/prometheus.yml", ([[
global:
  scrape_interval: %s
  scrape_timeout: %s
  evaluation_interval: 10s
scrape_configs:
  - job_name: fixture
    static_configs:
      - targets: [%s]
]]):format(interval, interval, table.concat(addresses, ", ")))

  local last_log = ""
  for _ = 1, 3 do
    local port = free_port()
    -- prometheus logs to stderr; a shell redirect keeps it in the directory for failures
    local proc = exec.spawn({ "sh", "-c", 'exec "$0" "$@" 2>"' .. dir .. '/prometheus.log"', BINARY,
      "--config.file=" .. dir .. "/prometheus.yml", "--storage.tsdb.path=" .. dir .. "/data",
      "--web.listen-address=127.0.0.1:" .. port, "--web.enable-lifecycle",
      "--storage.tsdb.retention.time=1h" }, { capture = false })
    local server = setmetatable({ proc = proc, dir = dir, port = port, url = "http://127.0.0.1:" .. port,
      targets = opts.targets or {} }, Server)
    local deadline = time.monotonic() + 10
    local ready = false
    while time.monotonic() < deadline do
      local r = http.get(server.url .. "/-/ready", { timeout = 1 })
      if r.status == 200 then
        ready = true
        break
      end
      last_log = server:log()
      if last_log:find("address already in use") then break end
      task.sleep(0.05)
    end
    if ready then
      if #server.targets > 0 then server:wait_for("up", nil, 20) end
      return server
    end
    require("child").stop(proc, "prometheus")
  end
  exec.run({ "rm", "-rf", dir })
  for _, t in ipairs(opts.targets or {}) do t:close() end
  error("prometheus helper: prometheus did not start: " .. last_log, 2)
end

return prometheus
