-- playbooks.lua: finding, loading and checking playbooks, and parsing their params.
-- A playbook file returns `playbook { ... }`; `playbook` and `step` are globals there.
-- Every declaration error names the file and line of the declaration at fault.

local M = {}

local PLAYBOOK_FIELDS = {
  name = "string", description = "string", params = "table", lock = "string",
  steps = "table", undo_timeout = "duration", step_by_step = "boolean",
}
local STEP_FIELDS = {
  run = "function", undo = "function", when = "function", timeout = "duration",
  retries = "integer", retry_delay = "duration", backoff = "number", confirm = "string",
  tags = "table", read_only = "boolean", undo_timeout = "duration", description = "string",
}
local PARAM_FIELDS = {
  type = "string", required = "boolean", default = "any", pattern = "string", help = "string",
  min = "number", max = "number", values = "table",
}
-- the field tables, for meta/playbook.lua's spec (editor type definitions stay in step)
M.PLAYBOOK_FIELDS, M.STEP_FIELDS, M.PARAM_FIELDS = PLAYBOOK_FIELDS, STEP_FIELDS, PARAM_FIELDS
M.PARAM_TYPES = { "string", "integer", "number", "boolean", "enum", "duration", "list" }
local PARAM_TYPE_SET = {}
for _, t in ipairs(M.PARAM_TYPES) do PARAM_TYPE_SET[t] = true end

local function fail(where, fmt, ...)
  error(tug.error.new("playbook", where .. ": " .. string.format(fmt, ...)), 0)
end

local loading -- the path M.load is loading

-- file:line of the declaration; `return playbook { ... }` is a tail call, which leaves no
-- line to name, only the file being loaded.
local function caller(level)
  local info = debug.getinfo(level + 1, "Sl")
  if not info or info.what == "C" then return loading or "?" end
  return info.short_src .. ":" .. (info.currentline or 0)
end

local function check_field(where, what, key, value, want)
  if want == "any" then return end
  if want == "duration" then
    if type(value) ~= "number" and type(value) ~= "string" then
      fail(where, "%s field '%s' must be a duration such as \"30s\" or \"5m\", not a %s", what, key, type(value))
    end
    local seconds, err = time.parse_duration(value)
    if not seconds then fail(where, "%s field '%s': %s", what, key, err) end
  elseif want == "integer" then
    if math.type(value) ~= "integer" then
      fail(where, "%s field '%s' must be an integer, not %s", what, key, tostring(value))
    end
  elseif type(value) ~= want then
    fail(where, "%s field '%s' must be a %s, not a %s", what, key, want, type(value))
  end
end

