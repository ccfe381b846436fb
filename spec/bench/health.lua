-- health.lua (bench): health.load beside wrk against the same nginx on loopback, one thread
-- each, 50 connections, closed-loop: wrk -t1 -c50 -d5s against health.load{ concurrency = 50,
-- duration = "5s" }. Prints both figures side by side and the ratio (target: 80% of wrk's
-- requests a second or better). Also shows the http engine (a curl transfer and a Lua task a
-- request, what https goes through) for scale. Nothing is asserted.
--
--   tug lua spec/bench/health.lua [SECONDS]
package.path = "spec/support/?.lua;" .. package.path

local exec = require("exec")
local health = require("health")
local nginx = require("nginx")
local task = require("task")

local seconds = tonumber(arg and arg[1]) or 5

local function wrk(url)
  local r = exec.run({ "wrk", "-t1", "-c50", ("-d%ds"):format(seconds), "--latency", url },
    { timeout = seconds + 30 })
  if r.code ~= 0 then error("wrk failed: " .. r.stderr) end
  local out = r.stdout
  local function ms(label)
    local v, unit = out:match(label .. "%s+([%d.]+)(%a+)")
    if not v then return nil end
    v = tonumber(v)
    return unit == "us" and v / 1000 or unit == "s" and v * 1000 or v
  end
  return {
    rps = tonumber(out:match("Requests/sec:%s*([%d.]+)")),
    p50 = ms("50%%"), p99 = ms("99%%"),
    errors = tonumber(out:match("Non%-2xx or 3xx responses: (%d+)")) or 0,
  }
end

local function row(name, rps, p50, p99, errors)
  print(("%-34s %10.0f req/s   p50 %7.3f ms   p99 %7.3f ms   errors %d"):format(name, rps, p50, p99,
    errors))
end

task.spawn(function()
  local server <close> = nginx.start({})
  local url = server.url .. "/hello.txt"
  -- a short warm-up so that neither side pays for nginx's first page-ins
  health.load({ url = url, duration = "500ms", concurrency = 50 })

  local w = wrk(url)
  local t = health.load({ url = url, duration = seconds, concurrency = 50 })
  local h = health.load({ url = url, duration = math.min(seconds, 3), concurrency = 50, engine = "http" })

  row(("wrk -t1 -c50 -d%ds"):format(seconds), w.rps, w.p50, w.p99, w.errors)
  row(("health.load (native), 50 conns, %ds"):format(seconds), t.rps, t.p50 * 1000, t.p99 * 1000, t.errors)
  row(("health.load (engine=http), %ds"):format(math.min(seconds, 3)), h.rps, h.p50 * 1000, h.p99 * 1000,
    h.errors)
  print(("health.load native / wrk: %.0f%% (target: 80%% or better)"):format(t.rps / w.rps * 100))
end)
