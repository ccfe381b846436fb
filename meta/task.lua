---@meta task
-- task: coroutines on tug's one event loop (modules/task/README.md).

---A running (or finished) task, as `task.spawn` and `task.current` return it.
---`local h <close> = task.spawn(...)` cancels it at the end of the scope.
---@class tug.task.Handle
---@field id integer unique in the process
local Handle = {}

---Waits for the task; returns its results, or raises its error (again on each call).
---@return any ...
function Handle:wait() end

---Cancels it: what it waits on is released at once; it unwinds with a `{ kind = "cancelled" }` error.
function Handle:cancel() end

---@alias tug.task.Status "new"|"ready"|"running"|"waiting"|"done"|"failed"|"cancelled"

---@return tug.task.Status
function Handle:status() end

---A wake-up flag between tasks (`task.event()`).
---@class tug.task.Event
local Event = {}

---Parks the calling task until `notify` (returns true) or until the timeout (returns false).
---A notify that came while nobody waited makes the next wait return true at once.
---@param timeout? tug.Duration
---@return boolean notified
function Event:wait(timeout) end

---Wakes every waiting task.
function Event:notify() end

---@class tug.task
task = {}

---Starts `fn(...)` as a new task at the loop's next turn; returns its handle at once.
---@param fn function
---@param ... any arguments for fn
---@return tug.task.Handle
function task.spawn(fn, ...) end

---Runs every function as its own task and waits for all of them; returns the first result
---of each, in the order given. On the first error the others are cancelled and it is raised.
---@param fns function[]
---@return any ...
function task.parallel(fns) end

---Waits `seconds` (a number or a duration such as "250ms"); never wakes early.
---@param seconds tug.Duration
function task.sleep(seconds) end

---Lets every other ready task and the loop run once.
function task.yield() end

---Runs `fn(...)` as a child task; raises `{ kind = "timeout" }` and cancels it when
---`seconds` pass first.
---@param seconds tug.Duration
---@param fn function
---@param ... any arguments for fn
---@return any ...
function task.timeout(seconds, fn, ...) end

---A new wake-up flag between tasks.
---@return tug.task.Event
function task.event() end

---The running task's handle (nil outside a task).
---@return tug.task.Handle?
function task.current() end

return task
