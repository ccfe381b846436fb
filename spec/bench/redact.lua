-- Secret redaction over a large output: 20 secrets registered, 10 MB of text shaped like
-- what tug writes (JSON event lines with escapes, log lines, URLs), masked as one string
-- (log.redact) and as a stream of 4 KB writes to stdout (what io.write does), which the
-- caller sends to /dev/null. Prints the cost of each.
--   tug lua spec/bench/redact.lua [MEGABYTES] [SECRETS] > /dev/null
local megabytes = tonumber(arg[1]) or 10
local count = tonumber(arg[2]) or 20

math.randomseed(42)
local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_/+=\"\\&%"
local function random_text(n)
  local out = {}
  for i = 1, n do
    local k = math.random(#alphabet)
    out[i] = alphabet:sub(k, k)
  end
  return table.concat(out)
end

local secrets = {}
for i = 1, count do
  secrets[i] = random_text(24)
  log.secret(secrets[i])
end

local lines = {
  '{"event":"step_end","index":3,"name":"deploy idle colour","status":"ok","duration":1.25,"state":{"idle":"green","image":"registry.example.com/api:v2.3.1"},"time":"2026-12-08T01:59:43.694Z"}\n',
  '2026-12-08T01:59:43.694Z INFO rollout progressing deployment=api ready=3/5 message="Waiting for \\"api\\" to roll out"\n',
  'GET https://api.example.com/v1/items?page=2&limit=50&filter=status%3Dactive%26owner%3Dteam-a: HTTP 503: upstream unavailable\n',
  '01:59:43 [4/9] verify health: ok (2.3s)\n',
}
local parts, size, i = {}, 0, 0
while size < megabytes * 1024 * 1024 do
  i = i + 1
  local line = lines[i % #lines + 1]
  if i % 5000 == 0 then line = "leaked " .. secrets[i % count + 1] .. "\n" end
  parts[#parts + 1] = line
  size = size + #line
end
local text = table.concat(parts)

local t0 = time.monotonic()
local masked = log.redact(text)
local whole = time.monotonic() - t0
assert(not masked:find(secrets[1], 1, true))

t0 = time.monotonic()
for at = 1, #text, 4096 do io.stdout:write(text:sub(at, at + 4095)) end
io.stdout:flush()
local stream = time.monotonic() - t0

io.stderr:write(string.format("redact %.1f MB with %d secrets: log.redact %.3f s (%.0f MB/s); 4 KB writes to stdout %.3f s\n",
  #text / 1048576, count, whole, #text / 1048576 / whole, stream))
