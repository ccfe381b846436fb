---@meta _
-- The `tug` global, and the shapes every module shares: durations and environments.

---Seconds (a number), or a duration string: "500ms", "1m30s", "1.5s", "2h", "1d1h".
---@alias tug.Duration number|string

---A structured error, as modules raise them: `err.kind` says which ("timeout", "http",
---"k8s", "pg", ...), `err.message` what was being done and why it failed.
---@class tug.Error
---@field kind string
---@field message string

---An environment: environments/NAME.yaml with its `${env:...}` and `${secret:...}`
---references resolved. The keys below are the ones tug itself reads; a project adds its own.
---@class tug.Environment
---@field name string the file's name unless it sets one
---@field description? string
---@field protected? boolean runs ask before every step that is not read_only
---@field lock? "file"|"kubernetes" where playbook locks live (default file)
---@field kubernetes? tug.k8s.Config the cluster (k8s.set_environment(ctx.env) when a run starts)
---@field aws? tug.aws.Settings for aws.configure(ctx.env.aws)
---@field metrics? table<string, table> metrics providers by name (metrics.query("prometheus", ...))
---@field notify? table<string, table> notification channels by name (run events, notify.send)
---@field thresholds? table<string, number> the numbers analysis conditions read as `thresholds.X`
---@field [string] any

---@class tug.sys.Entry
---@field name string
---@field type "file"|"dir"|"other"

---@class tug
tug = {}

---tug's version.
---@type string
tug.version = ""

---The path of this tug binary.
---@type string
tug.executable = ""

---The names of the modules that are globals in scripts and playbooks.
---@type string[]
tug.modules = {}

---Errors with a kind, as the modules raise them.
---@class tug.error
tug.error = {}

---A structured error `{ kind, message, ... }` (raise it with `error(err, 0)`).
---@param kind string
---@param message string
---@param fields? table more fields
---@return tug.Error
function tug.error.new(kind, message, fields) end

---Plan mode (`tug plan`): what would change is recorded instead of done.
---@class tug.plan
tug.plan = {}

---true while a plan runs: guard writes a module does not already record.
---@return boolean
function tug.plan.active() end

---Records a change the plan would make (shown by `tug plan`).
---@param module string
---@param summary string
---@param detail? string
function tug.plan.record(module, summary, detail) end

---Ctrl-C and SIGTERM call `fn(count)` in a new task instead of cancelling every task; nil
---restores the default.
---@param fn fun(count: integer)|nil
function tug.on_interrupt(fn) end

---Small system calls.
---@class tug.sys
tug.sys = {}

---The entries of a directory (not . and ..), or nil and a message.
---@param path string
---@return tug.sys.Entry[]?
---@return string? message
function tug.sys.listdir(path) end

---@return string
function tug.sys.hostname() end

---This process's id.
---@return integer
function tug.sys.pid() end

---Whether a process with this id is alive.
---@param pid integer
---@return boolean
function tug.sys.pid_alive(pid) end

---Creates the directory and its parents; true, or nil and a message.
---@param path string
---@return true|nil
---@return string? message
function tug.sys.mkdir(path) end

---Whether the file descriptor is a terminal.
---@param fd integer
---@return boolean
function tug.sys.isatty(fd) end

---The terminal's width in columns (80 when stdout is not a terminal).
---@return integer
function tug.sys.term_width() end
