-- datadog.lua: the Datadog provider (metrics.datadog), over the metrics query API
-- (GET /api/v1/query?from=&to=&query=, authenticated with the DD-API-KEY and
-- DD-APPLICATION-KEY headers). Settings:
--
--   api_key, app_key   the two keys (required; registered as secrets)
--   site               datadoghq.com (default), datadoghq.eu, us3.datadoghq.com, ...
--   url                the API base instead of https://api.SITE (a proxy, a test server)
--   window             how far back an instant query looks for the latest point (default 5m):
--                      Datadog has no instant queries, so the value is the last non-null
--                      point of the window, as Argo Rollouts does
--   timeout, retries, tls, headers   as for the Prometheus provider
--
-- Datadog chooses the resolution of a range itself (add .rollup(avg, 30) to the query to
-- set it), so `step` is not sent. Null points (no data in that interval) are left out.

local http = require("http")
local json = require("json")
local metrics = require("metrics")
local time = require("time")

local datadog = {}

local DEFAULT_WINDOW = 300

function datadog.check(config)
  for _, key in ipairs({ "api_key", "app_key" }) do
    if type(config[key]) ~= "string" or config[key] == "" then
      metrics.fail("config", "datadog provider: " .. key .. " is required")
    end
  end
  local w = config.window
  if w ~= nil and not ((type(w) == "number" and w > 0) or (type(w) == "string" and time.parse_duration(w))) then
    metrics.fail("config", "datadog provider: window must be seconds or a duration such as \"5m\" (got " .. tostring(w) .. ")")
  end
  if config.url ~= nil and (type(config.url) ~= "string" or not config.url:match("^https?://")) then
    metrics.fail("config", "datadog provider: url must be an http:// or https:// URL (got " .. tostring(config.url) .. ")")
  end
end

local function scope_labels(s)
  local labels = {}
  for _, tag in ipairs(s.tag_set or {}) do
    local k, v = tostring(tag):match("^([^:]+):(.*)$")
    if k then labels[k] = v else labels[tostring(tag)] = "" end
  end
  labels.__name__ = s.metric
  labels.scope = s.scope
  return labels
end

function datadog.query(config, expr, opts)
  local base = (config.url or ("https://api." .. (config.site or "datadoghq.com"))):gsub("/+$", "")
  local stop = opts.at or time.now()
  local window = opts.range
  if not window then
    window = config.window and (type(config.window) == "number" and config.window
      or time.parse_duration(config.window)) or DEFAULT_WINDOW
  end
  local headers = metrics.auth_headers({ headers = config.headers })
  headers["DD-API-KEY"] = config.api_key
  headers["DD-APPLICATION-KEY"] = config.app_key
  headers["Accept"] = "application/json"
  local what = "datadog query " .. expr
  local r = http.request({
    method = "GET", url = base .. "/api/v1/query", headers = headers,
    query = { from = tostring(math.floor(stop - window)), to = tostring(math.floor(stop)), query = expr },
    timeout = opts.timeout, retries = config.retries or 0, tls = config.tls,
  })
  local ok_json, doc = false, nil
  if r.body and r.body ~= "" then ok_json, doc = pcall(json.decode, r.body) end
  if type(doc) ~= "table" then ok_json = false end
  if r.error or r.status ~= 200 then
    local detail = ok_json and doc.errors and table.concat(doc.errors, "; ") or metrics.excerpt(r.body)
    metrics.http_failure(what, r, detail)
  end
  if not ok_json then metrics.fail("response", what .. ": the answer is not JSON: " .. metrics.excerpt(r.body)) end
  if doc.status == "error" or (doc.error and doc.error ~= "") then
    metrics.fail("query", what .. ": " .. tostring(doc.error or "status error"))
  end
  local series = {}
  for _, s in ipairs(doc.series or {}) do
    local points = {}
    for _, p in ipairs(s.pointlist or {}) do
      local t, v = p[1], p[2]
      if type(v) == "number" then points[#points + 1] = { t / 1000, v } end
    end
    if opts.range then
      series[#series + 1] = { labels = scope_labels(s), points = points }
    elseif #points > 0 then
      local last = points[#points]
      series[#series + 1] = { labels = scope_labels(s), time = last[1], value = last[2] }
    end
  end
  return metrics.result({ type = opts.range and "range" or "instant", series = series })
end

return datadog
