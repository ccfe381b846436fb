-- web.lua: the generic web provider (metrics.web): GET a URL that answers JSON and pick a
-- value out of it with a JSON path; the query expression is that path. Settings:
--
--   url       the endpoint (required)
--   method    GET (default) or POST; body / json for a POST
--   token, username/password, headers, timeout, retries, tls   as for Prometheus
--
-- Paths: $ is the document; .name or ['name'] a member; [0] an element (from 0, as in
-- JSONPath; [-1] the last). The picked value may be a number, a numeric string ("0.25",
-- "NaN"), a boolean (1 or 0), null or a missing member (no data), or an array of those
-- (several series). Anything else is an error.

local http = require("http")
local json = require("json")
local metrics = require("metrics")
local time = require("time")

local web = {}

local ARRAY_MT = getmetatable(json.array())

function web.check(config)
  if type(config.url) ~= "string" or not config.url:match("^https?://") then
    metrics.fail("config", "web provider: url must be an http:// or https:// URL (got " .. tostring(config.url) .. ")")
  end
end

-- "$.data.items[0]['error rate']" -> { "data", "items", 0, "error rate" }; nil, message if bad.
function web.parse_path(path)
  local steps, i = {}, 1
  if path:sub(1, 1) == "$" then i = 2 end
  while i <= #path do
    local c = path:sub(i, i)
    if c == "." then
      local name = path:match("^[%w_%-]+", i + 1)
      if not name then return nil, "expected a name after '.' at position " .. i end
      steps[#steps + 1] = name
      i = i + 1 + #name
    elseif c == "[" then
      local quote = path:match("^%[(['\"])", i)
      if quote then
        local close = path:find(quote .. "]", i + 2, true)
        if not close then return nil, "unclosed [" .. quote .. " at position " .. i end
        steps[#steps + 1] = path:sub(i + 2, close - 1)
        i = close + 2
      else
        local num = path:match("^%[(%-?%d+)%]", i)
        if not num then return nil, "expected [N] or ['name'] at position " .. i end
        steps[#steps + 1] = math.tointeger(tonumber(num))
        i = i + 2 + #num
      end
    elseif i == 1 then
      -- a bare first name: "data.value" means "$.data.value"
      local name = path:match("^[%w_%-]+", i)
      if not name then return nil, "a path starts with $, a name, '.' or '['" end
      steps[#steps + 1] = name
      i = i + #name
    else
      return nil, "unexpected '" .. c .. "' at position " .. i
    end
  end
  return steps
end

-- Follows the steps; returns the value, or nil and the part of the path that was missing.
function web.pick(doc, steps)
  local v, walked = doc, "$"
  for _, step in ipairs(steps) do
    if math.type(step) == "integer" then
      if type(v) ~= "table" then return nil, walked .. " is not an array" end
      local index = step < 0 and #v + step + 1 or step + 1
      v = v[index]
      walked = walked .. "[" .. step .. "]"
    else
      if type(v) ~= "table" then return nil, walked .. " is not an object" end
      v = v[step]
      walked = walked .. "." .. step
    end
    if v == nil then return nil, walked .. " is missing" end
  end
  return v
end

local function to_value(v, where)
  if json.null ~= nil and v == json.null then return nil end
  if type(v) == "boolean" then return v and 1 or 0 end
  if type(v) == "number" then return v end
  if type(v) == "string" then
    local n = metrics.number(v)
    if n then return n end
  end
  metrics.fail("response", string.format("web provider: %s is %s, not a number", where,
    type(v) == "string" and ("\"" .. metrics.excerpt(v) .. "\"") or ("a " .. (type(v) == "table" and "JSON object or array" or type(v)))))
end

function web.query(config, expr, opts)
  if opts.range then
    metrics.fail("config", "web provider: range queries are not supported (it reads one value from a URL)")
  end
  local steps, perr = web.parse_path(expr)
  if not steps then metrics.fail("query", "web provider: bad JSON path '" .. expr .. "': " .. perr) end
  local what = "web " .. (config.method or "GET") .. " " .. config.url
  local r = http.request({
    method = config.method or "GET", url = config.url, headers = metrics.auth_headers(config),
    body = config.body, json = config.json, timeout = opts.timeout, retries = config.retries or 0,
    tls = config.tls, read_only = true,
  })
  if r.error or r.status < 200 or r.status > 299 then metrics.http_failure(what, r, metrics.excerpt(r.body)) end
  local ok, doc = pcall(json.decode, r.body)
  if not ok then metrics.fail("response", what .. ": the answer is not JSON: " .. metrics.excerpt(r.body)) end
  local v, missing = web.pick(doc, steps)
  local now = opts.at or time.now()
  if v == nil then
    local result = metrics.result({ type = "instant", series = {} })
    result.note = missing or (expr .. " is null")
    return result
  end
  local series = {}
  if type(v) == "table" and getmetatable(v) == ARRAY_MT then
    for i, item in ipairs(v) do
      local n = to_value(item, expr .. "[" .. (i - 1) .. "]")
      if n ~= nil then series[#series + 1] = { labels = { index = tostring(i - 1) }, value = n, time = now } end
    end
  else
    local n = to_value(v, expr)
    if n ~= nil then series[1] = { labels = {}, value = n, time = now } end
  end
  return metrics.result({ type = "instant", series = series })
end

return web
