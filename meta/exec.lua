---@meta exec
-- exec: run programs without a shell, on the loop (modules/exec/README.md).

---@class tug.exec.Options
---@field env? table<string, string|number|false> added to (or overriding) the inherited environment; false removes a variable
---@field env_clear? boolean start from an empty environment: the child sees only `env`
---@field cwd? string working directory
---@field stdin? string written to the program's stdin, which is then closed
---@field timeout? tug.Duration then TERM, then KILL after `kill_grace`
---@field kill_grace? tug.Duration between TERM and KILL (default 5); 0 sends KILL at once
---@field max_output? integer bytes kept per stream (default 16 MiB); `truncated` is set beyond
---@field capture? boolean false keeps nothing in stdout/stderr (default true)
---@field on_line? fun(line: string, stream: "stdout"|"stderr") each line as it arrives (exec.run only)
---@field check? boolean raise an `exec` error unless the program exits 0 (exec.run only)
---@field lines? boolean exec.spawn: buffer lines for `process:next_lines()`
---@field read_only? boolean run under `tug plan` too (the command changes nothing)

---@class tug.exec.Result
---@field code integer? exit code; nil when a signal ended the program
---@field signal string|integer|nil the signal that ended it ("TERM", "KILL", ...)
---@field stdout string captured output (raw bytes)
---@field stderr string
---@field duration number seconds from start to exit
---@field timed_out boolean? true when `timeout` passed and the program was stopped
---@field truncated boolean? true when output beyond `max_output` was dropped
---@field pid integer the process id it had
---@field planned boolean? under `tug plan`: the command was recorded, not run

---@class tug.exec.Line
---@field stream "stdout"|"stderr"
---@field line string

---A started program (`exec.spawn`); `local p <close> = exec.spawn(...)` kills it at scope end.
---@class tug.exec.Process
---@field pid integer
local Process = {}

---Waits until the program has exited and closed its output; the same result on each call.
---@return tug.exec.Result
function Process:wait() end

---With `lines = true`: every line buffered so far (waits for at least one); nil at the end.
---@return tug.exec.Line[]?
function Process:next_lines() end

---Sends a signal ("TERM" by default; "KILL", "SIGHUP", "int" or a number).
---@param signal? string|integer
---@return true|nil ok
---@return string? message when the program has already exited
function Process:kill(signal) end

---TERM now, KILL after `kill_grace`; returns at once (true if this started the stop).
---@return boolean
function Process:stop() end

---KILLs the program if it still runs, then releases the handle (idempotent).
function Process:close() end

---@class tug.exec
exec = {}

---Runs the program to the end. Raises only for mistakes, when it cannot be started, and
---with `check = true` when it fails; a non-zero exit is otherwise a result.
---@param argv string[] the program and its arguments (never a shell line)
---@param opts? tug.exec.Options
---@return tug.exec.Result
function exec.run(argv, opts) end

---Starts the program and returns at once.
---@param argv string[]
---@param opts? tug.exec.Options
---@return tug.exec.Process
function exec.spawn(argv, opts) end

return exec
