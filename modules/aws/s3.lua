-- aws/s3.lua: S3 objects over the REST API, signed with SigV4: put (multipart for large
-- files), get (into memory or streamed to a file), head, list (ListObjectsV2, every page),
-- delete and batch delete, presigned URLs. aws.s3.sync is in aws/sync.lua.
--
-- Objects are named by URLs: "s3://bucket/key". Keys are used as written (no decoding) and
-- percent-encoded once on the wire. Virtual-hosted URLs (bucket.s3.REGION.amazonaws.com)
-- are the default; path-style URLs are used when asked (path_style = true, or
-- `s3 = addressing_style = path` in the profile), for custom endpoints that are an IP
-- address or localhost, and for buckets with dots over https (their certificates would
-- not match).

local client = require("aws.client")
local core = require("aws.core")
local credentials = require("aws.credentials")
local log = require("log")
local task = require("task")
local xml = require("aws.xml")

local s3 = {}

s3.MULTIPART_THRESHOLD = 8 * 1024 * 1024 -- files larger than this go up in parts
s3.PART_SIZE = 8 * 1024 * 1024
s3.PART_CONCURRENCY = 4
local DELETE_BATCH = 1000 -- DeleteObjects takes at most 1000 keys
local TRANSFER_TIMEOUT = 600 -- seconds for one object or part, unless settings.timeout says
local PRESIGN_MAX = 7 * 24 * 3600

-- ---- names and addresses ----

-- "s3://bucket/some/key" -> "bucket", "some/key" (key may be "" unless need_key).
function s3.parse_url(url, caller, need_key)
  if type(url) ~= "string" then
    error(("%s: want an s3://bucket/key URL (got %s)"):format(caller, type(url)), 0)
  end
  local bucket, key = url:match("^s3://([^/]+)/?(.*)$")
  if not bucket or not bucket:match("^[%w][%w%.%-_]*[%w]$") then
    error(("%s: '%s' is not an s3://bucket/key URL"):format(caller, url), 0)
  end
  if need_key and key == "" then
    error(("%s: '%s' names a bucket; want s3://bucket/key"):format(caller, url), 0)
  end
  return bucket, key
end

local function path_style(settings, bucket, scheme, host, custom)
  if settings.path_style ~= nil then return settings.path_style end
  local profile_s3 = credentials.profile_setting(settings, "s3")
  if type(profile_s3) == "table" and profile_s3.addressing_style == "path" then return true end
  if custom and client.is_ip_or_localhost(host) then return true end
  return scheme == "https" and bucket:find(".", 1, true) ~= nil
end

-- The URL of an object (or of the bucket when key is ""), and the signing region.
function s3.object_url(settings, bucket, key)
  local base, custom = client.endpoint("s3", settings)
  local region = client.region(settings, "s3", custom)
  local scheme, authority, host, base_path = client.parse_url(base)
  local path = key ~= "" and "/" .. core.uri_encode(key, true) or ""
  if path_style(settings, bucket, scheme, host, custom) then
    return ("%s://%s%s/%s%s"):format(scheme, authority, base_path, bucket, path), region
  end
  return ("%s://%s.%s%s%s"):format(scheme, bucket, authority, base_path, path ~= "" and path or "/"), region
end

local function strip_etag(etag)
  if type(etag) ~= "string" then return nil end
  return (etag:gsub("^W/", ""):gsub("\"", ""))
end

local function human_size(n)
  if n < 1024 then return n .. " B" end
  if n < 1024 * 1024 then return ("%.1f KiB"):format(n / 1024) end
  if n < 1024 ^ 3 then return ("%.1f MiB"):format(n / 1024 ^ 2) end
  return ("%.2f GiB"):format(n / 1024 ^ 3)
end
s3.human_size = human_size

local function transfer_timeout(settings)
  return settings.timeout or TRANSFER_TIMEOUT
end

-- Runs fn(i) for i = 1..n with at most `concurrency` at once; the first failure cancels the
-- rest and is raised.
function s3.pool(n, concurrency, fn)
  local next_index = 0
  local workers = {}
  for w = 1, math.min(concurrency, n) do
    workers[w] = function()
      while true do
        next_index = next_index + 1
        local i = next_index
        if i > n then return end
        fn(i)
      end
    end
  end
  if #workers > 0 then task.parallel(workers) end
end

-- ---- object headers ----