local function check_fields(where, what, decl, fields)
  for key, value in pairs(decl) do
    local want = fields[key]
    if want == nil then
      local known = {}
      for k in pairs(fields) do known[#known + 1] = k end
      table.sort(known)
      fail(where, "%s has an unknown field '%s'%s (known: %s)", what, tostring(key),
        require("tug.suggest").hint(tostring(key), known), table.concat(known, ", "))
    end
    check_field(where, what, key, value, want)
  end
end

local MAX_RETRIES = 1000

-- retries, retry_delay and backoff together: the waits they make must be durations too.
local function check_retries(where, name, s)
  if s.retries < 0 or s.retries > MAX_RETRIES then
    fail(where, "step \"%s\" field 'retries' must be from 0 to %d, not %d", name, MAX_RETRIES, s.retries)
  end
  if not (s.backoff >= 1 and s.backoff < math.huge) then -- also NaN
    fail(where, "step \"%s\" field 'backoff' must be a finite number from 1 (the same wait each time; " ..
      "2 doubles it), not %s", name, s.backoff ~= s.backoff and "NaN" or tostring(s.backoff))
  end
  local longest = s.retries > 0 and s.retry_delay * s.backoff ^ (s.retries - 1) or 0
  if not time.parse_duration(longest) then
    fail(where, "step \"%s\": retries = %d with retry_delay %s and backoff %s would wait %.3g s before the last " ..
      "attempt, longer than the longest duration (876000h, 100 years)", name, s.retries,
      time.format_duration(s.retry_delay), tostring(s.backoff), longest)
  end
end

-- step "name" { ... }
local step_mt = { __name = "tug.step" }

local function step(name)
  local where = caller(2)
  if type(name) ~= "string" or name == "" then
    fail(where, "step needs a name: step \"what it does\" { run = function(ctx) ... end }")
  end
  return function(decl)
    if type(decl) ~= "table" then
      fail(where, "step \"%s\" needs a table: step \"%s\" { run = ... }", name, name)
    end
    check_fields(where, "step \"" .. name .. "\"", decl, STEP_FIELDS)
    if decl.run == nil then fail(where, "step \"%s\" has no run function", name) end
    local s = { name = name, where = where }
    for k, v in pairs(decl) do s[k] = v end
    s.timeout = s.timeout and time.parse_duration(s.timeout)
    s.retry_delay = s.retry_delay and time.parse_duration(s.retry_delay) or 1
    s.undo_timeout = s.undo_timeout and time.parse_duration(s.undo_timeout)
    s.retries = s.retries or 0
    s.backoff = s.backoff or 1
    s.tags = s.tags or {}
    check_retries(where, name, s)
    return setmetatable(s, step_mt)
  end
end

local function check_param(where, name, p)
  local what = "param '" .. name .. "'"
  if type(p) ~= "table" then fail(where, "%s must be a table such as { type = \"string\" }", what) end
  check_fields(where, what, p, PARAM_FIELDS)
  p.type = p.type or "string"
  if not PARAM_TYPE_SET[p.type] then
    fail(where, "%s has unknown type '%s' (types: %s)", what, p.type, table.concat(M.PARAM_TYPES, ", "))
  end
  if p.type == "enum" and (type(p.values) ~= "table" or #p.values == 0) then
    fail(where, "%s is an enum and needs values = { ... }", what)
  end
  if p.default ~= nil then
    local ok, err = M.convert(name, p, p.default)
    if ok == nil then fail(where, "default of %s", err) end
  end
end

local function playbook(decl)
  local where = caller(2)
  if type(decl) ~= "table" then fail(where, "playbook needs a table: return playbook { ... }") end
  check_fields(where, "playbook", decl, PLAYBOOK_FIELDS)
  if type(decl.steps) ~= "table" or #decl.steps == 0 then
    fail(where, "playbook has no steps: steps = { step \"...\" { run = ... } }")
  end
  local seen = {}
  for i, s in ipairs(decl.steps) do
    if getmetatable(s) ~= step_mt then
      fail(where, "steps[%d] is not a step: write step \"name\" { run = ... }", i)
    end
    if seen[s.name] then
      fail(s.where, "two steps are named \"%s\" (the other is step %d)", s.name, seen[s.name])
    end
    seen[s.name] = i
  end
  for name, p in pairs(decl.params or {}) do
    if type(name) ~= "string" or not name:match("^[%a_][%w_%-]*$") then
      fail(where, "param name %s is not a plain word", tostring(name))
    end
    check_param(where, name, p)
  end
  local pb = { where = where, params = decl.params or {}, steps = decl.steps }
  for k, v in pairs(decl) do if pb[k] == nil then pb[k] = v end end
  pb.undo_timeout = pb.undo_timeout and time.parse_duration(pb.undo_timeout)
  return setmetatable(pb, { __name = "tug.playbook" })
end

-- A playbook directory's lib/ holds Lua modules its playbooks share (require "NAME");
-- it is not scanned for playbooks.
local lib_dirs = {}

local function add_lib(dir)
  if lib_dirs[dir] then return end
  lib_dirs[dir] = true
  package.path = dir .. "/lib/?.lua;" .. package.path
end

-- Loads one playbook file; returns the playbook or nil and an error message.
function M.load(path)
  -- a playbook in DIR or DIR/runbooks may use DIR/lib
  local dir = path:match("^(.*)/[^/]+$") or "."
  add_lib(dir)
  add_lib(dir:match("^(.*)/[^/]+$") or ".")
  local env = setmetatable({ playbook = playbook, step = step }, { __index = _G })
  local chunk, err = loadfile(path, "t", env)
  if not chunk then return nil, err end
  loading = path
  local ok, pb = pcall(chunk)
  loading = nil
  if not ok then
    -- Ctrl-C or SIGTERM while the file's top level ran: the command stops, the file is fine
    if type(pb) == "table" and pb.kind == "cancelled" then error(pb, 0) end
    return nil, type(pb) == "table" and pb.message or tostring(pb)
  end
  if type(pb) ~= "table" or getmetatable(pb) == nil or getmetatable(pb).__name ~= "tug.playbook" then
    return nil, path .. ": the file must end with `return playbook { ... }`"
  end
  pb.path = path
  pb.name = pb.name or path:match("([^/]+)%.lua$"):gsub("_", "-")
  return pb
end

-- The playbook directories: --playbooks DIR, else TUG_PATH (a:b), else ./playbooks.
function M.dirs(option)
  if option then return { option } end
  local path = os.getenv("TUG_PATH")
  if path and path ~= "" then
    local dirs = {}
    for dir in path:gmatch("[^:]+") do dirs[#dirs + 1] = dir end
    return dirs
  end
  return { "playbooks" }
end

local function scan(dir, out, top)
  local entries = tug.sys.listdir(dir)
  if not entries then return end
  add_lib(top or dir)
  table.sort(entries, function(a, b) return a.name < b.name end)
  for _, e in ipairs(entries) do
    local full = dir .. "/" .. e.name
    if e.type == "dir" and not e.name:match("^%.") and not (top == nil and e.name == "lib") then
      scan(full, out, top or dir)
    elseif e.type == "file" and e.name:match("%.lua$") then
      out[#out + 1] = full
    end
  end
end

-- Finds and loads every playbook. Returns { by_name = {}, list = {}, errors = {} }.
function M.discover(dirs)
  local found = { by_name = {}, list = {}, errors = {} }
  for _, dir in ipairs(dirs) do
    local files = {}
    scan(dir, files)
    for _, path in ipairs(files) do
      local pb, err = M.load(path)
      if not pb then
        found.errors[#found.errors + 1] = err
      elseif found.by_name[pb.name] then
        found.errors[#found.errors + 1] = string.format("%s: a playbook named '%s' is also in %s",
          path, pb.name, found.by_name[pb.name].path)
      else
        found.by_name[pb.name] = pb
        found.list[#found.list + 1] = pb
      end
    end
  end
  table.sort(found.list, function(a, b) return a.name < b.name end)
  return found
end

-- Finds one playbook by name. Loads only the files whose name matches first (the usual
-- case: blue_green.lua declares blue-green), and every playbook only when none does.
-- A name may carry its folder: runbooks/api-outage is api-outage in a runbooks/ folder.
-- Returns the playbook, or nil and the discovery (for its list and errors).
function M.find(dirs, name)
  local folder, base = name:match("^(.+)/([^/]+)$")
  base = base or name
  -- whether the file's folder, below its playbook directory, is the named one
  local function in_folder(path)
    if folder == nil then return true end
    for _, dir in ipairs(dirs) do
      if path:sub(1, #dir + 1) == dir .. "/" and path:sub(#dir + 2):match("^(.*)/[^/]+$") == folder then
        return true
      end
    end
    return false
  end
  local files = {}
  for _, dir in ipairs(dirs) do scan(dir, files) end
  local load_error
  for _, path in ipairs(files) do
    if path:match("([^/]+)%.lua$"):gsub("_", "-") == base and in_folder(path) then
      local pb, err = M.load(path)
      if pb and pb.name == base then return pb end
      load_error = load_error or err
    end
  end
  local found = M.discover(dirs)
  local pb = found.by_name[base]
  if pb and not in_folder(pb.path) then pb = nil end
  -- the file named after the playbook does not load, and no other file declares it
  if not pb then found.load_error = load_error end
  return pb, found
end

-- Converts one param value (a string from the command line, or a default) to its type.
-- Returns the value, or nil and a message naming the param.
function M.convert(name, p, raw)
  local what = "param '" .. name .. "'"
  local t = p.type or "string"
  local text = tostring(raw)
  local value
  if t == "string" then
    value = text
    if p.pattern and not value:match(p.pattern) then
      return nil, string.format("%s: '%s' does not match %s%s", what, value, p.pattern,
        p.help and (" (" .. p.help .. ")") or "")
    end
  elseif t == "integer" or t == "number" then
    local n = tonumber(raw)
    if t == "integer" then n = n and math.tointeger(n) end
    if n == nil then return nil, string.format("%s: '%s' is not an %s", what, text, t == "integer" and "integer" or "number") end
    if p.min and n < p.min then return nil, string.format("%s: %s is below the minimum %s", what, text, p.min) end
    if p.max and n > p.max then return nil, string.format("%s: %s is above the maximum %s", what, text, p.max) end
    value = n
  elseif t == "boolean" then
    if raw == true or raw == false then return raw end
    local map = { ["true"] = true, yes = true, ["1"] = true, ["false"] = false, no = false, ["0"] = false }
    value = map[text:lower()]
    if value == nil then return nil, string.format("%s: '%s' is not a boolean (true or false)", what, text) end
  elseif t == "enum" then
    for _, v in ipairs(p.values) do
      if tostring(v) == text then return v end
    end
    return nil, string.format("%s: '%s' is not one of %s", what, text, table.concat(p.values, ", "))
  elseif t == "duration" then
    local s, err = time.parse_duration(raw)
    if not s then return nil, what .. ": " .. err end
    value = s
  elseif t == "list" then
    if type(raw) == "table" then return raw end
    value = {}
    for item in text:gmatch("[^,]+") do value[#value + 1] = item:match("^%s*(.-)%s*$") end
  end
  return value
end

-- Parses key=value words against a playbook's params. Returns the params table, or nil
-- and a list of messages (every problem at once).
function M.parse_params(pb, words)
  local values, errors, given = {}, {}, {}
  for _, word in ipairs(words) do
    local key, raw = word:match("^([^=]+)=(.*)$")
    if not key then
      errors[#errors + 1] = string.format("'%s' is not key=value", word)
    elseif not pb.params[key] then
      local names = {}
      for k in pairs(pb.params) do names[#names + 1] = k end
      table.sort(names)
      errors[#errors + 1] = string.format("unknown param '%s'%s (%s takes: %s)", key,
        require("tug.suggest").hint(key, names), pb.name, #names > 0 and table.concat(names, ", ") or "no params")
    else
      local v, err = M.convert(key, pb.params[key], raw)
      if v == nil then errors[#errors + 1] = err else values[key] = v end
      given[key] = true
    end
  end
  local names = {}
  for k in pairs(pb.params) do names[#names + 1] = k end
  table.sort(names)
  for _, key in ipairs(names) do
    local p = pb.params[key]
    if not given[key] then
      if p.default ~= nil then
        values[key] = M.convert(key, p, p.default)
      elseif p.required then
        errors[#errors + 1] = string.format("param '%s' is required%s", key,
          p.help and (": " .. p.help) or "")
      end
    end
  end
  if #errors > 0 then return nil, errors end
  return values
end

return M
