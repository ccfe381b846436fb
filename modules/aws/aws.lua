-- aws.lua: the public aws module. Talks to AWS natively over the http module, signing every
-- request with SigV4 in C (aws.core); no AWS CLI at run time.
--
--   aws.configure(ctx.env.aws)                         region, endpoint_url, profile, ...
--   aws.s3.sync("dist", "s3://multiship-web/app", { delete = true })
--   aws.cloudfront.wait_invalidation(dist, aws.cloudfront.create_invalidation(dist, { "/*" }))
--   aws.secretsmanager.get_secret("prod/db", { field = "password" })
--   aws.ecr.scan_findings("multiship/api", "v2.2.0").counts.CRITICAL
--   aws.sign{ ... }, aws.request{ ... }                for anything else
--
-- The parts: aws/client.lua (settings, endpoints, signing, sending, errors),
-- aws/credentials.lua, aws/s3.lua, aws/sync.lua, aws/cloudfront.lua,
-- aws/secretsmanager.lua, aws/ecr.lua, aws/xml.lua. Loading this module registers the
-- "aws" secret provider for environment files.

local client = require("aws.client")
local credentials = require("aws.credentials")
local secretsmanager = require("aws.secretsmanager")

local aws = {}

aws.configure = client.configure
aws.s3 = require("aws.s3")
aws.cloudfront = require("aws.cloudfront")
aws.secretsmanager = secretsmanager
aws.ecr = require("aws.ecr")

-- A programmer's mistake raises at the caller's line; structured errors pass unchanged.
local function at_caller(fn)
  return function(...)
    local results = table.pack(pcall(fn, ...))
    if results[1] then return table.unpack(results, 2, results.n) end
    local err = results[2]
    if type(err) == "string" then error(err, 2) end
    error(err, 0)
  end
end

-- The public verbs, wrapped so that a mistake points at the playbook's line. The modules'
-- internal helpers (used by sync) stay as they are.
local PUBLIC = {
  [aws.s3] = { "put", "get", "head", "list", "delete", "delete_many", "presign", "sync" },
  [aws.cloudfront] = { "create_invalidation", "get_invalidation", "wait_invalidation" },
  [aws.secretsmanager] = { "get_secret", "put_secret" },
  [aws.ecr] = { "describe_images", "image_exists", "scan_findings" },
}
for part, names in pairs(PUBLIC) do
  for _, name in ipairs(names) do part[name] = at_caller(part[name]) end
end

local SIGN_OPTIONS = {
  method = true, url = true, headers = true, body = true, query = true, service = true, region = true,
  time = true, credentials = true, payload_hash = true, presign = true, profile = true,
}

-- aws.sign{ method, url, headers, body, query, service, region, time, credentials,
--   payload_hash, presign } -> { url, headers, authorization, signature, signed_headers,
--   canonical_request, string_to_sign }
-- Signs without sending. credentials default to the usual chain, region to the configured
-- one, time to now. With presign = seconds the signature goes into the URL instead.
aws.sign = at_caller(function(opts)
  if type(opts) ~= "table" then error("aws.sign: opts must be a table", 0) end
  for k in pairs(opts) do
    if not SIGN_OPTIONS[k] then error(("aws.sign: unknown option '%s'"):format(tostring(k)), 0) end
  end
  local copy = {}
  for k, v in pairs(opts) do copy[k] = v end
  local settings = client.settings({ profile = opts.profile, credentials = opts.credentials }, nil, "aws.sign")
  if copy.region == nil then copy.region = client.region(settings, copy.service or "?", false) end
  if copy.credentials == nil then copy.credentials = credentials.resolve(settings) end
  return client.sign(copy, "aws.sign")
end)

-- aws.request{ service, method, path | url, query, headers, body, region, read_only, ... }
-- -> http response. A signed call to any AWS API; failures come back as the http module's
-- (r.status, r:ok(), r:raise()). Writes (not GET/HEAD, unless read_only) are recorded in plan mode.
aws.request = at_caller(client.request)

-- aws.credentials(opts) -> { access_key_id, secret_access_key, session_token, source }
aws.credentials = at_caller(function(opts)
  return credentials.resolve(client.settings(opts, nil, "aws.credentials"))
end)

-- Registers the ${secret:aws:NAME} provider with the environment loader (done on load).
function aws.register_secret_provider()
  local ok, environment = pcall(require, "tug.environment")
  if ok and type(environment) == "table" and type(environment.providers) == "table" then
    environment.providers.aws = secretsmanager.provider
    return true
  end
  return false
end

aws.register_secret_provider()

return aws
