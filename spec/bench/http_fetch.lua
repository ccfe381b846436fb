-- http_fetch.lua: tug's HTTP client beside curl --parallel, both fetching the same URLs from
-- a local nginx (spec/support/nginx.lua) with the same number of requests in flight.
-- Prints wall time, requests per second and peak RSS (from /usr/bin/time -v when present).
--
--   tug lua spec/bench/http_fetch.lua [URLS [IN_FLIGHT]]        the comparison (10000, 50)
--   tug lua spec/bench/http_fetch.lua --fetch FILE IN_FLIGHT    tug's half: fetch each URL
--                                                               listed in FILE
package.path = "spec/support/?.lua;" .. package.path

local function read_lines(path)
  local urls = {}
  for line in io.lines(path) do urls[#urls + 1] = line end
  return urls
end

-- tug's half: IN_FLIGHT tasks take URLs from a shared list until it is empty.
local function fetch(file, in_flight)
  local urls = read_lines(file)
  http.configure({ max_host_connections = in_flight })
  local next_url, failures = 0, 0
  local function worker()
    while next_url < #urls do
      next_url = next_url + 1
      local r = http.get(urls[next_url])
      if r.status ~= 200 then failures = failures + 1 end
    end
  end
  local workers = {}
  for i = 1, in_flight do workers[i] = worker end
  local start = time.monotonic()
  task.parallel(workers)
  local took = time.monotonic() - start
  print(("tug fetched %d URLs in %.3f s (%d failed)"):format(#urls, took, failures))
  if failures > 0 then os.exit(1) end
end

local function exists(path)
  local f = io.open(path)
  if f then f:close() end
  return f ~= nil
end

-- Runs argv under /usr/bin/time -v when available; returns seconds and peak RSS in KiB.
local function measure(argv)
  local timed = exists("/usr/bin/time")
  local full = timed and { "/usr/bin/time", "-v" } or {}
  for _, a in ipairs(argv) do full[#full + 1] = a end
  local start = time.monotonic()
  local r = exec.run(full, { timeout = 600 })
  local took = time.monotonic() - start
  if r.code ~= 0 then error(("%s failed: %s%s"):format(argv[1], r.stdout, r.stderr), 0) end
  return took, tonumber(r.stderr:match("Maximum resident set size %(kbytes%): (%d+)"))
end

local function compare(server, count, in_flight)
  local dir = exec.run({ "mktemp", "-d", "/tmp/tug-bench.XXXXXX" }).stdout:gsub("%s+$", "")
  local list, config = dir .. "/urls.txt", dir .. "/curl.cfg"
  local lf, cf = assert(io.open(list, "w")), assert(io.open(config, "w"))
  for i = 1, count do
    local url = ("%s/hello.txt?i=%d"):format(server.url, i)
    lf:write(url, "\n")
    cf:write('url = "', url, '"\noutput = "/dev/null"\n')
  end
  lf:close()
  cf:close()

  print(("== HTTP: %d URLs with %d in flight vs curl --parallel --parallel-max %d"):format(count,
    in_flight, in_flight))
  local rows = {}
  local tug_s, tug_rss = measure({ tug.executable, "lua", "spec/bench/http_fetch.lua", "--fetch",
    list, tostring(in_flight) })
  rows[#rows + 1] = { "tug (http.get in tasks)", tug_s, tug_rss }
  local curl_s, curl_rss = measure({ "curl", "--silent", "--fail", "--parallel", "--parallel-max",
    tostring(in_flight), "--config", config })
  rows[#rows + 1] = { "curl --parallel", curl_s, curl_rss }
  for _, row in ipairs(rows) do
    print(("%-26s %7.3f s  %8.0f req/s  peak RSS %s"):format(row[1], row[2], count / row[2],
      row[3] and ("%.1f MiB"):format(row[3] / 1024) or "n/a"))
  end
  exec.run({ "rm", "-rf", dir })
end

local args = { ... }
if args[1] == "--fetch" then
  fetch(args[2], tonumber(args[3]) or 50)
else
  local server = require("nginx").start()
  local ok, err = pcall(compare, server, tonumber(args[1]) or 10000, tonumber(args[2]) or 50)
  server:stop()
  if not ok then error(err, 0) end
end
