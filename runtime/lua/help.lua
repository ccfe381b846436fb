-- help.lua: every word of tug's usage, in one place: `tug help` (the whole text),
-- `tug help COMMAND` and `tug COMMAND --help` (one command), and `tug help --man` (the
-- same text as a man page, which `make install` installs as tug(1)).

local M = {}

-- Each command: its synopsis, one line of what it does, more lines, and its options.
local RUN_OPTIONS = {
  { "--env E", "environment (environments/E.yaml; default local)" },
  { "--context C", "the kubeconfig context to use instead of the environment's kubernetes.context" },
  { "--namespace N", "the namespace to use instead of the environment's kubernetes.namespace" },
  { "--step", "ask before every step: run, skip or abort (on-call mode)" },
  { "--no-step", "run a step-by-step runbook straight through" },
  { "--yes", "answer yes to confirmations (CI)" },
  { "--from STEP", "start at this step (name or number)" },
  { "--tags T1,T2", "run only the steps with one of these tags" },
  { "--no-undo", "on a failure, stop without undoing" },
  { "--output tty|plain|json", "live view, timestamped lines, or one JSON event a line" },
  { "--junit FILE", "write a JUnit report, one testcase per step" },
  { "--break-lock", "take the lock from a holder that died on this host" },
  { "--every DURATION", "run it again every DURATION (30s, 5m) until Ctrl-C or SIGTERM: each run " ..
    "whole (own run id, journal, lock); a failed run does not stop the loop, a failed rollback " ..
    "does (synthetic monitoring)" },
  { "--metrics-listen ADDR:PORT", "with --every: serve the runs' results as Prometheus metrics on " ..
    "http://ADDR:PORT/metrics (tug_runs_total, tug_run_success, ...)" },
  { "--playbooks DIR", "look for playbooks in DIR (also TUG_PATH=DIR:DIR; default ./playbooks)" },
}

