-- aws/ecr.lua: Amazon ECR over its JSON protocol (X-Amz-Target:
-- AmazonEC2ContainerRegistry_V20150921.*): is an image there, what is known about it, and
-- what its vulnerability scan found (counts by severity, so a preflight step can refuse an
-- image with CRITICAL findings).

local client = require("aws.client")
local task = require("task")
local time = require("time")

local ecr = {}

local TARGET = "AmazonEC2ContainerRegistry_V20150921."
ecr.SEVERITIES = { "CRITICAL", "HIGH", "MEDIUM", "LOW", "INFORMATIONAL", "UNDEFINED" }

local function check_repository(repository, caller)
  if type(repository) ~= "string" or not repository:match("^[a-z0-9][a-z0-9._/-]*$") then
    error(("%s: repository must be a repository name such as \"multiship/api\" (got %s)"):format(caller,
      tostring(repository)), 0)
  end
end

-- "v1.2.3" -> { imageTag = ... }; "sha256:..." -> { imageDigest = ... }
local function image_id(ref, caller)
  if type(ref) ~= "string" or ref == "" then
    error(("%s: tag must be an image tag or a sha256: digest (got %s)"):format(caller, tostring(ref)), 0)
  end
  if ref:match("^sha256:") then return { imageDigest = ref } end
  return { imageTag = ref }
end

local function image_from(d)
  local scan = d.imageScanFindingsSummary
  return {
    repository = d.repositoryName, registry_id = d.registryId, digest = d.imageDigest,
    tags = d.imageTags or {}, size = d.imageSizeInBytes, pushed_at = d.imagePushedAt,
    scan_status = d.imageScanStatus and d.imageScanStatus.status,
    severity_counts = scan and scan.findingSeverityCounts or nil,
    raw = d,
  }
end

local DESCRIBE_OPTIONS = { tags = true, registry_id = true }

-- aws.ecr.describe_images(repository, { tags = { "v1.2.3" } }) -> list of images
-- { repository, digest, tags, size, pushed_at, scan_status, severity_counts, raw }.
-- Every page is read. A tag that does not exist raises (code ImageNotFoundException).
function ecr.describe_images(repository, opts)
  local caller = "aws.ecr.describe_images"
  check_repository(repository, caller)
  local settings = client.settings(opts, DESCRIBE_OPTIONS, caller)
  opts = opts or {}
  local ids
  if opts.tags ~= nil then
    if type(opts.tags) ~= "table" then error(caller .. ": tags must be a list", 0) end
    ids = {}
    for i, t in ipairs(opts.tags) do ids[i] = image_id(t, caller) end
  end
  local images, token = {}, nil
  repeat
    local doc = client.json_call({
      service = "ecr", target = TARGET .. "DescribeImages", what = "ecr describe_images " .. repository,
      write = false, settings = settings, fields = { repository = repository },
      body = { repositoryName = repository, registryId = opts.registry_id, imageIds = ids, nextToken = token },
    })
    for _, d in ipairs(doc.imageDetails or {}) do images[#images + 1] = image_from(d) end
    token = doc.nextToken
  until token == nil or token == ""
  return images
end

-- aws.ecr.image_exists(repository, tag) -> true or false (the repository must exist).
function ecr.image_exists(repository, tag, opts)
  local caller = "aws.ecr.image_exists"
  image_id(tag, caller)
  local o = { tags = { tag } }
  for k, v in pairs(opts or {}) do o[k] = v end
  local ok, result = pcall(ecr.describe_images, repository, o)
  if ok then return #result > 0 end
  if type(result) == "table" and result.code == "ImageNotFoundException" then return false end
  error(result, 0)
end

local SCAN_OPTIONS = { wait = true, interval = true, registry_id = true }

-- aws.ecr.scan_findings(repository, tag, { wait = "5m" }) -> { status, counts, total,
-- completed_at, description }. counts has every severity (0 when none). With wait, polls
-- while the scan is IN_PROGRESS/PENDING. No scan for the image raises (code
-- ScanNotFoundException, with a hint about scan on push).
function ecr.scan_findings(repository, tag, opts)
  local caller = "aws.ecr.scan_findings"
  check_repository(repository, caller)
  local id = image_id(tag, caller)
  local settings = client.settings(opts, SCAN_OPTIONS, caller)
  opts = opts or {}
  local wait = opts.wait and (type(opts.wait) == "number" and opts.wait or time.parse_duration(opts.wait))
  if opts.wait and not wait then error(caller .. ": wait must be seconds or a duration", 0) end
  local interval = opts.interval and (type(opts.interval) == "number" and opts.interval
    or time.parse_duration(opts.interval)) or 5
  local deadline = wait and time.monotonic() + wait
  local what = ("ecr scan_findings %s:%s"):format(repository, tag)
  while true do
    local ok, doc = pcall(client.json_call, {
      service = "ecr", target = TARGET .. "DescribeImageScanFindings", what = what, write = false,
      settings = settings, fields = { repository = repository, tag = tag },
      body = { repositoryName = repository, registryId = opts.registry_id, imageId = id, maxResults = 1 },
    })
    if not ok then
      if type(doc) == "table" and doc.code == "ScanNotFoundException" then
        doc.message = doc.message .. " (is scan on push enabled for the repository? start one with "
          .. "`aws ecr start-image-scan`)"
      end
      error(doc, 0)
    end
    local status = doc.imageScanStatus and doc.imageScanStatus.status or "UNKNOWN"
    local findings = doc.imageScanFindings or {}
    local counts, total = {}, 0
    for _, s in ipairs(ecr.SEVERITIES) do counts[s] = 0 end
    for s, n in pairs(findings.findingSeverityCounts or {}) do
      counts[s] = n
      total = total + n
    end
    local pending = status == "IN_PROGRESS" or status == "PENDING"
    if not (pending and deadline and time.monotonic() < deadline) then
      return {
        status = status, counts = counts, total = total,
        completed_at = findings.imageScanCompletedAt,
        description = doc.imageScanStatus and doc.imageScanStatus.description,
        digest = doc.imageId and doc.imageId.imageDigest,
      }
    end
    task.sleep(math.min(interval, math.max(0, deadline - time.monotonic())))
  end
end

return ecr
