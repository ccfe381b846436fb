-- faults.lua (sim.faults): what each image version does, and the faults that change it.
--
-- A version's behaviour comes from the scenario (images.REPO.versions.TAG, or the
-- image's default): health status, error rate, latency, whether its pods crash-loop,
-- never become ready or fail to pull. Faults, from the scenario or added at run time
-- (Lua, or POST /sim/faults), change behaviours and the API server itself:
--
--   unhealthy     { version, status = 503 }          health endpoints fail
--   crash_loop    { version }                        containers exit and back off
--   never_ready   { version }                        readiness never passes
--   pull_error    { version }                        ErrImagePull / ImagePullBackOff
--   error_rate    { version?, service?, rate }       extra share of 500s (added)
--   latency       { version?, service?, add }        extra latency ("300ms")
--   provider_down { provider, status = "down" }      easypost / shippo / veeqo
--   api_error     { verb?, resource?, status = 500, share = 1 }   API answers 5xx
--   api_latency   { verb?, resource?, delay, share = 1 }           API answers late
--   watch_drop    { resource?, after }                watch streams end after N s
--
-- Every fault may carry `image` (a repository; default any), `count` (fires that many
-- times, then clears itself; API faults) and `duration` (clears itself after that).
-- unhealthy, error_rate and latency may carry `feature`: they act only while that
-- feature flag is on (a bad feature, which switching the flag off cures).
-- Each gets an id ("f1", ...) by which it can be removed.

local util = require("sim.util")

local faults = {}
local Faults = {}
Faults.__index = Faults

local TYPES = {
  unhealthy = true, crash_loop = true, never_ready = true, pull_error = true, error_rate = true,
  latency = true, provider_down = true, api_error = true, api_latency = true, watch_drop = true,
}
faults.TYPES = TYPES

-- Types whose change the kubelet must apply to running pods.
local POD_TYPES = { crash_loop = true, never_ready = true, pull_error = true }
-- Types that may be tied to a feature flag (the application sees its flags).
local FEATURE_TYPES = { unhealthy = true, error_rate = true, latency = true }

local DEFAULT_BEHAVIOUR = {
  health = 200, error_rate = 0, latency = { p50 = 0.005, p95 = 0.02 },
  crash_loop = false, ready = true, pull_error = false,
}

-- A behaviour table from scenario text: durations to seconds, defaults filled in.
function faults.behaviour(spec, base)
  base = base or DEFAULT_BEHAVIOUR
  spec = spec or {}
  local b = {}
  for k, v in pairs(base) do b[k] = v end
  for k, v in pairs(spec) do b[k] = v end
  if spec.latency ~= nil then
    local l = spec.latency
    if type(l) == "table" then
      local p50 = util.seconds(l.p50 or l.median or base.latency.p50, "latency.p50")
      b.latency = { p50 = p50, p95 = util.seconds(l.p95 or p50 * 2, "latency.p95") }
    else
      local s = util.seconds(l, "latency")
      b.latency = { p50 = s, p95 = s }
    end
  end
  if spec.ready_after ~= nil then b.ready_after = util.seconds(spec.ready_after, "ready_after") end
  if spec.pod_start ~= nil then b.pod_start = util.seconds(spec.pod_start, "pod_start") end
  b.health = math.tointeger(b.health) or 200
  b.error_rate = tonumber(b.error_rate) or 0
  return b
end

-- images: { [repo] = { app, versions = { [tag] = spec }, default = spec } }
function faults.new(images, clock)
  local f = setmetatable({
    images = {},
    list = {},
    next_id = 0,
    spent = {},
    clock = clock,
    on_pod_change = nil, -- function(fault) set by the simulator: re-evaluate pods
  }, Faults)
  for repo, img in pairs(images or {}) do
    local entry = { app = img.app or "generic", default = faults.behaviour(img.default), versions = {} }
    for tag, spec in pairs(img.versions or {}) do
      entry.versions[tostring(tag)] = faults.behaviour(spec, entry.default)
    end
    f.images[repo] = entry
  end
  return f
end

-- The application model an image runs ("multiship", "generic").
function Faults:app_of(image)
  local repo = util.split_image(image)
  local img = self.images[repo]
  return img and img.app or "generic"
end

local function matches_version(fault, repo, tag)
  if fault.image and fault.image ~= repo then return false end
  if fault.version and fault.version ~= tag then return false end
  return true
end

