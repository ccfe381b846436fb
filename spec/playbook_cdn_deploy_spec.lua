-- playbook_cdn_deploy_spec.lua: the cdn-deploy playbook, run by the real binary, against
-- S3 served by @20minutes/s3rver (which checks every SigV4 signature) and CloudFront served
-- by spec/support/aws_fixture.py (which checks them with botocore), both reached through
-- the environment's aws.endpoint_url. The "frontend" is a shell script that writes hashed
-- assets; objects are read back with /usr/bin/aws.
package.path = "spec/support/?.lua;" .. package.path
local harness = require("playbook_harness")
local child = require("child")
local s3rver = require("s3rver")
local aws_fixture = require("aws_fixture")

-- app/build.sh writes the assets of $SITE_VERSION into ../dist/static.
local BUILD_SCRIPT = [[
set -e
[ "$(basename "$PWD")" = app ] || { echo "build.sh must run in app/, not $PWD" >&2; exit 3; }
rm -rf ../dist
mkdir -p ../dist/static/chunks ../dist/static/css
echo "console.log('multiship $SITE_VERSION')" > "../dist/static/chunks/main-$SITE_VERSION.js"
echo "body { color: #123; }" > ../dist/static/css/app-4f2a.css
echo '{"version": "'"$SITE_VERSION"'"}' > ../dist/static/build-manifest.json
echo "built $SITE_VERSION"
]]

