-- aws/sync.lua: aws.s3.sync(dir, "s3://bucket/prefix", opts), the frontend deploy. Uploads
-- the files that differ from what the bucket holds (size, then MD5 against the ETag: the
-- plain MD5 for objects put in one piece, the multipart ETag computed with tug's part size
-- for multipart ones), 16 small files at a time and 2 large ones (each in 4 parallel parts),
-- with a content type by extension and the cache control asked for; optionally deletes what
-- the directory no longer has. In plan mode it lists (a read), records each upload and
-- delete, and sends nothing.
--
-- A file whose bytes are unchanged is not uploaded again even if its cache_control or
-- content type option changed (as with `aws s3 sync`); use aws.s3.put to rewrite one.

local client = require("aws.client")
local core = require("aws.core")
local s3 = require("aws.s3")
local task = require("task")

local M = {}

local CONCURRENCY = 16
local LARGE_CONCURRENCY = 2

-- Content types of common web files, by lower-cased extension.
M.CONTENT_TYPES = {
  html = "text/html; charset=utf-8", htm = "text/html; charset=utf-8",
  css = "text/css; charset=utf-8", js = "text/javascript; charset=utf-8",
  mjs = "text/javascript; charset=utf-8", cjs = "text/javascript; charset=utf-8",
  json = "application/json", map = "application/json", webmanifest = "application/manifest+json",
  xml = "application/xml", txt = "text/plain; charset=utf-8", csv = "text/csv; charset=utf-8",
  md = "text/markdown; charset=utf-8",
  svg = "image/svg+xml", png = "image/png", jpg = "image/jpeg", jpeg = "image/jpeg",
  gif = "image/gif", webp = "image/webp", avif = "image/avif", ico = "image/x-icon",
  bmp = "image/bmp",
  woff = "font/woff", woff2 = "font/woff2", ttf = "font/ttf", otf = "font/otf",
  eot = "application/vnd.ms-fontobject",
  pdf = "application/pdf", wasm = "application/wasm", zip = "application/zip",
  gz = "application/gzip", mp4 = "video/mp4", webm = "video/webm", mp3 = "audio/mpeg",
  ogg = "audio/ogg", wav = "audio/wav",
}
M.DEFAULT_CONTENT_TYPE = "application/octet-stream"

local OPTIONS = {
  cache_control = true, content_types = true, delete = true, exclude = true,
  concurrency = true,
}

local function content_type(path, overrides)
  local ext = path:match("%.([^./]+)$")
  ext = ext and ext:lower()
  return ext and (overrides and overrides[ext] or M.CONTENT_TYPES[ext]) or M.DEFAULT_CONTENT_TYPE
end

-- cache_control: a string for every file; a function(path) -> string or nil; or a list of
-- { glob, value } pairs where the first glob that matches the relative path wins.
local function cache_control(rule, path)
  if rule == nil or type(rule) == "string" then return rule end
  if type(rule) == "function" then return rule(path) end
  for _, pair in ipairs(rule) do
    if core.fnmatch(pair[1], path) then return pair[2] end
  end
end

local function check_options(opts, caller)
  local cc = opts.cache_control
  if cc ~= nil and type(cc) ~= "string" and type(cc) ~= "function" and type(cc) ~= "table" then
    error(caller .. ": cache_control must be a string, a function(path) or a list of { glob, value }", 0)
  end
  if type(cc) == "table" then
    for i, pair in ipairs(cc) do
      if type(pair) ~= "table" or type(pair[1]) ~= "string" or type(pair[2]) ~= "string" then
        error(("%s: cache_control[%d] must be a { glob, value } pair of strings"):format(caller, i), 0)
      end
    end
  end
  if opts.content_types ~= nil and type(opts.content_types) ~= "table" then
    error(caller .. ": content_types must be a table extension -> type", 0)
  end
  local exclude = opts.exclude
  if type(exclude) == "string" then exclude = { exclude } end
  if exclude ~= nil then
    if type(exclude) ~= "table" then error(caller .. ": exclude must be a list of glob patterns", 0) end
    for i, p in ipairs(exclude) do
      if type(p) ~= "string" then error(("%s: exclude[%d] must be a string"):format(caller, i), 0) end
    end
  end
  local n = opts.concurrency or CONCURRENCY
  if math.type(n) ~= "integer" or n < 1 then error(caller .. ": concurrency must be a positive integer", 0) end
  return exclude or {}, n
end

local function excluded(patterns, path)
  for _, p in ipairs(patterns) do
    if core.fnmatch(p, path) then return true end
  end
  return false
