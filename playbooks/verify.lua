-- verify: the seed's post-deployment verification. The four health endpoints, the
-- response-time check (curl -w's timings), a short load check against the P95 and
-- error-rate thresholds, and database connectivity as the API reports it.
local multiship = require("multiship")

return playbook {
  description = "post-deployment verification: health, response times, a load check, database",
  params = {
    load_duration = { type = "duration", default = "5s" },
    concurrency = { type = "integer", default = 10, min = 1 },
    within = { type = "duration", default = "1m", help = "how long the health endpoints may take to pass" },
  },
  steps = {
    step "check the health endpoints" {
      read_only = true,
      run = function(ctx)
        local base = multiship.api_url(ctx.env)
        local r = health.check({ base .. "/health", base .. "/api/health/detailed",
          base .. "/api/health/database", base .. "/api/providers/health",
          within = ctx.params.within, interval = "2s" })
        if not r.ok then error(r.reason) end
        ctx.state.health = r.reason
      end,
    },

    step "check response times" {
      read_only = true,
      run = function(ctx)
        local r = http.get(multiship.api_url(ctx.env) .. "/api/orders")
        if not r.status then error(r.message) end
        local t = r.timings
        ctx.state.timings_ms = { dns = t.dns * 1000, connect = t.connect * 1000, tls = t.tls * 1000,
          ttfb = t.ttfb * 1000, total = t.total * 1000 }
        ctx.log.info(string.format("GET /api/orders: %d in %.1f ms (connect %.1f ms, first byte %.1f ms)",
          r.status, t.total * 1000, t.connect * 1000, t.ttfb * 1000))
        local limit = (ctx.env.thresholds and ctx.env.thresholds.p95_ms) or 500
        if t.total * 1000 > limit then
          error(string.format("GET /api/orders took %.0f ms, over the %d ms limit", t.total * 1000, limit))
        end
      end,
    },

    step "run a short load check" {
      read_only = true,
      run = function(ctx)
        local r = health.load({ url = multiship.api_url(ctx.env) .. "/api/orders",
          duration = ctx.params.load_duration, concurrency = ctx.params.concurrency })
        local thresholds = ctx.env.thresholds or {}
        local limit = thresholds.error_rate or 0.001
        -- P95 as health.gate judges it; the error rate on what it surely is at least
        -- (multiship.error_rate_low), since a few hundred requests cannot tell 0.05% from
        -- 0.3% (one error is 0.3%)
        local ok, sentence = health.gate(r, { p95_ms = thresholds.p95_ms, error_rate = false })
        ctx.state.load = { count = r.count, rps = r.rps, error_rate = r.error_rate, p95_ms = r.p95 and r.p95 * 1000 }
        if not r.planned and not r.error then
          local low = multiship.error_rate_low(r.errors, r.count)
          local rate = string.format("error rate %.3g%% (%d of %d requests%s)", 100 * r.error_rate, r.errors, r.count,
            r.errors > 0 and (": " .. tostring(r.error_summary)) or "")
          if low == nil then
            ok, sentence = false, "no request completed: " .. tostring(r.error_summary)
          elseif low >= limit then
            ok = false
            sentence = string.format("%s is over the %.3g%% limit (surely at least %.3g%%); %s", rate,
              100 * limit, 100 * low, sentence)
          else
            sentence = string.format("%s is not surely over the %.3g%% limit; %s", rate, 100 * limit, sentence)
          end
          ctx.state.load.error_rate_low = low
        end
        ctx.log.info(sentence)
        if not ok then error(sentence) end
      end,
    },

    step "check database connectivity" {
      read_only = true,
      run = function(ctx)
        local r = http.get(multiship.api_url(ctx.env) .. "/api/health/database")
        if not r.status then error(r.message) end
        if r.status ~= 200 then
          error(string.format("/api/health/database answered %d: %s", r.status, r.body:sub(1, 200)))
        end
        local ok, doc = pcall(r.json, r)
        if not ok or type(doc) ~= "table" then
          error("/api/health/database answered 200 without a JSON report: " .. r.body:sub(1, 200))
        end
        if doc.connected == false then
          error(string.format("/api/health/database says the database is not connected: %s", r.body:sub(1, 200)))
        end
        ctx.state.database = doc.status
        ctx.log.info(string.format("database %s (%s)", tostring(doc.status), tostring(doc.database or "connected")))
      end,
    },
  },
}
