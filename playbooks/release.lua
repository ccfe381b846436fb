-- release: the seed's version tagging with git. A release branch, a commit bumping the
-- version, an annotated tag, and a push of the branch and the tag: the push of the tag is
-- what starts the pipeline. It refuses a dirty tree, a tag or branch that already exists
-- (here or on the remote) and a version that is not greater than the current one, all
-- before it changes anything. Undo puts the repository back on the branch it started from
-- and removes what it pushed.
local release = require("release")

local function repo(ctx) return ctx.params.repo end
local function git(ctx, args, opts) return release.git(repo(ctx), args, opts) end
local function read(ctx, args) return release.read(repo(ctx), args) end

local function commit_message(ctx) return "chore: bump version to " .. ctx.params.version end
local function tag_message(ctx) return "Release version " .. ctx.params.version:gsub("^v", "") end

-- The branch HEAD is on, or nil when it is detached.
local function current_branch(ctx)
  return read(ctx, { "symbolic-ref", "-q", "--short", "HEAD" })
end

-- Which of the release's refs the remote has: { ["refs/heads/release/vX"] = sha, ... }.
local function remote_refs(ctx)
  local r = git(ctx, { "ls-remote", ctx.params.remote, "refs/heads/" .. ctx.state.branch,
    "refs/tags/" .. ctx.state.tag, "refs/tags/" .. ctx.state.tag .. "^{}" }, { read_only = true, timeout = "1m" })
  local refs = {}
  for sha, ref in r.stdout:gmatch("(%x+)%s+(%S+)") do refs[ref] = sha end
  return refs
end

-- Puts HEAD back where the run started: the original branch (or commit, when detached).
local function back_to_start(ctx)
  if ctx.state.detached then
    git(ctx, { "checkout", "-q", "--detach", ctx.state.base })
  elseif current_branch(ctx) ~= ctx.state.original then
    git(ctx, { "checkout", "-q", ctx.state.original })
  end
end

local function on_release_branch(ctx)
  return current_branch(ctx) == ctx.state.branch
end