-- The behaviour of image (a "repo:tag" reference) now, faults applied. service (a
-- "namespace/name") narrows error_rate and latency faults that name one; flags (the
-- namespace's feature flags, name -> { enabled }) decide the faults tied to a feature.
function Faults:behaviour(image, service, flags)
  local repo, tag = util.split_image(image)
  local img = self.images[repo]
  local base = img and (img.versions[tag] or img.default) or DEFAULT_BEHAVIOUR
  local b
  for _, fault in ipairs(self.list) do
    local flag = fault.feature and flags and flags[fault.feature]
    if matches_version(fault, repo, tag) and (fault.feature == nil or (flag and flag.enabled)) then
      b = b or setmetatable({}, { __index = base })
      local t = fault.type
      if t == "unhealthy" then
        b.health = fault.status or 503
      elseif t == "crash_loop" then
        b.crash_loop = true
      elseif t == "never_ready" then
        b.ready = false
      elseif t == "pull_error" then
        b.pull_error = true
      elseif (t == "error_rate" or t == "latency") and (fault.service == nil or fault.service == service) then
        if t == "error_rate" then
          b.error_rate = math.min(1, (rawget(b, "error_rate") or base.error_rate) + (fault.rate or 0))
        else
          b.extra_latency = (rawget(b, "extra_latency") or 0) + (fault.add_seconds or 0)
        end
      end
    end
  end
  return b or base
end

-- ---- the list ----

local function check(spec)
  if type(spec) ~= "table" then return nil, "a fault must be an object" end
  if not TYPES[spec.type] then
    local names = util.sorted_keys(TYPES)
    return nil, ("unknown fault type %q (one of: %s)"):format(tostring(spec.type), table.concat(names, ", "))
  end
  local f = {}
  for k, v in pairs(spec) do f[k] = v end
  if f.version ~= nil then f.version = tostring(f.version) end
  local ok, err = pcall(function()
    if f.type == "latency" then
      f.add_seconds = util.seconds(f.add or f.latency or f.delay or 0, "add")
    elseif f.type == "api_latency" then
      f.delay_seconds = util.seconds(f.delay or f.add or 0, "delay")
    elseif f.type == "watch_drop" then
      f.after_seconds = util.seconds(f.after or 0, "after")
    end
    if f.duration ~= nil then f.duration_seconds = util.seconds(f.duration, "duration") end
  end)
  if not ok then return nil, tostring(err):gsub("^.-:%d+: ", "") end
  if f.type == "error_rate" then
    f.rate = tonumber(f.rate)
    if not f.rate or f.rate < 0 or f.rate > 1 then return nil, "error_rate needs rate, a number from 0 to 1" end
  end
  if (f.type == "unhealthy" or POD_TYPES[f.type]) and f.version == nil and f.image == nil then
    return nil, f.type .. " needs a version (an image tag) or an image"
  end
  if f.feature ~= nil and (type(f.feature) ~= "string" or not FEATURE_TYPES[f.type]) then
    return nil, "feature (a flag name) goes with unhealthy, error_rate and latency faults"
  end
  if f.type == "provider_down" and type(f.provider) ~= "string" then
    return nil, "provider_down needs provider (easypost, shippo or veeqo)"
  end
  if f.share ~= nil then
    f.share = tonumber(f.share)
    if not f.share or f.share < 0 or f.share > 1 then return nil, "share must be a number from 0 to 1" end
  end
  if f.status ~= nil then
    f.status = math.tointeger(tonumber(f.status))
    if not f.status or f.status < 100 or f.status > 599 then return nil, "status must be an HTTP status code" end
  end
  if f.count ~= nil then
    f.count = math.tointeger(tonumber(f.count))
    if not f.count or f.count < 1 then return nil, "count must be a positive integer" end
  end
  return f
end

-- Adds a fault; returns it (with its id), or nil and a message.
function Faults:add(spec)
  local f, err = check(spec)
  if not f then return nil, err end
  self.next_id = self.next_id + 1
  f.id = "f" .. self.next_id
  f.added_at = util.now()
  self.list[#self.list + 1] = f
  if f.duration_seconds and self.clock then
    local id = f.id
    self.clock:after(f.duration_seconds, function() self:remove(id) end)
  end
  if POD_TYPES[f.type] and self.on_pod_change then self.on_pod_change(f) end
  return f
end

function Faults:remove(id)
  for i, f in ipairs(self.list) do
    if f.id == id then
      table.remove(self.list, i)
      if POD_TYPES[f.type] and self.on_pod_change then self.on_pod_change(f) end
      return f
    end
  end
  return nil
end

function Faults:clear()
  local old = self.list
  self.list = {}
  for _, f in ipairs(old) do
    if POD_TYPES[f.type] and self.on_pod_change then self.on_pod_change(f) end
  end
  return #old
end

-- The faults as the admin API shows them (internal fields left out).
function Faults:describe()
  local out = {}
  for i, f in ipairs(self.list) do
    local d = {}
    for k, v in pairs(f) do
      if not k:match("_seconds$") and k ~= "added_at" and k ~= "fired" then d[k] = v end
    end
    d.fired = f.fired or 0
    out[i] = d
  end
  return out
end

local function fires(self, f)
  if f.share and f.share < 1 and math.random() >= f.share then return false end
  f.fired = (f.fired or 0) + 1
  if f.count and f.fired >= f.count then self.spent[#self.spent + 1] = f.id end
  return true
end

local function api_match(f, verb, resource)
  if f.verb and f.verb ~= verb then return false end
  if f.resource and f.resource ~= resource then return false end
  return true
end

local function drop_spent(self)
  for _, id in ipairs(self.spent) do self:remove(id) end
  self.spent = {}
end

-- For an API request: { status = N } to fail it, { delay = seconds } to slow it, or nil.
function Faults:api(verb, resource)
  if #self.list == 0 then return nil end
  local delay = 0
  for _, f in ipairs(self.list) do
    if f.type == "api_latency" and api_match(f, verb, resource) and fires(self, f) then
      delay = delay + (f.delay_seconds or 0)
    end
  end
  for _, f in ipairs(self.list) do
    if f.type == "api_error" and api_match(f, verb, resource) and fires(self, f) then
      drop_spent(self)
      return { status = f.status or 500, delay = delay, message = f.message }
    end
  end
  drop_spent(self)
  if delay > 0 then return { delay = delay } end
  return nil
end

-- Seconds after which a watch on resource is cut, or nil.
function Faults:watch_drop(resource)
  for _, f in ipairs(self.list) do
    if f.type == "watch_drop" and (f.resource == nil or f.resource == resource) then
      f.fired = (f.fired or 0) + 1
      return f.after_seconds or 0
    end
  end
  return nil
end

-- "down", "degraded" or nil for a shipping provider.
function Faults:provider(name)
  for _, f in ipairs(self.list) do
    if f.type == "provider_down" and f.provider == name then return f.status or "down" end
  end
  return nil
end

return faults
