-- cli.lua: the playbook commands (list, describe, check, plan, run, runs, show, resume).
-- main.c hands them here with the command line as `...`; the returned integer is the
-- exit code (see `tug help`).

local playbooks = require("tug.playbooks")
local environment = require("tug.environment")
local journal = require("tug.journal")
local engine = require("tug.engine")
local report = require("tug.report")

local EXIT = engine.EXIT

local function say(fmt, ...)
  io.stdout:write(string.format(fmt, ...), "\n")
end

local function complain(fmt, ...)
  io.stderr:write("tug: ", string.format(fmt, ...), "\n")
end

local function usage(fmt, ...)
  complain(fmt, ...)
  io.stderr:write("run 'tug help' for usage\n")
  return EXIT.usage
end

-- Ctrl-C or SIGTERM cancelled the command (no run had started): not a problem to report.
local function cancelled(err)
  return type(err) == "table" and err.kind == "cancelled"
end

-- Flags each command accepts: name -> takes a value?
local FLAGS = {
  run = { env = true, playbooks = true, step = false, ["no-step"] = false, yes = false, from = true, tags = true,
    ["no-undo"] = false, output = true, junit = true, ["break-lock"] = false, every = true, ["metrics-listen"] = true },
  plan = { env = true, playbooks = true, from = true, tags = true, output = true },
  resume = { yes = false, step = false, ["no-step"] = false, output = true, junit = true, playbooks = true },
  list = { playbooks = true },
  describe = { playbooks = true },
  check = { playbooks = true },
  runs = {},
  show = {},
}