-- The options of RUN_OPTIONS whose flags are given, in RUN_OPTIONS' order.
local function run_options(...)
  local wanted, out = {}, {}
  for _, flag in ipairs({ ... }) do wanted[flag] = true end
  for _, o in ipairs(RUN_OPTIONS) do
    if wanted[o[1]:match("^%S+")] then out[#out + 1] = o end
  end
  return out
end

local RESUME_OPTIONS = run_options("--context", "--namespace", "--step", "--no-step", "--yes", "--output",
  "--junit", "--playbooks")
RESUME_OPTIONS[#RESUME_OPTIONS + 1] = { "--break-lock", "also take its lock from another run that died on this host" }

M.commands = {
  { group = "playbooks", name = "init", synopsis = "init [DIR]",
    summary = "start a project: a first playbook (hello) with its spec, a local environment on a " ..
      "cluster simulated inside tug, a GitHub Actions workflow and the editor's Lua config; " ..
      "files that exist are kept" },
  { group = "playbooks", name = "list", synopsis = "list", summary = "the playbooks: name, description, file",
    options = { { "--playbooks DIR", "look for playbooks in DIR" } } },
  { group = "playbooks", name = "describe", synopsis = "describe NAME",
    summary = "its params (types, defaults) and steps (which can be undone)",
    options = { { "--playbooks DIR", "look for playbooks in DIR" } } },
  { group = "playbooks", name = "check", synopsis = "check [PATH...]",
    summary = "load every playbook and environment; report every problem",
    options = { { "--playbooks DIR", "look for playbooks in DIR" } } },
  { group = "playbooks", name = "plan", synopsis = "plan NAME [key=value...]",
    summary = "show each step and the changes it would make; changes nothing",
    options = run_options("--env", "--context", "--namespace", "--from", "--tags", "--output", "--playbooks") },
  { group = "playbooks", name = "run", synopsis = "run NAME [key=value...]",
    summary = "run it; on a failure, undo the completed steps in reverse", options = RUN_OPTIONS },
  { group = "playbooks", name = "runs", synopsis = "runs [--prune ...]",
    summary = "the journalled runs, newest first (.tug/runs); with --prune, remove old runs' " ..
      "journals, saying which (unfinished runs are kept); without --keep or --older-than it uses " ..
      "TUG_RETAIN_RUNS and TUG_RETAIN_AGE, which every run also applies when it ends",
    options = {
      { "--prune", "remove old runs' journals, saying which (kept: unfinished runs)" },
      { "--keep N", "... except the newest N" },
      { "--older-than D", "... only those that ended more than D (30d) ago" },
      { "--unfinished", "... and unfinished runs too, unless their process is alive" },
      { "--dry-run", "say what --prune would remove; remove nothing" },
    } },
  { group = "playbooks", name = "show", synopsis = "show RUN_ID", summary = "one run: steps, results, decisions, saved state" },
  { group = "playbooks", name = "resume", synopsis = "resume RUN_ID",
    summary = "continue a run that died, from its first unfinished step; one process at a time " ..
      "per run; takes over the run's own lock",
    options = RESUME_OPTIONS },
  { group = "playbooks", name = "sim", synopsis = "sim [--port N] [--scenario FILE] [--kubeconfig FILE]",
    summary = "serve the simulated Kubernetes cluster (the local environment's) until Ctrl-C; " ..
      "kubectl works against it" },
  { group = "scripts and tests", name = "lua", synopsis = "lua SCRIPT [ARGS...]",
    summary = "run a Lua script with every tug module loaded; the event loop runs until all work " ..
      "is done (ARGS land in `arg` and `...`)",
    more = {
      { "lua -e CODE [ARGS...]", "run a chunk of Lua given on the command line" },
      { "lua - [ARGS...]", "run Lua read from standard input" },
    } },
  { group = "scripts and tests", name = "test", synopsis = "test [BUSTED-OPTIONS] [PATH...]",
    summary = "run busted specs inside tug (default path: spec/); ends with a line " ..
      "'N passed, N failed' after every skipped spec's name and reason; a spec that runs longer " ..
      "than TUG_TEST_TIMEOUT seconds (300) stops the run with its name" },
  { group = "scripts and tests", name = "help", synopsis = "help [COMMAND]",
    summary = "show this text, or one command's (also `tug COMMAND --help`); `tug help --man` " ..
      "writes it as a man page" },
  { group = "scripts and tests", name = "completion", synopsis = "completion bash|zsh|fish",
    summary = "a completion script for the shell (commands, playbooks, their params and enum " ..
      "values, environments, run ids): `source <(tug completion bash)`" },
  { group = "scripts and tests", name = "version", synopsis = "version, --version", summary = "show the version" },
}

M.by_name = {}
for _, c in ipairs(M.commands) do M.by_name[c.name] = c end

M.modules = {
  { "task", "spawn, parallel, sleep, timeout: tasks on one event loop" },
  { "time", "now, monotonic, parse_duration, format_duration, format" },
  { "json", "decode, encode, null, array, object (faithful to Kubernetes objects)" },
  { "yaml", "decode, decode_all, load_file, encode (libyaml)" },
  { "exec", "run and spawn programs from an argv, with timeouts and streaming" },
  { "log", "levelled, structured logging and secret redaction" },
  { "http", "HTTP client (libcurl) and server on the loop" },
  { "ws", "WebSocket client and server (libwebsockets) on the loop" },
  { "health", "health checks, load checks with latency percentiles, gates" },
  { "k8s", "Kubernetes: kubeconfig, REST, watch, kubectl's verbs, exec, leases" },
  { "sim", "the simulated Kubernetes cluster" },
  { "aws", "SigV4, S3 (sync), CloudFront, Secrets Manager, ECR" },
  { "metrics, analysis, notify", "metric queries, promotion gates, notifications" },
  { "pg", "PostgreSQL: queries, transactions, advisory locks, health, backups, migrations" },
}

M.exit_codes = {
  { "0", "success (a run succeeded, a plan was made)" },
  { "1", "failure: a run failed and was rolled back (or had nothing to undo), a Lua error " ..
    "(traceback on stderr), a failing test, a task that failed with nobody waiting, a journal or " ..
    "lock file that cannot be written (before the first step: nothing ran; later: the run stops " ..
    "there)" },
  { "2", "usage or validation error: unknown command, bad param, broken playbook or environment " ..
    "(nothing was run)" },
  { "3", "the playbook's lock is held by another run, or the run being resumed is running in " ..
    "another process (the holder is named)" },
  { "4", "aborted by the user: Ctrl-C or SIGTERM (after rolling back), declined confirmation, " ..
    "--step abort (with --every: a run interrupted and rolled back ends the loop)" },
  { "5", "rollback failed: an undo failed, a human must look (--every stops there too)" },
  { "130", "Ctrl-C or SIGTERM with no run going: a script (tug lua; every task was cancelled), " ..
    "a command still loading playbooks or environments (nothing ran), --every between runs; or " ..
    "one Ctrl-C more than tug takes (it aborts at once). tug answers within 2 s, even in a Lua " ..
    "loop that never waits" },
}

-- ---- the terminal ----

local WIDTH = 92

-- Words of text wrapped to `width` columns, each line after the first indented by `indent`.
local function wrap(text, indent, width)
  local lines, line = {}, ""
  for word in text:gmatch("%S+") do
    if line ~= "" and #line + 1 + #word > width then
      lines[#lines + 1] = line
      line = word
    else
      line = line == "" and word or (line .. " " .. word)
    end
  end
  lines[#lines + 1] = line
  return table.concat(lines, "\n" .. string.rep(" ", indent))
end

-- "  left                     text", the text wrapped in its column (from column `at`);
-- a left part too long for its column puts the text on the next line.
local function entry(left, text, lead, at)
  local head = string.rep(" ", lead) .. left
  if #head + 1 > at then
    head = head .. "\n" .. string.rep(" ", at)
  else
    head = head .. string.rep(" ", at - #head)
  end
  return head .. wrap(text, at, WIDTH - at) .. "\n"
end

-- The overview lists `run`'s options (the command people use most); the others' are in
-- `tug help COMMAND`.
local function command_lines(c, buf)
  buf[#buf + 1] = entry(c.synopsis, c.summary, 2, 27)
  for _, m in ipairs(c.more or {}) do buf[#buf + 1] = entry(m[1], m[2], 2, 27) end
  if c.name == "run" then
    for _, o in ipairs(c.options or {}) do buf[#buf + 1] = entry(o[1], o[2], 6, 27) end
  end
end

-- The whole text of `tug help`.
function M.overview()
  local buf = { "usage: tug <command> [arguments]    (tug help COMMAND: one command and its options)\n" }
  local group
  for _, c in ipairs(M.commands) do
    if c.group ~= group then
      group = c.group
      buf[#buf + 1] = "\n" .. (group == "playbooks"
        and "playbooks (in ./playbooks, TUG_PATH=DIR:DIR or --playbooks DIR; see playbooks/README.md):\n"
        or (group .. ":\n"))
    end
    command_lines(c, buf)
  end
  buf[#buf + 1] = "\nmodules (globals in scripts and playbooks, also available through require):\n"
  for _, m in ipairs(M.modules) do buf[#buf + 1] = entry(m[1], m[2], 2, 9) end
  buf[#buf + 1] = "  each module's reference page is modules/NAME/README.md in the source tree\n"
  buf[#buf + 1] = "\nexit codes:\n"
  for _, e in ipairs(M.exit_codes) do buf[#buf + 1] = entry(e[1], e[2], 2, 7) end
  return table.concat(buf)
end

-- One command's text, or nil for an unknown command.
function M.command(name)
  local c = M.by_name[name]
  if not c then return nil end
  local buf = { "usage: tug " .. c.synopsis .. "\n\n" }
  buf[#buf + 1] = wrap(c.summary, 0, WIDTH) .. "\n"
  for _, m in ipairs(c.more or {}) do buf[#buf + 1] = entry("tug " .. m[1], m[2], 0, 27) end
  if c.options and #c.options > 0 then
    buf[#buf + 1] = "\noptions:\n"
    for _, o in ipairs(c.options) do buf[#buf + 1] = entry(o[1], o[2], 2, 27) end
  end
  buf[#buf + 1] = "\nexit codes: see 'tug help'\n"
  return table.concat(buf)
end

-- ---- the man page ----

local function roff(text)
  return (text:gsub("\\", "\\e"):gsub("^[.']", "\\&%0"):gsub("%-", "\\-"))
end

function M.man(version)
  local buf = {
    string.format('.TH TUG 1 "" "tug %s" "User Commands"', version or ""),
    ".SH NAME", "tug \\- run deployment playbooks written in Lua",
    ".SH SYNOPSIS", ".B tug", ".I command", "[arguments]",
    ".SH DESCRIPTION",
    roff("tug is one binary that embeds Lua 5.4 and runs deployment playbooks (blue-green, canary, " ..
      "migrations, rollbacks, incident runbooks) on one event loop: plan, run, undo, journal, resume, " ..
      "locks, and a simulated Kubernetes cluster to rehearse on."),
    ".SH COMMANDS",
  }
  for _, c in ipairs(M.commands) do
    buf[#buf + 1] = ".TP"
    buf[#buf + 1] = ".B " .. roff("tug " .. c.synopsis)
    buf[#buf + 1] = roff(c.summary)
    for _, m in ipairs(c.more or {}) do
      buf[#buf + 1] = ".TP"
      buf[#buf + 1] = ".B " .. roff("tug " .. m[1])
      buf[#buf + 1] = roff(m[2])
    end
    for _, o in ipairs(c.options or {}) do
      buf[#buf + 1] = ".RS"
      buf[#buf + 1] = ".TP"
      buf[#buf + 1] = ".B " .. roff(o[1])
      buf[#buf + 1] = roff(o[2])
      buf[#buf + 1] = ".RE"
    end
  end
  buf[#buf + 1] = ".SH MODULES"
  for _, m in ipairs(M.modules) do
    buf[#buf + 1] = ".TP"
    buf[#buf + 1] = ".B " .. roff(m[1])
    buf[#buf + 1] = roff(m[2])
  end
  buf[#buf + 1] = ".SH EXIT STATUS"
  for _, e in ipairs(M.exit_codes) do
    buf[#buf + 1] = ".TP"
    buf[#buf + 1] = ".B " .. e[1]
    buf[#buf + 1] = roff(e[2])
  end
  buf[#buf + 1] = ".SH SEE ALSO"
  buf[#buf + 1] = roff("The playbook reference (playbooks/README.md) and each module's reference " ..
    "(modules/NAME/README.md) in the source tree.")
  return table.concat(buf, "\n") .. "\n"
end

return M
