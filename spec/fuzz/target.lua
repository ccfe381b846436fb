-- target.lua: the in-process half of the parser fuzzer (spec/fuzz/fuzz.py drives it).
--
--   tug lua spec/fuzz/target.lua TARGET
--
-- TARGET is yaml, json, environment, kubeconfig or playbook: reads inputs from stdin, each
-- framed as 8 hex digits of length and the bytes, runs the parser on each and answers one
-- line: "ok" (accepted), "rejected" (refused with a proper error) or "bug MESSAGE" (an
-- invariant broke: a round trip that changes the value, an error that is not the parser's
-- own). A crash, a sanitizer report or a hang ends the process; the driver, which saw the
-- input go out, keeps it.
--
-- TARGET http serves http.server on 127.0.0.1 (printing "listening PORT") and answers
-- every request with what it parsed, as JSON; the driver sends the mutated bytes.

local target = arg[1]
local tmp = os.getenv("TUG_FUZZ_TMP") or "/tmp"
local environment = require("tug.environment")
local playbooks = require("tug.playbooks")
local kubeconfig = require("k8s.kubeconfig")

-- Two decoded values are the same: markers ([] and {}), integer or float, NaN included.
local function same(a, b, seen)
  if type(a) == "number" and type(b) == "number" then
    return math.type(a) == math.type(b) and (a == b or (a ~= a and b ~= b))
  end
  if type(a) ~= "table" or type(b) ~= "table" then return a == b end
  seen = seen or {}
  if seen[a] == b then return true end
  seen[a] = b
  if getmetatable(a) ~= getmetatable(b) then return false end
  local unmatched = 0
  for k, v in pairs(a) do
    unmatched = unmatched + 1
    if not same(v, b[k], seen) then return false end
  end
  for _ in pairs(b) do unmatched = unmatched - 1 end
  return unmatched == 0
end

local function message(err)
  if type(err) == "table" and err.message then return err.message end
  return tostring(err)
end

-- An error is the parser's own when it says where and what; a Lua runtime error ("attempt to
-- index a nil value") escaping a loader is a bug.
local function runtime_error(err)
  local m = message(err)
  return type(m) ~= "string" or m:match("attempt to %a+ a") or m:match("stack overflow")
end

package.path = (arg[0]:match("^(.*)/") or ".") .. "/../support/?.lua;" .. package.path
local write = require("fixture").write

-- Runs load(path) on input written at path: accepted, or refused with an error that starts
-- with prefix (and is no Lua runtime error).
local function check_loader(path, input, prefix, load, ...)
  write(path, input)
  local ok, err = pcall(load, ...)
  if ok then return "ok" end
  if runtime_error(err) or message(err):sub(1, #prefix) ~= prefix then return "bug " .. message(err) end
  return "rejected"
end

local checks = {}

function checks.json(input)
  local ok, v = pcall(json.decode, input)
  if not ok then
    if type(v) ~= "string" or not v:match("^json%.decode: ") then return "bug decode error: " .. message(v) end
    return "rejected"
  end
  local ok2, text = pcall(json.encode, v)
  if not ok2 then return "bug a decoded value does not encode: " .. message(text) end
  if not same(v, json.decode(text)) then return "bug the round trip changed the value: " .. text end
  return "ok"
end

function checks.yaml(input)
  local ok, docs = pcall(yaml.decode_all, input, { name = "fuzz.yaml" })
  if not ok then
    if type(docs) ~= "string" or not docs:match("^fuzz%.yaml:%d+:%d+: ") then
      return "bug decode error: " .. message(docs)
    end
    return "rejected"
  end
  for _, doc in ipairs(docs) do
    local encoded, text = pcall(yaml.encode, doc)
    -- Near the alias limit the text is tens of megabytes: reading it back would take most
    -- of the run's time for no new code, so only smaller ones make the round trip.
    if encoded then
      if #text <= 1000000 then
        local back_ok, back = pcall(yaml.decode, text)
        if not back_ok then return "bug yaml.encode wrote what yaml.decode refuses: " .. message(back) end
        if not same(doc, back) then return "bug the round trip changed the value: " .. text end
      end
    elseif type(text) ~= "string" or not text:match("^yaml%.encode: ") then
      return "bug encode error: " .. message(text)
    end
    -- whatever decodes must also be bounded for json.encode (it may refuse, never hang)
    pcall(json.encode, doc)
  end
  return "ok"
end

function checks.environment(input)
  local path = tmp .. "/environments/fuzz.yaml"
  return check_loader(path, input, path, environment.load, "fuzz", { dir = tmp .. "/environments" })
end

function checks.kubeconfig(input)
  local path = tmp .. "/kubeconfig"
  return check_loader(path, input, "kubeconfig: ", kubeconfig.resolve, { kubeconfig = path })
end

function checks.playbook(input)
  local path = tmp .. "/playbooks/fuzz.lua"
  write(path, input)
  local ok, pb, err = pcall(playbooks.load, path)
  if not ok then return "bug playbooks.load raised: " .. message(pb) end
  if pb then return "ok" end
  if type(err) ~= "string" then return "bug playbooks.load gave a " .. type(err) .. " as its error" end
  return "rejected"
end

-- A mutated playbook is Lua that runs: it gets no way to touch anything outside tmp, and a
-- count hook stops a loop that never ends.
local function sandbox_playbooks()
  for _, name in ipairs({ "exec", "http", "k8s", "aws", "pg", "ws", "sim", "notify", "metrics", "health" }) do
    _G[name] = nil
    package.loaded[name] = nil
    package.preload[name] = nil
  end
  for _, name in ipairs({ "execute", "remove", "rename", "exit", "tmpname" }) do os[name] = nil end
  io.popen, io.output = nil, nil
  local open = io.open
  io.open = function(path, mode)
    if mode and mode:match("[wa+]") and not tostring(path):find(tmp, 1, true) then
      error("the fuzzed playbook may not write " .. tostring(path))
    end
    return open(path, mode)
  end
end

local function serve_http()
  local srv = http.server({
    port = 0,
    max_body = 65536,
    idle_timeout = 2,
    handler = function(req)
      return { status = 200, json = { method = req.method, path = req.path, query = req.query,
        headers = req.headers, body = req.body } }
    end,
  })
  print("listening " .. srv.port)
  io.stdout:flush()
end

if target == "http" then
  serve_http()
  return
end
local check = checks[target]
if not check then
  io.stderr:write("target.lua: unknown target '" .. tostring(target) .. "' (yaml, json, environment, kubeconfig, playbook, http)\n")
  os.exit(2)
end
if target == "environment" then
  -- providers that would reach out are replaced: a fuzzed ${secret:aws:...} stays here
  environment.providers.aws = function() return nil, "no aws provider while fuzzing" end
  environment.providers.file = function() return nil, "no file provider while fuzzing" end
end
if target == "playbook" then
  sandbox_playbooks()
end
local stdin, stdout = io.stdin, io.stdout
while true do
  local header = stdin:read(8)
  if header == nil then break end
  local length = tonumber(header, 16)
  -- read(0) would wait for the next byte to tell the end of the file from an empty string
  local input = length > 0 and stdin:read(length) or ""
  local result
  if target == "playbook" then
    debug.sethook(function() error("instruction limit") end, "", 10000000)
    result = check(input)
    debug.sethook()
  else
    result = check(input)
  end
  stdout:write((result:gsub("[\r\n]", " ")), "\n")
  stdout:flush()
end
