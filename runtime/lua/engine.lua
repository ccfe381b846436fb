-- engine.lua: runs a playbook. Steps run in order, each in its own task (so a timeout,
-- Ctrl-C or a retry can cancel it cleanly); when one fails after its retries, the undos
-- of the completed steps run in reverse. Every event goes to the reporter and to the
-- journal, which is fsync'd at each step boundary so `tug resume` can pick up a run that
-- died. In plan mode nothing is written anywhere: module calls that would change the
-- world are recorded and shown instead.

local journal = require("tug.journal")
local lock = require("tug.lock")

local M = {}

M.EXIT = { ok = 0, failed = 1, usage = 2, locked = 3, aborted = 4, rollback_failed = 5, interrupted = 130 }

local DEFAULT_UNDO_TIMEOUT = 600

-- ---- plan mode: Lua's own writers refuse to run ----

local function guard(lib, name, instead)
  local original = lib[name]
  lib[name] = function(...)
    if tug.plan.active() then
      local label = (lib == os and "os." or "io.") .. name
      error(string.format("%s cannot run under `tug plan` (it would change the world): %s", label, instead), 2)
    end
    return original(...)
  end
end

guard(os, "execute", "use exec.run, which plan mode records")
guard(io, "popen", "use exec.run, which plan mode records")
guard(os, "remove", "guard it with `if not ctx.plan then ... end` or ctx:would(...)")
guard(os, "rename", "guard it with `if not ctx.plan then ... end` or ctx:would(...)")

do
  local open = io.open
  io.open = function(path, mode, ...)
    if tug.plan.active() and mode and mode:find("[wa+]") then
      error(string.format("io.open(%q, %q) cannot run under `tug plan` (it would write a file): " ..
        "guard it with `if not ctx.plan then ... end` or ctx:would(...)", tostring(path), mode), 2)
    end
    return open(path, mode, ...)
  end
end

-- ---- prompts ----

-- Reads one answer from the terminal, on the loop; nil when stdin is closed or the read
-- was cancelled (Ctrl-C cancels the task that waits on it).
local function read_answer()
  local ok, line = pcall(tug.sys.read_line)
  return ok and line and line:match("^%s*(.-)%s*$") or nil
end

