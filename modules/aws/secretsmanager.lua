-- aws/secretsmanager.lua: AWS Secrets Manager over its JSON protocol (X-Amz-Target:
-- secretsmanager.*): read a secret (a string, a JSON document or one field of it, or
-- binary), write a new value, and the ${secret:aws:NAME} provider for environment files.
-- Every value read or written is registered with log.secret before anything can print it.

local client = require("aws.client")
local core = require("aws.core")
local json = require("json")
local log = require("log")

local sm = {}

local TARGET = "secretsmanager."

local function check_name(name, caller)
  if type(name) ~= "string" or name == "" then
    error(("%s: name must be a secret name or ARN (got %s)"):format(caller, tostring(name)), 0)
  end
end

-- Registers every string inside a decoded JSON secret, so that a field shown alone is
-- redacted too.
local function register_strings(value)
  if type(value) == "string" then
    if #value >= 4 then log.secret(value) end
  elseif type(value) == "table" then
    for _, v in pairs(value) do register_strings(v) end
  end
end

local GET_OPTIONS = { version_id = true, version_stage = true, field = true, json = true }

-- aws.secretsmanager.get_secret(name, opts) -> value, info
-- value: SecretString (or the decoded SecretBinary); with opts.json the decoded JSON
-- document; with opts.field one field of it. info: { arn, name, version_id, binary }.
function sm.get_secret(name, opts)
  local caller = "aws.secretsmanager.get_secret"
  check_name(name, caller)
  local settings = client.settings(opts, GET_OPTIONS, caller)
  opts = opts or {}
  local what = "secretsmanager get_secret " .. name
  local doc = client.json_call({
    service = "secretsmanager", target = TARGET .. "GetSecretValue", what = what, write = false,
    body = { SecretId = name, VersionId = opts.version_id, VersionStage = opts.version_stage },
    settings = settings, fields = { secret = name },
  })
  local value, binary = doc.SecretString, false
  if value == nil and doc.SecretBinary ~= nil then
    value, binary = core.base64_decode(doc.SecretBinary), true
  end
  if type(value) ~= "string" then
    error(tug.error.new("aws", ("aws %s: the answer holds neither SecretString nor SecretBinary"):format(what),
      { code = "BadResponse", secret = name }), 0)
  end
  log.secret(value)
  local info = { arn = doc.ARN, name = doc.Name, version_id = doc.VersionId, binary = binary }
  if opts.json or opts.field then
    local ok, decoded = pcall(json.decode, value)
    if not ok or type(decoded) ~= "table" then
      error(tug.error.new("aws", ("aws %s: the secret is not a JSON object, so it has no fields"):format(what),
        { code = "NotJson", secret = name }), 0)
    end
    register_strings(decoded)
    if opts.field then
      local v = decoded[opts.field]
      if v == nil then
        local keys = {}
        for k in pairs(decoded) do keys[#keys + 1] = tostring(k) end
        table.sort(keys)
        error(tug.error.new("aws", ("aws %s: no field '%s' (fields: %s)"):format(what, opts.field,
          table.concat(keys, ", ")), { code = "NoSuchField", secret = name }), 0)
      end
      if type(v) ~= "string" then v = type(v) == "table" and json.encode(v) or tostring(v) end
      log.secret(v)
      return v, info
    end
    return decoded, info
  end
  return value, info
end

-- aws.secretsmanager.put_secret(name, value, opts) -> { arn, name, version_id }
-- value: a string, or a table stored as JSON. A write: recorded, not sent, in plan mode.
function sm.put_secret(name, value, opts)
  local caller = "aws.secretsmanager.put_secret"
  check_name(name, caller)
  if type(value) == "table" then value = json.encode(value) end
  if type(value) ~= "string" then error(caller .. ": value must be a string or a table", 2) end
  log.secret(value)
  local settings = client.settings(opts, nil, caller)
  local doc, r = client.json_call({
    service = "secretsmanager", target = TARGET .. "PutSecretValue",
    what = "secretsmanager put_secret " .. name, write = true,
    body = { SecretId = name, SecretString = value }, settings = settings,
    plan_summary = "secretsmanager put_secret " .. name .. " (new value, " .. #value .. " bytes)",
    fields = { secret = name },
  })
  if not doc then return { planned = r.planned, name = name } end
  return { arn = doc.ARN, name = doc.Name, version_id = doc.VersionId }
end

-- The ${secret:aws:NAME} provider: NAME may end in #field to pick one field of a JSON
-- secret. doc, when given, is the environment being loaded: its aws settings are used.
-- Returns the value, or nil and the reason.
function sm.provider(ref, doc)
  local name, field = ref:match("^(.-)#([^#]+)$")
  name = name or ref
  local opts = { field = field }
  if type(doc) == "table" and type(doc.aws) == "table" then
    for k, v in pairs(doc.aws) do
      if client.SETTINGS[k] then opts[k] = v end
    end
  end
  local ok, value = pcall(sm.get_secret, name, opts)
  if ok then return value end
  return nil, type(value) == "table" and value.message or tostring(value)
end

return sm
