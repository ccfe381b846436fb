-- scenario.lua (sim.scenario): reads a scenario (a YAML file, YAML text or a Lua table)
-- into the simulator's settings. The format is the default scenario's
-- (sim.default_scenario); `extends: default` starts from the default and overrides it
-- (maps merged, `objects`, `traffic`, `faults` and `exec` appended), so a test can change the
-- timing alone.

local time = require("time")
local yaml = require("yaml")
local util = require("sim.util")

local scenario = {}

local KEYS = {
  extends = true, namespace = true, timing = true, warm_start = true, admin_token = true,
  features = true, providers = true, images = true, traffic = true, objects = true, faults = true,
  events = true, watch_cache = true, watch_cache_window = true, name = true, description = true, exec = true,
}

local TIMING = {
  pod_start = 0.5, ready_after = 1, terminate_after = 0, crash_after = 1, restart_backoff = 2,
  bookmark_interval = 60,
}
scenario.TIMING_DEFAULTS = TIMING

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local text = f:read("a")
  f:close()
  return text
end

local function decode(text, name)
  local ok, doc = pcall(yaml.decode, text, { name = name })
  if not ok then error(("sim: scenario %s: %s"):format(name, tostring(doc)), 0) end
  if doc == nil then doc = {} end
  if type(doc) ~= "table" then error(("sim: scenario %s must be a mapping"):format(name), 0) end
  return doc
end

function scenario.default()
  return decode(require("sim.default_scenario"), "default")
end

local function merge(base, over)
  for k, v in pairs(over) do
    if k == "objects" or k == "traffic" or k == "faults" or k == "exec" then
      local list = {}
      for _, x in ipairs(base[k] or {}) do list[#list + 1] = x end
      for _, x in ipairs(v) do list[#list + 1] = x end
      base[k] = list
    elseif type(v) == "table" and type(base[k]) == "table" and not util.is_array(v) then
      merge(base[k], v)
    else
      base[k] = v
    end
  end
  return base
end

-- spec: nil (the default), a table, a path to a YAML file, or YAML text (with a newline).
function scenario.load(spec)
  local doc
  if spec == nil then
    doc = scenario.default()
  elseif type(spec) == "table" then
    doc = util.copy(spec)
  elseif type(spec) == "string" then
    if spec:find("\n") then
      doc = decode(spec, "<text>")
    else
      local text, err = read_file(spec)
      if not text then error(("sim: cannot read scenario %s: %s"):format(spec, err), 0) end
      doc = decode(text, spec)
    end
  else
    error(("sim: scenario must be a table, a file name or YAML text (got %s)"):format(type(spec)), 0)
  end
  for k in pairs(doc) do
    if not KEYS[k] then
      error(("sim: scenario: unknown key %q (known: %s)"):format(tostring(k), table.concat(util.sorted_keys(KEYS), ", ")), 0)
    end
  end
  if doc.extends ~= nil then
    if doc.extends ~= "default" then error(("sim: scenario: extends must be \"default\" (got %q)"):format(tostring(doc.extends)), 0) end
    local over = doc
    over.extends = nil
    doc = merge(scenario.default(), over)
  end
  local out = {
    namespace = doc.namespace or "default",
    warm_start = doc.warm_start ~= false,
    admin_token = doc.admin_token,
    features = doc.features or {},
    providers = doc.providers or {},
    images = doc.images or {},
    traffic = doc.traffic or {},
    objects = doc.objects or {},
    faults = doc.faults or {},
    exec = doc.exec or {},
    events = doc.events or {},
    watch_cache = doc.watch_cache,
    timing = {},
  }
  local function count(v, what)
    if v ~= nil and (math.type(v) ~= "integer" or v < 1) then
      error(("sim: scenario: %s must be a whole number above 0 (got %s)"):format(what, tostring(v)), 0)
    end
  end
  count(out.watch_cache, "watch_cache")
  if type(out.events) ~= "table" then error("sim: scenario: events must be a mapping ({ max, enabled })", 0) end
  count(out.events.max, "events.max")
  if doc.watch_cache_window ~= nil then
    local v = doc.watch_cache_window
    local w = (type(v) == "string" or type(v) == "number") and time.parse_duration(v)
    if not w or w <= 0 then
      error(("sim: scenario: watch_cache_window must be a duration above 0 such as 75s (got %s)")
        :format(tostring(doc.watch_cache_window)), 0)
    end
    out.watch_cache_window = w
  end
  for k in pairs(doc.timing or {}) do
    if TIMING[k] == nil then
      error(("sim: scenario: unknown timing %q (known: %s)"):format(k, table.concat(util.sorted_keys(TIMING), ", ")), 0)
    end
  end
  for k, default in pairs(TIMING) do
    local v = (doc.timing or {})[k]
    out.timing[k] = v == nil and default or util.seconds(v, "timing." .. k)
  end
  for i, t in ipairs(out.traffic) do
    if type(t) ~= "table" or type(t.service) ~= "string" then
      error(("sim: scenario: traffic[%d] needs a service"):format(i), 0)
    end
    t.rps = tonumber(t.rps) or 0
  end
  return out
end

return scenario
