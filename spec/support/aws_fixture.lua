-- aws_fixture.lua: starts spec/support/aws_fixture.py (CloudFront, Secrets Manager and ECR
-- stand-ins that verify every signature with botocore) on a free port.
--
--   local fixture = aws_fixture.start()
--   ... fixture.url ..., fixture:requests() -> what it received
--   fixture:stop()

local exec = require("exec")
local http = require("http")
local json = require("json")
local task = require("task")

local aws_fixture = {}

aws_fixture.ACCESS_KEY = "AKIDFIXTURE0000000001"
aws_fixture.SECRET_KEY = "fixture/secret+key0123456789abcdefghijkl"

local Fixture = {}
Fixture.__index = Fixture

function Fixture:stop()
  if self.proc then
    require("child").stop(self.proc, "aws_fixture.py") -- SIGKILL after 5 s
    self.proc = nil
  end
end

-- Every request received so far: { method, path, headers (lower-case names), body, verified, reason }.
function Fixture:requests()
  return json.decode(http.get(self.url .. "/__requests"):raise().body)
end

function Fixture:last_request()
  local all = self:requests()
  return all[#all]
end

-- opts.access_key, opts.secret_key: the credentials it accepts (default the ones above;
-- s3rver's, for a spec that signs S3 and CloudFront calls with one set).
function aws_fixture.start(opts)
  opts = opts or {}
  local access_key = opts.access_key or aws_fixture.ACCESS_KEY
  local secret_key = opts.secret_key or aws_fixture.SECRET_KEY
  local root = os.getenv("TUG_ROOT") or "."
  local proc = exec.spawn({ "/usr/bin/python3", root .. "/spec/support/aws_fixture.py",
    access_key, secret_key }, { lines = true, kill_grace = 1 })
  local fixture = setmetatable({ proc = proc }, Fixture)
  local ok, port = pcall(require("fixture").wait_for_line, proc, "^listening (%d+)$", "aws_fixture.py")
  if not ok then
    fixture:stop()
    error(port, 0)
  end
  fixture.port = tonumber(port)
  fixture.url = "http://127.0.0.1:" .. port
  fixture.credentials = { access_key_id = access_key, secret_access_key = secret_key }
  return fixture
end

return aws_fixture
