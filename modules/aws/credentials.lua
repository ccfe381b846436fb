-- aws/credentials.lua: where AWS credentials and the default region come from, in the order
-- the AWS SDKs use:
--
--   1. credentials given to the call or to aws.configure{ credentials = {...} }
--   2. AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN)
--   3. the profile (aws.configure{ profile }, else AWS_PROFILE, else "default") in the shared
--      credentials file (AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials) and the config
--      file (AWS_CONFIG_FILE or ~/.aws/config, sections "[profile NAME]")
--
-- Profiles that assume a role, run a credential process or use SSO are refused with a clear
-- error: tug does not call STS or SSO yet. Instance and container credentials (IMDS, ECS)
-- are not looked up either. Secret keys and session tokens are registered with log.secret
-- the moment they are read.

local log = require("log")

local M = {}

local function credentials_error(message, fields)
  fields = fields or {}
  fields.code = fields.code or "NoCredentials"
  return tug.error.new("aws", "aws: " .. message, fields)
end

local function home()
  return os.getenv("HOME") or "~"
end

local function expand(path)
  if path:sub(1, 2) == "~/" then return home() .. path:sub(2) end
  return path
end

function M.files()
  return expand(os.getenv("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials"),
    expand(os.getenv("AWS_CONFIG_FILE") or "~/.aws/config")
end

-- An INI file as { section = { key = value } }. Indented lines under a key with no value are
-- a nested table (`s3 =` then `  addressing_style = path`). nil when the file is absent.
function M.parse_ini(text)
  local sections, section, nested_key = {}, nil, nil
  for raw in (text .. "\n"):gmatch("(.-)\r?\n") do
    local line = raw:gsub("^%s+", ""):gsub("%s+$", "")
    local indented = raw:match("^%s+%S") ~= nil
    if line == "" or line:match("^[#;]") then
      -- blank or comment
    elseif line:match("^%[.*%]$") then
      local name = line:sub(2, -2):gsub("^%s+", ""):gsub("%s+$", "")
      section = sections[name] or {}
      sections[name] = section
      nested_key = nil
    elseif section then
      local key, value = line:match("^([^=]-)%s*=%s*(.*)$")
      if key then
        key = key:lower()
        if indented and nested_key then
          section[nested_key][key] = value
        elseif value == "" then
          nested_key = key
          section[key] = {}
        else
          nested_key = nil
          section[key] = value
        end
      end
    end
  end
  return sections
end

local function read_ini(path)
  local f = io.open(path, "r")
  if not f then return nil end
  local text = f:read("a")
  f:close()
  return M.parse_ini(text or "")
end

local profiles = {} -- name and paths -> { merged settings or false, cred_path, config_path }

-- The merged settings of a profile from both files (the credentials file wins), or nil.
-- Read once per process: a sync makes hundreds of requests.
function M.profile(name)
  local cred_path, config_path = M.files()
  local key = table.concat({ name, cred_path, config_path }, "\0")
  local hit = profiles[key]
  if hit then return hit[1] or nil, cred_path, config_path end
  local creds, config = read_ini(cred_path), read_ini(config_path)
  local found
  local merged = {}
  local config_section = config and (name == "default" and (config["default"] or config["profile default"])
    or config["profile " .. name])
  if config_section then
    found = true
    for k, v in pairs(config_section) do merged[k] = v end
  end
  local cred_section = creds and creds[name]
  if cred_section then
    found = true
    for k, v in pairs(cred_section) do merged[k] = v end
  end
  profiles[key] = { found and merged or false }
  return found and merged or nil, cred_path, config_path
end

local UNSUPPORTED = {
  { key = "role_arn", what = "assumes a role (role_arn/source_profile)" },
  { key = "credential_process", what = "runs a credential_process" },
  { key = "sso_start_url", what = "signs in through AWS SSO" },
  { key = "sso_session", what = "signs in through AWS SSO" },
  { key = "web_identity_token_file", what = "uses a web identity token" },
}

local function from_profile(name, explicit)
  local p, cred_path, config_path = M.profile(name)
  if not p then
    if explicit then
      return nil, credentials_error(("profile '%s' is not in %s or %s"):format(name, cred_path, config_path),
        { profile = name })
    end
    return nil
  end
  local ak, sk = p.aws_access_key_id, p.aws_secret_access_key
  if not (ak and sk) then
    for _, u in ipairs(UNSUPPORTED) do
      if p[u.key] then
        return nil, credentials_error(("profile '%s' %s, which tug does not support yet: export "
          .. "temporary credentials as AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN "
          .. "(for example from `aws sts assume-role` or `aws configure export-credentials --profile %s "
          .. "--format env`)"):format(name, u.what, name), { profile = name, code = "UnsupportedProfile" })
      end
    end
    if ak or sk then
      return nil, credentials_error(("profile '%s' in %s has %s but not %s"):format(name, cred_path,
        ak and "aws_access_key_id" or "aws_secret_access_key",
        ak and "aws_secret_access_key" or "aws_access_key_id"), { profile = name })
    end
    if explicit then
      return nil, credentials_error(("profile '%s' has no aws_access_key_id/aws_secret_access_key in %s or %s")
        :format(name, cred_path, config_path), { profile = name })
    end
    return nil
  end
  return {
    access_key_id = ak, secret_access_key = sk, session_token = p.aws_session_token,
    source = "profile " .. name,
  }
end

local function remember_secrets(c)
  log.secret(c.secret_access_key)
  if c.session_token and c.session_token ~= "" then log.secret(c.session_token) end
  return c
end

local cache = {}

-- M.resolve(settings) -> { access_key_id, secret_access_key, session_token, source };
-- raises an aws error (code NoCredentials or UnsupportedProfile) saying where it looked.
function M.resolve(settings)
  local given = settings.credentials
  if given ~= nil then
    if type(given) ~= "table" then
      error("aws: credentials must be a table { access_key_id, secret_access_key, session_token }", 0)
    end
    local ak = given.access_key_id or given.AccessKeyId
    local sk = given.secret_access_key or given.SecretAccessKey
    if type(ak) ~= "string" or type(sk) ~= "string" or ak == "" or sk == "" then
      error(credentials_error("credentials must have access_key_id and secret_access_key"), 0)
    end
    return remember_secrets({ access_key_id = ak, secret_access_key = sk,
      session_token = given.session_token or given.SessionToken, source = "given" })
  end

  local env_ak, env_sk = os.getenv("AWS_ACCESS_KEY_ID"), os.getenv("AWS_SECRET_ACCESS_KEY")
  local env_token = os.getenv("AWS_SESSION_TOKEN")
  local profile = settings.profile or os.getenv("AWS_PROFILE")
  local key = table.concat({ env_ak or "", env_sk or "", env_token or "", settings.profile or "",
    os.getenv("AWS_PROFILE") or "", M.files() }, "\0")
  if cache[key] then return cache[key] end

  local resolved
  if env_ak and env_ak ~= "" and env_sk and env_sk ~= "" and not settings.profile then
    resolved = { access_key_id = env_ak, secret_access_key = env_sk,
      session_token = env_token ~= "" and env_token or nil, source = "environment" }
  elseif (env_ak and env_ak ~= "") ~= (env_sk and env_sk ~= "") and not settings.profile then
    error(credentials_error(("%s is set but %s is not"):format(
      env_ak and env_ak ~= "" and "AWS_ACCESS_KEY_ID" or "AWS_SECRET_ACCESS_KEY",
      env_ak and env_ak ~= "" and "AWS_SECRET_ACCESS_KEY" or "AWS_ACCESS_KEY_ID")), 0)
  else
    local err
    resolved, err = from_profile(profile or "default", profile ~= nil)
    if err then error(err, 0) end
  end
  if not resolved then
    local cred_path = M.files()
    error(credentials_error(("no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
      .. "AWS_PROFILE with a profile in %s (no [default] profile there)"):format(cred_path)), 0)
  end
  cache[key] = remember_secrets(resolved)
  return resolved
end

-- The region of the profile in use, from the config file, or nil.
function M.profile_region(settings)
  local name = settings.profile or os.getenv("AWS_PROFILE") or "default"
  local p = M.profile(name)
  return p and p.region or nil
end

-- The endpoint_url of the profile in use (the SDKs' config-file setting), or nil.
function M.profile_setting(settings, key)
  local name = settings.profile or os.getenv("AWS_PROFILE") or "default"
  local p = M.profile(name)
  return p and p[key] or nil
end

return M