end

-- The ETag S3 would give this file: the MD5, or for a multipart ETag ("...-N") the MD5 of
-- the parts' MD5s with tug's part size (what aws.s3.put and the AWS CLI's defaults make).
local function local_etag(path, size, remote_etag)
  local parts = remote_etag and remote_etag:match("%-(%d+)$")
  if not parts then return (core.file_digest(path, "md5")) end
  local part_size = s3.PART_SIZE
  local n = math.max(1, math.ceil(size / part_size))
  if n ~= tonumber(parts) then return nil end
  local raw = {}
  for i = 1, n do
    local d = core.file_digest(path, "md5", "raw", (i - 1) * part_size, part_size)
    if not d then return nil end
    raw[i] = d
  end
  return core.digest("md5", table.concat(raw)) .. "-" .. n
end

function M.run(dir, url, opts)
  local caller = "aws.s3.sync"
  if type(dir) ~= "string" or dir == "" then error(caller .. ": dir must be a directory path", 2) end
  local bucket, prefix = s3.parse_url(url, caller, false)
  local settings = client.settings(opts, OPTIONS, caller)
  opts = opts or {}
  local exclude, concurrency = check_options(opts, caller)
  if prefix ~= "" and prefix:sub(-1) ~= "/" then prefix = prefix .. "/" end
  local what = ("s3 sync %s -> %s"):format(dir, url)

  local files, err = core.walk(dir)
  if not files then
    error(tug.error.new("aws", ("aws %s: cannot read %s"):format(what, err), { code = "LocalFile" }), 0)
  end
  local wanted = {}
  local locals = {}
  for _, f in ipairs(files) do
    if not excluded(exclude, f.path) then
      f.key = prefix .. f.path
      locals[#locals + 1] = f
      wanted[f.key] = true
    end
  end
  table.sort(locals, function(a, b) return a.path < b.path end)

  local remote = {}
  local listing = s3.list("s3://" .. bucket .. "/" .. prefix, settings)
  for _, o in ipairs(listing) do remote[o.key] = o end

  local result = { uploaded = 0, skipped = 0, deleted = 0, bytes = 0, uploads = {}, deletes = {} }
  local small, large = {}, {}
  for _, f in ipairs(locals) do
    local r = remote[f.key]
    local same = r and r.size == f.size and r.etag and local_etag(dir .. "/" .. f.path, f.size, r.etag) == r.etag
    if same then
      result.skipped = result.skipped + 1
    else
      f.content_type = content_type(f.path, opts.content_types)
      f.cache_control = cache_control(opts.cache_control, f.path)
      if f.size > s3.MULTIPART_THRESHOLD then large[#large + 1] = f else small[#small + 1] = f end
      result.uploads[#result.uploads + 1] = f.key
      result.uploaded = result.uploaded + 1
      result.bytes = result.bytes + f.size
    end
  end
  if opts.delete then
    for _, o in ipairs(listing) do
      local rel = o.key:sub(#prefix + 1)
      if not wanted[o.key] and not excluded(exclude, rel) then
        result.deletes[#result.deletes + 1] = o.key
      end
    end
    result.deleted = #result.deletes
  end

  if tug.plan.active() then
    for _, list in ipairs({ small, large }) do
      for _, f in ipairs(list) do
        tug.plan.record("aws", ("s3 put s3://%s/%s (%s, %s)"):format(bucket, f.key, s3.human_size(f.size),
          f.content_type), f.cache_control and ("Cache-Control: " .. f.cache_control) or nil)
      end
    end
    for _, key in ipairs(result.deletes) do
      tug.plan.record("aws", ("s3 delete s3://%s/%s"):format(bucket, key))
    end
    result.planned = true
    return result
  end

  local function upload(f)
    local headers = { ["Content-Type"] = f.content_type, ["Cache-Control"] = f.cache_control }
    s3.upload_file(settings, bucket, f.key, dir .. "/" .. f.path, f.size, headers,
      ("s3 put s3://%s/%s"):format(bucket, f.key))
  end
  local jobs = {}
  if #small > 0 then
    jobs[#jobs + 1] = function() s3.pool(#small, concurrency, function(i) upload(small[i]) end) end
  end
  if #large > 0 then
    jobs[#jobs + 1] = function() s3.pool(#large, LARGE_CONCURRENCY, function(i) upload(large[i]) end) end
  end
  if #jobs > 0 then task.parallel(jobs) end
  if #result.deletes > 0 then
    s3.delete_objects(settings, bucket, result.deletes, what .. " (delete)")
  end
  return result
end

return M