describe("cdn-deploy playbook", function()
  local s3, cf, h, repo, prefix
  local count = 0

  setup(function()
    s3 = s3rver.start({ buckets = { "site" } })
    cf = aws_fixture.start({ access_key = s3rver.ACCESS_KEY, secret_key = s3rver.SECRET_KEY })
  end)

  teardown(function()
    if cf then cf:stop() end
    if s3 then s3:stop() end
  end)

  -- The environment's cdn: and aws: sections; opts override fields.
  local function write_env(opts)
    opts = opts or {}
    h:write_env(string.format([[
aws:
  region: us-east-1
  endpoint_url: { s3: %s, cloudfront: %s }
cdn:
  build:
    command: %s
    env: { SITE_VERSION: %s }
    dir: app
    output: dist/static
  bucket: %s
  prefix: %s
  cache_control: max-age=31536000
  distribution_id: %s
]], s3.url, cf.url, opts.command or "[sh, build.sh]", opts.version or "v1", opts.bucket or "site", prefix,
      opts.distribution or "E2FIXTURE"))
  end

  before_each(function()
    count = count + 1
    prefix = "static-" .. count -- each test its own part of the bucket
    h = harness.new()
    repo = h.dir .. "/web"
    exec.run({ "mkdir", "-p", repo .. "/app" }, { check = true })
    local f = assert(io.open(repo .. "/app/build.sh", "w"))
    f:write(BUILD_SCRIPT)
    f:close()
    write_env()
  end)

  after_each(function() h:close() end)

  local AWS_ENV = {
    AWS_ACCESS_KEY_ID = s3rver.ACCESS_KEY, AWS_SECRET_ACCESS_KEY = s3rver.SECRET_KEY, AWS_SESSION_TOKEN = false,
    AWS_PROFILE = false, AWS_CONFIG_FILE = "/dev/null", AWS_SHARED_CREDENTIALS_FILE = "/dev/null",
    AWS_ENDPOINT_URL = false, AWS_ENDPOINT_URL_S3 = false, AWS_ENDPOINT_URL_CLOUDFRONT = false,
  }

  local function run_tug(args)
    local argv = { args[1], "cdn-deploy", "repo=" .. repo, "wait_interval=100ms" }
    for i = 2, #args do argv[#argv + 1] = args[i] end
    return h:tug(argv, { env = AWS_ENV })
  end

  -- The keys under this test's prefix, sorted (read with s3rver's own credentials).
  local function keys()
    local objects = aws.s3.list("s3://site/" .. prefix .. "/", { endpoint_url = s3.url,
      credentials = { access_key_id = s3rver.ACCESS_KEY, secret_access_key = s3rver.SECRET_KEY } })
    local list = {}
    for i, o in ipairs(objects) do list[i] = o.key:sub(#prefix + 2) end
    table.sort(list)
    return list
  end

  local function invalidations()
    local posts = {}
    for _, req in ipairs(cf:requests()) do
      if req.method == "POST" then posts[#posts + 1] = req end
    end
    return posts
  end

  it("builds, uploads with a year-long Cache-Control, invalidates and waits; a second run uploads nothing", function()
    local before = #invalidations()
    local r = run_tug({ "run" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local e = h:run_end(r)
    assert.are.equal("succeeded", e.status)
    assert.are.same({ "build-manifest.json", "chunks/main-v1.js", "css/app-4f2a.css" }, keys())
    -- read back by an independent client
    local head = s3:cli({ "s3api", "head-object", "--bucket", "site", "--key", prefix .. "/chunks/main-v1.js" })
    assert.are.equal(0, head.code, head.stderr)
    local info = json.decode(head.stdout)
    assert.are.equal("max-age=31536000", info.CacheControl)
    assert.matches("^text/javascript", info.ContentType)
    local posts = invalidations()
    assert.are.equal(before + 1, #posts)
    assert.is_true(posts[#posts].verified, posts[#posts].reason)
    assert.matches("<Path>/%*</Path>", posts[#posts].body)
    local state = h:events(r, "step_end")[5].state
    assert.are.equal(3, state.files)
    assert.are.equal(3, state.uploaded)
    assert.matches("^I%d+FIXTURE$", state.invalidation)

    r = run_tug({ "run" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    state = h:events(r, "step_end")[5].state
    assert.are.equal(0, state.uploaded)
    assert.are.equal(3, state.unchanged)
  end)

  it("fails with the build's stderr when the build fails, and uploads nothing", function()
    write_env({ command = "[sh, -c, \"echo 'src/app.tsx(3,7): error TS2322: Type string is not assignable' >&2; " ..
      "exit 2\"]" })
    local before = #invalidations()
    local r = run_tug({ "run" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    local e = h:run_end(r)
    assert.are.equal("failed", e.status)
    assert.matches('step "build the frontend" failed: the build (sh -c echo', e.reason, 1, true)
    assert.matches("exited with code 2:\nsrc/app.tsx(3,7): error TS2322", e.reason, 1, true)
    assert.are.same({}, keys())
    assert.are.equal(before, #invalidations())
  end)

  it("fails naming the bucket when it does not exist, and invalidates nothing", function()
    write_env({ bucket = "no-such-bucket" })
    local before = #invalidations()
    local r = run_tug({ "run" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    local e = h:run_end(r)
    assert.matches('step "upload the static assets to S3" failed: ', e.reason, 1, true)
    assert.matches("no%-such%-bucket.*NoSuchBucket", e.reason)
    assert.are.equal(before, #invalidations())
  end)

  it("fails when the invalidation is refused, leaving the uploaded assets in place", function()
    write_env({ distribution = "ENOSUCH" })
    local r = run_tug({ "run" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    local e = h:run_end(r)
    assert.are.equal("failed", e.status) -- nothing to undo: the hashed assets are harmless
    assert.matches('"invalidate the CloudFront cache" failed: .*ENOSUCH: HTTP 404 NoSuchDistribution', e.reason)
    assert.are.equal(3, #keys())
  end)

  it("fails when the invalidation does not complete in time", function()
    local r = run_tug({ "run", "wait_timeout=0s" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches('"wait for the invalidation to complete" failed: aws cloudfront wait_invalidation E2FIXTURE ' ..
      'I%d+FIXTURE: still InProgress after', h:run_end(r).reason)
  end)

  it("plans the uploads and the invalidation and sends neither", function()
    local before = #cf:requests()
    local r = run_tug({ "plan" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("planned", h:run_end(r).status)
    local changes = h:changes(r)
    for _, key in ipairs({ "build-manifest.json", "chunks/main-v1.js", "css/app-4f2a.css" }) do
      assert.matches("aws: s3 put s3://site/" .. prefix .. "/" .. key, changes, 1, true)
    end
    assert.matches("aws: cloudfront invalidate /* on E2FIXTURE", changes, 1, true)
    local puts = 0
    for _ in changes:gmatch("s3 put") do puts = puts + 1 end
    assert.are.equal(3, puts)
    assert.are.same({}, keys())
    assert.are.equal(before, #cf:requests())
  end)

  it("with delete=true removes what the build no longer has, after the invalidation", function()
    assert.are.equal(0, run_tug({ "run" }).code)
    write_env({ version = "v2" })
    local r = run_tug({ "run" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    -- by default, old assets stay for the pages that still refer to them
    assert.are.same({ "build-manifest.json", "chunks/main-v1.js", "chunks/main-v2.js", "css/app-4f2a.css" }, keys())
    r = run_tug({ "plan", "delete=true" })
    assert.matches("aws: s3 delete 1 object from s3://site", h:changes(r), 1, true)
    assert.are.equal(4, #keys())
    r = run_tug({ "run", "delete=true" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.same({ "build-manifest.json", "chunks/main-v2.js", "css/app-4f2a.css" }, keys())
    local order = {}
    for _, e in ipairs(h:events(r, "step_end")) do order[#order + 1] = e.name .. ":" .. e.status end
    assert.are.same({ "build the frontend:ok", "check the build output:ok", "upload the static assets to S3:ok",
      "invalidate the CloudFront cache:ok", "wait for the invalidation to complete:ok",
      "remove assets the build no longer has:ok" }, order)
  end)

  it("with build=false uploads the output as it is, and fails naming cdn.build.output when there is none", function()
    local r = run_tug({ "run", "build=false" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches('step "check the build output" failed: the build output ' .. repo .. "/dist/static " ..
      "(cdn.build.output) cannot be read", h:run_end(r).reason, 1, true)
    exec.run({ "sh", "build.sh" }, { cwd = repo .. "/app", env = { SITE_VERSION = "v9" }, check = true })
    r = run_tug({ "run", "build=false" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("skipped", h:events(r, "step_end")[1].status)
    assert.are.same({ "build-manifest.json", "chunks/main-v9.js", "css/app-4f2a.css" }, keys())
  end)

  it("says which cdn setting is missing", function()
    h:write_env("cdn:\n  build: { command: [sh, build.sh], output: dist/static }\n")
    local r = run_tug({ "run" })
    assert.are.equal(1, r.code)
    assert.matches("the sim environment's cdn.bucket must name the S3 bucket", h:run_end(r).reason, 1, true)
  end)

  it("resumes a run killed with -9 while it waits, waiting for the same invalidation", function()
    local env = { CI = "true", TUG_ENVIRONMENTS = h.dir .. "/environments", TUG_HOME = h.dir .. "/.tug" }
    for k, v in pairs(AWS_ENV) do env[k] = v end
    local before = #invalidations()
    local proc = exec.spawn({ child.tug, "run", "cdn-deploy", "repo=" .. repo, "wait_interval=30s", "--env", "sim",
      "--playbooks", harness.ROOT .. "/playbooks", "--output", "json" }, { env = env, timeout = 60 })
    local run_id, journal
    local waiting = require("project").wait_for(function()
      local list = tug.sys.listdir(h.dir .. "/.tug/runs") or {}
      if not list[1] then return false end
      journal = h.dir .. "/.tug/runs/" .. list[1].name
      local f = io.open(journal)
      local text = f and f:read("a") or ""
      if f then f:close() end
      run_id = list[1].name:match("^(.+)%.jsonl$")
      return text:find('"name":"wait for the invalidation to complete"', 1, true) ~= nil
        and #cf:requests() > 0 and cf:requests()[#cf:requests()].method == "GET"
    end, 20)
    proc:kill("KILL")
    proc:wait()
    proc:close()
    assert.is_true(waiting, "the run never reached the wait")
    local r = exec.run({ child.tug, "resume", run_id, "--playbooks", harness.ROOT .. "/playbooks", "--output", "json" },
      { env = env, timeout = 60 })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("succeeded", h:run_end(r).status)
    local resumed = h:events(r, "run_resume")[1]
    assert.are.equal(5, resumed.resumed_from)
    assert.are.equal(before + 1, #invalidations()) -- the resumed run created no second one
    assert.are.equal(3, #keys())
  end)
end)
