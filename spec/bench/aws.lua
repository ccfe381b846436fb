-- aws.lua (bench): aws.s3.sync against `aws s3 sync` (/usr/bin/aws), both to the same s3rver
-- (which verifies signatures), side by side: a first sync of SMALL small files and LARGE
-- large ones (multipart), then a second sync with nothing changed, then one with one file
-- changed. Figures are printed, never asserted.
--
--   tug lua spec/bench/aws.lua [SMALL] [LARGE] [LARGE_MIB]
package.path = "spec/support/?.lua;" .. package.path

local aws = require("aws")
local exec = require("exec")
local s3rver = require("s3rver")
local time = require("time")

local small_count = tonumber(arg and arg[1]) or 500
local large_count = tonumber(arg and arg[2]) or 3
local large_mib = tonumber(arg and arg[3]) or 20

local function write(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

local server = s3rver.start({ buckets = { "bench" } })
local dir = exec.run({ "mktemp", "-d", "/tmp/tug-bench-aws.XXXXXX" }, { check = true }).stdout:gsub("%s+$", "")

local ok, err = pcall(function()
  local total = 0
  for i = 1, small_count do
    local sub = ("%s/site/pages/%02d"):format(dir, i % 20)
    if i <= 20 then exec.run({ "mkdir", "-p", sub }, { check = true }) end
    local body = ("<html><body>page %d %s</body></html>\n"):format(i, ("lorem ipsum "):rep(i % 200))
    write(("%s/page-%04d.html"):format(sub, i), body)
    total = total + #body
  end
  exec.run({ "mkdir", "-p", dir .. "/site/media" }, { check = true })
  local block = {}
  for i = 1, 65536 do block[i] = string.char(i % 251) end
  block = table.concat(block)
  for i = 1, large_count do
    local f = assert(io.open(("%s/site/media/video-%d.bin"):format(dir, i), "wb"))
    for j = 1, large_mib * 16 do f:write(("%08d%08d"):format(i, j), block:sub(17)) end
    f:close()
    total = total + large_mib * 1024 * 1024
  end
  print(("%d small files and %d x %d MiB files, %.1f MiB in all, to s3rver at %s"):format(small_count, large_count,
    large_mib, total / 1048576, server.url))

  aws.configure({ endpoint_url = server.url, region = "us-east-1",
    credentials = { access_key_id = s3rver.ACCESS_KEY, secret_access_key = s3rver.SECRET_KEY } })

  local function tug_sync()
    local t0 = time.monotonic()
    local r = aws.s3.sync(dir .. "/site", "s3://bench/tug", { delete = true })
    return time.monotonic() - t0, ("%d uploaded, %d unchanged"):format(r.uploaded, r.skipped)
  end
  local function cli_sync()
    local t0 = time.monotonic()
    local r = server:cli({ "s3", "sync", "--no-progress", "--only-show-errors", "--delete", dir .. "/site",
      "s3://bench/cli" }, { timeout = 600 })
    assert(r.code == 0, r.stderr)
    return time.monotonic() - t0, ""
  end

  local rows = {}
  local function run(label, prepare)
    if prepare then prepare() end
    local tt, tnote = tug_sync()
    local ct = cli_sync()
    rows[#rows + 1] = { label, tt, ct, tnote }
  end
  run("first sync (everything)")
  run("second sync (nothing changed)")
  run("one file changed", function()
    write(dir .. "/site/pages/01/page-0001.html", "<html>changed</html>\n")
  end)

  print(("%-32s %12s %14s   %s"):format("", "tug", "aws s3 sync", "tug did"))
  for _, r in ipairs(rows) do
    print(("%-32s %10.2f s %12.2f s   %s"):format(r[1], r[2], r[3], r[4]))
  end
end)

server:stop()
exec.run({ "rm", "-rf", dir })
if not ok then error(err, 0) end
