-- metrics_spec.lua: metrics.query against a real Prometheus (Debian's, started once for the
-- file, scraping a loopback target whose values the spec sets), and the Datadog and web
-- providers against http.server fixtures that check each request's shape and credentials.
-- What a user notices: numbers, NaN, "no data", several series and failures are distinct
-- outcomes, never a silent 0; failures say why; secrets stay out of the output.

package.path = "spec/support/?.lua;" .. package.path
local child = require("child")
local prometheus = require("prometheus")

local metrics = require("metrics")

local function is_nan(v) return v ~= v end

local function failure(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return err
end

describe("metrics with a real Prometheus", function()
  local target, prom, provider

  setup(function()
    target = prometheus.target()
    target:set("canary_error_rate", 0.0004, { version = "v2" })
    target:set("canary_nan", 0 / 0)
    target:set("canary_inf", math.huge)
    target:set("pod_requests", 10, { pod = "a" })
    target:set("pod_requests", 20, { pod = "b" })
    prom = prometheus.start({ targets = { target }, scrape_interval = "200ms" })
    provider = { type = "prometheus", url = prom.url }
  end)

  teardown(function()
    metrics.configure(nil)
    if prom then prom:stop() end
    if target then target:close() end
  end)

  it("reads an instant value with its labels and time", function()
    local before = time.now()
    local r = metrics.query(provider, "canary_error_rate")
    assert.are.equal("value", r.outcome)
    assert.are.equal(0.0004, r.value)
    assert.is_false(r.nan)
    assert.is_false(r.empty)
    assert.are.equal(1, #r.series)
    assert.are.equal("v2", r.series[1].labels.version)
    assert.are.equal("fixture", r.series[1].labels.job)
    assert.is_true(math.abs(r.series[1].time - before) < 5)
  end)

  it("gives NaN as an outcome of its own, not 0", function()
    local r = metrics.query(provider, "canary_nan")
    assert.are.equal("nan", r.outcome)
    assert.is_true(r.nan)
    assert.is_true(is_nan(r.value))
    -- and a PromQL division by zero is NaN too
    r = metrics.query(provider, "sum(canary_error_rate) * 0 / 0")
    assert.are.equal("nan", r.outcome)
  end)

  it("gives an empty result when no series match, with no value", function()
    local r = metrics.query(provider, "no_such_metric")
    assert.are.equal("empty", r.outcome)
    assert.is_true(r.empty)
    assert.is_nil(r.value)
    assert.are.equal(0, #r.series)
  end)

  it("keeps +Inf as a value", function()
    local r = metrics.query(provider, "canary_inf")
    assert.are.equal("value", r.outcome)
    assert.are.equal(math.huge, r.value)
  end)

  it("says 'many' for several series and keeps each one's labels and value", function()
    local r = metrics.query(provider, "pod_requests")
    assert.are.equal("many", r.outcome)
    assert.is_nil(r.value)
    local by_pod = {}
    for _, s in ipairs(r.series) do by_pod[s.labels.pod] = s.value end
    assert.are.same({ a = 10, b = 20 }, by_pod)
    assert.are.equal(30, metrics.query(provider, "sum(pod_requests)").value)
  end)

  it("reads a range as series of timestamped points, step apart", function()
    task.sleep(1.2) -- let a second of samples pile up
    local stop = time.now()
    local r = metrics.query(provider, "canary_error_rate", { range = "1s", step = "200ms", at = stop })
    assert.are.equal("range", r.type)
    assert.are.equal("series", r.outcome)
    assert.are.equal(1, #r.series)
    local points = r.series[1].points
    assert.is_true(#points >= 5 and #points <= 6, "points: " .. #points)
    for i, p in ipairs(points) do
      assert.are.equal(0.0004, p[2])
      assert.is_true(p[1] >= stop - 1.001 and p[1] <= stop + 0.001)
      if i > 1 then assert.is_true(math.abs(p[1] - points[i - 1][1] - 0.2) < 0.001) end
    end
    -- a range with no data is empty, not a series of zeros
    local none = metrics.query(provider, "no_such_metric", { range = "1s" })
    assert.are.equal("empty", none.outcome)
  end)

  it("reads the value at a given time (after the range test has let data pile up)", function()
    local at = time.now() - 1
    local r = metrics.query(provider, "canary_error_rate", { at = at })
    assert.are.equal(0.0004, r.value)
    assert.is_true(math.abs(r.series[1].time - at) < 0.01)
  end)

  it("raises a 'query' error with Prometheus' message for a bad query", function()
    local err = failure(metrics.query, provider, "rate(")
    assert.are.equal("metrics", err.kind)
    assert.are.equal("query", err.reason)
    assert.are.equal(400, err.status)
    assert.matches("bad_data", err.message)
    assert.matches("unclosed left parenthesis", err.message)
  end)

  it("raises an 'unavailable' error when it cannot reach Prometheus", function()
    local err = failure(metrics.query, { type = "prometheus", url = "http://127.0.0.1:1" }, "up")
    assert.are.equal("metrics", err.kind)
    assert.are.equal("unavailable", err.reason)
    assert.matches("connect", err.message)
  end)

  it("finds providers named with metrics.configure and in an environment", function()
    metrics.configure({ main = { type = "prometheus", url = prom.url } })
    assert.are.equal(0.0004, metrics.query("main", "canary_error_rate").value)
    metrics.configure(nil)
    -- a provider whose name is its type needs no `type`
    local env = { name = "staging", metrics = { prometheus = { url = prom.url } } }
    local p = metrics.provider("prometheus", env)
    assert.are.equal(0.0004, metrics.query(p, "canary_error_rate").value)
    local err = failure(metrics.provider, "thanos", env)
    assert.are.equal("config", err.reason)
    assert.matches("no metrics provider named 'thanos' in environment staging %(configured: prometheus%)", err.message)
  end)
end)

describe("metrics.query", function()
  it("rejects mistakes in its arguments with messages naming them", function()
    local p = { type = "prometheus", url = "http://127.0.0.1:1" }
    assert.has_error(function() metrics.query(p, "") end, "metrics.query: expr must be a non-empty string (got )")
    assert.has_error(function() metrics.query(p, "up", { rnage = "5m" }) end, "metrics.query: unknown option 'rnage'")
    assert.has_error(function() metrics.query(p, "up", { range = "soon" }) end,
      "metrics.query: range must be seconds or a duration such as \"5m\" (got soon)")
    assert.has_error(function() metrics.query(p, "up", { step = "1s" }) end, "metrics.query: step needs a range")
    local err = failure(metrics.query, { type = "graphite", url = "http://x" }, "up")
    assert.are.equal("config", err.reason)
    assert.matches("unknown metrics provider type 'graphite'", err.message)
    err = failure(metrics.query, { type = "prometheus", url = "prometheus:9090" }, "up")
    assert.matches("url must be an http:// or https:// URL", err.message)
  end)
end)

-- A fixture answering like a Prometheus API behind a proxy that wants credentials.
describe("the Prometheus provider's credentials", function()
  local server, seen
  setup(function()
    server = http.server({ port = 0, handler = function(req)
      seen = req
      local auth = req.headers["authorization"]
      if auth ~= "Bearer prom-token-s3cret" and auth ~= "Basic " .. metrics.base64("ops:pa55-w0rd") then
        return 401, { ["content-type"] = "text/plain" }, "unauthorized\n"
      end
      return { status = 200, json = { status = "success", data = { resultType = "scalar",
        result = { 1700000000.5, "0.25" } } } }
    end })
  end)
  teardown(function() server:close() end)

  it("sends a bearer token, basic auth and extra headers", function()
    local r = metrics.query({ type = "prometheus", url = server.url .. "/prom/", token = "prom-token-s3cret",
      headers = { ["X-Scope-OrgID"] = "tenant-1" } }, "vector(0.25)")
    assert.are.equal(0.25, r.value)
    assert.are.equal(1700000000.5, r.series[1].time)
    assert.are.equal("/prom/api/v1/query", seen.path)
    assert.are.equal("vector(0.25)", seen.query.query)
    assert.are.equal("tenant-1", seen.headers["x-scope-orgid"])
    r = metrics.query({ type = "prometheus", url = server.url, username = "ops", password = "pa55-w0rd" }, "x")
    assert.are.equal(0.25, r.value)
    assert.are.equal("Basic b3BzOnBhNTUtdzByZA==", seen.headers["authorization"])
  end)

  it("raises an 'auth' error on 401", function()
    local err = failure(metrics.query, { type = "prometheus", url = server.url, token = "wrong-token-123" }, "x")
    assert.are.equal("auth", err.reason)
    assert.are.equal(401, err.status)
  end)

  it("keeps tokens and passwords out of every line it prints", function()
    local code = ([[
      local p = { type = "prometheus", url = %q, token = "prom-token-s3cret" }
      print(metrics.query(p, "x").value)
      local ok, err = pcall(metrics.query, { type = "prometheus", url = %q, username = "ops", password = "pa55-w0rd" }, "rate(")
      print(tostring(err))
      local ok2, err2 = pcall(metrics.query, { type = "prometheus", url = "http://127.0.0.1:1", token = "prom-token-s3cret" }, "up")
      print(tostring(err2))
      log.warn("token is prom-token-s3cret, basic is " .. metrics.base64("ops:pa55-w0rd"))
    ]]):format(server.url, server.url)
    local r = child.lua(code)
    assert.are.equal(0, r.code, r.stderr)
    local out = r.stdout .. r.stderr
    assert.matches("0.25", out)
    assert.matches("token is %*%*%*", out)
    assert.is_nil(out:find("prom-token-s3cret", 1, true))
    assert.is_nil(out:find("pa55-w0rd", 1, true))
    assert.is_nil(out:find("b3BzOnBhNTUtdzByZA==", 1, true))
  end)
end)

describe("the Datadog provider", function()
  local server, requests, answer
  setup(function()
    server = http.server({ port = 0, handler = function(req)
      requests[#requests + 1] = req
      if req.headers["dd-api-key"] ~= "dd-api-0123456789" or req.headers["dd-application-key"] ~= "dd-app-9876543210" then
        return { status = 403, json = { errors = { "Forbidden" } } }
      end
      if req.path ~= "/api/v1/query" then return 404, {}, "not found" end
      return answer(req)
    end })
  end)
  teardown(function() server:close() end)
  before_each(function() requests = {} end)

  local dd = function(extra)
    local p = { type = "datadog", url = server.url, api_key = "dd-api-0123456789", app_key = "dd-app-9876543210" }
    for k, v in pairs(extra or {}) do p[k] = v end
    return p
  end

  local function series(points, scope)
    return { metric = "trace.http.request.errors", scope = scope or "service:api,version:v2",
      tag_set = json.array({ "service:api", "version:v2" }), pointlist = json.array(points) }
  end

  it("sends both keys and the window, and takes the last non-null point as the value", function()
    answer = function(req)
      return { status = 200, json = { status = "ok", res_type = "time_series", query = req.query.query,
        series = json.array({ series({ { 1700000000000, 0.1 }, { 1700000010000, 0.3 }, { 1700000020000, json.null } }) }) } }
    end
    local at = 1700000030
    local r = metrics.query(dd(), "avg:trace.http.request.errors{service:api}", { at = at })
    assert.are.equal("value", r.outcome)
    assert.are.equal(0.3, r.value)
    assert.are.equal(1700000010, r.series[1].time)
    assert.are.equal("v2", r.series[1].labels.version)
    local q = requests[1].query
    assert.are.equal("avg:trace.http.request.errors{service:api}", q.query)
    assert.are.equal(tostring(at - 300), q.from)
    assert.are.equal(tostring(at), q.to)
  end)

  it("gives no data when every point is null, and series for a range", function()
    answer = function()
      return { status = 200, json = { status = "ok", series = json.array({ series({ { 1700000000000, json.null } }) }) } }
    end
    assert.are.equal("empty", metrics.query(dd(), "avg:x{*}").outcome)
    answer = function()
      return { status = 200, json = { status = "ok", series = json.array({
        series({ { 1700000000000, 1 }, { 1700000015000, json.null }, { 1700000030000, 3 } }, "version:v1"),
        series({ { 1700000000000, 2 } }, "version:v2") }) } }
    end
    local r = metrics.query(dd({ window = "10m" }), "avg:x{*} by {version}", { range = "10m", at = 1700000060 })
    assert.are.equal("series", r.outcome)
    assert.are.same({ { 1700000000, 1 }, { 1700000030, 3 } }, r.series[1].points)
    assert.are.equal(tostring(1700000060 - 600), requests[2].query.from)
    -- several series in an instant query: one value each
    local many = metrics.query(dd(), "avg:x{*} by {version}")
    assert.are.equal("many", many.outcome)
  end)

  it("raises 'query' for a rejected query and 'auth' for bad keys", function()
    answer = function() return { status = 400, json = { errors = { "Error parsing query: unable to parse avg:: " } } } end
    local err = failure(metrics.query, dd(), "avg::")
    assert.are.equal("query", err.reason)
    assert.matches("Error parsing query", err.message)
    err = failure(metrics.query, dd({ api_key = "dd-api-wrong-000000" }), "avg:x{*}")
    assert.are.equal("auth", err.reason)
    assert.are.equal(403, err.status)
    err = failure(metrics.query, { type = "datadog", url = server.url, api_key = "dd-api-0123456789" }, "avg:x{*}")
    assert.are.equal("config", err.reason)
    assert.matches("app_key is required", err.message)
  end)
end)

describe("the web provider", function()
  local server, doc
  setup(function()
    server = http.server({ port = 0, handler = function(req)
      if req.headers["authorization"] ~= "Bearer web-token-abcdef" then return 401, {}, "no" end
      if req.path == "/html" then return 200, { ["content-type"] = "text/html" }, "<html></html>" end
      return 200, { ["content-type"] = "application/json" }, doc
    end })
  end)
  teardown(function() server:close() end)

  local web = function(path)
    return { type = "web", url = server.url .. (path or "/stats"), token = "web-token-abcdef" }
  end

  it("picks a value by JSON path: members, quoted names, indexes, strings and booleans", function()
    doc = [[{"data":{"services":[{"name":"api","error rate":0.002,"p95":"0.31","healthy":true,"nan":"NaN","gone":null}]}}]]
    assert.are.equal(0.002, metrics.query(web(), "$.data.services[0]['error rate']").value)
    assert.are.equal(0.31, metrics.query(web(), "data.services[-1].p95").value)
    assert.are.equal(1, metrics.query(web(), "$.data.services[0].healthy").value)
    assert.are.equal("nan", metrics.query(web(), "$.data.services[0].nan").outcome)
    local r = metrics.query(web(), "$.data.services[0].gone")
    assert.are.equal("empty", r.outcome)
    r = metrics.query(web(), "$.data.services[0].missing")
    assert.are.equal("empty", r.outcome)
    assert.matches("missing", r.note)
  end)

  it("gives several series for an array of numbers", function()
    doc = [[{"latencies":[0.1,0.2,0.4]}]]
    local r = metrics.query(web(), "$.latencies")
    assert.are.equal("many", r.outcome)
    assert.are.equal(3, #r.series)
    assert.are.equal(0.4, r.series[3].value)
  end)

  it("raises for a non-number, a bad path, a non-JSON answer and bad credentials", function()
    doc = [[{"data":{"name":"api"}}]]
    local err = failure(metrics.query, web(), "$.data")
    assert.are.equal("response", err.reason)
    assert.matches("not a number", err.message)
    err = failure(metrics.query, web(), "$.data.name")
    assert.matches("\"api\", not a number", err.message)
    err = failure(metrics.query, web(), "$.data[")
    assert.are.equal("query", err.reason)
    err = failure(metrics.query, web("/html"), "$.x")
    assert.matches("not JSON", err.message)
    err = failure(metrics.query, { type = "web", url = server.url }, "$.x")
    assert.are.equal("auth", err.reason)
    err = failure(metrics.query, web(), "$.x", { range = "5m" })
    assert.matches("range queries are not supported", err.message)
  end)
end)

describe("a provider written in Lua", function()
  teardown(function() metrics.configure(nil) end)

  it("can be registered and named like the built-in ones", function()
    local calls = {}
    metrics.register("fixed", function(config, expr, opts)
      calls[#calls + 1] = { config = config, expr = expr, opts = opts }
      if expr == "nothing" then return nil end
      if expr == "nan" then return 0 / 0 end
      if expr == "broken" then error("backend exploded") end
      if expr == "typed" then metrics.fail("unavailable", "backend is down") end
      return config.value * 2
    end)
    assert.is_truthy(table.concat(metrics.types(), ","):find("fixed", 1, true))
    metrics.configure({ mine = { type = "fixed", value = 21 } })
    local r = metrics.query("mine", "anything", { at = 1700000000 })
    assert.are.equal(42, r.value)
    assert.are.equal("value", r.outcome)
    assert.are.equal(1700000000, calls[1].opts.at)
    assert.are.equal("empty", metrics.query("mine", "nothing").outcome)
    assert.are.equal("nan", metrics.query("mine", "nan").outcome)
    local err = failure(metrics.query, "mine", "broken")
    assert.are.equal("provider", err.reason)
    assert.matches("backend exploded", err.message)
    err = failure(metrics.query, "mine", "typed")
    assert.are.equal("unavailable", err.reason)
    assert.are.equal("mine", err.provider)
  end)
end)
