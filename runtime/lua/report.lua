-- report.lua: how a run shows itself. The engine emits events; reporters render them:
-- a live view on a terminal, timestamped lines elsewhere, one JSON object per line with
-- --output json, a JUnit file with --junit, and GitHub Actions groups, annotations and a
-- step summary when GITHUB_ACTIONS=true. The JSON event schema is in docs of the engine
-- (runtime/lua/ENGINE.md).

local M = {}

local function fmt_duration(s)
  if not s then return "" end
  if s < 1 then return time.format_duration(math.floor(s * 1000 + 0.5) / 1000) end
  return time.format_duration(math.floor(s * 10 + 0.5) / 10)
end

local function out(text)
  io.stdout:write(text)
  io.stdout:flush()
end

local function one_line(text)
  text = tostring(text or "")
  return (text:gsub("\n.*", " ..."))
end

-- ---- plain: timestamped lines (CI, pipes) ----

local function plain()
  local r = { total = 0 }
  local function line(fmt, ...)
    out(string.format("%s %s\n", time.format(nil, "%H:%M:%S"), string.format(fmt, ...)))
  end
  function r.event(e)
    local kind = e.event
    if kind == "run_start" then
      r.total = #e.steps
      line("%s %s on %s (run %s)%s", e.plan and "plan" or "run", e.playbook, e.env, e.run_id,
        e.resumed_from and (", resuming at step " .. e.resumed_from) or "")
    elseif kind == "step_start" then
      line("[%d/%d] %s ...", e.index, r.total, e.name)
    elseif kind == "step_skip" then
      line("[%d/%d] %s: skipped (%s)", e.index, r.total, e.name, e.reason)
    elseif kind == "step_retry" then
      line("[%d/%d] %s: attempt %d failed: %s; retrying in %s", e.index, r.total, e.name,
        e.attempt, one_line(e.error), fmt_duration(e.delay))
    elseif kind == "step_end" then
      if e.status == "skipped" then
        return -- step_skip said so
      elseif e.status == "ok" then
        line("[%d/%d] %s: ok (%s)", e.index, r.total, e.name, fmt_duration(e.duration))
      else
        line("[%d/%d] %s: FAILED after %s: %s", e.index, r.total, e.name, fmt_duration(e.duration), e.error)
      end
      for _, c in ipairs(e.changes or {}) do
        line("        would %s: %s", c.module, c.summary)
        if c.detail then line("          %s", one_line(c.detail)) end
      end
    elseif kind == "undo_start" then
      line("undo [%d] %s ...", e.index, e.name)
    elseif kind == "undo_end" then
      line("undo [%d] %s: %s%s", e.index, e.name, e.status == "ok" and "ok" or "FAILED",
        e.error and (": " .. e.error) or "")
    elseif kind == "log" then
      line("        %s %s", e.level:upper(), e.message)
    elseif kind == "run_end" then
      line("%s: %s%s (%s)", e.playbook or "run", e.status, e.reason and (": " .. e.reason) or "",
        fmt_duration(e.duration))
    end
  end
  return r
end

-- ---- tty: the live view ----

local SPIN = { "|", "/", "-", "\\" }

