---@meta time
-- time: clocks and durations (modules/time/README.md).

---@class tug.time
time = {}

---Wall-clock seconds since the Unix epoch, with fractions.
---@return number
function time.now() end

---Seconds from an arbitrary start; never goes back (use it to measure).
---@return number
function time.monotonic() end

---Seconds as a number, or nil and a message when `text` is not a duration
---("500ms", "1m30s", "1.5s", "2h", "1d1h"; a plain number is seconds).
---@param text tug.Duration
---@return number? seconds
---@return string? message
function time.parse_duration(text) end

---`90.5` -> "1m30.5s", `0.25` -> "250ms", `7200` -> "2h".
---@param seconds number
---@return string
function time.format_duration(seconds) end

---`t` (default: now) in UTC with strftime format `fmt` (default "%Y-%m-%dT%H:%M:%SZ").
---@param t? number seconds since the epoch
---@param fmt? string
---@return string
function time.format(t, fmt) end

return time
