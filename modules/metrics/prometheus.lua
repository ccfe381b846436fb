-- prometheus.lua: the Prometheus provider (metrics.prometheus), over the HTTP API that
-- Prometheus, Thanos, Mimir, Cortex and VictoriaMetrics all serve:
-- GET /api/v1/query (instant) and /api/v1/query_range (range). Settings:
--
--   url       base URL, e.g. http://prometheus:9090 or https://mimir/prometheus (required)
--   token     bearer token; or username and password for basic auth
--   headers   extra headers (X-Scope-OrgID for a Mimir tenant, ...)
--   timeout   per request (default 10s); also sent to Prometheus as its query timeout
--   retries   retries of a failed request (connect, timeout, 502-504), default 0
--   tls       { ca, cert, key, insecure } as for http.request
--
-- Results keep the labels of each series; values are numbers (NaN and +-Inf included).

local http = require("http")
local json = require("json")
local metrics = require("metrics")
local time = require("time")

local prometheus = {}

function prometheus.check(config)
  if type(config.url) ~= "string" or not config.url:match("^https?://") then
    metrics.fail("config", "prometheus provider: url must be an http:// or https:// URL (got "
      .. tostring(config.url) .. ")")
  end
end

local function plain_labels(metric)
  local labels = {}
  for k, v in pairs(metric or {}) do labels[k] = v end
  return labels
end

local function sample(pair, what)
  if type(pair) ~= "table" or #pair ~= 2 then
    metrics.fail("response", what .. ": a sample is not [time, \"value\"]")
  end
  local v = metrics.number(pair[2])
  if v == nil then metrics.fail("response", what .. ": a sample value is not a number: " .. tostring(pair[2])) end
  return tonumber(pair[1]), v
end

-- data = { resultType, result } from a successful answer -> a metrics result.
local function convert(data, kind, what)
  local rt, result = data.resultType, data.result
  local series = {}
  if rt == "scalar" then
    local t, v = sample(result, what)
    series[1] = { labels = {}, time = t, value = v }
    return { type = "instant", series = series }
  elseif rt == "vector" then
    for i, s in ipairs(result) do
      local t, v = sample(s.value, what)
      series[i] = { labels = plain_labels(s.metric), time = t, value = v }
    end
    return { type = "instant", series = series }
  elseif rt == "matrix" then
    for i, s in ipairs(result) do
      local points = {}
      for j, pair in ipairs(s.values or {}) do
        local t, v = sample(pair, what)
        points[j] = { t, v }
      end
      series[i] = { labels = plain_labels(s.metric), points = points }
    end
    -- a range selector in an instant query (rate inputs, x[5m]) is a matrix too
    return { type = "range", series = series, from_instant = kind == "instant" or nil }
  end
  metrics.fail("response", what .. ": result type '" .. tostring(rt) .. "' is not a number or series")
end

function prometheus.query(config, expr, opts)
  local base = config.url:gsub("/+$", "")
  local query = { query = expr, timeout = string.format("%gs", opts.timeout) }
  local path
  if opts.range then
    local stop = opts.at or time.now()
    path = "/api/v1/query_range"
    query.start = string.format("%.3f", stop - opts.range)
    query["end"] = string.format("%.3f", stop)
    query.step = string.format("%g", opts.step)
  else
    path = "/api/v1/query"
    if opts.at then query.time = string.format("%.3f", opts.at) end
  end
  local what = "prometheus " .. (opts.range and "range query" or "query") .. " " .. expr
  local r = http.request({
    method = "GET", url = base .. path, query = query, headers = metrics.auth_headers(config),
    timeout = opts.timeout + 1, retries = config.retries or 0, tls = config.tls,
  })
  -- Prometheus answers errors with a JSON body: { status = "error", errorType, error }
  local ok_json, doc = false, nil
  if r.body and r.body ~= "" then ok_json, doc = pcall(json.decode, r.body) end
  if type(doc) ~= "table" then ok_json = false end
  if r.error or r.status ~= 200 then
    local detail = ok_json and doc.error and (tostring(doc.errorType) .. ": " .. tostring(doc.error))
      or metrics.excerpt(r.body)
    metrics.http_failure(what, r, detail)
  end
  if not ok_json then
    metrics.fail("response", what .. ": the answer is not JSON: " .. metrics.excerpt(r.body))
  end
  if doc.status ~= "success" then
    metrics.fail("query", string.format("%s: %s: %s", what, tostring(doc.errorType), tostring(doc.error)))
  end
  if type(doc.data) ~= "table" then metrics.fail("response", what .. ": the answer has no data") end
  local result = convert(doc.data, opts.range and "range" or "instant", what)
  if doc.warnings then
    result.warnings = {}
    for i, w in ipairs(doc.warnings) do result.warnings[i] = tostring(w) end
  end
  return metrics.result(result)
end

return prometheus