-- Cuts a line to the terminal width; `mark` is an escape-coded prefix that takes one column.
local function fit(line, width, mark)
  local invisible = mark and ((utf8.len(mark) or #mark) - 1) or 0
  if (utf8.len(line) or #line) - invisible <= width then return line end
  local cut = utf8.offset(line, width + invisible - 2) or (width + invisible - 2)
  return line:sub(1, cut - 1) .. "..."
end

-- `text` padded (or cut, with "...") to `width` columns, counting characters, not bytes.
local function column(text, width)
  local n = utf8.len(text) or #text
  if n > width then
    local cut = utf8.offset(text, width - 2) or (width - 2)
    return text:sub(1, cut - 1) .. "..."
  end
  return text .. string.rep(" ", width - n)
end

local function tty()
  local r = { steps = {}, lines = 0, running = false, frame = 0, header = nil, footer = {} }
  local function render()
    if r.asking then return end
    local width = tug.sys.term_width() - 1
    -- the names' column fits the longest name, leaving room for the result on the right
    local name_width = math.max(10, math.min(r.name_width or 10, width - 22))
    local buf = {}
    if r.lines > 0 then buf[#buf + 1] = string.format("\27[%dA\27[J", r.lines) end
    local count = 0
    for i, s in ipairs(r.steps) do
      local mark, extra = " ", ""
      if s.status == "running" then
        mark = SPIN[r.frame % #SPIN + 1]
        extra = fmt_duration(time.monotonic() - s.started)
        if s.attempt and s.attempt > 1 then extra = extra .. " (attempt " .. s.attempt .. ")" end
      elseif s.status == "ok" then mark, extra = "\27[32m✓\27[0m", fmt_duration(s.duration)
      elseif s.status == "failed" then mark, extra = "\27[31m✗\27[0m", fmt_duration(s.duration)
      elseif s.status == "skipped" then mark, extra = "-", "skipped"
      elseif s.status == "undone" then mark, extra = "\27[33m↺\27[0m", "undone"
      elseif s.status == "undo-failed" then mark, extra = "\27[31m!\27[0m", "UNDO FAILED"
      elseif s.status == "undoing" then mark, extra = SPIN[r.frame % #SPIN + 1], "undoing"
      end
      -- a line that wraps would throw off the redraw, so each is cut to the width
      buf[#buf + 1] = fit(string.format(" %s %2d. %s %s", mark, i, column(s.name, name_width), extra), width, mark) .. "\n"
      count = count + 1
      for _, c in ipairs(s.changes or {}) do
        buf[#buf + 1] = fit(string.format("         would %s: %s", c.module, c.summary), width) .. "\n"
        count = count + 1
      end
    end
    r.lines = count
    out(table.concat(buf))
  end
  local function above(text)
    if r.asking then -- shown once the question is answered
      r.held[#r.held + 1] = text
      return
    end
    if r.lines > 0 then out(string.format("\27[%dA\27[J", r.lines)) end
    r.lines = 0
    out(text)
    render()
  end
  -- Rows a text takes on a terminal `width` columns wide (at least one).
  local function rows(text, width)
    local columns = utf8.len(text) or #text
    return math.max(1, math.ceil(columns / (width + 1)))
  end
  -- A question is asked below the steps, and nothing redraws until it is answered: a
  -- redraw would erase it and what the operator types. Then the question and its answer
  -- move above the steps, into the scrolled history.
  function r.prompt_start(question)
    render()
    r.asking = question
    r.held = {}
    out(question .. " ")
  end
  function r.prompt_end(question, answer)
    local width = tug.sys.term_width() - 1
    -- the cursor is on the line after the question and the echoed answer, or still on the
    -- question's last row when no answer came (Ctrl-C, end of input: nothing was echoed)
    local asked = rows(question .. " " .. (answer or ""), width)
    local up = r.lines + asked - (answer == nil and 1 or 0)
    out("\r" .. (up > 0 and string.format("\27[%dA", up) or "") .. "\27[J")
    r.lines = 0
    r.asking = nil
    local held = r.held
    r.held = nil
    above(string.format("   %s %s\n%s", question, answer or "(no answer)", table.concat(held)))
  end
  r.prompt_note = function(text) above("   " .. text) end
  function r.event(e)
    local kind = e.event
    if kind == "run_start" then
      r.name_width = 0
      for i, name in ipairs(e.steps) do
        r.steps[i] = { name = name, status = "pending" }
        r.name_width = math.max(r.name_width, utf8.len(name) or #name)
      end
      out(string.format("%s \27[1m%s\27[0m on %s  (run %s)\n", e.plan and "plan" or "run",
        e.playbook, e.env, e.run_id))
      render()
      r.running = true
      r.ticker = task.spawn(function()
        while r.running do
          task.sleep(0.1)
          r.frame = r.frame + 1
          if r.running and not r.asking then render() end
        end
      end)
    elseif kind == "step_start" then
      local s = r.steps[e.index]
      s.status, s.started, s.attempt = "running", time.monotonic(), 1
      render()
    elseif kind == "step_retry" then
      r.steps[e.index].attempt = e.attempt + 1
      above(string.format("   attempt %d of %s failed: %s; retrying in %s\n", e.attempt, e.name,
        one_line(e.error), fmt_duration(e.delay)))
    elseif kind == "step_skip" then
      r.steps[e.index].status = "skipped"
      render()
    elseif kind == "step_end" and e.status ~= "skipped" then
      local s = r.steps[e.index]
      s.status, s.duration, s.changes = e.status, e.duration, e.changes
      if e.status ~= "ok" then above(string.format("   \27[31m%s failed:\27[0m %s\n", e.name, e.error)) else render() end
    elseif kind == "undo_start" then
      r.steps[e.index].status = "undoing"
      render()
    elseif kind == "undo_end" then
      r.steps[e.index].status = e.status == "ok" and "undone" or "undo-failed"
      if e.error then above(string.format("   \27[31mundo of %s failed:\27[0m %s\n", e.name, e.error)) else render() end
    elseif kind == "log" then
      above(string.format("   %s %s\n", e.level:upper(), e.message))
    elseif kind == "run_end" then
      r.running = false
      if r.ticker then r.ticker:cancel() end
      render()
      local colour = e.status == "succeeded" and "32" or e.status == "planned" and "36" or "31"
      out(string.format("\27[%sm%s\27[0m%s in %s\n", colour, e.status,
        e.reason and (": " .. e.reason) or "", fmt_duration(e.duration)))
    end
  end
  return r
end

-- ---- json: one event per line on stdout ----

local function json_lines()
  return { event = function(e, line) out((line or log.redact(json.encode(e))) .. "\n") end }
end

-- ---- junit: one testcase per step, written at the end ----

local function xml_escape(s)
  return (tostring(s):gsub("[<>&\"]", { ["<"] = "&lt;", [">"] = "&gt;", ["&"] = "&amp;", ['"'] = "&quot;" }))
end

local function junit(path)
  local r = { cases = {} }
  function r.event(e)
    if e.event == "run_start" then
      r.playbook = e.playbook
    elseif (e.event == "step_end" and e.status ~= "skipped") or e.event == "step_skip" then
      r.cases[#r.cases + 1] = e
    elseif e.event == "run_end" then
      local failures, skipped, total = 0, 0, 0
      local body = {}
      for _, c in ipairs(r.cases) do
        total = total + 1
        local inner = ""
        if c.event == "step_skip" then
          skipped = skipped + 1
          inner = "<skipped/>"
        elseif c.status ~= "ok" then
          failures = failures + 1
          inner = string.format('<failure message="%s">%s</failure>', xml_escape(one_line(c.error)), xml_escape(c.error))
        end
        body[#body + 1] = string.format('    <testcase classname="%s" name="%s" time="%.3f">%s</testcase>\n',
          xml_escape(r.playbook), xml_escape(c.name), c.duration or 0, inner)
      end
      local f, err = io.open(path, "w")
      if not f then
        io.stderr:write("tug: cannot write the JUnit report: ", err, "\n")
        return
      end
      -- the events are masked already; the document is masked again once escaped
      f:write(log.redact('<?xml version="1.0" encoding="UTF-8"?>\n<testsuites>\n'
        .. string.format('  <testsuite name="%s" tests="%d" failures="%d" skipped="%d" time="%.3f">\n',
          xml_escape(r.playbook), total, failures, skipped, e.duration or 0)
        .. table.concat(body) .. "  </testsuite>\n</testsuites>\n"))
      f:close()
    end
  end
  return r
end

-- ---- GitHub Actions: groups, annotations and the step summary ----

local function github()
  local r = { rows = {} }
  function r.event(e)
    if e.event == "run_start" then
      r.playbook, r.env = e.playbook, e.env
    elseif e.event == "step_start" then
      out(string.format("::group::%s\n", e.name))
    elseif e.event == "step_end" and e.status ~= "skipped" then
      out("::endgroup::\n")
      if e.status ~= "ok" then
        out(string.format("::error title=%s failed::%s\n", e.name, log.redact(one_line(e.error))))
      end
      r.rows[#r.rows + 1] = string.format("| %s | %s | %s |", e.name, e.status == "ok" and "✅ ok" or "❌ failed",
        fmt_duration(e.duration))
    elseif e.event == "step_skip" then
      r.rows[#r.rows + 1] = string.format("| %s | skipped | |", e.name)
    elseif e.event == "undo_end" then
      r.rows[#r.rows + 1] = string.format("| undo: %s | %s | |", e.name, e.status)
    elseif e.event == "run_end" then
      local path = os.getenv("GITHUB_STEP_SUMMARY")
      if path and path ~= "" then
        local f = io.open(path, "a")
        if f then
          f:write(log.redact(string.format("### tug %s on %s: %s\n\n| step | result | time |\n| --- | --- | --- |\n%s\n\n",
            r.playbook, r.env, e.status, table.concat(r.rows, "\n"))))
          f:close()
        end
      end
    end
  end
  return r
end

-- Builds the reporter for a run: options { output = "tty"|"plain"|"json", junit = FILE }.
function M.new(opts)
  local list = {}
  local output = opts.output
  if output == nil then
    local ci = os.getenv("CI")
    output = tug.sys.isatty(1) and os.getenv("TERM") ~= "dumb" and (ci == nil or ci == "") and "tty" or "plain"
  end
  if output == "tty" then list[#list + 1] = tty()
  elseif output == "json" then list[#list + 1] = json_lines()
  else list[#list + 1] = plain() end
  if opts.junit then list[#list + 1] = junit(opts.junit) end
  if os.getenv("GITHUB_ACTIONS") == "true" and output ~= "json" then list[#list + 1] = github() end
  return {
    event = function(e, line)
      for _, r in ipairs(list) do r.event(e, line) end
    end,
    -- the live view shows a question and takes it back when answered; without these the
    -- engine writes the question on stdout as it is
    prompt_start = list[1].prompt_start, prompt_end = list[1].prompt_end, prompt_note = list[1].prompt_note,
    lines = output == "json", -- only --output json prints each event's JSON line
  }
end

M.OUTPUTS = { tty = true, plain = true, json = true }

return M
