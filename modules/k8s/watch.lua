-- watch.lua (k8s.watch): watches, and the shared watch the waiting verbs use.
--
-- client:watch(kind, opts, fn) lists (unless opts.resource_version says where to start),
-- hands fn each listed object as "ADDED", then streams changes: fn(type, obj) with type
-- "ADDED", "MODIFIED" or "DELETED"; fn returning false stops the watch. Bookmarks are
-- asked for and only move the position. A stream that ends (the server's timeout, a
-- dropped connection, a proxy) is reopened from the last resourceVersion seen; a 410
-- Gone (as a status or as an ERROR event) means that position is too old: the watch lists
-- again and hands fn the difference from what it had seen (ADDED, MODIFIED, DELETED), as
-- client-go's informers do. Transport failures and 429/5xx are retried with backoff.
--
-- The hub: rollout_status and wait on many objects of one namespace (a playbook step that
-- rolls 100 Deployments) share one watch per client, resource and namespace instead of
-- one connection each. Each waiter subscribes to a name, then reads the object, then
-- takes the hub's newer events from its own queue, woken through a task.event.

local json = require("json")
local log = require("log")
local task = require("task")
local time = require("time")
local client = require("k8s.client")

local M = {}
local Client = client.Client

local SERVER_TIMEOUT = 290        -- seconds asked of the server per stream (client-go: 5-10 min)
local MAX_FAILURES = 10            -- consecutive failed attempts before the watch gives up
local BACKOFF_MAX = 5

local function key_of(obj)
  local m = obj.metadata or {}
  return (m.namespace or "") .. "/" .. (m.name or "")
end

local function rv_of(obj)
  return obj and obj.metadata and obj.metadata.resourceVersion
end

-- a is newer than b? resourceVersions are opaque, but every server we know (etcd) uses
-- integers; if they are not, every event counts as newer.
function M.newer(a, b)
  local x, y = tonumber(a), tonumber(b)
  if x and y then return x > y end
  return true
end

