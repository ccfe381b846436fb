-- The release playbook end to end: the real tug binary against throwaway git repositories
-- under /tmp, each with a bare "origin" beside it. What a user would check by hand: the
-- branch, the commit and its message, the bumped files byte for byte, the annotated tag, the
-- refs the remote has (git ls-remote), and that refusals and rollbacks leave everything as
-- it was.
package.path = "spec/support/?.lua;" .. package.path
local project = require("project")
local fixture = require("fixture")
local harness = require("playbook_harness")

-- No ~/.gitconfig or /etc/gitconfig (signing, hooks paths, default branch) can change what
-- these repositories do; each sets its own user.
local GIT_ENV = { GIT_CONFIG_GLOBAL = "/dev/null", GIT_CONFIG_NOSYSTEM = "1", GIT_TERMINAL_PROMPT = "0" }

local PACKAGE_JSON = [[
{
  "name": "@multiship/api",
  "version": "2.1.0",
  "private": true,
  "scripts": { "test": "vitest run" },
  "dependencies": {
    "left-pad": { "version": "9.9.9" }
  }
}
]]

describe("the release playbook", function()
  local p, root, app, origin

  local function sh(argv, cwd)
    local r = exec.run(argv, { cwd = cwd, env = GIT_ENV, timeout = 30 })
    assert(r.code == 0, table.concat(argv, " ") .. ": " .. r.stderr)
    return (r.stdout:gsub("\n$", ""))
  end
  local function git(...) return sh({ "git", "-C", app, ... }) end
  local function try_git(...)
    local r = exec.run({ "git", "-C", app, ... }, { env = GIT_ENV })
    return r.code == 0 and r.stdout:gsub("\n$", "") or nil
  end
  local function remote_refs()
    return sh({ "git", "ls-remote", origin })
  end
  local write = fixture.write
  local function read(path)
    local f <close> = assert(io.open(path, "rb"))
    return f:read("a")
  end
  local function hook(repo_git_dir, name, script)
    local path = repo_git_dir .. "/hooks/" .. name
    write(path, "#!/bin/sh\n" .. script)
    sh({ "chmod", "+x", path })
  end

  -- Runs tug ARGS with the project's playbooks; JSON events on stdout.
  local function tug(args, opts)
    opts = opts or {}
    local all = {}
    for _, a in ipairs(args) do all[#all + 1] = a end
    for _, a in ipairs({ "--playbooks", root .. "/playbooks", "--output", "json" }) do all[#all + 1] = a end
    local env = {}
    for k, v in pairs(GIT_ENV) do env[k] = v end
    for k, v in pairs(opts.env or {}) do env[k] = v end
    if opts.spawn then return p:spawn(all, { env = env, timeout = 60 }) end
    return p:tug(all, { env = env, timeout = 60 })
  end
  local events, run_end = harness.json_events, harness.last_run_end

  -- Everything a release could have touched, to compare before and after.
  local function world()
    return {
      head = git("rev-parse", "HEAD"), branch = try_git("symbolic-ref", "--short", "HEAD"),
      branches = git("branch", "--list", "--format=%(refname)"), tags = git("tag", "--list"),
      status = git("status", "--porcelain"), package = read(app .. "/package.json"), remote = remote_refs(),
    }
  end

  before_each(function()
    root = root or exec.run({ "pwd" }).stdout:gsub("\n$", "")
    p = project.new()
    app, origin = p.dir .. "/app", p.dir .. "/origin.git"
    sh({ "git", "init", "-q", "--bare", "-b", "main", origin })
    sh({ "git", "init", "-q", "-b", "main", app })
    git("config", "user.name", "Release Bot")
    git("config", "user.email", "release@multiship.test")
    write(app .. "/package.json", PACKAGE_JSON)
    write(app .. "/VERSION", "v2.1.0\n")
    git("add", "package.json", "VERSION")
    git("commit", "-q", "-m", "feat: shipments")
    git("remote", "add", "origin", origin)
    git("push", "-q", "origin", "main")
  end)

  after_each(function() p:remove() end)

  it("makes the release branch, the bump commit and the annotated tag, and pushes them", function()
    local base = git("rev-parse", "HEAD")
    local r = tug({ "run", "release", "version=v2.2.0", "repo=" .. app, "files=package.json,VERSION" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("succeeded", run_end(r).status)
    assert.are.equal("release/v2.2.0", git("symbolic-ref", "--short", "HEAD"))
    assert.are.equal("chore: bump version to v2.2.0", git("log", "-1", "--format=%s"))
    assert.are.equal(base, git("rev-parse", "HEAD^"))
    -- only the version changes, every other byte of the manifest stays
    assert.are.equal((PACKAGE_JSON:gsub('"version": "2.1.0"', '"version": "2.2.0"')), read(app .. "/package.json"))
    assert.are.equal("v2.2.0\n", read(app .. "/VERSION"))
    assert.are.equal("", git("status", "--porcelain"))
    assert.are.equal("VERSION\npackage.json", git("show", "--format=", "--name-only", "HEAD"))
    -- an annotated tag with the seed's message, on the bump commit
    assert.are.equal("tag", git("cat-file", "-t", "v2.2.0"))
    assert.are.equal("Release version 2.2.0", git("tag", "-l", "--format=%(contents:subject)", "v2.2.0"))
    local commit, tag_object = git("rev-parse", "HEAD"), git("rev-parse", "v2.2.0")
    assert.are.equal(commit, git("rev-parse", "v2.2.0^{commit}"))
    local refs = remote_refs()
    assert.matches(commit .. "%s+refs/heads/release/v2%.2%.0", refs)
    assert.matches(tag_object .. "%s+refs/tags/v2%.2%.0\n", refs)
  end)

  it("refuses a dirty working tree, listing the files, and changes nothing", function()
    write(app .. "/package.json", PACKAGE_JSON:gsub("vitest run", "vitest"))
    write(app .. "/notes.txt", "draft\n")
    local before = world()
    local r = tug({ "run", "release", "version=v2.2.0", "repo=" .. app })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    local e = run_end(r)
    assert.are.equal("failed", e.status)
    assert.matches("refusing to release v2.2.0: the working tree is not clean %(M package.json, %?%? notes.txt%)", e.reason)
    assert.are.same(before, world())
  end)

  it("refuses a tag that exists here or only on the remote, and an existing release branch", function()
    git("tag", "v2.2.0")
    local before = world()
    local r = tug({ "run", "release", "version=v2.2.0", "repo=" .. app })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("tag v2.2.0 already exists here", run_end(r).reason)
    assert.are.same(before, world())

    -- someone else pushed v2.3.0 and its branch; this clone has never fetched them
    local other = p.dir .. "/other"
    sh({ "git", "clone", "-q", origin, other })
    sh({ "git", "-C", other, "branch", "release/v2.3.0" })
    sh({ "git", "-C", other, "tag", "v2.3.0" })
    sh({ "git", "-C", other, "push", "-q", "origin", "v2.3.0", "release/v2.3.0" })
    before = world()
    r = tug({ "run", "release", "version=v2.3.0", "repo=" .. app })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    local reason = run_end(r).reason
    assert.matches("tag v2.3.0 already exists on origin", reason)
    assert.matches("branch release/v2.3.0 already exists on origin", reason)
    assert.are.same(before, world())
  end)

  it("refuses a version that is not greater than the current one, saying which, and bad params", function()
    local before = world()
    local r = tug({ "run", "release", "version=v2.1.0", "repo=" .. app, "files=package.json,VERSION" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    local reason = run_end(r).reason
    assert.matches("v2.1.0 is not greater than the current version 2.1.0 %(package.json%)", reason)
    assert.matches("v2.1.0 is not greater than the current version v2.1.0 %(VERSION%)", reason)

    r = tug({ "run", "release", "version=v2.2.0", "repo=" .. app, "files=package.json,Cargo.json" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("param 'files': Cargo.json is not in " .. app:gsub("%p", "%%%0"), run_end(r).reason)

    r = tug({ "run", "release", "version=2.2.0", "repo=" .. app })
    assert.are.equal(2, r.code, r.stdout .. r.stderr)
    assert.matches("param 'version': '2.2.0' does not match", r.stderr)

    r = tug({ "run", "release", "version=v2.2.0", "repo=" .. p.dir })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("param 'repo': .* is not a git repository", run_end(r).reason)
    assert.are.same(before, world())
  end)

  -- With a git hook that makes the release fail: the run rolls back, its reason matches
  -- each pattern, and everything is as it was.
  local function rolled_back_by_hook(dir, name, script, ...)
    hook(dir, name, script)
    local before = world()
    local r = tug({ "run", "release", "version=v2.2.0", "repo=" .. app })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    local e = run_end(r)
    assert.are.equal("rolled-back", e.status)
    for _, pattern in ipairs({ ... }) do assert.matches(pattern, e.reason) end
    assert.are.same(before, world())
    return r
  end

  it("undoes everything locally when the remote rejects the push", function()
    local r = rolled_back_by_hook(origin, "pre-receive", "echo 'releases are frozen' >&2\nexit 1\n",
      "push the branch and the tag", "releases are frozen")
    local undone = {}
    for _, u in ipairs(events(r, "undo_end")) do undone[#undone + 1] = u.name .. ":" .. u.status end
    assert.are.same({ "create the annotated tag:ok", "bump the version and commit:ok", "create the release branch:ok" }, undone)
  end)

  it("puts the repository back when the commit hook refuses the bump", function()
    rolled_back_by_hook(app .. "/.git", "pre-commit", "echo 'lint: package.json must be sorted' >&2\nexit 1\n",
      "bump the version and commit.*lint: package.json must be sorted")
  end)

  it("deletes what it pushed when the remote does not end up holding the release", function()
    -- a server that drops the tag after accepting it: the check after the push fails
    rolled_back_by_hook(origin, "post-receive", "git update-ref -d refs/tags/v2.2.0\n",
      "tag v2.2.0 on origin is missing")
    assert.not_matches("release/v2.2.0", remote_refs())
  end)

  it("releases locally only with push=false", function()
    local r = tug({ "run", "release", "version=v3.0.0", "repo=" .. app, "push=false" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("tag", git("cat-file", "-t", "v3.0.0"))
    assert.not_matches("v3.0.0", remote_refs())
    local skipped = {}
    for _, s in ipairs(events(r, "step_skip")) do skipped[#skipped + 1] = s.name end
    assert.are.same({ "push the branch and the tag", "check the remote has the release" }, skipped)
  end)

  it("plans the git writes and sends none", function()
    local before = world()
    local r = tug({ "plan", "release", "version=v2.2.0", "repo=" .. app, "files=package.json,VERSION" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("planned", run_end(r).status)
    local changes = {}
    for _, e in ipairs(events(r, "step_end")) do
      for _, c in ipairs(e.changes or {}) do changes[#changes + 1] = c.module .. ": " .. c.summary end
    end
    local text = table.concat(changes, "\n")
    local q = app:gsub("%p", "%%%0")
    assert.matches("exec: git %-C " .. q .. " checkout %-q %-b release/v2%.2%.0 %x+", text)
    assert.matches("step: write package.json: version 2.1.0 %-> 2.2.0", text)
    assert.matches("step: write VERSION: version v2.1.0 %-> v2.2.0", text)
    assert.matches("exec: git %-C " .. q .. " commit %-q %-m 'chore: bump version to v2%.2%.0'", text)
    assert.matches("exec: git %-C " .. q .. " tag %-a v2%.2%.0 %-m 'Release version 2%.2%.0'", text)
    assert.matches("exec: git %-C " .. q .. " push %-%-atomic origin refs/heads/release/v2%.2%.0", text)
    assert.are.same(before, world())
  end)

  -- Starts a release whose commit hook hangs, then kills tug and the hook with -9, as when
  -- the machine dies: the repository is left on the release branch, its commit not made.
  -- Returns the run id and the base commit.
  local function killed_during_commit()
    local mark, pidfile = p.dir .. "/slow", p.dir .. "/hook.pid"
    sh({ "rm", "-f", pidfile })
    write(mark, "")
    hook(app .. "/.git", "pre-commit", string.format("[ -f %s ] || exit 0\necho $$ > %s\nexec sleep 30\n", mark, pidfile))
    local base = git("rev-parse", "HEAD")
    local proc = tug({ "run", "release", "version=v2.2.0", "repo=" .. app }, { spawn = true })
    assert.is_true(project.wait_for(function() return (p:read("hook.pid") or ""):match("%d+\n") ~= nil end, 15))
    proc:kill("KILL")
    proc:wait()
    sh({ "kill", "-9", (read(pidfile):gsub("%s+$", "")) })
    -- git sees its hook die and gives the index back
    assert.is_true(project.wait_for(function() return not p:exists("app/.git/index.lock") end, 10))
    assert.are.equal(base, git("rev-parse", "HEAD"))
    assert.are.equal("release/v2.2.0", git("symbolic-ref", "--short", "HEAD"))
    sh({ "rm", mark })
    local _, run_id = p:journal()
    return run_id, base
  end

  it("resumes a run killed with -9 during the commit and ends with one consistent release", function()
    local run_id, base = killed_during_commit()
    local r = tug({ "resume", run_id })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("succeeded", run_end(r).status)
    assert.are.equal(base, git("rev-parse", "HEAD^"))
    assert.are.equal("chore: bump version to v2.2.0", git("log", "-1", "--format=%s"))
    assert.are.equal("1", git("rev-list", "--count", base .. "..release/v2.2.0"))
    assert.are.equal("", git("status", "--porcelain"))
    assert.are.equal(git("rev-parse", "HEAD"), git("rev-parse", "v2.2.0^{commit}"))
    assert.matches(git("rev-parse", "HEAD") .. "%s+refs/heads/release/v2%.2%.0", remote_refs())
    assert.matches(git("rev-parse", "v2.2.0") .. "%s+refs/tags/v2%.2%.0\n", remote_refs())
  end)

  it("on resume, stops at a tag made meanwhile and keeps a release branch someone else moved", function()
    local run_id = killed_during_commit()
    git("tag", "v2.2.0", "main")
    local r = tug({ "resume", run_id })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.are.equal("rolled-back", run_end(r).status)
    assert.matches("tag v2.2.0 appeared meanwhile and points at %x+, not %x+", run_end(r).reason)
    assert.are.equal("main", git("symbolic-ref", "--short", "HEAD"))
    assert.is_nil(try_git("rev-parse", "-q", "--verify", "refs/heads/release/v2.2.0"))
    assert.are.equal(git("rev-parse", "main"), git("rev-parse", "v2.2.0"))
    git("tag", "-d", "v2.2.0")

    run_id = killed_during_commit()
    write(app .. "/package.json", PACKAGE_JSON:gsub('"private": true', '"private": false'))
    git("commit", "-q", "-am", "someone else's change")
    local theirs = git("rev-parse", "HEAD")
    r = tug({ "resume", run_id })
    assert.are.equal(5, r.code, r.stdout .. r.stderr)
    local e = run_end(r)
    assert.are.equal("rollback-failed", e.status)
    assert.matches("release/v2.2.0 has moved to %x+ since the run began", e.reason)
    local undo = events(r, "undo_end")
    assert.matches("release/v2.2.0 is at %x+, which this run did not make: left in place", undo[#undo].error)
    assert.are.equal("main", git("symbolic-ref", "--short", "HEAD"))
    assert.are.equal(theirs, git("rev-parse", "release/v2.2.0"))
  end)
end)
