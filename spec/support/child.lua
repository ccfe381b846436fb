-- Runs the tug binary under test as a child process, for specs about the command line,
-- exit codes and what reaches the terminal.
local child = {}

-- The binary under test: TUG_UNDER_TEST (make sanitize sets it) or this very process.
child.tug = os.getenv("TUG_UNDER_TEST") or tug.executable

-- tug lua -e CODE, returning exec.run's result (code, stdout, stderr, ...).
function child.lua(code, opts)
  opts = opts or {}
  local argv = { child.tug, "lua", "-e", code }
  for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = a end
  return exec.run(argv, { timeout = opts.timeout or 20, env = opts.env, stdin = opts.stdin })
end

function child.run(args, opts)
  local argv = { child.tug }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  opts = opts or {}
  opts.timeout = opts.timeout or 20
  return exec.run(argv, opts)
end

-- Stops a process started with exec.spawn: SIGTERM, then at most `seconds` (default 5) for
-- it to exit; one still there gets SIGKILL, so a stuck child can never hang the spec.
-- Closes the process. Returns exec's result and whether SIGTERM was enough. With
-- must_stop, a child that needed SIGKILL fails the spec with an error naming it (`who`).
function child.stop(proc, who, opts)
  opts = opts or {}
  local seconds = opts.seconds or 5
  proc:kill(opts.signal or "TERM")
  local ok, r = pcall(task.timeout, seconds, proc.wait, proc)
  if not ok then
    proc:kill("KILL")
    r = proc:wait()
  end
  proc:close()
  if not ok and opts.must_stop then
    error(string.format("%s did not exit within %g s of SIG%s (killed with SIGKILL); it said: %s",
      who, seconds, opts.signal or "TERM", tostring(r.stderr)), 2)
  end
  return r, ok
end

return child