-- watch(kind, opts, fn) -> true when fn stopped it (plus that event's type and object),
-- false when opts.timeout passed first. opts: namespace, all_namespaces, name, labels,
-- fields, resource_version, timeout, send_initial (false: no ADDED for listed objects).
function Client:watch(kind, opts, fn)
  if type(opts) == "function" and fn == nil then opts, fn = nil, opts end
  if opts ~= nil and type(opts) ~= "table" then error("k8s.watch: opts must be a table", 2) end
  if type(fn) ~= "function" then error("k8s.watch: fn must be a function", 2) end
  opts = opts or {}
  local res = self:resource_for(kind, "watch", opts.name, opts)
  local ns = not opts.all_namespaces and self:namespace_for(res, opts) or nil
  local what = "watch " .. client.describe(res, ns, opts.name)
  local deadline
  if opts.timeout then
    local seconds = type(opts.timeout) == "number" and opts.timeout or time.parse_duration(opts.timeout)
    if not seconds then error("k8s.watch: timeout is not a duration: " .. tostring(opts.timeout), 2) end
    deadline = time.monotonic() + seconds
  end
  local query = client.list_query(opts)
  local known = {} -- key -> last object seen
  local rv = opts.resource_version
  local stopped, stop_type, stop_obj

  local function deliver(t, obj)
    if fn(t, obj) == false then
      stopped, stop_type, stop_obj = true, t, obj
      return false
    end
  end

  local function relist(initial)
    local list = self:list(res, { namespace = ns, all_namespaces = opts.all_namespaces, labels = opts.labels,
      fields = opts.fields, name = opts.name })
    local seen = {}
    for _, item in ipairs(list.items) do
      item.apiVersion = item.apiVersion or res.api_version
      item.kind = item.kind or res.kind
      local key = key_of(item)
      seen[key] = true
      local before = known[key]
      known[key] = item
      if before == nil then
        if not (initial and opts.send_initial == false) and deliver("ADDED", item) == false then return end
      elseif rv_of(before) ~= rv_of(item) then
        if deliver("MODIFIED", item) == false then return end
      end
    end
    for key, obj in pairs(known) do
      if not seen[key] then
        known[key] = nil
        if deliver("DELETED", obj) == false then return end
      end
    end
    rv = list.metadata and list.metadata.resourceVersion
  end

  if not rv then
    relist(true)
    if stopped then return true, stop_type, stop_obj end
  end

  local failures = 0
  while true do
    local remaining = deadline and deadline - time.monotonic()
    if remaining and remaining <= 0 then return false end
    local q = {}
    for k, v in pairs(query) do q[k] = v end
    q.watch = "1"
    q.allowWatchBookmarks = "true"
    q.resourceVersion = rv
    local server_timeout = SERVER_TIMEOUT
    if remaining then server_timeout = math.max(1, math.min(server_timeout, math.ceil(remaining))) end
    q.timeoutSeconds = tostring(server_timeout)
    local gone, api_error, events = false, nil, 0
    local r = self:request({
      path = self:path(res, ns), query = q,
      timeout = remaining and remaining + 0.05 or server_timeout + 30,
      on_line = function(line)
        if line == "" then return end
        local ok, ev = pcall(json.decode, line)
        if not ok or type(ev) ~= "table" or type(ev.object) ~= "table" then
          api_error = client.error(("%s: the server sent something that is not a watch event: %s")
            :format(what, line:sub(1, 120)), { what = what, reason = "BadEvent" })
          return false
        end
        local obj = ev.object
        events = events + 1
        if ev.type == "BOOKMARK" then
          rv = rv_of(obj) or rv
          return
        end
        if ev.type == "ERROR" then
          if obj.code == 410 then
            gone = true
          else
            api_error = client.error(("%s: %s (%s %s)"):format(what, tostring(obj.message),
              tostring(obj.reason), tostring(obj.code)), { what = what, status = obj.code, code = obj.code,
              reason = obj.reason, api_message = obj.message })
          end
          return false
        end
        rv = rv_of(obj) or rv
        obj.apiVersion = obj.apiVersion or res.api_version
        obj.kind = obj.kind or res.kind
        if ev.type == "DELETED" then known[key_of(obj)] = nil else known[key_of(obj)] = obj end
        return deliver(ev.type, obj)
      end,
    })
    if stopped then return true, stop_type, stop_obj end
    if api_error then error(api_error, 0) end
    if gone or r.status == 410 then
      log.debug("k8s: watch position expired, listing again", { what = what, rv = rv })
      relist(false)
      if stopped then return true, stop_type, stop_obj end
      failures = 0
    elseif r.error and r.error ~= "timeout" or (r.status and (r.status == 429 or r.status >= 500)) then
      failures = failures + 1
      if failures >= MAX_FAILURES then error(client.response_error(what, r), 0) end
      local delay = math.min(self.backoff * 2 ^ (failures - 1), BACKOFF_MAX)
      local after = r.headers and tonumber(r.headers["retry-after"])
      if after then delay = math.min(after, 30) end
      log.debug("k8s: watch failed, retrying", { what = what, status = r.status, error = r.error, delay = delay })
      if deadline then delay = math.min(delay, math.max(0, deadline - time.monotonic())) end
      task.sleep(delay)
    elseif r.status and r.status ~= 200 then
      error(client.response_error(what, r), 0)
    else
      -- a clean end (the server's timeout, a dropped connection): go on from rv
      if events > 0 then failures = 0 else failures = failures + (r.error and 1 or 0) end
      log.debug("k8s: watch stream ended, resuming", { what = what, rv = rv })
    end
  end
end

-- ---- the hub ----

local Hub = {}
Hub.__index = Hub

local function hub_key(res, ns)
  return res.api_version .. "/" .. res.resource .. "@" .. (ns or "")
end

function Hub:dispatch(t, obj)
  local subs = self.subs[obj.metadata and obj.metadata.name]
  if not subs then return end
  for sub in pairs(subs) do
    local q = sub.queue
    q[#q + 1] = { type = t, object = obj }
    sub.event:notify()
  end
end

function Hub:fail(err)
  self.error = err
  for _, subs in pairs(self.subs) do
    for sub in pairs(subs) do sub.event:notify() end
  end
end

function Hub:start()
  self.task = task.spawn(function()
    -- the listed objects go to the subscribers too: one may have read its object before
    -- this list, and a change in between reaches it only this way
    local ok, err = pcall(self.client.watch, self.client, self.res, { namespace = self.ns },
      function(t, obj) self:dispatch(t, obj) end)
    if not ok then
      if type(err) == "table" and err.kind == "cancelled" then error(err, 0) end
      self:fail(err)
    end
    if self.client.hubs[self.key] == self then self.client.hubs[self.key] = nil end
  end)
end

-- subscribe(name) -> a subscription with :next(timeout) and :close().
function Hub:subscribe(name)
  local sub = { hub = self, name = name, queue = {}, event = task.event() }
  local subs = self.subs[name]
  if not subs then
    subs = {}
    self.subs[name] = subs
  end
  subs[sub] = true
  self.count = self.count + 1
  return setmetatable(sub, M.Subscription)
end

function Hub:unsubscribe(sub)
  local subs = self.subs[sub.name]
  if subs and subs[sub] then
    subs[sub] = nil
    if next(subs) == nil then self.subs[sub.name] = nil end
    self.count = self.count - 1
  end
  if self.count == 0 and not self.closing then
    self.closing = true
    if self.client.hubs[self.key] == self then self.client.hubs[self.key] = nil end
    if self.task then self.task:cancel() end
  end
end

local Subscription = {}
Subscription.__index = Subscription
M.Subscription = Subscription

-- The queued events (possibly none), waiting up to `timeout` seconds for one to come.
-- Raises the hub's error if its watch failed.
function Subscription:next(timeout)
  if #self.queue == 0 and not self.hub.error then
    if timeout and timeout <= 0 then return {} end
    self.event:wait(timeout)
  end
  if self.hub.error then error(self.hub.error, 0) end
  local q = self.queue
  self.queue = {}
  return q
end

function Subscription:close()
  if self.closed then return end
  self.closed = true
  self.hub:unsubscribe(self)
end
Subscription.__close = Subscription.close

-- A subscription to the objects named `name` of resource res in namespace ns. Subscribe
-- first, read second: every change after the read reaches the queue.
function Client:subscribe(res, ns, name)
  local key = hub_key(res, ns)
  local hub = self.hubs[key]
  if not hub or hub.error then
    hub = setmetatable({ client = self, res = res, ns = ns, key = key, subs = {}, count = 0 }, Hub)
    self.hubs[key] = hub
    hub:start()
  end
  return hub:subscribe(name)
end

return M
