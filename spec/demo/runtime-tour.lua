-- make demo, until the playbooks land: a tour of the runtime that playbooks will stand on.
-- It reads a Kubernetes manifest, fans out checks as child processes on one event loop,
-- cuts off a hung check with a timeout, and keeps a secret out of every line it prints.

local function heading(text) print(("\n== %s"):format(text)) end

heading("1. YAML in, JSON out: a Deployment keeps its [] and {} and exact integers")
local manifest = yaml.decode([[
apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
  labels: { app: api, colour: blue }
spec:
  replicas: 4
  revisionHistoryLimit: 10
  template:
    spec:
      volumes: []
      securityContext: {}
      containers:
        - name: api
          image: multiship/api:v2.1.0
          resources: { limits: { memory: 9223372036854775807 } }
]])
print(json.encode(manifest.spec.template.spec))

heading("2. Ten checks at once as child processes, one of them hung")
local checks = {}
for i = 1, 10 do
  checks[i] = function()
    local argv = i == 7 and { "sleep", "30" } or { "sh", "-c", "sleep 0.2; echo ok" }
    local ok, result = pcall(task.timeout, "1s", exec.run, argv)
    return ok and ("check %2d: %s"):format(i, result.stdout:gsub("\n", ""))
      or ("check %2d: %s (the child was killed)"):format(i, tostring(result))
  end
end
local t0 = time.monotonic()
local results = { task.parallel(checks) }
for _, line in ipairs(results) do print(line) end
print(("all ten finished in %s, not 10 x 0.2 s + 30 s"):format(time.format_duration(time.monotonic() - t0)))

heading("3. Secrets never reach the terminal")
local token = log.secret("ghp_live_0123456789abcdef")
print("calling the admin API with token " .. token)
log.info("authenticated", { token = token, user = "deploy-bot" })
local ok, err = pcall(error, tug.error.new("auth", "token " .. token .. " was refused"))
print("error as a playbook would see it: " .. tostring(err))

heading("4. Timeouts hold even for code that never yields")
local ok2, err2 = pcall(task.timeout, 0.2, function() while true do end end)
print(ok2, err2.kind, tostring(err2))

print("\nThe playbook engine, the simulated cluster and the Multiship playbooks are next;")
print("see README.md for what exists today.")
