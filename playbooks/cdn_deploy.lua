-- cdn-deploy: the seed's CDN deployment. Build the frontend with the environment's
-- command, upload its static assets to S3 with a year-long Cache-Control (only the files
-- that changed), invalidate CloudFront and wait until the invalidation is done.
--
-- The environment's cdn: section: build.command (an argv), build.env, build.output (the
-- assets, relative to the repository), build.dir (where the command runs, relative to the
-- repository; default its root), bucket, prefix, cache_control, distribution_id (no
-- invalidation without one). The S3 and CloudFront endpoints, region and profile come
-- from the environment's aws: section (modules/aws/README.md).
--
-- Undo: no step has one, on purpose. The build writes only local files. The upload adds
-- content-hashed files beside those already served: pages of the site now live still
-- find their assets, and the new ones do nothing until a site that refers to them is
-- deployed, while deleting them on a failure would break browsers that already loaded a
-- page referring to them. A file that changed under the same name cannot be put back
-- (S3 keeps no old bytes unless the bucket is versioned), which is why the prefix should
-- hold only hashed assets. An invalidation cannot be taken back and only makes CloudFront
-- fetch again. So a failed run ends `failed`, its uploads left in place. With delete=true
-- the objects the build no longer has are removed last, once the invalidation is done:
-- a failed run never removed anything.
--
-- A run that died resumes cleanly: the upload sends only what still differs, and the
-- wait picks up the invalidation the run created (its id is saved in the run's state).

-- The cdn: section, checked; every error names the field.
local function settings(env)
  local cdn = env.cdn
  local function bad(field, want)
    error(string.format("the %s environment's cdn.%s %s", env.name, field, want), 0)
  end
  if type(cdn) ~= "table" then
    error(string.format("the %s environment has no cdn: section (build, bucket, prefix, cache_control, " ..
      "distribution_id)", env.name), 0)
  end
  local build = cdn.build
  if type(build) ~= "table" then bad("build", "is missing: it needs command and output") end
  if type(build.command) ~= "table" or #build.command == 0 then
    bad("build.command", "must be a list (an argv) such as [pnpm, build]")
  end
  for i, word in ipairs(build.command) do
    if type(word) ~= "string" and type(word) ~= "number" then bad("build.command[" .. i .. "]", "must be a string") end
  end
  if build.env ~= nil and type(build.env) ~= "table" then bad("build.env", "must be a mapping NAME: value") end
  if type(build.output) ~= "string" or build.output == "" then bad("build.output", "must be the assets' directory") end
  if build.dir ~= nil and type(build.dir) ~= "string" then bad("build.dir", "must be a directory") end
  if type(cdn.bucket) ~= "string" or cdn.bucket == "" then bad("bucket", "must name the S3 bucket") end
  if cdn.prefix ~= nil and type(cdn.prefix) ~= "string" then bad("prefix", "must be a key prefix such as static") end
  if cdn.cache_control ~= nil and type(cdn.cache_control) ~= "string" then
    bad("cache_control", "must be a Cache-Control value such as max-age=31536000")
  end
  local id = cdn.distribution_id
  if id ~= nil and (type(id) ~= "string" or not id:match("^%w+$")) then
    bad("distribution_id", "must be a CloudFront distribution id such as E2QWRUHAPOMQZL")
  end
  local prefix = (cdn.prefix or ""):gsub("^/+", ""):gsub("/+$", "")
  return {
    build = build, bucket = cdn.bucket, prefix = prefix,
    cache_control = cdn.cache_control or "max-age=31536000", distribution = cdn.distribution_id,
    url = "s3://" .. cdn.bucket .. (prefix ~= "" and ("/" .. prefix) or ""),
  }
end

local function join(repo, path)
  if path:sub(1, 1) == "/" then return path end
  return (repo:gsub("/+$", "")) .. "/" .. path
end

local function output_dir(ctx, cdn)
  return join(ctx.params.repo, cdn.build.output)
end

-- The files under dir: { path (relative), size }, sorted; nil and a message when dir
-- cannot be read.
local function walk(dir)
  local files = {}
  local function visit(rel)
    local full = rel == "" and dir or (dir .. "/" .. rel)
    local entries, err = tug.sys.listdir(full)
    if not entries then return nil, err end
    for _, e in ipairs(entries) do
      local path = rel == "" and e.name or (rel .. "/" .. e.name)
      if e.type == "dir" then
        local ok, werr = visit(path)
        if not ok then return nil, werr end
      elseif e.type == "file" then
        local f = io.open(dir .. "/" .. path, "rb")
        local size = f and f:seek("end") or 0
        if f then f:close() end
        files[#files + 1] = { path = path, size = size }
      end
    end
    return true
  end
  local ok, err = visit("")
  if not ok then return nil, err end
  table.sort(files, function(a, b) return a.path < b.path end)
  return files
end

local function tail(text, lines)
  local all = {}
  for line in (text or ""):gmatch("[^\n]+") do all[#all + 1] = line end
  return table.concat(all, "\n", math.max(1, #all - lines + 1))
end

local function size(bytes)
  if bytes < 1024 then return bytes .. " B" end
  if bytes < 1024 * 1024 then return string.format("%.1f KiB", bytes / 1024) end
  return string.format("%.1f MiB", bytes / (1024 * 1024))
end

local function has_distribution(ctx)
  return settings(ctx.env).distribution ~= nil
end

return playbook {
  description = "build the frontend, upload its static assets to S3, invalidate CloudFront",
  params = {
    repo = { type = "string", default = ".", help = "the frontend's repository (the build runs there)" },
    build = { type = "boolean", default = true, help = "run the build command (false: upload the output as it is)" },
    build_timeout = { type = "duration", default = "15m" },
    paths = { type = "list", default = { "/*" }, help = "the CloudFront paths to invalidate" },
    delete = { type = "boolean", default = false,
      help = "remove the objects under the prefix that the build no longer has (after the invalidation)" },
    wait_timeout = { type = "duration", default = "15m", help = "how long the invalidation may take" },
    wait_interval = { type = "duration", default = "10s", help = "how often to ask CloudFront" },
  },
  lock = "cdn-deploy",
  steps = {
    step "build the frontend" {
      read_only = true, -- local files only; a plan builds too, to list the exact uploads
      when = function(ctx) return ctx.params.build end,
      run = function(ctx)
        local cdn = settings(ctx.env)
        local cwd = cdn.build.dir and join(ctx.params.repo, cdn.build.dir) or ctx.params.repo
        local argv = {}
        for i, word in ipairs(cdn.build.command) do argv[i] = tostring(word) end
        local shown = table.concat(argv, " ")
        ctx.log.info(string.format("building in %s: %s", cwd, shown))
        local r = exec.run(argv, { cwd = cwd, env = cdn.build.env, timeout = ctx.params.build_timeout,
          read_only = true })
        if r.code ~= 0 then
          local how = r.timed_out and ("timed out after " .. time.format_duration(ctx.params.build_timeout))
            or r.code and ("exited with code " .. r.code) or ("was killed by signal " .. tostring(r.signal))
          local out = tail(r.stderr ~= "" and r.stderr or r.stdout, 15)
          error(string.format("the build (%s) %s%s", shown, how, out ~= "" and (":\n" .. out) or ""), 0)
        end
        ctx.state.build_seconds = math.floor(r.duration * 10 + 0.5) / 10
      end,
    },

    step "check the build output" {
      read_only = true,
      run = function(ctx)
        local cdn = settings(ctx.env)
        local dir = output_dir(ctx, cdn)
        local files, err = walk(dir)
        if not files then
          error(string.format("the build output %s (cdn.build.output) cannot be read: %s", dir, err), 0)
        end
        if #files == 0 then error(string.format("the build output %s (cdn.build.output) holds no files", dir), 0) end
        local bytes = 0
        for _, f in ipairs(files) do bytes = bytes + f.size end
        ctx.state.files, ctx.state.bytes = #files, bytes
        ctx.log.info(string.format("%s: %d files, %s", dir, #files, size(bytes)))
      end,
    },

    step "upload the static assets to S3" {
      run = function(ctx)
        local cdn = settings(ctx.env)
        aws.configure(ctx.env.aws or {})
        local r = aws.s3.sync(output_dir(ctx, cdn), cdn.url, { cache_control = cdn.cache_control })
        ctx.state.uploaded, ctx.state.unchanged, ctx.state.uploaded_bytes = r.uploaded, r.skipped, r.bytes
        ctx.log.info(string.format("%s %d files (%s) to %s with Cache-Control %s; %d unchanged",
          r.planned and "would upload" or "uploaded", r.uploaded, size(r.bytes), cdn.url, cdn.cache_control, r.skipped))
      end,
    },

    step "invalidate the CloudFront cache" {
      when = has_distribution,
      run = function(ctx)
        local cdn = settings(ctx.env)
        aws.configure(ctx.env.aws or {})
        local inv = aws.cloudfront.create_invalidation(cdn.distribution, ctx.params.paths)
        ctx.state.invalidation = inv.id
        if inv.id then
          ctx.log.info(string.format("invalidation %s of %s on %s: %s", inv.id, table.concat(ctx.params.paths, " "),
            cdn.distribution, inv.status))
        end
      end,
    },

    step "wait for the invalidation to complete" {
      read_only = true,
      when = has_distribution,
      run = function(ctx)
        if ctx.plan then return end -- nothing was sent, so there is nothing to wait for
        local cdn = settings(ctx.env)
        aws.configure(ctx.env.aws or {})
        local inv = aws.cloudfront.wait_invalidation(cdn.distribution, ctx.state.invalidation,
          { timeout = ctx.params.wait_timeout, interval = ctx.params.wait_interval })
        ctx.log.info(string.format("invalidation %s on %s: %s", inv.id, cdn.distribution, inv.status))
      end,
    },

    step "remove assets the build no longer has" {
      when = function(ctx) return ctx.params.delete end,
      run = function(ctx)
        local cdn = settings(ctx.env)
        aws.configure(ctx.env.aws or {})
        local files = assert(walk(output_dir(ctx, cdn)))
        local keep = {}
        local base = cdn.prefix ~= "" and (cdn.prefix .. "/") or ""
        for _, f in ipairs(files) do keep[base .. f.path] = true end
        local stale = {}
        for _, o in ipairs(aws.s3.list(cdn.url .. "/")) do
          if not keep[o.key] then stale[#stale + 1] = o.key end
        end
        if #stale > 0 then aws.s3.delete_many("s3://" .. cdn.bucket, stale) end
        ctx.state.deleted = #stale
        ctx.log.info(string.format("%s %d objects under %s the build no longer has%s", ctx.plan and "would remove"
          or "removed", #stale, cdn.url, #stale > 0 and (": " .. table.concat(stale, ", ", 1, math.min(#stale, 10))
          .. (#stale > 10 and ", ..." or "")) or ""))
      end,
    },
  },
}
