-- aws_s3_spec.lua: aws.s3 against a real S3 server, @20minutes/s3rver, which verifies SigV4
-- signatures (a wrong secret gets 403 SignatureDoesNotMatch). What tug writes is read back
-- with the AWS CLI (/usr/bin/aws), an independent client. Covers put/get/head/list/delete,
-- presigned URLs, multipart uploads, sync (changes only, deletes, exclusions, content types,
-- cache control) and plan mode.
package.path = "spec/support/?.lua;" .. package.path

local aws = require("aws")
local core = require("aws.core")
local exec = require("exec")
local http = require("http")
local s3rver = require("s3rver")

local CREDS = { access_key_id = s3rver.ACCESS_KEY, secret_access_key = s3rver.SECRET_KEY }

local function write_file(path, data)
  local dir = path:match("^(.*)/[^/]+$")
  if dir then exec.run({ "mkdir", "-p", dir }, { check = true }) end
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("a")
  f:close()
  return data
end

-- n bytes that differ from block to block, so a misplaced part would show.
local function big_data(n)
  local block = {}
  for i = 1, 4096 do block[i] = string.char((i * 7) % 251) end
  block = table.concat(block)
  local parts, size, i = {}, 0, 0
  while size < n do
    i = i + 1
    local piece = ("%08d"):format(i) .. block:sub(9)
    parts[#parts + 1] = piece
    size = size + #piece
  end
  return table.concat(parts):sub(1, n)
end

describe("aws.s3 against s3rver", function()
  local server, tmp

  setup(function()
    server = s3rver.start({ buckets = { "site", "data" } })
    tmp = exec.run({ "mktemp", "-d", "/tmp/tug-aws-s3.XXXXXX" }, { check = true }).stdout:gsub("%s+$", "")
  end)
  teardown(function()
    aws.configure({})
    tug.plan.set(false)
    if server then server:stop() end
    if tmp then exec.run({ "rm", "-rf", tmp }) end
  end)
  before_each(function()
    aws.configure({ endpoint_url = server.url, region = "us-east-1", credentials = CREDS })
  end)

  describe("objects", function()
    it("puts an object that the AWS CLI reads back, with its content type, cache control and metadata", function()
      local r = aws.s3.put("s3://data/reports/2026/summary.txt", "all systems nominal\n", {
        content_type = "text/plain; charset=utf-8", cache_control = "max-age=60", metadata = { Owner = "sre" },
      })
      assert.are.equal(core.digest("md5", "all systems nominal\n"), r.etag)
      assert.are.equal(20, r.size)
      local cli = server:cli({ "s3", "cp", "s3://data/reports/2026/summary.txt", "-" })
      assert.are.equal(0, cli.code, cli.stderr)
      assert.are.equal("all systems nominal\n", cli.stdout)
      local head = server:cli({ "s3api", "head-object", "--bucket", "data", "--key", "reports/2026/summary.txt" })
      local meta = require("json").decode(head.stdout)
      assert.are.equal("text/plain; charset=utf-8", meta.ContentType)
      assert.are.equal("max-age=60", meta.CacheControl)
      assert.are.equal("sre", meta.Metadata.owner)
    end)

    it("gets, heads and deletes objects whose keys need encoding", function()
      local url = "s3://data/menus/café du jour (v2)+more.txt"
      aws.s3.put(url, "soupe à l'oignon")
      local body, info = aws.s3.get(url)
      assert.are.equal("soupe à l'oignon", body)
      assert.are.equal(#"soupe à l'oignon", info.size)
      assert.are.equal(core.digest("md5", body), info.etag)
      local head = aws.s3.head(url)
      assert.are.equal(info.etag, head.etag)
      assert.is_true(aws.s3.delete(url))
      assert.is_nil(aws.s3.head(url))
    end)

    it("streams a get into a file", function()
      aws.s3.put("s3://data/blob.bin", big_data(300000))
      local body, info = aws.s3.get("s3://data/blob.bin", { file = tmp .. "/blob.bin" })
      assert.is_nil(body)
      assert.are.equal(300000, info.size)
      assert.are.equal(big_data(300000), read_file(tmp .. "/blob.bin"))
    end)

    it("raises NoSuchKey for a missing object, and leaves no file behind", function()
      local ok, err = pcall(aws.s3.get, "s3://data/nope.txt")
      assert.is_false(ok)
      assert.are.equal("aws", err.kind)
      assert.are.equal("NoSuchKey", err.code)
      assert.are.equal(404, err.status)
      assert.are.equal("aws s3 get s3://data/nope.txt: HTTP 404 NoSuchKey: The specified key does not exist.", err.message)
      ok, err = pcall(aws.s3.get, "s3://data/nope.txt", { file = tmp .. "/nope.txt" })
      assert.are.equal("NoSuchKey", err.code)
      assert.is_nil(io.open(tmp .. "/nope.txt"))
      assert.is_nil(io.open(tmp .. "/nope.txt.part"))
    end)

    it("lists every page of a prefix, and common prefixes with a delimiter", function()
      for i = 1, 5 do aws.s3.put(("s3://data/list/item-%d.txt"):format(i), "x" .. i) end
      aws.s3.put("s3://data/list/sub/deeper.txt", "y")
      local objects = aws.s3.list("s3://data/list/", { page_size = 2 })
      assert.are.equal(6, #objects)
      assert.are.equal("list/item-1.txt", objects[1].key)
      assert.are.equal(2, objects[1].size)
      assert.are.equal(core.digest("md5", "x1"), objects[1].etag)
      local top, prefixes = aws.s3.list("s3://data/list/", { delimiter = "/" })
      assert.are.equal(5, #top)
      assert.are.same({ "list/sub/" }, prefixes)
      assert.are.equal(3, #aws.s3.list("s3://data/list/", { limit = 3, page_size = 2 }))
    end)

    it("deletes many objects at once", function()
      for i = 1, 3 do aws.s3.put(("s3://data/batch/%d"):format(i), "z") end
      assert.are.equal(3, aws.s3.delete_many("s3://data", { "batch/1", "batch/2", "batch/3" }))
      assert.are.equal(0, #aws.s3.list("s3://data/batch/"))
    end)

    it("uploads a large file in parts that read back identical", function()
      local data = big_data(17 * 1024 * 1024 + 12345)
      write_file(tmp .. "/big.bin", data)
      local r = aws.s3.put("s3://data/big/video.bin", nil, { file = tmp .. "/big.bin", content_type = "video/mp4" })
      assert.is_true(r.multipart)
      assert.are.equal(3, r.parts)
      assert.are.equal(#data, r.size)
      local cli = server:cli({ "s3", "cp", "s3://data/big/video.bin", tmp .. "/big.back" })
      assert.are.equal(0, cli.code, cli.stderr)
      assert.are.equal(core.digest("md5", data), core.file_digest(tmp .. "/big.back", "md5"))
      assert.are.equal("video/mp4", aws.s3.head("s3://data/big/video.bin").content_type)
    end)

    it("makes presigned URLs that work without credentials, and not once tampered with", function()
      aws.s3.put("s3://data/shared/report.csv", "a,b\n1,2\n")
      local url = aws.s3.presign("s3://data/shared/report.csv", { expires = "10m" })
      local r = http.get(url)
      assert.are.equal(200, r.status)
      assert.are.equal("a,b\n1,2\n", r.body)
      local tampered = url:gsub("report%.csv", "report.CSV")
      assert.are.equal(403, http.get(tampered).status)
      local put_url = aws.s3.presign("s3://data/shared/upload.txt", { method = "PUT" })
      assert.are.equal(200, http.put(put_url, { body = "uploaded" }).status)
      assert.are.equal("uploaded", (aws.s3.get("s3://data/shared/upload.txt")))
    end)

    it("turns a wrong secret key into a clear, structured error", function()
      aws.configure({ endpoint_url = server.url, region = "us-east-1",
        credentials = { access_key_id = "S3RVER", secret_access_key = "wrong-secret-key-42" } })
      local ok, err = pcall(aws.s3.put, "s3://data/denied.txt", "nope")
      assert.is_false(ok)
      assert.are.equal("aws", err.kind)
      assert.are.equal("SignatureDoesNotMatch", err.code)
      assert.are.equal(403, err.status)
      assert.are.equal("data", err.bucket)
      assert.matches("^aws s3 put s3://data/denied%.txt: HTTP 403 SignatureDoesNotMatch: The request signature we "
        .. "calculated does not match the signature you provided%..* %(check the secret access key for access key id", err.message)
      assert.not_matches("wrong%-secret", tostring(err))
    end)

    it("rejects a URL that is not s3://bucket/key", function()
      local ok, err = pcall(function()
        local r = aws.s3.put("https://data/x", "y")
        return r
      end)
      assert.is_false(ok)
      assert.matches("aws_s3_spec.lua:%d+: aws.s3.put: 'https://data/x' is not an s3://bucket/key URL", err)
    end)

    it("records puts and deletes in plan mode and sends nothing", function()
      aws.s3.put("s3://data/plan/keep.txt", "keep")
      tug.plan.set(true)
      tug.plan.take()
      local r = aws.s3.put("s3://data/plan/new.txt", "new", { content_type = "text/plain" })
      aws.s3.delete("s3://data/plan/keep.txt")
      local listed = aws.s3.list("s3://data/plan/") -- reads still run
      local records = tug.plan.take()
      tug.plan.set(false)
      assert.is_true(r.planned)
      assert.are.equal(1, #listed)
      assert.are.same({ "s3 put s3://data/plan/new.txt (3 B, text/plain)", "s3 delete s3://data/plan/keep.txt" },
        { records[1].summary, records[2].summary })
      assert.is_nil(aws.s3.head("s3://data/plan/new.txt"))
      assert.is_not_nil(aws.s3.head("s3://data/plan/keep.txt"))
    end)
  end)

  describe("sync", function()
    local site
    local BIG = 9 * 1024 * 1024 + 7

    setup(function()
      site = tmp .. "/site"
      write_file(site .. "/index.html", "<!doctype html><title>Multiship</title>")
      write_file(site .. "/assets/app.3f9a.js", "console.log('v1')")
      write_file(site .. "/assets/app.3f9a.js.map", "{}")
      write_file(site .. "/assets/style.css", "body{margin:0}")
      write_file(site .. "/assets/logo.svg", "<svg xmlns='http://www.w3.org/2000/svg'/>")
      write_file(site .. "/assets/fonts/inter.woff2", "wOF2fontbytes")
      write_file(site .. "/img/hero.png", "\137PNG\r\n\26\n" .. ("\0"):rep(100))
      write_file(site .. "/data/config.json", "{\"api\":\"/v1\"}")
      write_file(site .. "/docs/menü card.txt", "plat du jour")
      write_file(site .. "/download/installer.bin", big_data(BIG))
      for i = 1, 20 do write_file(("%s/pages/p%02d.html"):format(site, i), "page " .. i) end
    end)

    local OPTIONS = {
      cache_control = { { "*.html", "no-cache" }, { "assets/*", "public, max-age=31536000, immutable" } },
      exclude = { "*.map" },
    }

    local function opts(extra)
      local o = {}
      for k, v in pairs(OPTIONS) do o[k] = v end
      for k, v in pairs(extra or {}) do o[k] = v end
      return o
    end

    it("uploads everything the first time, with content types by extension and cache control by rule", function()
      local r = aws.s3.sync(site, "s3://site/app", opts())
      assert.are.equal(29, r.uploaded)
      assert.are.equal(0, r.skipped)
      assert.are.equal(0, r.deleted)
      local expected_bytes = 0
      for _, f in ipairs(core.walk(site)) do
        if not f.path:match("%.map$") then expected_bytes = expected_bytes + f.size end
      end
      assert.are.equal(expected_bytes, r.bytes)
      assert.is_nil(aws.s3.head("s3://site/app/assets/app.3f9a.js.map"))
      local html = aws.s3.head("s3://site/app/index.html")
      assert.are.equal("text/html; charset=utf-8", html.content_type)
      assert.are.equal("no-cache", html.cache_control)
      local js = aws.s3.head("s3://site/app/assets/app.3f9a.js")
      assert.are.equal("text/javascript; charset=utf-8", js.content_type)
      assert.are.equal("public, max-age=31536000, immutable", js.cache_control)
      assert.are.equal("image/svg+xml", aws.s3.head("s3://site/app/assets/logo.svg").content_type)
      assert.are.equal("font/woff2", aws.s3.head("s3://site/app/assets/fonts/inter.woff2").content_type)
      assert.are.equal("image/png", aws.s3.head("s3://site/app/img/hero.png").content_type)
      assert.are.equal("application/json", aws.s3.head("s3://site/app/data/config.json").content_type)
      assert.is_nil(aws.s3.head("s3://site/app/data/config.json").cache_control)
      assert.are.equal("application/octet-stream", aws.s3.head("s3://site/app/download/installer.bin").content_type)
      -- an independent reader sees the same, including the multipart file and the unicode key
      local head = server:cli({ "s3api", "head-object", "--bucket", "site", "--key", "app/assets/style.css" })
      local meta = require("json").decode(head.stdout)
      assert.are.equal("text/css; charset=utf-8", meta.ContentType)
      assert.are.equal("public, max-age=31536000, immutable", meta.CacheControl)
      local cli = server:cli({ "s3", "cp", "s3://site/app/download/installer.bin", tmp .. "/installer.back" })
      assert.are.equal(0, cli.code, cli.stderr)
      assert.are.equal(core.file_digest(site .. "/download/installer.bin", "md5"),
        core.file_digest(tmp .. "/installer.back", "md5"))
      assert.are.equal("plat du jour", server:cli({ "s3", "cp", "s3://site/app/docs/menü card.txt", "-" }).stdout)
    end)

    it("uploads nothing the second time", function()
      local r = aws.s3.sync(site, "s3://site/app", opts())
      assert.are.same({ 0, 29, 0, 0 }, { r.uploaded, r.skipped, r.deleted, r.bytes })
    end)

    it("uploads only the file that changed, even when its size did not", function()
      write_file(site .. "/assets/app.3f9a.js", "console.log('v2')")
      local r = aws.s3.sync(site, "s3://site/app", opts())
      assert.are.same({ "app/assets/app.3f9a.js" }, r.uploads)
      assert.are.equal(1, r.uploaded)
      assert.are.equal(28, r.skipped)
      assert.are.equal("console.log('v2')", (aws.s3.get("s3://site/app/assets/app.3f9a.js")))
    end)

    it("in plan mode lists what it would upload and delete, and changes nothing", function()
      write_file(site .. "/index.html", "<!doctype html><title>Multiship v3</title>")
      aws.s3.put("s3://site/app/old/stale.js", "old")
      local before = aws.s3.head("s3://site/app/index.html").etag
      tug.plan.set(true)
      tug.plan.take()
      local r = aws.s3.sync(site, "s3://site/app", opts({ delete = true }))
      local records = tug.plan.take()
      tug.plan.set(false)
      assert.is_true(r.planned)
      assert.are.same({ 1, 1 }, { r.uploaded, r.deleted })
      local summaries = {}
      for i, rec in ipairs(records) do summaries[i] = rec.summary end
      assert.are.same({
        "s3 put s3://site/app/index.html (42 B, text/html; charset=utf-8)",
        "s3 delete s3://site/app/old/stale.js",
      }, summaries)
      assert.are.equal("Cache-Control: no-cache", records[1].detail)
      assert.are.equal(before, aws.s3.head("s3://site/app/index.html").etag)
      assert.is_not_nil(aws.s3.head("s3://site/app/old/stale.js"))
    end)

    it("with delete = true removes what the directory no longer has, but not excluded keys", function()
      aws.s3.put("s3://site/app/assets/vendor.js.map", "{}") -- excluded: left alone
      exec.run({ "rm", site .. "/data/config.json" }, { check = true })
      local r = aws.s3.sync(site, "s3://site/app", opts({ delete = true }))
      assert.are.equal(1, r.uploaded) -- index.html changed in the previous test
      assert.are.same({ "app/data/config.json", "app/old/stale.js" }, r.deletes)
      assert.are.equal(2, r.deleted)
      assert.is_nil(aws.s3.head("s3://site/app/data/config.json"))
      assert.is_nil(aws.s3.head("s3://site/app/old/stale.js"))
      assert.is_not_nil(aws.s3.head("s3://site/app/assets/vendor.js.map"))
      local ls = server:cli({ "s3", "ls", "--recursive", "s3://site/app/" })
      local count = select(2, ls.stdout:gsub("\n", ""))
      assert.are.equal(28 + 1, count) -- the synced files and the excluded map
    end)

    it("fails clearly for a directory that does not exist", function()
      local ok, err = pcall(aws.s3.sync, tmp .. "/nowhere", "s3://site/app")
      assert.is_false(ok)
      assert.are.equal("LocalFile", err.code)
      assert.matches("cannot read .*/nowhere: No such file or directory", err.message)
    end)
  end)
end)
