-- aws_spec.lua: the aws module's signing, credentials, CloudFront, Secrets Manager, ECR and
-- aws.request. Signatures are compared byte for byte with botocore's (an independent
-- signer, run by /usr/bin/python3); the CloudFront, Secrets Manager and ECR calls go to
-- spec/support/aws_fixture.py, which answers like AWS and checks every request's signature
-- with botocore too. Credentials are tested in child tug processes with their own
-- environment and HOME. S3 against a real S3 server is in aws_s3_spec.lua.
package.path = "spec/support/?.lua;" .. package.path

local aws = require("aws")
local aws_fixture = require("aws_fixture")
local child = require("child")
local exec = require("exec")
local json = require("json")
local log = require("log")

-- ---- SigV4 against botocore ----

local DOC_CREDS = { access_key_id = "AKIAIOSFODNN7EXAMPLE", secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY" }
local TIME = "20130524T000000Z"

-- Each case is signed by aws.sign and by botocore (SigV4Auth / S3SigV4Auth, or the
-- QueryAuth classes for presigned URLs) with the same credentials and time.
local CASES = {
  { name = "an S3 GET with a Range header", method = "GET", service = "s3", region = "us-east-1",
    url = "https://examplebucket.s3.amazonaws.com/test.txt", headers = { Range = "bytes=0-9" } },
  { name = "an S3 PUT with a body, a content type and metadata with odd spacing", method = "PUT",
    service = "s3", region = "eu-west-1", url = "https://examplebucket.s3.eu-west-1.amazonaws.com/notes/a.txt",
    body = "Welcome to Amazon S3.", headers = { ["Content-Type"] = "text/plain", ["x-amz-meta-Owner"] = "  Ops   Team " } },
  { name = "a unicode key with spaces (encoded once for S3)", method = "GET", service = "s3", region = "us-east-1",
    url = "https://examplebucket.s3.amazonaws.com/caf%C3%A9/men%C3%BC%20du%20jour.txt" },
  { name = "query parameters needing encoding, given unsorted", method = "GET", service = "s3",
    region = "us-east-1", url = "https://examplebucket.s3.amazonaws.com/",
    params = { { "prefix", "dir/sub dir/é" }, { "list-type", "2" }, { "a-b", "1" }, { "a", "x~y*z+w" },
      { "continuation-token", "1/2=3" } } },
  { name = "an empty path on a JSON-protocol service", method = "POST", service = "ecr", region = "us-east-1",
    url = "https://api.ecr.us-east-1.amazonaws.com", body = "{}",
    headers = { ["Content-Type"] = "application/x-amz-json-1.1",
      ["X-Amz-Target"] = "AmazonEC2ContainerRegistry_V20150921.DescribeImages" } },
  { name = "a non-S3 path with dot segments, double slashes and an escape (encoded twice)", method = "GET",
    service = "execute-api", region = "eu-central-1",
    url = "https://abc.execute-api.eu-central-1.amazonaws.com/prod/./a/../b%2Fc//d/" },
  { name = "a query string in the URL, unsorted", method = "GET", service = "iam", region = "us-east-1",
    url = "https://iam.amazonaws.com/?Version=2010-05-08&Action=ListUsers&Marker=a%2Fb" },
  { name = "a CloudFront POST with a session token", method = "POST", service = "cloudfront", region = "us-east-1",
    url = "https://cloudfront.amazonaws.com/2020-05-31/distribution/E2QWRUHAPOMQZL/invalidation",
    body = "<InvalidationBatch/>", token = "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJH+token=" },
  { name = "an S3 presigned GET URL", method = "GET", service = "s3", region = "us-east-1",
    url = "https://examplebucket.s3.amazonaws.com/my%20photo.jpg", presign = 86400 },
  { name = "an S3 presigned URL with a query and a session token", method = "GET", service = "s3",
    region = "ap-southeast-2", url = "https://examplebucket.s3.ap-southeast-2.amazonaws.com/a/b.txt?versionId=3%2F4",
    presign = 600, token = "tok en/+" },
  { name = "a presigned URL for another service", method = "GET", service = "sts", region = "us-east-1",
    url = "https://sts.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15", presign = 60 },
}

local function botocore_sign(cases)
  local input = {}
  for i, c in ipairs(cases) do
    input[i] = {
      method = c.method, url = c.url, headers = c.headers or json.object(), body = c.body, params = c.params,
      service = c.service, region = c.region, time = TIME, access_key = DOC_CREDS.access_key_id,
      secret_key = DOC_CREDS.secret_access_key, token = c.token, presign = c.presign,
    }
  end
  local r = exec.run({ "/usr/bin/python3", "spec/support/botocore_sign.py" },
    { stdin = json.encode(input), timeout = 30 })
  assert(r.code == 0, "botocore_sign.py failed: " .. r.stderr)
  return json.decode(r.stdout)
end

local function tug_sign(c)
  local query
  if c.params then
    query = {}
    for _, p in ipairs(c.params) do query[p[1]] = p[2] end
  end
  return aws.sign({
    method = c.method, url = c.url, headers = c.headers, body = c.body, query = query, service = c.service,
    region = c.region, time = TIME, presign = c.presign,
    credentials = { access_key_id = DOC_CREDS.access_key_id, secret_access_key = DOC_CREDS.secret_access_key,
      session_token = c.token },
  })
end

describe("aws.sign", function()
  local expected

  setup(function() expected = botocore_sign(CASES) end)

  it("gives the signature of the AWS documentation's example", function()
    -- docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html, "GET Object"
    local s = tug_sign(CASES[1])
    assert.are.equal("f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41", s.signature)
    assert.are.equal("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
      .. "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
      .. "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41", s.headers.Authorization)
    assert.are.equal(TIME, s.headers["X-Amz-Date"])
    assert.are.equal("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
      s.headers["X-Amz-Content-SHA256"])
  end)

  for i, c in ipairs(CASES) do
    it("equals botocore's signature byte for byte: " .. c.name, function()
      local mine = tug_sign(c)
      assert.are.equal(expected[i].signature, mine.signature, mine.canonical_request)
      if not c.presign then
        assert.are.equal(expected[i].authorization, mine.headers.Authorization)
      end
    end)
  end

  it("puts the signature of a presigned URL in the query, with the parameters botocore sends", function()
    local mine = tug_sign(CASES[10])
    local function params(url)
      local t = {}
      for k, v in url:match("%?(.*)$"):gmatch("([^&=]+)=([^&]*)") do t[k] = v end
      return t
    end
    assert.are.same(params(expected[10].url), params(mine.url))
    assert.is_nil(mine.headers.Authorization)
  end)

  it("sends exactly the query it signed: sorted and percent-encoded", function()
    local s = tug_sign(CASES[4])
    assert.are.equal("https://examplebucket.s3.amazonaws.com/?a=x~y%2Az%2Bw&a-b=1&continuation-token=1%2F2%3D3"
      .. "&list-type=2&prefix=dir%2Fsub%20dir%2F%C3%A9", s.url)
  end)

  it("signs with the configured credentials and the current time by default", function()
    aws.configure({ credentials = DOC_CREDS, region = "eu-west-3" })
    local s = aws.sign({ url = "https://sqs.eu-west-3.amazonaws.com/", service = "sqs" })
    aws.configure({})
    assert.matches("Credential=AKIAIOSFODNN7EXAMPLE/%d+/eu%-west%-3/sqs/aws4_request", s.headers.Authorization)
    assert.are.equal(os.date("!%Y%m%d"), s.headers["X-Amz-Date"]:sub(1, 8))
  end)

  it("raises a clear error, at the caller's line, for a mistake", function()
    local ok, err = pcall(function()
      local signed = aws.sign({ url = "https://x.amazonaws.com/", region = "us-east-1", credentials = DOC_CREDS })
      return signed
    end)
    assert.is_false(ok)
    assert.matches("aws_spec.lua:%d+: aws.sign: service must be a string", err)
    ok, err = pcall(aws.sign, { url = "https://x/", service = "s3", region = "us-east-1", credentials = DOC_CREDS,
      tiem = 1 })
    assert.matches("unknown option 'tiem'", err)
  end)
end)

-- ---- credentials, in child processes with their own environment ----

local function scratch_home(files)
  local dir = exec.run({ "mktemp", "-d", "/tmp/tug-aws-home.XXXXXX" }, { check = true }).stdout:gsub("%s+$", "")
  exec.run({ "mkdir", "-p", dir .. "/.aws" }, { check = true })
  for name, text in pairs(files or {}) do
    local f = assert(io.open(dir .. "/.aws/" .. name, "w"))
    f:write(text)
    f:close()
  end
  return dir
end

-- An environment with no AWS variables but the given ones.
local function aws_env(vars)
  local env = {
    AWS_ACCESS_KEY_ID = false, AWS_SECRET_ACCESS_KEY = false, AWS_SESSION_TOKEN = false, AWS_PROFILE = false,
    AWS_REGION = false, AWS_DEFAULT_REGION = false, AWS_ENDPOINT_URL = false, AWS_ENDPOINT_URL_S3 = false,
    AWS_CONFIG_FILE = false, AWS_SHARED_CREDENTIALS_FILE = false,
  }
  for k, v in pairs(vars) do env[k] = v end
  return env
end

local SHOW = [[
local c = aws.credentials()
print(c.access_key_id, c.source, c.session_token and "token" or "no-token")
print("secret: " .. c.secret_access_key)
local s = aws.sign({ url = "https://s3.amazonaws.com/b/k", service = "s3" })
print(s.headers.Authorization:match("Credential=[^/]+/%d+/([^/]+)/"))
]]

describe("aws credentials", function()
  local homes = {}
  teardown(function()
    for _, h in ipairs(homes) do exec.run({ "rm", "-rf", h }) end
  end)
  local function home(files)
    local h = scratch_home(files)
    homes[#homes + 1] = h
    return h
  end

  it("come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY first, and the secret is never printed", function()
    local h = home({ credentials = "[default]\naws_access_key_id = AKIDPROFILE\naws_secret_access_key = profile-secret-1\n" })
    local r = child.lua(SHOW, { env = aws_env({ HOME = h, AWS_ACCESS_KEY_ID = "AKIDENV", AWS_SECRET_ACCESS_KEY = "env-secret-0123",
      AWS_SESSION_TOKEN = "env-session-token-456", AWS_REGION = "ca-central-1" }) })
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal("AKIDENV\tenvironment\ttoken\nsecret: ***\nca-central-1\n", r.stdout)
    assert.not_matches("env%-secret", r.stdout .. r.stderr)
  end)

  it("come from the profile named by AWS_PROFILE in ~/.aws/credentials, with its region from ~/.aws/config", function()
    local h = home({
      credentials = "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = default-secret-1\n\n"
        .. "# deploys\n[ci]\naws_access_key_id=AKIDCI\naws_secret_access_key = ci-secret-2\n",
      config = "[default]\nregion = us-west-2\n[profile ci]\nregion = eu-west-2\ns3 =\n  addressing_style = path\n",
    })
    local r = child.lua(SHOW, { env = aws_env({ HOME = h, AWS_PROFILE = "ci" }) })
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal("AKIDCI\tprofile ci\tno-token\nsecret: ***\neu-west-2\n", r.stdout)
    r = child.lua(SHOW, { env = aws_env({ HOME = h }) })
    assert.are.equal("AKIDDEFAULT\tprofile default\tno-token\nsecret: ***\nus-west-2\n", r.stdout)
  end)

  it("prefer the region of aws.configure (the environment file) to AWS_REGION", function()
    local r = child.lua([[aws.configure({ region = "sa-east-1" })]] .. SHOW, { env = aws_env({ HOME = home(),
      AWS_ACCESS_KEY_ID = "AKIDENV", AWS_SECRET_ACCESS_KEY = "env-secret-0123", AWS_REGION = "ca-central-1" }) })
    assert.matches("\nsa%-east%-1\n$", r.stdout)
  end)

  it("fail clearly when there are none", function()
    local r = child.lua("aws.credentials()", { env = aws_env({ HOME = home() }) })
    assert.are.equal(1, r.code)
    assert.matches("aws: no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE", r.stderr)
  end)

  it("fail clearly when only half of the key pair is set", function()
    local r = child.lua("aws.credentials()", { env = aws_env({ HOME = home(), AWS_ACCESS_KEY_ID = "AKIDENV" }) })
    assert.matches("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not", r.stderr)
  end)

  it("fail clearly when AWS_PROFILE names a profile that is not there", function()
    local h = home({ credentials = "[default]\naws_access_key_id = A\naws_secret_access_key = B\n" })
    local r = child.lua("aws.credentials()", { env = aws_env({ HOME = h, AWS_PROFILE = "prod" }) })
    assert.matches("profile 'prod' is not in " .. h:gsub("%p", "%%%0") .. "/.aws/credentials or", r.stderr)
  end)

  it("refuse a profile that assumes a role, saying it is not supported yet", function()
    local h = home({
      credentials = "[base]\naws_access_key_id = A\naws_secret_access_key = B\n",
      config = "[profile deploy]\nrole_arn = arn:aws:iam::123456789012:role/deploy\nsource_profile = base\n",
    })
    local r = child.lua("local ok, e = pcall(aws.credentials) print(e.kind, e.code) print(e.message)",
      { env = aws_env({ HOME = h, AWS_PROFILE = "deploy" }) })
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("^aws\tUnsupportedProfile\n", r.stdout)
    assert.matches("profile 'deploy' assumes a role %(role_arn/source_profile%), which tug does not support yet", r.stdout)
  end)

  it("need a region, and say where to set it", function()
    local r = child.lua([[aws.sign({ url = "https://s3.amazonaws.com/b/k", service = "s3" })]],
      { env = aws_env({ HOME = home(), AWS_ACCESS_KEY_ID = "A", AWS_SECRET_ACCESS_KEY = "Bsecret" }) })
    assert.matches("no AWS region: set aws.region in the environment file", r.stderr)
  end)

  it("follow AWS_ENDPOINT_URL_S3, with path-style URLs for an IP endpoint", function()
    local r = child.lua([[print((aws.s3.presign("s3://site/index.html")))]], { env = aws_env({ HOME = home(),
      AWS_ACCESS_KEY_ID = "A", AWS_SECRET_ACCESS_KEY = "Bsecret", AWS_ENDPOINT_URL_S3 = "http://127.0.0.1:9000",
      AWS_ENDPOINT_URL = "http://127.0.0.1:1" }) })
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("^http://127%.0%.0%.1:9000/site/index%.html%?X%-Amz%-Algorithm=", r.stdout)
    assert.matches("X%-Amz%-Signature=%*%*%*\n$", r.stdout) -- a presigned URL is a credential
  end)
end)

-- ---- services against the botocore-verifying fixture ----

describe("aws services against a fixture that verifies signatures with botocore", function()
  local fx

  setup(function()
    fx = aws_fixture.start()
  end)
  teardown(function()
    aws.configure({})
    tug.plan.set(false)
    if fx then fx:stop() end
  end)
  before_each(function()
    aws.configure({ endpoint_url = fx.url, region = "us-east-1", credentials = fx.credentials })
  end)

  local function requests_since(n)
    local all = fx:requests()
    local out = {}
    for i = n + 1, #all do out[#out + 1] = all[i] end
    return out
  end

  describe("CloudFront", function()
    it("creates an invalidation: a well-formed XML batch, signed for us-east-1 and verified by botocore", function()
      local before = #fx:requests()
      aws.configure({ endpoint_url = fx.url, region = "eu-west-1", credentials = fx.credentials })
      local inv = aws.cloudfront.create_invalidation("E2FIXTURE", { "/index.html", "/assets/*" })
      assert.matches("^I%d+FIXTURE$", inv.id)
      assert.are.equal("InProgress", inv.status)
      assert.matches("/2020%-05%-31/distribution/E2FIXTURE/invalidation/" .. inv.id .. "$", inv.location)
      local sent = requests_since(before)
      assert.are.equal(1, #sent)
      local req = sent[1]
      assert.is_true(req.verified, req.reason)
      assert.are.equal("POST", req.method)
      assert.are.equal("/2020-05-31/distribution/E2FIXTURE/invalidation", req.path)
      assert.matches("Credential=" .. aws_fixture.ACCESS_KEY .. "/%d+/us%-east%-1/cloudfront/aws4_request",
        req.headers.authorization)
      assert.matches("<Paths><Quantity>2</Quantity><Items><Path>/index.html</Path><Path>/assets/%*</Path></Items></Paths>",
        req.body)
      assert.matches("<CallerReference>tug%-%d+%-%x+</CallerReference>", req.body)
    end)

    it("waits until the invalidation is Completed", function()
      local inv = aws.cloudfront.create_invalidation("E2FIXTURE", "/*")
      local before = #fx:requests()
      local done = aws.cloudfront.wait_invalidation("E2FIXTURE", inv, { interval = 0.05 })
      assert.are.equal("Completed", done.status)
      assert.are.equal(inv.id, done.id)
      local polls = requests_since(before)
      assert.are.equal(2, #polls) -- InProgress, then Completed
      for _, p in ipairs(polls) do assert.is_true(p.verified, p.reason) end
    end)

    it("gives up waiting with a WaitTimeout error", function()
      local inv = aws.cloudfront.create_invalidation("E2FIXTURE", { "/x" })
      local ok, err = pcall(aws.cloudfront.wait_invalidation, "E2FIXTURE", inv.id, { timeout = 0 })
      assert.is_false(ok)
      assert.are.equal("WaitTimeout", err.code)
      assert.matches("still InProgress after", err.message)
    end)

    it("raises a structured error for an unknown distribution", function()
      local ok, err = pcall(aws.cloudfront.create_invalidation, "ENOSUCH", { "/x" })
      assert.is_false(ok)
      assert.are.equal("aws", err.kind)
      assert.are.equal("NoSuchDistribution", err.code)
      assert.are.equal(404, err.status)
      assert.are.equal("aws cloudfront create_invalidation ENOSUCH: HTTP 404 NoSuchDistribution: "
        .. "The specified distribution does not exist.", err.message)
    end)

    it("rejects paths that do not start with /", function()
      local ok, err = pcall(aws.cloudfront.create_invalidation, "E2FIXTURE", { "index.html" })
      assert.is_false(ok)
      assert.matches("paths%[1%] must start with /", err)
    end)

    it("records the invalidation in plan mode and sends nothing", function()
      local before = #fx:requests()
      tug.plan.set(true)
      tug.plan.take()
      local inv = aws.cloudfront.create_invalidation("E2FIXTURE", { "/index.html" })
      local waited = aws.cloudfront.wait_invalidation("E2FIXTURE", inv)
      local records = tug.plan.take()
      tug.plan.set(false)
      assert.is_true(inv.planned)
      assert.are.equal(inv, waited)
      assert.are.equal(before, #fx:requests())
      assert.are.equal(1, #records)
      assert.are.equal("aws", records[1].module)
      assert.are.equal("cloudfront invalidate /index.html on E2FIXTURE", records[1].summary)
    end)
  end)

  describe("Secrets Manager", function()
    it("reads a string secret over the JSON protocol and registers it as a secret", function()
      local before = #fx:requests()
      local value, info = aws.secretsmanager.get_secret("prod/api-token")
      assert.are.equal("tok-3f9a8b7c6d5e", value)
      assert.are.equal("prod/api-token", info.name)
      assert.are.equal("***", log.redact(value))
      local req = requests_since(before)[1]
      assert.is_true(req.verified, req.reason)
      assert.are.equal("secretsmanager.GetSecretValue", req.headers["x-amz-target"])
      assert.are.equal("application/x-amz-json-1.1", req.headers["content-type"])
      assert.are.same({ SecretId = "prod/api-token" }, json.decode(req.body))
      assert.matches("/us%-east%-1/secretsmanager/aws4_request", req.headers.authorization)
    end)

    it("picks one field of a JSON secret, or decodes it whole", function()
      assert.are.equal("hunter2-db-pass", aws.secretsmanager.get_secret("prod/db", { field = "password" }))
      assert.are.equal("5432", aws.secretsmanager.get_secret("prod/db", { field = "port" }))
      local doc = aws.secretsmanager.get_secret("prod/db", { json = true })
      assert.are.equal("app", doc.username)
      assert.are.equal("***", log.redact("hunter2-db-pass"))
      local ok, err = pcall(aws.secretsmanager.get_secret, "prod/db", { field = "pasword" })
      assert.is_false(ok)
      assert.are.equal("NoSuchField", err.code)
      assert.matches("no field 'pasword' %(fields: password, port, username%)", err.message)
      ok, err = pcall(aws.secretsmanager.get_secret, "prod/api-token", { field = "x" })
      assert.are.equal("NotJson", err.code)
    end)

    it("decodes a binary secret", function()
      local value, info = aws.secretsmanager.get_secret("prod/tls-key")
      assert.are.equal("\0\1binary-key\255", value)
      assert.is_true(info.binary)
    end)

    it("raises ResourceNotFoundException for a missing secret", function()
      local ok, err = pcall(aws.secretsmanager.get_secret, "prod/nope")
      assert.is_false(ok)
      assert.are.equal("ResourceNotFoundException", err.code)
      assert.are.equal(400, err.status)
      assert.matches("^aws secretsmanager get_secret prod/nope: HTTP 400 ResourceNotFoundException: "
        .. "Secrets Manager can't find the specified secret%.$", err.message)
    end)

    it("writes a new value, and in plan mode records the write without the value", function()
      local before = #fx:requests()
      tug.plan.set(true)
      tug.plan.take()
      local planned = aws.secretsmanager.put_secret("prod/api-token", "planned-value-never-sent")
      local records = tug.plan.take()
      tug.plan.set(false)
      assert.is_true(planned.planned)
      assert.are.equal(before, #fx:requests())
      assert.are.equal("secretsmanager put_secret prod/api-token (new value, 24 bytes)", records[1].summary)
      assert.not_matches("planned%-value", json.encode(records))

      local written = aws.secretsmanager.put_secret("prod/api-token", "rotated-token-789")
      assert.matches("^v%-%d+$", written.version_id)
      assert.are.equal("rotated-token-789", aws.secretsmanager.get_secret("prod/api-token"))
      local req = requests_since(before)[1]
      assert.is_true(req.verified, req.reason)
      assert.are.equal("secretsmanager.PutSecretValue", req.headers["x-amz-target"])
    end)

    it("provides ${secret:aws:NAME#field} to environment files", function()
      local environment = require("tug.environment")
      local provider = environment.providers.aws
      assert.is_function(provider)
      assert.are.equal("hunter2-db-pass", provider("prod/db#password"))
      local value, reason = provider("prod/missing")
      assert.is_nil(value)
      assert.matches("ResourceNotFoundException", reason)
      -- with the environment document, its aws settings are used (region, endpoint_url)
      aws.configure({ credentials = fx.credentials })
      assert.are.equal("hunter2-db-pass", provider("prod/db#password",
        { aws = { region = "us-east-1", endpoint_url = fx.url } }))
    end)

    it("resolves ${secret:aws:...} while loading an environment file", function()
      local environment = require("tug.environment")
      local dir = exec.run({ "mktemp", "-d", "/tmp/tug-aws-env.XXXXXX" }, { check = true }).stdout:gsub("%s+$", "")
      local f = assert(io.open(dir .. "/stage.yaml", "w"))
      f:write("name: stage\ndatabase_password: ${secret:aws:prod/db#password}\n")
      f:close()
      local ok, env = pcall(environment.load, "stage", { dir = dir })
      exec.run({ "rm", "-rf", dir })
      if not ok and tostring(env):find("cannot wait here", 1, true) then
        pending("runtime/lua/environment.lua calls providers inside string.gsub, where an HTTP call cannot "
          .. "wait (see modules/aws/README.md)")
        return
      end
      assert.is_true(ok, tostring(env))
      assert.are.equal("hunter2-db-pass", env.database_password)
    end)
  end)

  describe("ECR", function()
    it("describes every image of a repository, page after page", function()
      local before = #fx:requests()
      local images = aws.ecr.describe_images("multiship/api")
      assert.are.equal(4, #images)
      assert.are.same({ "v2.2.0" }, images[1].tags)
      assert.are.equal("sha256:" .. ("a"):rep(64), images[1].digest)
      assert.are.equal("COMPLETE", images[1].scan_status)
      local sent = requests_since(before)
      assert.are.equal(2, #sent) -- two pages, the second with nextToken
      assert.are.equal("2", json.decode(sent[2].body).nextToken)
      for _, r in ipairs(sent) do
        assert.is_true(r.verified, r.reason)
        assert.are.equal("AmazonEC2ContainerRegistry_V20150921.DescribeImages", r.headers["x-amz-target"])
        assert.matches("/us%-east%-1/ecr/aws4_request", r.headers.authorization)
      end
    end)

    it("tells whether an image tag exists", function()
      assert.is_true(aws.ecr.image_exists("multiship/api", "v2.2.0"))
      assert.is_false(aws.ecr.image_exists("multiship/api", "v9.9.9"))
      local ok, err = pcall(aws.ecr.image_exists, "multiship/nope", "v1")
      assert.is_false(ok)
      assert.are.equal("RepositoryNotFoundException", err.code)
    end)

    it("counts scan findings by severity, so a preflight can refuse CRITICAL ones", function()
      local scan = aws.ecr.scan_findings("multiship/api", "v2.2.0")
      assert.are.equal("COMPLETE", scan.status)
      assert.are.same({ CRITICAL = 2, HIGH = 5, MEDIUM = 0, LOW = 1, INFORMATIONAL = 0, UNDEFINED = 0 }, scan.counts)
      assert.are.equal(8, scan.total)
      assert.are.equal(0, aws.ecr.scan_findings("multiship/api", "v2.1.0").counts.CRITICAL)
    end)

    it("waits for a scan in progress when asked", function()
      local scan = aws.ecr.scan_findings("multiship/api", "v2.3.0-rc1", { wait = 5, interval = 0.05 })
      assert.are.equal("COMPLETE", scan.status)
      assert.are.equal(1, scan.counts.MEDIUM)
    end)

    it("explains a missing scan", function()
      local ok, err = pcall(aws.ecr.scan_findings, "multiship/api", "v2.0.0")
      assert.is_false(ok)
      assert.are.equal("ScanNotFoundException", err.code)
      assert.matches("is scan on push enabled for the repository%?", err.message)
    end)
  end)

  describe("aws.request", function()
    it("sends a signed call to an API the module does not wrap", function()
      local before = #fx:requests()
      local r = aws.request({
        service = "ecr", method = "POST", path = "/", read_only = true, body = json.encode({ repositoryName = "multiship/api" }),
        headers = { ["Content-Type"] = "application/x-amz-json-1.1",
          ["X-Amz-Target"] = "AmazonEC2ContainerRegistry_V20150921.DescribeImages" },
      })
      assert.are.equal(200, r.status)
      assert.are.equal(2, #r:json().imageDetails)
      local req = requests_since(before)[1]
      assert.is_true(req.verified, req.reason)
    end)

    it("returns AWS's answer for a failed call as the http module does", function()
      local r = aws.request({ service = "cloudfront", path = "/2020-05-31/distribution/ENOSUCH/invalidation/I1" })
      assert.are.equal(404, r.status)
      assert.is_false(r:ok())
    end)

    it("records a write in plan mode and sends nothing", function()
      local before = #fx:requests()
      tug.plan.set(true)
      tug.plan.take()
      local r = aws.request({ service = "cloudfront", method = "POST", path = "/2020-05-31/distribution/E2FIXTURE/invalidation",
        body = "<InvalidationBatch/>" })
      local records = tug.plan.take()
      tug.plan.set(false)
      assert.is_true(r.planned)
      assert.is_true(r:ok())
      assert.are.equal(before, #fx:requests())
      assert.are.equal("POST " .. fx.url .. "/2020-05-31/distribution/E2FIXTURE/invalidation", records[1].summary)
    end)
  end)

  describe("errors", function()
    it("name the call and give a hint when the secret key is wrong", function()
      aws.configure({ endpoint_url = fx.url, region = "us-east-1",
        credentials = { access_key_id = aws_fixture.ACCESS_KEY, secret_access_key = "not-the-secret-key-123" } })
      local ok, err = pcall(aws.cloudfront.create_invalidation, "E2FIXTURE", { "/x" })
      assert.is_false(ok)
      assert.are.equal("SignatureDoesNotMatch", err.code)
      assert.are.equal(403, err.status)
      assert.matches("^aws cloudfront create_invalidation E2FIXTURE: HTTP 403 SignatureDoesNotMatch: .* %(check the "
        .. "secret access key for access key id " .. aws_fixture.ACCESS_KEY .. " %(from given%)%)$", err.message)
      assert.not_matches("not%-the%-secret", tostring(err))
    end)

    it("report a server that cannot be reached as an aws error naming the call", function()
      aws.configure({ endpoint_url = "http://127.0.0.1:1", region = "us-east-1", credentials = fx.credentials, retries = 0 })
      local ok, err = pcall(aws.secretsmanager.get_secret, "prod/db")
      assert.is_false(ok)
      assert.are.equal("aws", err.kind)
      assert.are.equal("connect", err.code)
      assert.matches("^aws secretsmanager get_secret prod/db: ", err.message)
    end)

    it("never show the secret key or the session token, even in a failing run's output", function()
      local code = ([[
        aws.configure({ endpoint_url = %q, region = "us-east-1" })
        local c = aws.credentials()
        print("token " .. c.session_token, "secret " .. c.secret_access_key)
        log.info("calling", { secret = c.secret_access_key })
        aws.secretsmanager.get_secret("prod/db")
      ]]):format(fx.url)
      local r = child.lua(code, { env = aws_env({ HOME = "/nonexistent",
        AWS_ACCESS_KEY_ID = aws_fixture.ACCESS_KEY, AWS_SECRET_ACCESS_KEY = "leaky-secret-key-abc123",
        AWS_SESSION_TOKEN = "leaky-session-token-xyz789" }) })
      assert.are.equal(1, r.code)
      assert.matches("token %*%*%*\tsecret %*%*%*", r.stdout)
      assert.matches("InvalidSignatureException", r.stderr)
      assert.not_matches("leaky", r.stdout .. r.stderr)
    end)
  end)
end)
