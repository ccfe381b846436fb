-- environment.lua: environments/NAME.yaml, with ${env:VAR} and ${secret:PROVIDER:NAME}
-- references resolved. Resolved secrets are registered for redaction. Every error names
-- the file, the key path and what was missing.

local M = {}

-- Secret providers: fn(name, doc) -> value, or nil and a reason; doc is the environment
-- file being resolved (the aws provider reads its aws: settings). Modules add their own;
-- the ones below load on first use.
local LAZY_PROVIDERS = { aws = "aws" }

M.providers = {
  env = function(name)
    local v = os.getenv(name)
    if v == nil then return nil, "environment variable " .. name .. " is not set" end
    return v
  end,
  file = function(path)
    local f, err = io.open(path, "r")
    if not f then return nil, "cannot read " .. err end
    local text = f:read("a")
    f:close()
    return (text:gsub("\r?\n$", ""))
  end,
}

setmetatable(M.providers, {
  __index = function(providers, name)
    local module = LAZY_PROVIDERS[name]
    if module then
      require(module) -- registers itself in M.providers
      return rawget(providers, name)
    end
  end,
})

function M.provider_names()
  local names = {}
  for k in pairs(M.providers) do names[#names + 1] = k end
  for k in pairs(LAZY_PROVIDERS) do
    if rawget(M.providers, k) == nil then names[#names + 1] = k end
  end
  table.sort(names)
  return names
end

function M.dir()
  local dir = os.getenv("TUG_ENVIRONMENTS")
  return (dir and dir ~= "") and dir or "environments"
end

function M.available(dir)
  local names = {}
  for _, e in ipairs(tug.sys.listdir(dir or M.dir()) or {}) do
    local name = e.name:match("^(.+)%.ya?ml$")
    if name and e.type == "file" then names[#names + 1] = name end
  end
  table.sort(names)
  return names
end

local function fail(path, key, fmt, ...)
  error(tug.error.new("environment", string.format("%s: %s%s", path, key ~= "" and (key .. ": ") or "",
    string.format(fmt, ...))), 0)
end

-- The value of one reference (the text between "${" and "}").
local function resolve_ref(path, key, ref, doc)
  local kind, rest = ref:match("^(%w+):(.*)$")
  if kind == "env" then
    local name, default = rest:match("^([%w_]+):%-(.*)$")
    name = name or rest
    local v = os.getenv(name)
    if v == nil then
      if default then return default end
      fail(path, key, "environment variable %s is not set (referenced as ${%s})", name, ref)
    end
    return v
  elseif kind == "secret" then
    local provider, name = rest:match("^([%w_]+):(.+)$")
    if not provider then
      fail(path, key, "secret reference ${%s} must be ${secret:PROVIDER:NAME}", ref)
    end
    local get = M.providers[provider]
    if not get then
      fail(path, key, "unknown secret provider '%s' (known: %s)", provider, table.concat(M.provider_names(), ", "))
    end
    local v, err = get(name, doc)
    if v == nil then fail(path, key, "secret ${%s}: %s", ref, err or "not found") end
    log.secret(v)
    return v
  end
  fail(path, key, "unknown reference ${%s} (use ${env:VAR} or ${secret:PROVIDER:NAME})", ref)
end

-- Replaces every ${...} in s. A loop rather than string.gsub: a provider may wait (the
-- aws provider makes a request), and a gsub callback cannot yield.
local function resolve_string(path, key, s, doc)
  local out, at = {}, 1
  while true do
    local start, stop, ref = s:find("%${([^}]*)}", at)
    if not start then break end
    out[#out + 1] = s:sub(at, start - 1)
    out[#out + 1] = resolve_ref(path, key, ref, doc)
    at = stop + 1
  end
  out[#out + 1] = s:sub(at)
  return table.concat(out)
end

-- Resolves every string in value, in place. A table that YAML aliases share is resolved
-- once, where it is first reached (errors name that path): walking it again would resolve
-- a value twice (a secret containing "${" would be substituted again) and, for aliases of
-- aliases, take time exponential in the nesting.
local function resolve(path, key, value, doc, seen)
  if type(value) == "string" then
    return resolve_string(path, key, value, doc)
  elseif type(value) == "table" and not seen[value] then
    seen[value] = true
    for k, v in pairs(value) do
      -- a float key (YAML `0.05: warn`) has no index to print: it is named like a word
      local sub = math.type(k) == "integer" and string.format("%s[%d]", key, k - 1)
        or (key == "" and tostring(k) or key .. "." .. tostring(k))
      value[k] = resolve(path, sub, v, doc, seen)
    end
  end
  return value
end

-- Loads environments/NAME.yaml. `resolve_refs = false` parses without resolving (check).
function M.load(name, opts)
  opts = opts or {}
  local dir = opts.dir or M.dir()
  if not name:match("^[%w_%-%.]+$") then
    error(tug.error.new("environment", "environment name '" .. name .. "' is not a plain name"), 0)
  end
  local path = dir .. "/" .. name .. ".yaml"
  local f = io.open(path)
  if not f then
    local names = M.available(dir)
    error(tug.error.new("environment", string.format("no environment '%s': %s does not exist%s (available: %s)",
      name, path, require("tug.suggest").hint(name, names), #names > 0 and table.concat(names, ", ") or "none")), 0)
  end
  f:close()
  local ok, doc = pcall(yaml.load_file, path)
  if not ok and type(doc) == "table" and doc.kind == "cancelled" then error(doc, 0) end
  if not ok then error(tug.error.new("environment", tostring(doc)), 0) end
  if doc == nil then doc = {} end
  if type(doc) ~= "table" then fail(path, "", "must be a mapping of settings") end
  if doc.protected ~= nil and type(doc.protected) ~= "boolean" then
    fail(path, "protected", "must be true or false")
  end
  if doc.lock ~= nil and doc.lock ~= "file" and doc.lock ~= "kubernetes" then
    fail(path, "lock", "must be file or kubernetes, not %s", tostring(doc.lock))
  end
  if opts.resolve_refs ~= false then resolve(path, "", doc, doc, {}) end
  doc.name = doc.name or name
  return doc, path
end

return M
