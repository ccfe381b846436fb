-- Writes the playbooks the engine benchmarks run: N no-op steps (per-step overhead) and a
-- 50-step playbook for `tug plan` in DIR/plan, plus the equivalent Ansible playbook.
--   tug lua spec/bench/engine.lua DIR
local dir = assert(arg[1], "usage: engine.lua DIR")
exec.run({ "mkdir", "-p", dir .. "/playbooks", dir .. "/environments" }, { check = true })

local function write(path, text)
  local f = assert(io.open(dir .. "/" .. path, "w"))
  f:write(text)
  f:close()
end

write("environments/local.yaml", "name: local\n")

local function steps(n, body)
  local out = {}
  for i = 1, n do out[i] = string.format('    step "step %d" { run = function(ctx) %s end },', i, body) end
  return table.concat(out, "\n")
end

write("playbooks/noop10k.lua", "return playbook { steps = {\n" .. steps(10000, "") .. "\n} }\n")
-- each step adds one key to ctx.state (the journal records what changed, not the whole state)
local grow = {}
for i = 1, 10000 do
  grow[i] = string.format('    step "step %d" { run = function(ctx) ctx.state.key_%d = %d end },', i, i, i)
end
write("playbooks/grow10k.lua", "return playbook { steps = {\n" .. table.concat(grow, "\n") .. "\n} }\n")
exec.run({ "mkdir", "-p", dir .. "/plan/playbooks", dir .. "/plan/environments" }, { check = true })
write("plan/environments/local.yaml", "name: local\n")
write("plan/playbooks/plan50.lua", "return playbook { steps = {\n" ..
  steps(50, 'exec.run({ "true" })') .. "\n} }\n")

local tasks = {}
for i = 1, 50 do
  tasks[i] = string.format("    - name: step %d\n      ansible.builtin.command: /bin/true\n", i)
end
write("plan/plan50.yml", "- hosts: localhost\n  connection: local\n  gather_facts: false\n  tasks:\n" ..
  table.concat(tasks) .. "\n")
