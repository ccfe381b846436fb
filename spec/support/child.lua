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

return child