local OBJECT_HEADERS = {
  content_type = "Content-Type", cache_control = "Cache-Control",
  content_encoding = "Content-Encoding", content_disposition = "Content-Disposition",
  content_language = "Content-Language", acl = "x-amz-acl", storage_class = "x-amz-storage-class",
}

local function object_headers(opts, caller)
  local headers = {}
  for opt, header in pairs(OBJECT_HEADERS) do
    local v = opts[opt]
    if v ~= nil then
      if type(v) ~= "string" then error(("%s: %s must be a string (got %s)"):format(caller, opt, type(v)), 0) end
      headers[header] = v
    end
  end
  if opts.metadata ~= nil then
    if type(opts.metadata) ~= "table" then error(caller .. ": metadata must be a table name -> value", 0) end
    for k, v in pairs(opts.metadata) do
      if type(k) ~= "string" or not k:match("^[%w%-_]+$") then
        error(("%s: metadata name '%s' must be letters, digits, '-' and '_'"):format(caller, tostring(k)), 0)
      end
      headers["x-amz-meta-" .. k:lower()] = tostring(v)
    end
  end
  return headers
end

local function info_from(bucket, key, headers)
  local meta = {}
  for k, v in pairs(headers) do
    local name = type(k) == "string" and k:match("^x%-amz%-meta%-(.+)$")
    if name then meta[name] = v end
  end
  return {
    bucket = bucket, key = key, etag = strip_etag(headers["etag"]),
    size = tonumber(headers["content-length"]), content_type = headers["content-type"],
    cache_control = headers["cache-control"], content_encoding = headers["content-encoding"],
    last_modified = headers["last-modified"], version_id = headers["x-amz-version-id"],
    metadata = meta,
  }
end

-- ---- put ----

local function read_file(path, offset, length, what)
  local f, err = io.open(path, "rb")
  if not f then error(tug.error.new("aws", ("aws %s: cannot read %s"):format(what, err), { code = "LocalFile" }), 0) end
  if offset and offset > 0 then f:seek("set", offset) end
  local data = f:read(length or "a") or ""
  f:close()
  return data
end

local function file_size(path, what)
  local f, err = io.open(path, "rb")
  if not f then error(tug.error.new("aws", ("aws %s: cannot read %s"):format(what, err), { code = "LocalFile" }), 0) end
  local size = f:seek("end")
  f:close()
  return size
end

