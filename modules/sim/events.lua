-- events.lua (sim.events): the event recorder the simulated controllers and kubelet
-- share. Repeats of the same event on the same object are folded into one Event whose
-- count and lastTimestamp move (as client-go's correlator does), and only the newest
-- `max` events are kept (a real cluster forgets them after an hour).

local json = require("json")
local util = require("sim.util")

local events = {}
local Recorder = {}
Recorder.__index = Recorder

function events.new(store, opts)
  opts = opts or {}
  return setmetatable({
    store = store,
    max = opts.max or 1000,
    enabled = opts.enabled ~= false,
    order = {}, -- keys of live events, oldest first
    head = 1,
    tail = 0,
    by_key = {}, -- aggregation key -> { namespace, name }
    seq = 0,
  }, Recorder)
end

local function involved(obj)
  local m = obj.metadata
  return {
    kind = obj.kind, namespace = m.namespace, name = m.name, uid = m.uid,
    apiVersion = obj.apiVersion, resourceVersion = m.resourceVersion,
  }
end

-- record(obj, "Normal"|"Warning", reason, message, component[, field_path])
function Recorder:record(obj, typ, reason, message, component, field_path)
  if not self.enabled or obj == nil then return end
  local store = self.store
  local ns = obj.metadata.namespace or "default"
  local now = util.timestamp(store.clock())
  local agg = table.concat({ obj.metadata.uid or "", reason, message, field_path or "" }, "\0")
  local known = self.by_key[agg]
  if known then
    local ev = store:get("events", known[1], known[2])
    if ev then
      local e = util.shallow(ev)
      e.metadata = util.shallow(ev.metadata)
      e.count = (e.count or 1) + 1
      e.lastTimestamp = now
      e.metadata.resourceVersion = nil
      store:update("events", e, { internal = true })
      return
    end
    self.by_key[agg] = nil
  end
  self.seq = self.seq + 1
  local name = ("%s.%x%04x"):format(obj.metadata.name, math.floor(store.clock() * 1e6), self.seq % 65536)
  local inv = involved(obj)
  if field_path then inv.fieldPath = field_path end
  local ev = {
    apiVersion = "v1", kind = "Event",
    metadata = { name = name, namespace = ns },
    involvedObject = inv,
    reason = reason, message = message, type = typ,
    source = { component = component, host = component == "kubelet" and (obj.spec and obj.spec.nodeName) or nil },
    firstTimestamp = now, lastTimestamp = now, count = 1,
    eventTime = json.null,
    reportingComponent = component, reportingInstance = component == "kubelet" and ((obj.spec and obj.spec.nodeName) or "") or "",
  }
  local created = store:create("events", ev, { internal = true })
  if not created then return end
  self.by_key[agg] = { ns, name, agg }
  local order = self.order
  self.tail = self.tail + 1
  order[self.tail] = self.by_key[agg]
  while self.tail - self.head + 1 > self.max do
    local old = order[self.head]
    order[self.head] = nil
    self.head = self.head + 1
    if self.by_key[old[3]] == old then self.by_key[old[3]] = nil end
    if store:get("events", old[1], old[2]) then store:delete("events", old[1], old[2], { grace = 0 }) end
  end
  if self.head > 4096 and self.head > self.tail / 2 then
    local compact = {}
    for i = self.head, self.tail do compact[#compact + 1] = order[i] end
    self.order, self.head, self.tail = compact, 1, #compact
  end
end

return events
