-- scaffold.lua: `tug init [DIR]`, a new project that runs at once: a first playbook with
-- its spec, a local environment on a cluster simulated inside tug, a GitHub Actions
-- workflow, and the editor's Lua language server config pointing at tug's definitions.
-- Files that exist are kept as they are, never overwritten.

local M = {}

local CLUSTER = [==[
# The cluster `--env local` runs against: simulated inside tug (no Kubernetes needed).
# Same format as `tug sim --scenario FILE`; see tug's modules/sim/README.md.
namespace: demo
warm_start: true              # the objects below start rolled out: pods Ready
timing: { pod_start: 200ms, ready_after: 300ms }
objects:
  - apiVersion: v1
    kind: Namespace
    metadata: { name: demo }
  - apiVersion: apps/v1
    kind: Deployment
    metadata: { name: web, labels: { app: web } }
    spec:
      replicas: 2
      selector: { matchLabels: { app: web } }
      template:
        metadata: { labels: { app: web } }
        spec:
          containers:
            - { name: web, image: "nginx:1.27", ports: [{ containerPort: 80 }] }
]==]

local LOCAL_ENV = [==[
# local: a Kubernetes cluster simulated inside tug (local-cluster.yaml says what runs on
# it), so runs here touch nothing outside the tug process. Copy this file to staging.yaml
# or production.yaml and replace `simulate` and `scenario` with `context: YOUR-CONTEXT`
# (a kubeconfig context) to run the same playbooks on a real cluster; add
# `protected: true` to production so that tug asks before every change.
name: local
description: this machine, with a simulated cluster
kubernetes:
  simulate: true
  namespace: demo
  scenario: environments/local-cluster.yaml
]==]

local HELLO = [==[
-- hello: your first playbook. Try:
--   tug describe hello                 params and steps
--   tug plan hello replicas=4          what it would change; changes nothing
--   tug run hello replicas=4           run it (on --env local: the simulated cluster)
--   tug runs; tug show RUN_ID          what happened
-- When a step fails, the undos of the steps that finished run in reverse.
return playbook {
  description = "scale the web Deployment and wait until it has rolled out",
  params = {
    replicas = { type = "integer", default = 3, min = 1, max = 20, help = "how many web pods" },
  },
  lock = "web", -- one run at a time per environment
  steps = {
    step "see what runs now" {
      read_only = true,
      run = function(ctx)
        local cluster = k8s.connect(ctx.env.kubernetes)
        local web = cluster:get("deployment", "web")
        ctx.state.before = web.spec.replicas
        ctx.log.info(string.format("web runs %d pods of %s", web.spec.replicas,
          web.spec.template.spec.containers[1].image))
      end,
    },
    step "scale web" {
      confirm = "Scale web on {env} from {state.before} to {params.replicas} pods?",
      timeout = "5m",
      run = function(ctx)
        local cluster = k8s.connect(ctx.env.kubernetes)
        cluster:scale("deployment/web", ctx.params.replicas)
        cluster:rollout_status("deployment/web", { timeout = "4m" })
      end,
      undo = function(ctx)
        k8s.connect(ctx.env.kubernetes):scale("deployment/web", ctx.state.before)
      end,
    },
  },
}
]==]

local HELLO_SPEC = [==[
-- The hello playbook, run for real on the simulated cluster: `tug test spec`.
local function tug_run(...)
  return exec.run({ tug.executable, ... }, { timeout = 120 })
end

describe("hello", function()
  it("plans without changing anything", function()
    local r = tug_run("plan", "hello", "replicas=4", "--output", "plain")
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.matches("would", r.stdout)
  end)

  it("scales web and says so in its events", function()
    local r = tug_run("run", "hello", "replicas=4", "--yes", "--output", "json")
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local last
    for line in r.stdout:gmatch("[^\n]+") do last = json.decode(line) end
    assert.are.equal("run_end", last.event)
    assert.are.equal("succeeded", last.status)
  end)
end)
]==]

local WORKFLOW = [==[
# tug in CI: check every playbook and environment, run the specs, and show the plan.
# tug writes GitHub groups, annotations and a step summary when GITHUB_ACTIONS=true.
# Set the repository variable TUG_DEB_URL to where your team keeps tug's .deb
# (`make deb` in tug's source tree builds it).
name: playbooks
on: [push, pull_request]
jobs:
  tug:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - name: install tug
        run: |
          curl -fsSL "${{ vars.TUG_DEB_URL }}" -o "$RUNNER_TEMP/tug.deb"
          sudo apt-get install -y "$RUNNER_TEMP/tug.deb"
      - run: tug check
      - run: tug test spec
      - run: tug plan hello
      - run: tug run hello --yes --junit hello.xml
]==]

local GITIGNORE = ".tug/\n"

-- Where tug's Lua language server definitions are: installed beside the binary
-- (PREFIX/share/tug/meta), or the source tree's meta/ when tug runs from it.
function M.meta_dir()
  local exe = tug.executable or ""
  local dir = exe:match("^(.*)/[^/]+$") or "."
  for _, candidate in ipairs({ dir .. "/../share/tug/meta", dir .. "/meta" }) do
    local f = io.open(candidate .. "/playbook.lua")
    if f then
      f:close()
      return (candidate:gsub("/bin/%.%./", "/"))
    end
  end
  return nil
end

local function luarc(meta)
  local library = meta and string.format("[%q]", meta) or "[]"
  return string.format([==[
{
  "runtime.version": "Lua 5.4",
  "workspace.library": %s,
  "workspace.checkThirdParty": false
}
]==], library)
end

-- The files of a new project, in the order they are written.
function M.files()
  return {
    { "playbooks/hello.lua", HELLO },
    { "environments/local.yaml", LOCAL_ENV },
    { "environments/local-cluster.yaml", CLUSTER },
    { "spec/hello_spec.lua", HELLO_SPEC },
    { ".github/workflows/playbooks.yml", WORKFLOW },
    { ".luarc.json", luarc(M.meta_dir()) },
    { ".gitignore", GITIGNORE },
  }
end

-- Writes the project into `dir`; returns the lines to print, or nil and an error.
function M.init(dir)
  local lines = {}
  for _, file in ipairs(M.files()) do
    local path = dir .. "/" .. file[1]
    local existing = io.open(path)
    if existing then
      existing:close()
      lines[#lines + 1] = "kept    " .. file[1] .. " (it exists)"
    else
      local parent = path:match("^(.*)/[^/]+$")
      local ok, err = tug.sys.mkdir(parent)
      if not ok then return nil, "cannot create " .. parent .. ": " .. err end
      local f, ferr = io.open(path, "w")
      if not f then return nil, "cannot write " .. path .. ": " .. ferr end
      f:write(file[2])
      f:close()
      lines[#lines + 1] = "created " .. file[1]
    end
  end
  return lines
end

return M
