---@meta log
-- log: levelled, structured logging, and the secret registry behind redaction
-- (modules/log/README.md).

---@alias tug.log.Level "debug"|"info"|"warn"|"error"

---@class tug.log.Record
---@field time string
---@field level tug.log.Level
---@field message string
---@field fields table

---A logger that adds bound fields to every line (`log.with`); anything else is `log`'s.
---@class tug.log.Logger: tug.log
local Logger = {}

---@param message string
---@param fields? table
function Logger.debug(message, fields) end

---@param message string
---@param fields? table
function Logger.info(message, fields) end

---@param message string
---@param fields? table
function Logger.warn(message, fields) end

---@param message string
---@param fields? table
function Logger.error(message, fields) end

---@class tug.log
log = {}

---One line on stderr if the level is at or above the threshold; fields sorted by name.
---@param message string
---@param fields? table
function log.debug(message, fields) end

---@param message string
---@param fields? table
function log.info(message, fields) end

---@param message string
---@param fields? table
function log.warn(message, fields) end

---@param message string
---@param fields? table
function log.error(message, fields) end

---A logger that adds `fields` to every line: `log.with{ run = id }.info("...")`.
---@param fields table
---@return tug.log.Logger
function log.with(fields) end

---Sets the threshold (an unknown name is an error).
---@param name tug.log.Level
function log.set_level(name) end

---The threshold's name.
---@return tug.log.Level
function log.level() end

---"text" (default) or "json" (one object per line: time, level, msg, fields).
---@param name "text"|"json"
function log.set_format(name) end

---Sends records to `fn` instead of stderr; nil restores stderr.
---@param fn fun(record: tug.log.Record)|nil
function log.set_sink(fn) end

---Registers `value` as a secret (never shown in any output) and returns it.
---@generic T
---@param value T
---@return T
function log.secret(value) end

---A string with every secret replaced by `***`; a table with every string in it masked
---(a copy when something changed); any other value as it is.
---@generic T
---@param value T
---@return T
function log.redact(value) end

return log
