-- aws/cloudfront.lua: CloudFront invalidations over the REST XML API (2020-05-31), signed for
-- us-east-1 as service "cloudfront": create one after a frontend deploy, then wait until
-- CloudFront says Completed.

local client = require("aws.client")
local core = require("aws.core")
local task = require("task")
local time = require("time")
local xml = require("aws.xml")

local cloudfront = {}

local API = "/2020-05-31"
local NAMESPACE = "http://cloudfront.amazonaws.com/doc/2020-05-31/"
local WAIT_TIMEOUT = 15 * 60
local WAIT_INTERVAL = 10

local function check_id(value, what, caller)
  if type(value) ~= "string" or not value:match("^[%w]+$") then
    error(("%s: %s must be an id such as \"E2QWRUHAPOMQZL\" (got %s)"):format(caller, what, tostring(value)), 0)
  end
end

local function invalidation_from(root)
  return {
    id = xml.text(root, "Id"), status = xml.text(root, "Status"), create_time = xml.text(root, "CreateTime"),
  }
end

local function parse(r, what)
  local root = xml.parse(r.body)
  if not root or root.name ~= "Invalidation" then
    error(tug.error.new("aws", ("aws %s: unexpected answer: %s"):format(what, (r.body or ""):sub(1, 200)),
      { code = "BadResponse", status = r.status }), 0)
  end
  return root
end

local CREATE_OPTIONS = { caller_reference = true }

-- aws.cloudfront.create_invalidation(distribution, paths, opts) -> { id, status, location }
-- paths: { "/index.html", "/assets/*" }. In plan mode: recorded, { planned = true }.
function cloudfront.create_invalidation(distribution, paths, opts)
  local caller = "aws.cloudfront.create_invalidation"
  check_id(distribution, "distribution", caller)
  if type(paths) == "string" then paths = { paths } end
  if type(paths) ~= "table" or #paths == 0 then error(caller .. ": paths must be a non-empty list such as { \"/*\" }", 2) end
  for i, p in ipairs(paths) do
    if type(p) ~= "string" or p:sub(1, 1) ~= "/" then
      error(("%s: paths[%d] must start with / (got %s)"):format(caller, i, tostring(p)), 2)
    end
  end
  local settings = client.settings(opts, CREATE_OPTIONS, caller)
  opts = opts or {}
  local reference = opts.caller_reference
    or ("tug-%d-%s"):format(os.time(), core.digest("md5", tostring({}) .. time.monotonic()):sub(1, 8))
  local items = {}
  for i, p in ipairs(paths) do items[i] = "<Path>" .. xml.escape(p) .. "</Path>" end
  local body = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<InvalidationBatch xmlns=\"%s\">"
    .. "<Paths><Quantity>%d</Quantity><Items>%s</Items></Paths><CallerReference>%s</CallerReference>"
    .. "</InvalidationBatch>"):format(NAMESPACE, #paths, table.concat(items), xml.escape(reference))
  local what = "cloudfront create_invalidation " .. distribution
  local r = client.send({
    service = "cloudfront", what = what, method = "POST",
    path = API .. "/distribution/" .. distribution .. "/invalidation",
    headers = { ["Content-Type"] = "application/xml" }, body = body, settings = settings,
    plan_summary = ("cloudfront invalidate %s on %s"):format(table.concat(paths, " "), distribution),
    fields = { distribution = distribution },
  })
  if r.planned then return { planned = true, status = "Planned", paths = paths } end
  local inv = invalidation_from(parse(r, what))
  inv.location = r.headers["location"]
  return inv
end

-- aws.cloudfront.get_invalidation(distribution, id, opts) -> { id, status, create_time }
function cloudfront.get_invalidation(distribution, id, opts)
  local caller = "aws.cloudfront.get_invalidation"
  check_id(distribution, "distribution", caller)
  check_id(id, "id", caller)
  local settings = client.settings(opts, nil, caller)
  local what = ("cloudfront get_invalidation %s %s"):format(distribution, id)
  local r = client.send({
    service = "cloudfront", what = what, method = "GET",
    path = API .. "/distribution/" .. distribution .. "/invalidation/" .. id, settings = settings,
    fields = { distribution = distribution, id = id },
  })
  return invalidation_from(parse(r, what))
end

local WAIT_OPTIONS = { timeout = true, interval = true }

local function seconds(value, default, what, caller)
  if value == nil then return default end
  if type(value) == "number" and value >= 0 then return value end
  local s = type(value) == "string" and time.parse_duration(value)
  if not s then error(("%s: %s must be seconds or a duration such as \"5m\""):format(caller, what), 0) end
  return s
end

-- aws.cloudfront.wait_invalidation(distribution, id_or_result, { timeout = "15m",
-- interval = "10s" }) -> the invalidation once Completed; an aws error (code WaitTimeout)
-- when the time runs out. A planned invalidation returns at once.
function cloudfront.wait_invalidation(distribution, id, opts)
  local caller = "aws.cloudfront.wait_invalidation"
  if type(id) == "table" then
    if id.planned then return id end
    id = id.id
  end
  opts = opts or {}
  if type(opts) ~= "table" then error(caller .. ": opts must be a table", 2) end
  local timeout = seconds(opts.timeout, WAIT_TIMEOUT, "timeout", caller)
  local interval = seconds(opts.interval, WAIT_INTERVAL, "interval", caller)
  local get_opts = {}
  for k, v in pairs(opts) do
    if not WAIT_OPTIONS[k] then get_opts[k] = v end
  end
  local deadline = time.monotonic() + timeout
  while true do
    local inv = cloudfront.get_invalidation(distribution, id, get_opts)
    if inv.status == "Completed" then return inv end
    local left = deadline - time.monotonic()
    if left <= 0 then
      error(tug.error.new("aws", ("aws cloudfront wait_invalidation %s %s: still %s after %s"):format(
        distribution, id, tostring(inv.status), time.format_duration(timeout)),
        { code = "WaitTimeout", distribution = distribution, id = id, status = inv.status }), 0)
    end
    task.sleep(math.min(interval, left))
  end
end

return cloudfront