return playbook {
  description = "tag a release: release branch, version bump commit, annotated tag, push",
  params = {
    version = { type = "string", required = true, pattern = "^v%d+%.%d+%.%d+$",
      help = "the version to release, vX.Y.Z" },
    repo = { type = "string", default = ".", help = "the application's git repository" },
    remote = { type = "string", default = "origin", help = "where the branch and the tag are pushed" },
    files = { type = "list", default = "package.json",
      help = "files whose version is bumped, relative to repo: JSON manifests (top-level \"version\") or plain VERSION files" },
    push = { type = "boolean", default = true, help = "push the branch and the tag" },
  },
  lock = "release",
  steps = {
    step "check the repository and the version" {
      read_only = true,
      run = function(ctx)
        local p, s = ctx.params, ctx.state
        if not read(ctx, { "rev-parse", "--show-toplevel" }) then
          error(string.format("param 'repo': %s is not a git repository", p.repo), 0)
        end
        s.branch, s.tag = "release/" .. p.version, p.version
        s.base = read(ctx, { "rev-parse", "--verify", "-q", "HEAD^{commit}" })
        if not s.base then error(p.repo .. " has no commit to release from", 0) end
        s.original = current_branch(ctx) or s.base
        s.detached = current_branch(ctx) == nil

        local problems = {}
        local status = read(ctx, { "status", "--porcelain=v1", "--untracked-files=all" }) or ""
        local dirty = {}
        for line in status:gmatch("[^\n]+") do dirty[#dirty + 1] = line:match("^%s*(.-)%s*$") end
        if #dirty > 0 then
          local shown = { table.unpack(dirty, 1, 10) }
          problems[#problems + 1] = string.format("the working tree is not clean (%s%s): commit or stash first",
            table.concat(shown, ", "), #dirty > 10 and string.format(" and %d more", #dirty - 10) or "")
        end
        if read(ctx, { "rev-parse", "-q", "--verify", "refs/tags/" .. s.tag }) then
          problems[#problems + 1] = "tag " .. s.tag .. " already exists here"
        end
        if read(ctx, { "rev-parse", "-q", "--verify", "refs/heads/" .. s.branch }) then
          problems[#problems + 1] = "branch " .. s.branch .. " already exists here"
        end
        if p.push then
          if not read(ctx, { "remote", "get-url", p.remote }) then
            problems[#problems + 1] = string.format("there is no remote '%s' to push to (push=false releases locally)", p.remote)
          else
            local ok, refs = pcall(remote_refs, ctx)
            if not ok then
              problems[#problems + 1] = string.format("cannot ask remote %s about its tags: %s", p.remote, tostring(refs))
            else
              if refs["refs/tags/" .. s.tag] then
                problems[#problems + 1] = string.format("tag %s already exists on %s", s.tag, p.remote)
              end
              if refs["refs/heads/" .. s.branch] then
                problems[#problems + 1] = string.format("branch %s already exists on %s", s.branch, p.remote)
              end
            end
          end
        end

        local wanted = release.parse_version(p.version)
        s.files = {}
        if #p.files == 0 then problems[#problems + 1] = "param 'files': no file to bump" end
        for _, path in ipairs(p.files) do
          local full = p.repo .. "/" .. path
          local f = io.open(full, "rb")
          local text = f and f:read("a")
          if f then f:close() end
          if not text then
            problems[#problems + 1] = string.format("param 'files': %s is not in %s", path, p.repo)
          elseif not read(ctx, { "ls-files", "--error-unmatch", "--", path }) then
            problems[#problems + 1] = path .. " is not tracked by git"
          else
            local info, why = release.read_version(path, text)
            if not info then
              problems[#problems + 1] = path .. " " .. why
            elseif not release.greater(wanted, release.parse_version(info.current)) then
              problems[#problems + 1] = string.format("%s is not greater than the current version %s (%s)",
                p.version, info.current, path)
            else
              s.files[#s.files + 1] = { path = path, current = info.current }
            end
          end
        end
        if #problems > 0 then
          error("refusing to release " .. p.version .. ": " .. table.concat(problems, "; "), 0)
        end
        local list = {}
        for _, f in ipairs(s.files) do list[#list + 1] = f.path .. " " .. f.current end
        ctx.log.info(string.format("releasing %s from %s (%s); current: %s", p.version,
          s.detached and "a detached HEAD" or s.original, s.base:sub(1, 12), table.concat(list, ", ")))
      end,
    },

    step "create the release branch" {
      run = function(ctx)
        local s = ctx.state
        local at = read(ctx, { "rev-parse", "-q", "--verify", "refs/heads/" .. s.branch })
        if at and not ctx.plan then
          -- a resumed run: the branch is ours if it still starts at the base
          if read(ctx, { "merge-base", "--is-ancestor", s.base, at }) == nil then
            error(string.format("%s exists and does not contain %s: it is not this run's", s.branch, s.base:sub(1, 12)), 0)
          end
          if not on_release_branch(ctx) then git(ctx, { "checkout", "-q", s.branch }) end
          return
        end
        git(ctx, { "checkout", "-q", "-b", s.branch, s.base })
      end,
      undo = function(ctx)
        local s = ctx.state
        back_to_start(ctx)
        local at = read(ctx, { "rev-parse", "-q", "--verify", "refs/heads/" .. s.branch })
        if not at then return end
        if at ~= s.base and at ~= s.commit then
          -- someone else's work: never delete it
          error(string.format("%s is at %s, which this run did not make: left in place (delete it by hand if it " ..
            "should go)", s.branch, at:sub(1, 12)), 0)
        end
        git(ctx, { "branch", "-q", "-D", s.branch })
      end,
    },

    step "bump the version and commit" {
      run = function(ctx)
        local s = ctx.state
        if not ctx.plan then
          if not on_release_branch(ctx) then git(ctx, { "checkout", "-q", s.branch }) end
          local head = read(ctx, { "rev-parse", "HEAD" })
          if head ~= s.base then
            -- a resumed run whose commit was made before the run stopped
            local parent = read(ctx, { "rev-parse", "-q", "--verify", "HEAD^" })
            local subject = read(ctx, { "log", "-1", "--format=%s" })
            if parent == s.base and subject == commit_message(ctx) then
              s.commit = head
              return
            end
            error(string.format("%s has moved to %s since the run began at %s", s.branch, head:sub(1, 12), s.base:sub(1, 12)), 0)
          end
        end
        local ok, err = pcall(function()
          local paths = {}
          for _, f in ipairs(s.files) do
            -- from the base commit, so a run resumed after a half-written bump writes the same bytes
            local r = git(ctx, { "cat-file", "blob", s.base .. ":" .. f.path }, { read_only = true })
            local bumped, old, new = release.bump(f.path, r.stdout, ctx.params.version)
            if not ctx:would(string.format("write %s: version %s -> %s", f.path, old, new)) then
              local out = assert(io.open(ctx.params.repo .. "/" .. f.path, "wb"))
              out:write(bumped)
              out:close()
            end
            paths[#paths + 1] = f.path
          end
          local add = { "add", "--" }
          for _, p in ipairs(paths) do add[#add + 1] = p end
          git(ctx, add)
          git(ctx, { "commit", "-q", "-m", commit_message(ctx) }, { timeout = "5m" })
        end)
        if not ok then
          -- leave the branch as it started, so the undo can check out the original branch
          if not ctx.plan then git(ctx, { "reset", "-q", "--hard", s.base }, { allow_fail = true }) end
          error(err, 0)
        end
        if not ctx.plan then
          s.commit = read(ctx, { "rev-parse", "HEAD" })
          ctx.log.info(string.format("committed %s on %s: %s", s.commit:sub(1, 12), s.branch, commit_message(ctx)))
        end
      end,
      undo = function(ctx)
        local s = ctx.state
        if on_release_branch(ctx) then git(ctx, { "reset", "-q", "--hard", s.base }) end
      end,
    },

    step "create the annotated tag" {
      run = function(ctx)
        local s = ctx.state
        local target = s.commit or s.branch
        local existing = read(ctx, { "rev-parse", "-q", "--verify", "refs/tags/" .. s.tag .. "^{commit}" })
        if existing and not ctx.plan then
          -- a resumed run: the tag was made before the run stopped
          if existing ~= s.commit then
            error(string.format("tag %s appeared meanwhile and points at %s, not %s", s.tag, existing:sub(1, 12),
              s.commit:sub(1, 12)), 0)
          end
          return
        end
        git(ctx, { "tag", "-a", s.tag, "-m", tag_message(ctx), target })
      end,
      undo = function(ctx)
        local s = ctx.state
        local at = read(ctx, { "rev-parse", "-q", "--verify", "refs/tags/" .. s.tag .. "^{commit}" })
        if at and at == s.commit then git(ctx, { "tag", "-d", s.tag }) end
      end,
    },

    step "push the branch and the tag" {
      when = function(ctx) return ctx.params.push end,
      timeout = "10m",
      run = function(ctx)
        local s = ctx.state
        -- atomic: the remote takes both or neither
        git(ctx, { "push", "--atomic", ctx.params.remote,
          "refs/heads/" .. s.branch .. ":refs/heads/" .. s.branch,
          "refs/tags/" .. s.tag .. ":refs/tags/" .. s.tag },
          { timeout = "9m", what = string.format("pushing %s and %s to %s", s.branch, s.tag, ctx.params.remote) })
        if not ctx.plan then
          ctx.log.info(string.format("pushed %s and %s to %s", s.branch, s.tag, ctx.params.remote))
        end
      end,
      undo = function(ctx)
        local s = ctx.state
        local refs = remote_refs(ctx)
        local delete = {}
        if refs["refs/heads/" .. s.branch] == s.commit then delete[#delete + 1] = "refs/heads/" .. s.branch end
        local ours = read(ctx, { "rev-parse", "-q", "--verify", "refs/tags/" .. s.tag })
        if refs["refs/tags/" .. s.tag] and (ours == nil or refs["refs/tags/" .. s.tag] == ours) then
          delete[#delete + 1] = "refs/tags/" .. s.tag
        end
        if #delete == 0 then return end
        local args = { "push", ctx.params.remote, "--delete" }
        for _, ref in ipairs(delete) do args[#args + 1] = ref end
        git(ctx, args, { timeout = "5m" })
        ctx.log.warn(string.format("deleted %s from %s", table.concat(delete, " and "), ctx.params.remote))
      end,
    },

    step "check the remote has the release" {
      read_only = true,
      when = function(ctx) return ctx.params.push end,
      run = function(ctx)
        if ctx.plan then return end
        local s = ctx.state
        local refs = remote_refs(ctx)
        local tag_object = read(ctx, { "rev-parse", "refs/tags/" .. s.tag })
        local branch_at = refs["refs/heads/" .. s.branch]
        if branch_at ~= s.commit then
          error(string.format("%s on %s is %s, not the release commit %s", s.branch, ctx.params.remote,
            branch_at and ("at " .. branch_at:sub(1, 12)) or "missing", s.commit:sub(1, 12)), 0)
        end
        local tag_at = refs["refs/tags/" .. s.tag]
        if tag_at ~= tag_object or refs["refs/tags/" .. s.tag .. "^{}"] ~= s.commit then
          error(string.format("tag %s on %s is %s, not the annotated tag %s on %s", s.tag, ctx.params.remote,
            tag_at and ("at " .. tag_at:sub(1, 12)) or "missing", (tag_object or "?"):sub(1, 12), s.commit:sub(1, 12)), 0)
        end
        ctx.log.info(string.format("%s has %s at %s and the annotated tag %s", ctx.params.remote, s.branch,
          s.commit:sub(1, 12), s.tag))
      end,
    },
  },
}