local function multipart_upload(settings, bucket, key, path, size, headers, what)
  local url, region = s3.object_url(settings, bucket, key)
  local r = client.send({
    service = "s3", what = what .. " (start multipart upload)", method = "POST", url = url,
    region = region, query = { uploads = true }, headers = headers, settings = settings,
  })
  local root = xml.parse(r.body)
  local upload_id = root and xml.text(root, "UploadId")
  if not upload_id then
    error(tug.error.new("aws", ("aws %s: CreateMultipartUpload answered without an UploadId: %s"):format(
      what, r.body:sub(1, 200)), { code = "BadResponse" }), 0)
  end
  local part_size = s3.PART_SIZE
  local count = math.max(1, math.ceil(size / part_size))
  local etags = {}
  local function upload_part(i)
    local data = read_file(path, (i - 1) * part_size, part_size, what)
    local pr = client.send({
      service = "s3", what = ("%s (part %d of %d)"):format(what, i, count), method = "PUT",
      url = url, region = region, query = { partNumber = i, uploadId = upload_id },
      headers = { ["Content-MD5"] = core.digest("md5", data, "base64") }, body = data,
      settings = settings, timeout = transfer_timeout(settings),
    })
    etags[i] = pr.headers["etag"]
  end
  local ok, err = pcall(s3.pool, count, s3.PART_CONCURRENCY, upload_part)
  if ok then
    local parts = { "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">" }
    for i = 1, count do
      parts[#parts + 1] = ("<Part><PartNumber>%d</PartNumber><ETag>%s</ETag></Part>"):format(i, xml.escape(etags[i] or ""))
    end
    parts[#parts + 1] = "</CompleteMultipartUpload>"
    ok, err = pcall(client.send, {
      service = "s3", what = what .. " (complete multipart upload)", method = "POST", url = url,
      region = region, query = { uploadId = upload_id }, body = table.concat(parts),
      headers = { ["Content-Type"] = "application/xml" }, settings = settings,
      timeout = transfer_timeout(settings),
    })
    if ok then
      -- S3 may answer 200 and still fail: the error is then in the body.
      local done = xml.parse(err.body)
      if done and done.name == "Error" then
        local failed = { status = 200, body = err.body, headers = err.headers }
        ok, err = pcall(client.fail, what .. " (complete multipart upload)", failed, { bucket = bucket, key = key })
      else
        return { bucket = bucket, key = key, etag = strip_etag(done and xml.text(done, "ETag")), size = size,
          multipart = true, parts = count }
      end
    end
  end
  -- Abort so the parts do not linger (and cost); if that fails too, the original error matters.
  pcall(client.send, {
    service = "s3", what = what .. " (abort multipart upload)", method = "DELETE", url = url,
    region = region, query = { uploadId = upload_id }, settings = settings, retries = 0,
  })
  error(err, 0)
end

-- Uploads a local file (multipart above the threshold). headers: the object headers.
function s3.upload_file(settings, bucket, key, path, size, headers, what)
  if size > s3.MULTIPART_THRESHOLD then
    return multipart_upload(settings, bucket, key, path, size, headers, what)
  end
  return s3.put_object(settings, bucket, key, read_file(path, nil, nil, what), headers, what)
end

function s3.put_object(settings, bucket, key, body, headers, what)
  local url, region = s3.object_url(settings, bucket, key)
  local h = {}
  for k, v in pairs(headers) do h[k] = v end
  h["Content-MD5"] = core.digest("md5", body, "base64")
  local r = client.send({
    service = "s3", what = what, method = "PUT", url = url, region = region, headers = h,
    body = body, settings = settings, timeout = transfer_timeout(settings),
    fields = { bucket = bucket, key = key },
  })
  return { bucket = bucket, key = key, etag = strip_etag(r.headers["etag"]), size = #body }
end

local PUT_OPTIONS = { file = true, metadata = true }
for k in pairs(OBJECT_HEADERS) do PUT_OPTIONS[k] = true end

-- aws.s3.put(url, body, opts) -> { bucket, key, etag, size [, multipart, planned] }
-- opts.file uploads a file instead of body (pass body = nil).
function s3.put(url, body, opts)
  local caller = "aws.s3.put"
  local bucket, key = s3.parse_url(url, caller, true)
  local settings = client.settings(opts, PUT_OPTIONS, caller)
  opts = opts or {}
  local headers = object_headers(opts, caller)
  local what = "s3 put " .. url
  if (body == nil) == (opts.file == nil) then
    error(caller .. ": give either a body or opts.file", 2)
  end
  if body ~= nil and type(body) ~= "string" then error(caller .. ": body must be a string (got " .. type(body) .. ")", 2) end
  local size = body and #body or file_size(opts.file, what)
  if tug.plan.active() then
    tug.plan.record("aws", ("s3 put %s (%s%s)"):format(url, human_size(size),
      headers["Content-Type"] and ", " .. headers["Content-Type"] or ""), opts.file and ("from " .. opts.file) or nil)
    return { bucket = bucket, key = key, size = size, planned = true }
  end
  if opts.file then return s3.upload_file(settings, bucket, key, opts.file, size, headers, what) end
  return s3.put_object(settings, bucket, key, body, headers, what)
end

-- ---- get and head ----

local GET_OPTIONS = { file = true, range = true }

-- aws.s3.get(url, opts) -> body, info. With opts.file the body goes to that file (streamed,
-- written to FILE.part and renamed at the end) and the first result is nil. A missing
-- object raises an aws error with code NoSuchKey and status 404.
function s3.get(url, opts)
  local caller = "aws.s3.get"
  local bucket, key = s3.parse_url(url, caller, true)
  local settings = client.settings(opts, GET_OPTIONS, caller)
  opts = opts or {}
  local what = "s3 get " .. url
  local object_url, region = s3.object_url(settings, bucket, key)
  local headers = {}
  if opts.range then headers.Range = opts.range end
  local out, tmp
  if opts.file then
    tmp = opts.file .. ".part"
    local err
    out, err = io.open(tmp, "wb")
    if not out then error(tug.error.new("aws", ("aws %s: cannot write %s"):format(what, err), { code = "LocalFile" }), 0) end
  end
  local ok, r = pcall(client.send, {
    service = "s3", what = what, method = "GET", url = object_url, region = region, headers = headers,
    settings = settings, timeout = transfer_timeout(settings), fields = { bucket = bucket, key = key },
    expect = out and setmetatable({}, { __index = function() return true end }) or nil,
    on_chunk = out and function(chunk) out:write(chunk) end or nil,
  })
  if out then out:close() end
  if not ok then
    if tmp then os.remove(tmp) end
    error(r, 0)
  end
  if out then
    if r.status < 200 or r.status > 299 then
      -- the http module streams only 2xx bodies; an error body is in r.body (or the file)
      if (r.body or "") == "" then r.body = read_file(tmp, nil, nil, what) end
      os.remove(tmp)
      client.fail(what, r, { bucket = bucket, key = key })
    end
    local renamed, err = os.rename(tmp, opts.file)
    if not renamed then
      os.remove(tmp)
      error(tug.error.new("aws", ("aws %s: cannot write %s"):format(what, err), { code = "LocalFile" }), 0)
    end
    return nil, info_from(bucket, key, r.headers)
  end
  return r.body, info_from(bucket, key, r.headers)
end

-- aws.s3.head(url, opts) -> info, or nil when there is no such object.
function s3.head(url, opts)
  local caller = "aws.s3.head"
  local bucket, key = s3.parse_url(url, caller, true)
  local settings = client.settings(opts, nil, caller)
  local object_url, region = s3.object_url(settings, bucket, key)
  local r = client.send({
    service = "s3", what = "s3 head " .. url, method = "HEAD", url = object_url, region = region,
    settings = settings, expect = { [404] = true }, fields = { bucket = bucket, key = key },
  })
  if r.status == 404 then return nil end
  return info_from(bucket, key, r.headers)
end

-- ---- list ----

local LIST_OPTIONS = { delimiter = true, page_size = true, limit = true }

-- aws.s3.list("s3://bucket/prefix", opts) -> objects, prefixes. Every page is read (opts.limit
-- stops early). objects: { key, size, etag, last_modified, storage_class }; prefixes (with
-- opts.delimiter, e.g. "/"): the common prefixes.
function s3.list(url, opts)
  local caller = "aws.s3.list"
  local bucket, prefix = s3.parse_url(url, caller, false)
  local settings = client.settings(opts, LIST_OPTIONS, caller)
  opts = opts or {}
  if opts.limit ~= nil and (math.type(opts.limit) ~= "integer" or opts.limit < 1) then
    error(caller .. ": limit must be a positive integer", 0)
  end
  local bucket_url, region = s3.object_url(settings, bucket, "")
  local objects, prefixes = {}, {}
  local token
  repeat
    local query = { ["list-type"] = "2", prefix = prefix ~= "" and prefix or nil,
      delimiter = opts.delimiter, ["max-keys"] = opts.page_size, ["continuation-token"] = token }
    local r = client.send({
      service = "s3", what = "s3 list " .. url, method = "GET", url = bucket_url, region = region,
      query = query, settings = settings, fields = { bucket = bucket },
    })
    local root, err = xml.parse(r.body)
    if not root or root.name ~= "ListBucketResult" then
      error(tug.error.new("aws", ("aws s3 list %s: unexpected answer (%s): %s"):format(url,
        err or root.name, r.body:sub(1, 200)), { code = "BadResponse" }), 0)
    end
    for _, c in ipairs(xml.children(root, "Contents")) do
      objects[#objects + 1] = {
        key = xml.text(c, "Key"), size = tonumber(xml.text(c, "Size")), etag = strip_etag(xml.text(c, "ETag")),
        last_modified = xml.text(c, "LastModified"), storage_class = xml.text(c, "StorageClass"),
      }
      if opts.limit and #objects >= opts.limit then return objects, prefixes end
    end
    for _, c in ipairs(xml.children(root, "CommonPrefixes")) do
      prefixes[#prefixes + 1] = xml.text(c, "Prefix")
    end
    token = xml.text(root, "IsTruncated") == "true" and xml.text(root, "NextContinuationToken") or nil
  until not token
  return objects, prefixes
end

-- ---- delete ----

-- aws.s3.delete(url, opts) -> true (also when there was no such object, as in S3).
function s3.delete(url, opts)
  local caller = "aws.s3.delete"
  local bucket, key = s3.parse_url(url, caller, true)
  local settings = client.settings(opts, nil, caller)
  if tug.plan.active() then
    tug.plan.record("aws", "s3 delete " .. url)
    return true
  end
  local object_url, region = s3.object_url(settings, bucket, key)
  client.send({
    service = "s3", what = "s3 delete " .. url, method = "DELETE", url = object_url, region = region,
    settings = settings, fields = { bucket = bucket, key = key },
  })
  return true
end

-- Deletes keys of one bucket with DeleteObjects, 1000 at a time. Returns the count; raises
-- when S3 reports keys it could not delete.
function s3.delete_objects(settings, bucket, keys, what)
  local bucket_url, region = s3.object_url(settings, bucket, "")
  local deleted = 0
  for first = 1, #keys, DELETE_BATCH do
    local last = math.min(first + DELETE_BATCH - 1, #keys)
    local body = { "<Delete xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Quiet>true</Quiet>" }
    for i = first, last do body[#body + 1] = "<Object><Key>" .. xml.escape(keys[i]) .. "</Key></Object>" end
    body[#body + 1] = "</Delete>"
    body = table.concat(body)
    local r = client.send({
      service = "s3", what = what, method = "POST", url = bucket_url, region = region,
      query = { delete = true }, body = body, settings = settings, fields = { bucket = bucket },
      headers = { ["Content-MD5"] = core.digest("md5", body, "base64"), ["Content-Type"] = "application/xml" },
    })
    local root = xml.parse(r.body)
    local errors = root and xml.children(root, "Error") or {}
    if #errors > 0 then
      local shown = {}
      for i = 1, math.min(#errors, 5) do
        shown[i] = ("%s (%s)"):format(xml.text(errors[i], "Key") or "?", xml.text(errors[i], "Code") or "?")
      end
      error(tug.error.new("aws", ("aws %s: %d of %d keys not deleted: %s"):format(what, #errors,
        last - first + 1, table.concat(shown, ", ")), { code = xml.text(errors[1], "Code"), bucket = bucket }), 0)
    end
    deleted = deleted + (last - first + 1)
  end
  return deleted
end

-- aws.s3.delete_many("s3://bucket", { "key1", "key2" }, opts) -> count deleted.
function s3.delete_many(url, keys, opts)
  local caller = "aws.s3.delete_many"
  local bucket = s3.parse_url(url, caller, false)
  local settings = client.settings(opts, nil, caller)
  if type(keys) ~= "table" then error(caller .. ": keys must be a list of strings", 2) end
  for i, k in ipairs(keys) do
    if type(k) ~= "string" or k == "" then error(("%s: keys[%d] must be a non-empty string"):format(caller, i), 2) end
  end
  if #keys == 0 then return 0 end
  if tug.plan.active() then
    tug.plan.record("aws", ("s3 delete %d object%s from s3://%s"):format(#keys, #keys == 1 and "" or "s", bucket),
      table.concat(keys, "\n"))
    return #keys
  end
  return s3.delete_objects(settings, bucket, keys, "s3 delete_many s3://" .. bucket)
end

-- ---- presigned URLs ----

local PRESIGN_OPTIONS = { method = true, expires = true, time = true, headers = true }

-- aws.s3.presign(url, { method = "GET", expires = 3600 }) -> an https URL anyone may use until
-- it expires. Its signature is registered as a secret: it is a credential.
function s3.presign(url, opts)
  local caller = "aws.s3.presign"
  local bucket, key = s3.parse_url(url, caller, true)
  local settings = client.settings(opts, PRESIGN_OPTIONS, caller)
  opts = opts or {}
  local expires = opts.expires or 3600
  if type(expires) == "string" then
    local seconds = require("time").parse_duration(expires)
    if not seconds then error(("%s: expires '%s' is not a duration"):format(caller, expires), 2) end
    expires = seconds
  end
  if type(expires) ~= "number" or expires < 1 or expires > PRESIGN_MAX then
    error(caller .. ": expires must be from 1 second to 7 days", 2)
  end
  local object_url, region = s3.object_url(settings, bucket, key)
  local signed = client.sign({
    method = opts.method or "GET", url = object_url, service = "s3", region = region,
    credentials = credentials.resolve(settings), presign = expires, time = opts.time,
    headers = opts.headers,
  }, caller)
  log.secret(signed.signature)
  return signed.url, signed
end

-- ---- sync ----

function s3.sync(dir, url, opts)
  return require("aws.sync").run(dir, url, opts)
end

return s3