-- Splits the words after the command into flags, key=value params and plain words.
local function parse(command, words)
  local flags, params, rest = {}, {}, {}
  local allowed = FLAGS[command]
  local i = 1
  while i <= #words do
    local w = words[i]
    local name, inline = w:match("^%-%-([%w%-]+)=(.*)$")
    name = name or w:match("^%-%-([%w%-]+)$")
    if name then
      if allowed[name] == nil then
        return nil, string.format("'tug %s' has no option --%s", command, name)
      end
      if allowed[name] then
        local value = inline
        if value == nil then
          i = i + 1
          value = words[i]
          if value == nil then return nil, string.format("--%s needs a value", name) end
        end
        flags[name] = value
      else
        if inline then return nil, string.format("--%s takes no value", name) end
        flags[name] = true
      end
    elseif w:find("=", 1, true) and not w:match("^%-") then
      params[#params + 1] = w
    else
      rest[#rest + 1] = w
    end
    i = i + 1
  end
  return flags, params, rest
end

local function discover(flags)
  return playbooks.discover(playbooks.dirs(flags.playbooks))
end

local function find(flags, name)
  local pb, found = playbooks.find(playbooks.dirs(flags.playbooks), name)
  if pb then return pb end
  for _, err in ipairs(found.errors) do complain("%s", err) end
  local names = {}
  for _, p in ipairs(found.list) do names[#names + 1] = p.name end
  return nil, string.format("no playbook named '%s' in %s (playbooks: %s)", name,
    table.concat(playbooks.dirs(flags.playbooks), ":"), #names > 0 and table.concat(names, ", ") or "none")
end

-- ---- list, describe, check ----

local function cmd_list(flags)
  local found = discover(flags)
  local width = 4
  for _, pb in ipairs(found.list) do width = math.max(width, #pb.name) end
  for _, pb in ipairs(found.list) do
    say("%-" .. width .. "s  %-60s  %s", pb.name, pb.description or "", pb.path)
  end
  for _, err in ipairs(found.errors) do complain("%s", err) end
  return #found.errors > 0 and EXIT.usage or EXIT.ok
end

local function show_default(p)
  if p.default == nil then return "" end
  if type(p.default) == "table" then return " (default " .. table.concat(p.default, ",") .. ")" end
  return " (default " .. tostring(p.default) .. ")"
end

local function cmd_describe(flags, _, rest)
  if not rest[1] then return usage("'tug describe' needs a playbook name") end
  local pb, err = find(flags, rest[1])
  if not pb then return usage("%s", err) end
  say("%s: %s", pb.name, pb.description or "")
  say("  file: %s", pb.path)
  if pb.lock then say("  lock: %s (one run per environment at a time)", pb.lock) end
  if pb.step_by_step then say("  runs step by step: asks before each step (--no-step runs it straight through)") end
  local names = {}
  for k in pairs(pb.params) do names[#names + 1] = k end
  table.sort(names)
  say("params:")
  if #names == 0 then say("  (none)") end
  for _, k in ipairs(names) do
    local p = pb.params[k]
    local t = p.type == "enum" and ("enum " .. table.concat(p.values, "|")) or p.type
    say("  %-18s %-22s%s%s%s", k, t, p.required and " required" or "", show_default(p),
      p.help and ("  " .. p.help) or "")
  end
  say("steps:")
  for i, s in ipairs(pb.steps) do
    local marks = {}
    if s.undo then marks[#marks + 1] = "undo" end
    if s.when then marks[#marks + 1] = "when" end
    if s.confirm then marks[#marks + 1] = "confirm" end
    if s.read_only then marks[#marks + 1] = "read-only" end
    if s.timeout then marks[#marks + 1] = "timeout " .. time.format_duration(s.timeout) end
    if s.retries > 0 then marks[#marks + 1] = "retries " .. s.retries end
    if #s.tags > 0 then marks[#marks + 1] = "tags " .. table.concat(s.tags, ",") end
    say("  %2d. %-40s %s", i, s.name, #marks > 0 and ("[" .. table.concat(marks, "] [") .. "]") or "")
  end
  return EXIT.ok
end

-- Checks ${...} references without resolving them (CI may not hold the secrets).
local function check_refs(path, key, value, problems)
  if type(value) == "string" then
    for ref in value:gmatch("%${([^}]*)}") do
      local kind, rest = ref:match("^(%w+):(.+)$")
      if kind == "secret" then
        local provider = rest:match("^([%w_]+):.+$")
        if not provider then
          problems[#problems + 1] = string.format("%s: %s: ${%s} must be ${secret:PROVIDER:NAME}", path, key, ref)
        elseif not environment.providers[provider] then
          problems[#problems + 1] = string.format("%s: %s: unknown secret provider '%s'", path, key, provider)
        end
      elseif kind ~= "env" then
        problems[#problems + 1] = string.format("%s: %s: unknown reference ${%s}", path, key, ref)
      end
    end
  elseif type(value) == "table" then
    for k, v in pairs(value) do
      check_refs(path, key == "" and tostring(k) or key .. "." .. tostring(k), v, problems)
    end
  end
end

local function cmd_check(flags, _, rest)
  local problems = {}
  local count = 0
  local dirs = {}
  for _, path in ipairs(rest) do
    if path:match("%.lua$") then
      local pb, err = playbooks.load(path)
      if pb then count = count + 1 else problems[#problems + 1] = err end
    else
      dirs[#dirs + 1] = path
    end
  end
  if #rest == 0 then dirs = playbooks.dirs(flags.playbooks) end
  if #dirs > 0 then
    local found = playbooks.discover(dirs)
    count = count + #found.list
    for _, err in ipairs(found.errors) do problems[#problems + 1] = err end
  end
  local envs = environment.available()
  for _, name in ipairs(envs) do
    local ok, doc_or_err, path = pcall(environment.load, name, { resolve_refs = false })
    if ok then
      check_refs(path, "", doc_or_err, problems)
    elseif cancelled(doc_or_err) then
      error(doc_or_err, 0)
    else
      problems[#problems + 1] = tostring(doc_or_err)
    end
  end
  for _, p in ipairs(problems) do io.stderr:write(log.redact(p), "\n") end
  say("checked %d playbook%s and %d environment%s: %d problem%s", count, count == 1 and "" or "s",
    #envs, #envs == 1 and "" or "s", #problems, #problems == 1 and "" or "s")
  return #problems > 0 and EXIT.usage or EXIT.ok
end

-- ---- plan, run, resume ----

local function load_env(name, explicit)
  local ok, env = pcall(environment.load, name)
  if not ok and cancelled(env) then error(env, 0) end
  if not ok then return nil, tostring(env) end
  if env.protected and not explicit then
    return nil, string.format("environment '%s' is protected: name it explicitly with --env %s", name, name)
  end
  return env
end

local function reporter_for(flags)
  if flags.output and not report.OUTPUTS[flags.output] then
    return nil, string.format("--output must be tty, plain or json, not '%s'", flags.output)
  end
  return report.new({ output = flags.output, junit = flags.junit })
end

local function tag_set(text)
  if not text then return nil end
  local set, list = {}, {}
  for t in text:gmatch("[^,%s]+") do set[t] = true list[#list + 1] = t end
  return set, list
end

-- On-call runbooks (step_by_step = true) ask before each step unless --no-step.
local function step_mode(pb, flags)
  if flags.step then return true end
  return pb.step_by_step == true and not flags["no-step"]
end

-- Step-by-step runs need a terminal to ask on; say so before anything starts.
local function check_step_mode(pb, flags)
  if not step_mode(pb, flags) or tug.sys.isatty(0) then return true end
  if flags.step then return nil, "--step needs a terminal to ask on" end
  return nil, pb.name .. " runs step by step and needs a terminal to ask on (--no-step runs it straight through)"
end

-- --every and --metrics-listen (runtime/lua/every.lua), checked before anything runs:
-- the loop's options, or nil and a usage message.
local function every_options(pb, flags)
  local every = require("tug.every")
  if not flags.every then return nil, "--metrics-listen needs --every (the metrics describe repeated runs)" end
  local interval, ierr = every.parse_interval(flags.every)
  if not interval then return nil, ierr end
  local listen
  if flags["metrics-listen"] then
    local host, port = every.parse_listen(flags["metrics-listen"])
    if not host then return nil, port end
    listen = { host = host, port = port }
  end
  if step_mode(pb, flags) then
    return nil, "--every runs unattended: " .. (flags.step and "it cannot ask before each step (--step)"
      or (pb.name .. " runs step by step; add --no-step to repeat it"))
  end
  return { interval = interval, listen = listen, playbook = pb.name,
    new_reporter = function() return (reporter_for(flags)) end }
end

local function cmd_run(flags, params, rest, plan)
  local command = plan and "plan" or "run"
  if not rest[1] then return usage("'tug %s' needs a playbook name", command) end
  if rest[2] then return usage("unexpected '%s' (params are key=value)", rest[2]) end
  local pb, err = find(flags, rest[1])
  if not pb then return usage("%s", err) end
  local values, errors = playbooks.parse_params(pb, params)
  if not values then
    for _, e in ipairs(errors) do complain("%s", e) end
    return EXIT.usage
  end
  local env, env_err = load_env(flags.env or "local", flags.env ~= nil or plan)
  if not env then return usage("%s", env_err) end
  local reporter, rerr = reporter_for(flags)
  if not reporter then return usage("%s", rerr) end
  local tags, tag_list = tag_set(flags.tags)
  local every, every_err
  if flags.every or flags["metrics-listen"] then
    every, every_err = every_options(pb, flags)
    if not every then return usage("%s", every_err) end
  end
  if not plan then
    local ok, serr = check_step_mode(pb, flags)
    if not ok then return usage("%s", serr) end
  end
  local function run_once(each_reporter, on_interrupt, notify_when)
    return engine.run({
      pb = pb, env = env, params = values, plan = plan, yes = flags.yes, step_mode = step_mode(pb, flags),
      from = flags.from, tags = tags, tag_list = tag_list, no_undo = flags["no-undo"],
      reporter = each_reporter, break_lock = flags["break-lock"], on_interrupt = on_interrupt,
      notify_when = notify_when,
    })
  end
  if not every then return run_once(reporter) end
  every.env, every.run = env.name, run_once
  return require("tug.every").loop(every)
end

local function cmd_resume(flags, _, rest)
  local id = rest[1]
  if not id then return usage("'tug resume' needs a run id (see 'tug runs')") end
  local events, err = journal.read(id)
  if not events then return usage("%s", err) end
  local run = journal.summarise(events)
  if run.status ~= "running" then
    return usage("run %s already ended: %s%s", id, tostring(run.status), run.reason and (" (" .. run.reason .. ")") or "")
  end
  local pb, perr = playbooks.load(run.path)
  if not pb then
    local found = discover(flags)
    pb = found.by_name[run.playbook]
    if not pb then return usage("cannot load playbook %s for run %s: %s", tostring(run.playbook), id, tostring(perr)) end
  end
  local env, env_err = load_env(run.env, true)
  if not env then return usage("%s", env_err) end
  local reporter, rerr = reporter_for(flags)
  if not reporter then return usage("%s", rerr) end
  local ok, serr = check_step_mode(pb, flags)
  if not ok then return usage("%s", serr) end
  return engine.run({
    pb = pb, env = env, params = run.params or {}, yes = flags.yes, step_mode = step_mode(pb, flags),
    reporter = reporter, resume = run,
  })
end

-- ---- runs, show ----

local function cmd_runs()
  local runs = journal.list()
  if #runs == 0 then say("no runs in %s", journal.dir()) return EXIT.ok end
  for _, r in ipairs(runs) do
    say("%-22s  %-20s  %-12s  %-16s  %s", r.run_id, tostring(r.playbook), tostring(r.env), tostring(r.status),
      r.started and r.started:sub(1, 19):gsub("T", " ") or "")
  end
  return EXIT.ok
end

local function cmd_show(_, _, rest)
  local id = rest[1]
  if not id then return usage("'tug show' needs a run id (see 'tug runs')") end
  local events, err = journal.read(id)
  if not events then return usage("%s", err) end
  local run = journal.summarise(events)
  say("run %s: %s on %s: %s%s", id, tostring(run.playbook), tostring(run.env), tostring(run.status),
    run.reason and (" (" .. run.reason .. ")") or "")
  say("params: %s", json.encode(run.params or {}))
  for i, name in ipairs(run.step_names or {}) do
    local e = run.steps[i]
    local line = e and (e.status .. (e.duration and (" in " .. time.format_duration(math.floor(e.duration * 10 + 0.5) / 10)) or ""))
      or "not run"
    if e and e.error then line = line .. ": " .. e.error end
    local u = run.undone[i]
    if u then line = line .. "; undo " .. u.status .. (u.error and (": " .. u.error) or "") end
    say("  %2d. %-40s %s", i, name, line)
  end
  for _, e in ipairs(events) do
    if e.event == "decision" then say("  decision: %s -> %s", e.question, e.answer) end
  end
  if run.state then say("state: %s", json.encode(run.state)) end
  return EXIT.ok
end

local COMMANDS = {
  list = cmd_list, describe = cmd_describe, check = cmd_check,
  plan = function(f, p, r) return cmd_run(f, p, r, true) end,
  run = function(f, p, r) return cmd_run(f, p, r, false) end,
  resume = cmd_resume, runs = cmd_runs, show = cmd_show,
}

-- The simulated cluster a `simulate: true` environment started lives in this process:
-- it stops with the command, or the loop would serve it forever.
local function stop_simulator()
  local k8s = package.loaded["k8s"]
  local simulator = k8s and k8s.simulator()
  if simulator then simulator:close() end
end

local args = { ... }
local command = table.remove(args, 1)
if command == "sim" then return require("sim.cli")(args) end
local flags, params, rest = parse(command, args)
if not flags then return usage("%s", params) end
local ok, code = pcall(COMMANDS[command], flags, params, rest)
pcall(stop_simulator) -- after Ctrl-C this task is cancelled: closing must not wait
if ok then return code end
-- Ctrl-C or SIGTERM before a run started (loading playbooks, resolving the environment):
-- nothing ran, no journal or lock was made. A run answers them itself (rolls back, exit 4).
if cancelled(code) and tug.interrupted() > 0 then
  complain("interrupted: 'tug %s' stopped before anything ran", command)
  return EXIT.interrupted
end
-- a structured error from loading or validation is a usage problem; anything else is a bug
if type(code) == "table" and (code.kind == "usage" or code.kind == "playbook" or code.kind == "environment") then
  complain("%s", tostring(code))
  return EXIT.usage
end
error(code, 0)
