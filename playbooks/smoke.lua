-- smoke: the seed's smoke tests, `curl -f` on each URL of the environment's smoke.urls:
-- the API's health, a test order and the site. A path (/health) is under the API's URL
-- (the environment's url; on the simulated cluster, its api-service); a full URL
-- (https://multiship.com/) is used as it is. Every URL must answer 2xx (redirects are
-- followed) within the timeout; all are asked at once.
--
-- As synthetic monitoring: `tug run smoke --every 5m --metrics-listen 127.0.0.1:9464`
-- runs it every five minutes and serves the outcomes on /metrics.
local multiship = require("multiship")

-- Where the paths in smoke.urls are resolved.
local function api_base(env)
  if env.kubernetes and env.kubernetes.simulate then return multiship.api_url(env) end
  if type(env.url) ~= "string" then
    error(string.format("the %s environment has no url: the paths in smoke.urls are under it", env.name), 0)
  end
  return (env.url:gsub("/+$", ""))
end

-- smoke.urls as full URLs; a missing or malformed entry is an error naming it.
local function smoke_urls(env)
  local urls = type(env.smoke) == "table" and env.smoke.urls
  if type(urls) ~= "table" or #urls == 0 then
    error(string.format("the %s environment has no smoke.urls: list the paths (/health) or URLs to check", env.name), 0)
  end
  local list = {}
  for i, u in ipairs(urls) do
    if type(u) == "string" and u:match("^https?://") then
      list[i] = u
    elseif type(u) == "string" and u:sub(1, 1) == "/" then
      list[i] = api_base(env) .. u
    else
      error(string.format("smoke.urls[%d] in the %s environment must be a path starting with / or an " ..
        "http(s) URL (got %s)", i, env.name, tostring(u)), 0)
    end
  end
  return list
end

local function ms(seconds)
  return string.format("%.0f ms", seconds * 1000)
end

return playbook {
  description = "smoke tests: every URL in the environment's smoke.urls answers 2xx (curl -f)",
  params = {
    timeout = { type = "duration", default = "10s", help = "how long each URL may take to answer" },
    retries = { type = "integer", default = 0, min = 0,
      help = "attempts after the first on a refused connection, a timeout, 502, 503 or 504" },
  },
  steps = {
    step "check every smoke URL answers 2xx" {
      read_only = true,
      run = function(ctx)
        local urls = smoke_urls(ctx.env)
        local probes = {}
        for i, url in ipairs(urls) do
          probes[i] = function()
            local t0 = time.monotonic()
            local r = http.get(url, { timeout = ctx.params.timeout, retries = ctx.params.retries, follow = true })
            return { r = r, elapsed = time.monotonic() - t0 }
          end
        end
        local answers = { task.parallel(probes) }
        local results, failures = {}, {}
        for i, a in ipairs(answers) do
          local r, url = a.r, urls[i]
          local took = (r.timings and r.timings.total and r.timings.total > 0) and r.timings.total or a.elapsed
          local ok = r.status ~= nil and r.status >= 200 and r.status < 300
          results[i] = { url = url, status = r.status, ms = math.floor(took * 1000 + 0.5), error = r.error }
          if ok then
            ctx.log.info(string.format("%s: %d in %s", url, r.status, ms(took)))
          else
            local what = r.status and string.format("HTTP %d", r.status) or r.message
            ctx.log.error(string.format("%s: %s after %s", url, what, ms(took)))
            failures[#failures + 1] = r.status and string.format("%s: HTTP %d", url, r.status) or r.message
          end
        end
        ctx.state.results = results
        if #failures > 0 then
          error(string.format("%d of %d smoke URLs failed: %s", #failures, #urls, table.concat(failures, "; ")), 0)
        end
      end,
    },
  },
}
