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

local command -- the command being run, for the hint after a usage error

local function usage(fmt, ...)
  complain(fmt, ...)
  io.stderr:write(command and ("run 'tug help " .. command .. "' for usage\n") or "run 'tug help' for usage\n")
  return EXIT.usage
end

-- Ctrl-C or SIGTERM cancelled the command (no run had started): not a problem to report.
local function cancelled(err)
  return type(err) == "table" and err.kind == "cancelled"
end

-- Flags each command accepts: name -> takes a value?
local FLAGS = {
  run = { env = true, context = true, namespace = true, playbooks = true, step = false, ["no-step"] = false, yes = false, from = true, tags = true,
    ["no-undo"] = false, output = true, junit = true, ["break-lock"] = false, every = true, ["metrics-listen"] = true },
  plan = { env = true, context = true, namespace = true, playbooks = true, from = true, tags = true, output = true },
  resume = { context = true, namespace = true, yes = false, step = false, ["no-step"] = false, output = true, junit = true,
    playbooks = true, ["break-lock"] = false },
  list = { playbooks = true },
  describe = { playbooks = true },
  check = { playbooks = true },
  runs = { prune = false, keep = true, ["older-than"] = true, ["dry-run"] = false, unfinished = false },
  show = {},
  help = { man = false },
  completion = {},
  init = {},
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
    if w == "--help" or w == "-h" then
      flags.help = true
    elseif name then
      if allowed[name] == nil then
        local known = {}
        for flag in pairs(allowed) do known[#known + 1] = flag end
        table.sort(known)
        return nil, string.format("'tug %s' has no option --%s%s", command, name,
          require("tug.suggest").hint(name, known, "--%s"))
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

-- The named playbook, or nil and why not: the file that should declare it does not load
-- (its error alone), or no file declares it (the names there are, the closest first, and
-- the files that failed to load, since one of them may be it).
local function find(flags, name)
  local pb, found = playbooks.find(playbooks.dirs(flags.playbooks), name)
  if pb then return pb end
  if found.load_error then return nil, "cannot load playbook '" .. name .. "': " .. found.load_error end
  local names = {}
  for _, p in ipairs(found.list) do names[#names + 1] = p.name end
  local msg = string.format("no playbook named '%s' in %s%s (playbooks: %s)", name,
    table.concat(playbooks.dirs(flags.playbooks), ":"), require("tug.suggest").hint(name, names),
    #names > 0 and table.concat(names, ", ") or "none")
  if #found.errors > 0 then
    msg = msg .. string.format("\n%d playbook file%s did not load:\n  %s", #found.errors,
      #found.errors == 1 and "" or "s", table.concat(found.errors, "\n  "))
  end
  return nil, msg
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

-- --context and --namespace: the kubeconfig context and namespace the environment's
-- Kubernetes section names, overridden for this run (a resume keeps those of its run
-- unless given again). Returns the override (nil when none), or nil and a usage message.
local function kubernetes_override(env, flags, previous)
  local override = {}
  for _, key in ipairs({ "context", "namespace" }) do
    local value = flags[key] or (previous and previous[key])
    if value ~= nil then
      if type(value) ~= "string" or not value:match("^[%w][%w%-%._@:/]*$") then
        return nil, string.format("--%s: '%s' is not a %s name", key, tostring(value), key)
      end
      override[key] = value
    end
  end
  if next(override) == nil then return nil end
  local k = env.kubernetes or {}
  if override.context and (k.simulate or k.server) then
    return nil, string.format("--context: environment '%s' reaches its cluster through %s, not a kubeconfig context",
      env.name, k.simulate and "the simulator (kubernetes.simulate)" or "kubernetes.server")
  end
  local copy = {}
  for key, value in pairs(k) do copy[key] = value end
  for key, value in pairs(override) do copy[key] = value end
  if override.context then copy.cluster = nil end -- a context names its own cluster
  env.kubernetes = copy
  return override
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

-- A protected environment asks before every step that changes it; without a terminal and
-- without --yes nobody can answer, so say so before the lock, the journal or any step.
local function check_protected(pb, env, flags)
  if not env.protected or flags.yes or tug.sys.isatty(0) then return true end
  local changing = {}
  for _, s in ipairs(pb.steps) do
    if not s.read_only then changing[#changing + 1] = '"' .. s.name .. '"' end
  end
  if #changing == 0 then return true end
  return nil, string.format("%s is protected: %s %s it and there is no terminal to ask " ..
    "(run with --yes to go ahead)", env.name, #changing == 1 and ("step " .. changing[1]) or
    ("steps " .. table.concat(changing, ", ")), #changing == 1 and "changes" or "change")
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
  local _, retention_err = journal.retention_from_env()
  if retention_err then return usage("%s", retention_err) end
  local values, errors = playbooks.parse_params(pb, params)
  if not values then
    for _, e in ipairs(errors) do complain("%s", e) end
    return EXIT.usage
  end
  local env, env_err = load_env(flags.env or "local", flags.env ~= nil or plan)
  if not env then return usage("%s", env_err) end
  local override, oerr = kubernetes_override(env, flags)
  if oerr then return usage("%s", oerr) end
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
    if ok then ok, serr = check_protected(pb, env, flags) end
    if not ok then return usage("%s", serr) end
  end
  local function run_once(each_reporter, on_interrupt, notify_when)
    return engine.run({
      pb = pb, env = env, params = values, plan = plan, yes = flags.yes, step_mode = step_mode(pb, flags),
      from = flags.from, tags = tags, tag_list = tag_list, no_undo = flags["no-undo"],
      reporter = each_reporter, break_lock = flags["break-lock"], on_interrupt = on_interrupt,
      kubernetes_override = override,
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
  if not events then return usage("%s ('tug runs' lists them)", err) end
  local _, retention_err = journal.retention_from_env()
  if retention_err then return usage("%s", retention_err) end
  -- One process per run: the claim comes before the journal is read again, so a resume
  -- that waited for another one to end sees how that one ended.
  local claim <close>, why = require("tug.lock").run_lock(id, journal.summarise(events).playbook, "resume")
  if not claim then
    complain("%s", why)
    return EXIT.locked
  end
  local path
  events, path = journal.read(id)
  if not events then return usage("%s", path) end
  local run = journal.summarise(events)
  if run.status ~= "running" then
    return usage("run %s already ended: %s%s", id, tostring(run.status), run.reason and (" (" .. run.reason .. ")") or "")
  end
  if run.state_broken then
    return usage("cannot resume run %s: its saved state cannot be rebuilt from %s: %s", id, path, run.state_broken)
  end
  local pb, perr = playbooks.load(run.path)
  if not pb then
    local found = discover(flags)
    pb = found.by_name[run.playbook]
    if not pb then return usage("cannot load playbook %s for run %s: %s", tostring(run.playbook), id, tostring(perr)) end
  end
  local env, env_err = load_env(run.env, true)
  if not env then return usage("%s", env_err) end
  local override, oerr = kubernetes_override(env, flags, run.kubernetes)
  if oerr then return usage("%s", oerr) end
  local reporter, rerr = reporter_for(flags)
  if not reporter then return usage("%s", rerr) end
  local ok, serr = check_step_mode(pb, flags)
  if ok then ok, serr = check_protected(pb, env, flags) end
  if not ok then return usage("%s", serr) end
  return engine.run({
    pb = pb, env = env, params = run.params or {}, yes = flags.yes, step_mode = step_mode(pb, flags),
    reporter = reporter, resume = run, kubernetes_override = override, run_lock = claim,
    break_lock = flags["break-lock"],
  })
end

-- ---- runs, show ----

local function run_line(r)
  return string.format("%-22s  %-20s  %-12s  %-16s  %s", r.run_id, tostring(r.playbook), tostring(r.env),
    tostring(r.status), r.started and r.started:sub(1, 19):gsub("T", " ") or "")
end

-- tug runs --prune [--keep N] [--older-than DURATION] [--unfinished] [--dry-run]; without
-- --keep or --older-than, the retention settings TUG_RETAIN_RUNS and TUG_RETAIN_AGE.
local function cmd_prune(flags)
  local rules
  if flags.keep or flags["older-than"] then
    rules = {}
    if flags.keep then
      rules.keep = math.tointeger(tonumber(flags.keep))
      if not rules.keep or rules.keep < 0 then
        return usage("--keep must be a whole number of runs, not '%s'", flags.keep)
      end
    end
    if flags["older-than"] then
      local err
      rules.older_than, err = time.parse_duration(flags["older-than"])
      if not rules.older_than then return usage("--older-than: %s", err) end
    end
  else
    local err
    rules, err = journal.retention_from_env()
    if not rules then
      return usage("%s", err or "'tug runs --prune' needs --keep N or --older-than DURATION " ..
        "(or the retention settings TUG_RETAIN_RUNS and TUG_RETAIN_AGE)")
    end
  end
  rules.unfinished = flags.unfinished
  local runs = journal.list()
  local chosen = journal.select_prune(runs, rules)
  local removed = 0
  for _, r in ipairs(chosen.remove) do
    if flags["dry-run"] then
      say("would remove  %s", run_line(r))
    else
      local ok, err = journal.remove(r.run_id)
      if ok then
        removed = removed + 1
        say("removed  %s", run_line(r))
      else
        complain("cannot remove run %s: %s", r.run_id, err)
      end
    end
  end
  for _, r in ipairs(chosen.kept_unfinished) do
    say("kept  %s  (unfinished: resume it, or prune it with --unfinished)", run_line(r))
  end
  local count = flags["dry-run"] and #chosen.remove or removed
  say("%s %d run%s of %d in %s", flags["dry-run"] and "would remove" or "removed", count, count == 1 and "" or "s",
    #runs, journal.dir())
  return (flags["dry-run"] or removed == #chosen.remove) and EXIT.ok or EXIT.failed
end

local function cmd_runs(flags, _, rest)
  if rest[1] then return usage("unexpected '%s' ('tug runs' takes no run id; see 'tug show')", rest[1]) end
  if flags.prune then return cmd_prune(flags) end
  for _, name in ipairs({ "keep", "older-than", "dry-run", "unfinished" }) do
    if flags[name] then return usage("--%s goes with --prune", name) end
  end
  local runs = journal.list()
  if #runs == 0 then say("no runs in %s", journal.dir()) return EXIT.ok end
  -- a run whose journal has not ended and whose process is gone died: it can be resumed
  local host, died = tug.sys.hostname(), {}
  for _, r in ipairs(runs) do
    if r.status == "running" and journal.alive(r, host) == false then
      r.status = "died"
      died[#died + 1] = r.run_id
    end
    say("%s", run_line(r))
  end
  for _, id in ipairs(died) do say("run %s died before it ended: tug resume %s", id, id) end
  return EXIT.ok
end

local function cmd_show(_, _, rest)
  local id = rest[1]
  if not id then return usage("'tug show' needs a run id (see 'tug runs')") end
  local events, path = journal.read(id)
  if not events then return usage("%s ('tug runs' lists them)", path) end
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
  if run.state_broken then
    say("state: cannot be rebuilt from %s: %s", path, run.state_broken)
  elseif run.state then
    say("state: %s", json.encode(run.state))
  end
  return EXIT.ok
end

-- ---- help ----

local function cmd_help(flags, _, rest)
  local help = require("tug.help")
  if flags.man then
    io.stdout:write(help.man(tug.version))
  elseif rest[1] then
    local text = help.command(rest[1])
    if not text then
      command = nil
      return usage("no command '%s'", rest[1])
    end
    io.stdout:write(text)
  else
    io.stdout:write(help.overview())
  end
  return EXIT.ok
end

local function cmd_completion(_, _, rest)
  local script = require("tug.completion").scripts[rest[1] or ""]
  if not script then return usage("'tug completion' needs a shell: bash, zsh or fish") end
  io.stdout:write(script)
  return EXIT.ok
end

-- ---- init ----

local function cmd_init(_, _, rest)
  if rest[2] then return usage("'tug init' takes one directory, not '%s'", rest[2]) end
  local dir = rest[1] or "."
  local scaffold = require("tug.scaffold")
  local lines, err = scaffold.init(dir)
  if not lines then
    complain("%s", err)
    return EXIT.failed
  end
  for _, line in ipairs(lines) do say("%s", line) end
  if not scaffold.meta_dir() then
    complain("tug's Lua definitions are not installed beside it: .luarc.json has no library (make install puts them in PREFIX/share/tug/meta)")
  end
  say("\nnext:%s tug run hello      (then: tug runs, tug show RUN_ID, tug test spec)",
    dir ~= "." and (" cd " .. dir .. " &&") or "")
  return EXIT.ok
end

local COMMANDS = {
  help = cmd_help,
  init = cmd_init,
  completion = cmd_completion,
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
command = table.remove(args, 1)
if command == "sim" and not (args[1] == "--help" or args[1] == "-h") then return require("sim.cli")(args) end
if command == "sim" then return cmd_help({}, {}, { "sim" }) end
if command == "__complete" then
  for _, c in ipairs(require("tug.completion").candidates(args)) do say("%s", c) end
  return EXIT.ok
end
local flags, params, rest = parse(command, args)
if not flags then return usage("%s", params) end
if flags.help then return cmd_help({}, {}, { command }) end
local ok, code = pcall(COMMANDS[command], flags, params, rest)
pcall(stop_simulator) -- after Ctrl-C this task is cancelled: closing must not wait
if ok then return code end
-- Ctrl-C or SIGTERM before a run started (loading playbooks, resolving the environment):
-- nothing ran, no journal or lock was made. A run answers them itself (rolls back, exit 4).
if cancelled(code) and tug.interrupted() > 0 then
  complain("interrupted: 'tug %s' stopped before anything ran", command)
  return EXIT.interrupted
end
-- a structured error from loading or validation is a usage problem; one from the journal
-- or a lock (a directory that cannot be created, a file that cannot be written) is a
-- failure to run; anything else is a bug
if type(code) == "table" and (code.kind == "usage" or code.kind == "playbook" or code.kind == "environment") then
  complain("%s", tostring(code))
  return EXIT.usage
end
if type(code) == "table" and (code.kind == "journal" or code.kind == "lock") then
  complain("%s", tostring(code))
  return EXIT.failed
end
error(code, 0)