-- A reporter without prompt hooks (plain lines, JSON, a playbook harness's) gets the
-- question and the notes about answers on stdout as they are.
local function plain_prompt_start(question)
  io.stdout:write(question, " ")
  io.stdout:flush()
end

local function plain_prompt_note(text)
  io.stdout:write(text)
  io.stdout:flush()
end

local function interactive()
  return tug.sys.isatty(0)
end

-- "Switch {env} traffic to {state.idle}?" with values from the run.
local function expand(text, ctx)
  return (text:gsub("{([%w_%.]+)}", function(path)
    local value = { env = ctx.env.name, run_id = ctx.run_id, params = ctx.params, state = ctx.state }
    for part in path:gmatch("[^%.]+") do
      if type(value) ~= "table" then return "{" .. path .. "}" end
      value = value[part]
    end
    return value == nil and ("{" .. path .. "}") or tostring(value)
  end))
end

-- ---- one run ----

local Run = {}
Run.__index = Run

-- UTC, to the millisecond: "2026-11-28T22:30:00.123Z". A string, so that events sort and
-- read well and encode cheaply (formatting floats dominated the cost of an event).
-- The part up to the second is formatted once a second: strftime was the largest single
-- cost of an event.
local stamp_second, stamp_prefix
local function timestamp()
  local now = time.now()
  local second = math.floor(now)
  if second ~= stamp_second then
    stamp_second, stamp_prefix = second, time.format(second, "%Y-%m-%dT%H:%M:%S")
  end
  return string.format("%s.%03dZ", stamp_prefix, math.floor((now - second) * 1000))
end

-- Each event is encoded once, for the journal and for --output json alike, but for the
-- state: --output json shows the whole ctx.state on every step_end and undo_end, and the
-- journal records what changed (journal.lua), so a state that grows by a key a step costs
-- a line a step, not the whole state again. The whole-state line is encoded only for a
-- reporter that prints lines. Durations are kept to the microsecond: finer is noise.
local RUN_EVENTS = { run_start = true, run_resume = true, run_end = true }

local function encode(event)
  return log.redact(json.encode(event))
end

-- Emits an event. An event with `state` goes to the journal with `state_patch` (the ops,
-- when there are any) in its place.
function Run:emit(event, state_patch)
  event.time = timestamp()
  if event.duration then event.duration = math.floor(event.duration * 1e6 + 0.5) / 1e6 end
  -- Masked twice: each string before encoding (a secret escaped once already, say in a
  -- response body quoted by an error, would be escaped again), then the encoded line.
  local shown = log.redact(event)
  local stored = shown.state ~= nil and shown.event ~= "run_resume"
  local line
  if not stored or self.reporter.lines ~= false then line = encode(shown) end
  if self.journal then
    if stored then
      local record = {}
      for k, v in pairs(shown) do record[k] = v end
      record.state = nil
      record.state_patch = state_patch and #state_patch > 0 and log.redact(state_patch) or nil
      self.journal:write_line(encode(record))
    else
      self.journal:write_line(line)
    end
  end
  self.reporter.event(shown, line)
  -- channels in the environment's notify: section hear when a run starts and ends; what
  -- tug tells a chat channel or a pager is output too, so it gets the masked event
  if RUN_EVENTS[event.event] and not self.plan and self.env.notify
      and (not self.opts.notify_when or self.opts.notify_when(event)) then
    require("notify").run_event(self.env, shown, M.current)
  end
end

function Run:sync()
  if self.journal then self.journal:sync() end
end

-- What changed in ctx.state since the journal last recorded it: the patch's ops and their
-- JSON, or nil and a message when the state is not plain data (it goes to the journal).
function Run:state_change()
  local ops = journal.diff(self.recorded, self.ctx.state)
  local ok, text = pcall(json.encode, ops)
  if ok then return ops, text end
  -- name the value as the whole state would (the failure path only: this costs the state)
  local _, err = pcall(json.encode, self.ctx.state)
  return nil, "ctx.state must hold plain data (it is saved to the journal): " ..
    tostring(err or text):gsub("^json%.encode: ", ""):gsub("%$", "state", 1)
end

-- Emits a step_end or undo_end with the state: the whole of it to the reporter, the change
-- to the journal (ops and text: the change, when the caller just took it). A state that is
-- not plain data is not recorded: the event carries the state as last recorded, the step
-- or undo fails with the message, and this returns false and the message.
function Run:emit_with_state(event, ops, text)
  if not ops then ops, text = self:state_change() end
  if ops then
    event.state = self.ctx.state
    self:emit(event, ops)
    -- the journal's reader applies the decoded patch; so does the run, to stay in step
    if #ops > 0 then self.recorded = journal.apply_patch(self.recorded, json.decode(text)) end
    return true
  end
  event.state = self.recorded
  if event.status == "ok" then event.status = "failed" end
  event.error = (event.error and event.error ~= text) and (event.error .. "; " .. text) or text
  self:emit(event)
  return false, text
end

-- An error's text. Its __tostring is the playbook's code and may itself fail: the step
-- still fails with a message that says so, and the run goes on to its rollback.
local function error_text(err)
  local value = err
  if type(err) == "table" then
    local ok, message = pcall(function() return err.message end)
    if ok and message ~= nil then value = message end
  end
  local ok, text = pcall(tostring, value)
  if ok and type(text) == "string" then return text end
  return string.format("(a %s error object whose __tostring failed: %s)", type(value),
    ok and ("it returned a " .. type(text)) or (type(text) == "string" and text or type(text)))
end

function Run:make_ctx()
  local run = self
  local ctx = {
    params = self.params, env = self.env, state = self.state, run_id = self.run_id,
    plan = self.plan, playbook = self.pb.name, yes = self.opts.yes and true or false,
    interactive = interactive(),
  }
  local function logger(level)
    return function(message, fields)
      run:emit({ event = "log", level = level, message = tostring(message), fields = fields })
    end
  end
  ctx.log = { debug = logger("debug"), info = logger("info"), warn = logger("warn"), error = logger("error") }
  function ctx:confirm(message)
    message = expand(message, self)
    if run.plan then
      tug.plan.record("confirm", "would ask: " .. message)
      return true
    end
    if run.opts.yes then
      run:emit({ event = "log", level = "info", message = "confirmed by --yes: " .. message })
      return true
    end
    if not interactive() then
      error(tug.error.new("confirm", "needs a confirmation, and there is no terminal to ask: \"" .. message ..
        "\" (run with --yes to answer yes)"), 0)
    end
    local answer = run:ask(message .. " [y/N]")
    if answer == nil then -- nobody said no: the journal records no decision
      run.aborted = run:unanswered(message)
      return false
    end
    local yes = answer:lower():match("^y") ~= nil
    run:emit({ event = "decision", question = message, answer = yes and "yes" or "no" })
    return yes
  end
  -- Asks for a free answer (or one of opts.choices); opts.default answers an empty line,
  -- and --yes (or a plan) takes it. The answer is a decision in the journal.
  function ctx:ask(question, opts)
    opts = opts or {}
    question = expand(question, self)
    local choices = opts.choices
    local function valid(a)
      if not choices then return a ~= "" end
      for _, c in ipairs(choices) do if c == a then return true end end
      return false
    end
    if run.plan or run.opts.yes then
      if opts.default == nil then
        if run.plan then
          tug.plan.record("confirm", "would ask: " .. question)
          return nil
        end
        error(tug.error.new("confirm", "needs an answer that --yes cannot give: \"" .. question .. "\""), 0)
      end
      if run.plan then
        tug.plan.record("confirm", "would ask: " .. question .. " (default " .. tostring(opts.default) .. ")")
      else
        run:emit({ event = "log", level = "info", message = "answered by --yes: " .. question .. " " .. tostring(opts.default) })
      end
      return opts.default
    end
    if not interactive() then
      error(tug.error.new("confirm", "needs an answer, and there is no terminal to ask: \"" .. question .. "\""), 0)
    end
    local prompt = question
    if choices then prompt = prompt .. " [" .. table.concat(choices, "/") .. "]" end
    if opts.default ~= nil then prompt = prompt .. " (default " .. tostring(opts.default) .. ")" end
    while true do
      local answer = run:ask(prompt)
      if answer == nil then
        error(tug.error.new("confirm", "no answer to: \"" .. question .. "\""), 0)
      end
      answer = answer:match("^%s*(.-)%s*$")
      if answer == "" and opts.default ~= nil then answer = tostring(opts.default) end
      if valid(answer) then
        run:emit({ event = "decision", question = question, answer = answer })
        return answer
      end
      ;(run.reporter.prompt_note or plain_prompt_note)(choices and ("answer one of: " .. table.concat(choices, ", ") .. "\n") or "an answer is needed\n")
    end
  end
  function ctx:would(description)
    if run.plan then tug.plan.record("step", description) end
    return run.plan
  end
  return ctx
end

-- Runs fn(ctx) as a task with an optional timeout; returns ok, err. The task is kept in
-- self.current so that Ctrl-C can cancel it.
function Run:call(fn, timeout)
  local ctx = self.ctx
  local outer = tug.scope_set(self.scope) -- what the step starts belongs to the run
  local worker = task.spawn(function()
    if timeout then return task.timeout(timeout, fn, ctx) end
    return fn(ctx)
  end)
  tug.scope_set(outer)
  self.current = worker
  local ok, err = pcall(worker.wait, worker)
  self.current = nil
  return ok, err
end

function Run:should_skip(index, step)
  local o = self.opts
  if self.done[index] then return "done before the resume" end
  if o.from_index and index < o.from_index then return "before --from" end
  if o.tags then
    local match = false
    for _, t in ipairs(step.tags) do if o.tags[t] then match = true end end
    if not match then return "not tagged " .. table.concat(o.tag_list, ",") end
  end
  return nil
end

-- Asks before a step when on-call mode (--step) or a protected environment wants it.
-- Returns "run", "skip" or "abort".
-- Asks in a task of its own, which Ctrl-C cancels like a running step.

-- Why a question got no answer (Ctrl-C, the terminal closing, stdin ending): the reason
-- the run stops with. It is not a decision: nobody said no.
function Run:unanswered(question)
  local why = self.interrupted and "interrupted" or self.hung_up and "the terminal closed" or "no answer"
  return string.format("%s at the prompt %s", why, question:match("^before ") and question or ("\"" .. question .. "\""))
end

-- The reporter shows the question (the live view stops redrawing until it is answered).
function Run:ask(question)
  local reporter = self.reporter
  ;(reporter.prompt_start or plain_prompt_start)(question)
  local asking = task.spawn(read_answer)
  local outer = self.current
  self.current = asking
  local answered, answer = pcall(asking.wait, asking)
  self.current = outer
  if reporter.prompt_end then reporter.prompt_end(question, answered and answer or nil) end
  if not answered then error(answer, 0) end
  return answer
end

function Run:gate(step)
  if self.plan then return "run" end
  local o = self.opts
  if o.step_mode then
    if not interactive() then
      error(tug.error.new("usage", "--step needs a terminal to ask on"), 0) -- the CLI checks first
    end
    while true do
      local a = self:ask(string.format("Next: %s. [r]un, [s]kip or [a]bort?", step.name))
      if a == nil then
        self.aborted = self:unanswered("before step \"" .. step.name .. "\"")
        return "abort"
      end
      a = a:lower()
      local choice = (a == "r" or a == "run" or a == "") and "run" or (a == "s" or a == "skip") and "skip"
        or (a == "a" or a == "abort") and "abort"
      if choice then
        self:emit({ event = "decision", question = "step " .. step.name, answer = choice })
        return choice
      end
    end
  end
  if self.env.protected and not step.read_only and not o.yes then
    if not interactive() then
      error(tug.error.new("confirm", string.format("%s is protected: step \"%s\" changes it and there is " ..
        "no terminal to ask (run with --yes to go ahead)", self.env.name, step.name)), 0)
    end
    local a = self:ask(string.format("%s is protected. Run \"%s\"? [y/N]", self.env.name, step.name))
    if a == nil then
      self.aborted = self:unanswered("run \"" .. step.name .. "\" on " .. self.env.name)
      return "abort"
    end
    local yes = a:lower():match("^y") ~= nil
    self:emit({ event = "decision", question = "run " .. step.name .. " on " .. self.env.name,
      answer = yes and "yes" or "no" })
    return yes and "run" or "abort"
  end
  return "run"
end

function Run:run_step(index, step)
  local ctx = self.ctx
  if step.when then
    local ok, go = self:call(step.when)
    if not ok then return false, "its when() failed: " .. error_text(go) end
    if not go then
      self:emit({ event = "step_skip", index = index, name = step.name, reason = "when() is false" })
      local recorded, err = self:emit_with_state({ event = "step_end", index = index, name = step.name, status = "skipped" })
      self:sync()
      return recorded, err, recorded
    end
  end
  local gate_ok, gate = pcall(self.gate, self, step)
  if not gate_ok then return false, error_text(gate) end
  if gate == "skip" then
    self:emit({ event = "step_skip", index = index, name = step.name, reason = "skipped by the operator" })
    local recorded, err = self:emit_with_state({ event = "step_end", index = index, name = step.name, status = "skipped" })
    self:sync()
    return recorded, err, recorded
  elseif gate == "abort" then
    self.aborted = self.aborted or ("aborted by the operator before step \"" .. step.name .. "\"")
    return false, self.aborted
  end
  if step.confirm then
    local ok, yes = pcall(ctx.confirm, ctx, step.confirm)
    if not ok then return false, error_text(yes) end
    if not yes then
      self.aborted = self.aborted or ("the operator declined: " .. expand(step.confirm, ctx))
      return false, self.aborted
    end
  end

  if M.current then M.current.step = step.name end
  self:emit({ event = "step_start", index = index, name = step.name })
  local t0 = time.monotonic()
  local attempts, ok, err = 0, false, nil
  local ops, ops_text -- what the step changed in ctx.state
  while true do
    attempts = attempts + 1
    ok, err = self:call(step.run, step.timeout)
    if ok then
      ops, ops_text = self:state_change()
      if not ops then ok, err = false, ops_text end
    end
    if ok or self.interrupted or attempts > step.retries then break end
    local delay = step.retry_delay * step.backoff ^ (attempts - 1)
    self:emit({ event = "step_retry", index = index, name = step.name, attempt = attempts,
      error = error_text(err), delay = delay })
    local slept = pcall(function()
      local sleeper = task.spawn(task.sleep, delay)
      self.current = sleeper
      sleeper:wait()
    end)
    self.current = nil
    if not slept or self.interrupted then break end
  end
  local event = { event = "step_end", index = index, name = step.name, status = ok and "ok" or "failed",
    duration = time.monotonic() - t0, attempts = attempts }
  if not ok then
    event.error = self.interrupted and "interrupted" or error_text(err)
    if type(err) == "table" and err.kind then event.error_kind = err.kind end
  end
  if self.plan then event.changes = tug.plan.take() end
  if ok then
    self:emit_with_state(event, ops, ops_text)
  else
    self:emit_with_state(event)
  end
  self:sync()
  return ok, event.error
end

function Run:rollback()
  local failures = 0
  for i = #self.completed, 1, -1 do
    if self.stop_rollback then
      return "aborted", "stopped during rollback before undoing \"" .. self.completed[i].step.name .. "\""
    end
    local entry = self.completed[i]
    local step = entry.step
    if step.undo then
      self:emit({ event = "undo_start", index = entry.index, name = step.name })
      local t0 = time.monotonic()
      local ok, err = self:call(step.undo, step.undo_timeout or self.pb.undo_timeout or DEFAULT_UNDO_TIMEOUT)
      if self.stop_rollback and not ok then
        self:emit({ event = "undo_end", index = entry.index, name = step.name, status = "stopped",
          duration = time.monotonic() - t0, error = "stopped by a second interrupt" })
        self:sync()
        return "aborted", "stopped during the undo of \"" .. step.name .. "\""
      end
      local e = { event = "undo_end", index = entry.index, name = step.name, status = ok and "ok" or "failed",
        duration = time.monotonic() - t0, error = not ok and error_text(err) or nil }
      if not self:emit_with_state(e) then ok = false end
      self:sync()
      if not ok then failures = failures + 1 end
    end
  end
  if failures > 0 then
    return "rollback-failed", string.format("%d undo%s failed: a human must look", failures, failures > 1 and "s" or "")
  end
  return "rolled-back"
end

-- Closes what the steps started and left running (an http.server, a background task): a
-- run that ends must end, and --every's next run must find its port free. Each is named.
function Run:close_leftovers()
  if self.leftovers_closed then return end
  self.leftovers_closed = true
  local messages = {}
  local function warn(what, state, done)
    messages[#messages + 1] = string.format("%s was still %s when the run ended: %s", what, state, done)
  end
  for _, what in ipairs(tug.scope_close(self.scope)) do
    if what:match("^a task ") then warn(what, "running", "cancelled") else warn(what, "open", "closed") end
  end
  for _, closer in ipairs(tug.scope_closers) do
    for _, what in ipairs(closer(self.scope)) do warn(what, "running", "stopped") end
  end
  -- everything is closed first; a journal that cannot take the warnings gets them on stderr
  for _, message in ipairs(messages) do
    if not pcall(self.emit, self, { event = "log", level = "warn", message = message }) then
      io.stderr:write("tug: ", message, "\n")
    end
  end
end

function Run:on_interrupt(count)
  if count == 1 then
    self.interrupted = true
    self.reporter.event({ event = "log", level = "warn",
      message = self.plan and "interrupted: cancelling the running step (again to stop at once)"
        or "interrupted: cancelling the running step, then rolling back (again to stop at once)" })
  else
    self.stop_rollback = true
  end
  if self.current then self.current:cancel() end
  if self.opts.on_interrupt then self.opts.on_interrupt(count) end -- --every stops after this run
end

-- The terminal went away (SIGHUP: a closed window, a lost SSH connection). The run goes on
-- and finishes, into its journal: stopping half way would leave the environment between
-- two versions, and rolling back would be a second change nobody asked for. A question
-- open then ends unanswered (the run stops and rolls back, exit 4); one asked later has no
-- terminal, so its step fails and the run rolls back (exit 1).
function Run:on_hangup()
  if self.ended then return end -- it came as the run ended: the journal is closed
  self.hung_up = true
  self:emit({ event = "log", level = "warn", message = "the terminal closed (SIGHUP): the run goes on without it" ..
    (self.journal and ("; follow it with `tug show " .. self.run_id .. "`") or "") ..
    "; a question it asks from now on has no terminal to be asked on" })
end

-- Runs (or plans) a playbook. opts: pb, env, params, plan, yes, step_mode, from, tags,
-- no_undo, reporter, resume (a journal summary), run_lock (the resumed run's, from
-- lock.run_lock; released here), break_lock, on_interrupt (told of each Ctrl-C or SIGTERM
-- the run receives), notify_when (event -> whether the environment's notify channels hear
-- of it). Returns the exit code.
function M.run(opts)
  local pb = opts.pb
  local self = setmetatable({
    pb = pb, env = opts.env, params = opts.params, plan = opts.plan, opts = opts,
    reporter = opts.reporter, completed = {}, done = {}, state = {},
  }, Run)

  if opts.from then
    for i, s in ipairs(pb.steps) do
      if s.name == opts.from or tostring(i) == opts.from then opts.from_index = i end
    end
    if not opts.from_index then
      error(tug.error.new("usage", string.format("--from: %s has no step \"%s\"", pb.name, opts.from)), 0)
    end
  end

  local resume = opts.resume
  if resume then
    self.run_id = resume.run_id
    self.state = resume.state or {}
    -- what the journal holds, which the next patch changes: a copy, since steps change self.state
    self.recorded = json.decode(json.encode(self.state))
    for i, s in ipairs(pb.steps) do
      local e = resume.steps[i]
      if e and (e.status == "ok" or e.status == "skipped") then
        self.done[i] = true
        if e.status == "ok" then self.completed[#self.completed + 1] = { index = i, step = s } end
      end
    end
  else
    self.run_id = journal.new_id()
    self.recorded = json.object()
  end

  local names = {}
  for i, s in ipairs(pb.steps) do names[i] = s.name end

  -- modules that act on the environment's systems act on this run's environment
  if self.env.kubernetes then require("k8s").set_environment(self.env) end
  M.current = { env = self.env, run_id = self.run_id, playbook = pb.name }

  -- From here on Ctrl-C and SIGTERM come to the run (before the lock is taken, so that a
  -- signal can never leave a lock without its journal): cancel the step, roll back.
  tug.on_interrupt(function(count) self:on_interrupt(count) end)
  tug.on_hangup(function() self:on_hangup() end)
  -- Everything the steps start (servers, background tasks) belongs to the run: what is
  -- still open when it ends is closed then, with a warning (close_leftovers).
  self.scope = tug.scope_new()
  -- However this function ends (a return, or an error from a lock, the journal or a full
  -- disk), the run closes what its steps left open and lets go of the signals, the log
  -- sink, plan mode and the journal; the locks below are released before this runs.
  local teardown <close> = setmetatable({}, { __close = function()
    self.ended = true
    pcall(self.close_leftovers, self)
    tug.plan.set(false)
    log.set_sink(nil)
    if self.journal then pcall(self.journal.close, self.journal) end
    tug.on_interrupt(nil)
    tug.on_hangup(nil)
    M.current = nil
  end })

  -- Held until this function returns or raises: this process's claim on the run id, then
  -- the playbook's lock. A resume arrives holding the run's claim already (cli.lua takes it
  -- before it reads the journal).
  local backend = lock.backend(opts.lock_backend or self.env.lock)
  local claim = opts.run_lock
  if not self.plan and not claim then
    local why
    claim, why = lock.run_lock(self.run_id, pb.name, "run")
    if not claim then
      io.stderr:write("tug: ", why, "\n")
      return M.EXIT.locked
    end
  end
  local run_lock <close> = claim
  local held
  local release <close> = setmetatable({}, { __close = function()
    if held then backend.release(held) end
  end })
  if not self.plan then
    if pb.lock then
      local holder, reason
      held, holder, reason = backend.acquire({ env = self.env.name, name = pb.lock, run_id = self.run_id,
        playbook = pb.name, break_lock = opts.break_lock, resume = resume ~= nil, environment = self.env })
      if not held then
        io.stderr:write("tug: ", string.format("lock '%s' on %s is %s%s", pb.lock, self.env.name, lock.describe(holder),
          lock.hint(reason, backend.path and backend.path(self.env.name, pb.lock))), "\n")
        return M.EXIT.locked
      end
    end
    self.journal = journal.create(self.run_id)
    if resume then self.journal:end_torn_line() end
  end

  self.ctx = self:make_ctx()
  log.set_sink(function(record)
    self:emit({ event = "log", level = record.level, message = record.message, fields = record.fields })
  end)
  tug.plan.set(self.plan)
  tug.plan.take()

  local t0 = time.monotonic()
  local first_resumed
  if resume then
    for i = 1, #pb.steps do if not self.done[i] then first_resumed = i break end end
  end
  self:emit({ event = resume and "run_resume" or "run_start", run_id = self.run_id, playbook = pb.name,
    path = pb.path, env = self.env.name, params = self.params, steps = names, plan = self.plan or nil,
    resumed_from = first_resumed, state = resume and self.recorded or nil,
    pid = not self.plan and tug.sys.pid() or nil, host = not self.plan and tug.sys.hostname() or nil,
    kubernetes = opts.kubernetes_override })
  self:sync()

  local status, reason = "succeeded", nil
  for index, step in ipairs(pb.steps) do
    local skip = self:should_skip(index, step)
    if self.interrupted and not skip then -- it came before this step started: nothing to cancel
      status, reason = self.plan and "plan-failed" or "aborted", "interrupted before step \"" .. step.name .. "\""
      if not self.plan and not opts.no_undo and #self.completed > 0 then
        local rstatus, rreason = self:rollback()
        status = rstatus
        if rreason then reason = reason .. "; " .. rreason end
      end
      break
    end
    if skip then
      if not self.done[index] then
        self:emit({ event = "step_skip", index = index, name = step.name, reason = skip })
      end
    else
      local ok, err, skipped = self:run_step(index, step)
      if ok and not skipped then
        self.completed[#self.completed + 1] = { index = index, step = step }
      end
      if ok and self.interrupted then
        -- the step finished as Ctrl-C arrived: it stays done (and is undone), and the run stops
        ok, err = false, "interrupted after it finished"
      end
      if not ok then
        reason = string.format("step \"%s\" failed: %s", step.name, err)
        if self.aborted then reason = self.aborted end
        if self.plan then
          status = "plan-failed"
        elseif opts.no_undo then
          status = "failed"
          reason = reason .. " (--no-undo: nothing was undone)"
        else
          local undoable = false
          for _, c in ipairs(self.completed) do if c.step.undo then undoable = true end end
          if undoable then
            local rstatus, rreason = self:rollback()
            status = rstatus
            if rreason then reason = reason .. "; " .. rreason end
          else
            status = "failed"
          end
        end
        break
      end
    end
  end
  if self.plan and status == "succeeded" then status = "planned" end

  self:close_leftovers()
  tug.plan.set(false)
  log.set_sink(nil)
  self:emit({ event = "run_end", run_id = self.run_id, playbook = pb.name, status = status, reason = reason,
    duration = time.monotonic() - t0, interrupted = self.interrupted or nil })
  self:sync()
  self.ended = true
  if not self.plan and self.env.notify then require("notify").flush(30) end
  if self.journal then
    self.journal:close()
    -- TUG_RETAIN_RUNS / TUG_RETAIN_AGE: the runs past the retention go (the CLI checked them)
    local removed = journal.apply_retention(self.run_id)
    if removed and #removed > 0 then
      io.stderr:write(string.format("tug: removed %d run%s past the retention (TUG_RETAIN_RUNS, TUG_RETAIN_AGE)\n",
        #removed, #removed == 1 and "" or "s"))
    end
  end

  if status == "succeeded" or status == "planned" then return M.EXIT.ok end
  if status == "rollback-failed" then return M.EXIT.rollback_failed end
  if self.interrupted or self.aborted or status == "aborted" then return M.EXIT.aborted end
  return M.EXIT.failed
end

return M
