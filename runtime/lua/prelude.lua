-- prelude.lua: runs once when tug starts, before any script or playbook.
-- Makes every module a global that loads on first use (so start-up stays fast), and
-- sends what scripts write to the terminal through secret redaction.

local modules = {}
for _, name in ipairs(tug.modules) do modules[name] = true end

setmetatable(_G, {
  __index = function(_, key)
    if modules[key] then
      local module = require(key)
      rawset(_G, key, module)
      return module
    end
  end,
})

-- io.write and file:write to stdout and stderr redact secrets, as print does.
local redact = require("log.core").redact
local file_methods = getmetatable(io.stdout).__index
local raw_write = file_methods.write
local stdout, stderr = io.stdout, io.stderr

local function redacted(...)
  local n = select("#", ...)
  if n == 1 then return redact(tostring((...))) end
  local parts = { ... }
  for i = 1, n do parts[i] = redact(tostring(parts[i])) end
  return table.unpack(parts, 1, n)
end

function file_methods.write(file, ...)
  if file == stdout or file == stderr then
    return raw_write(file, redacted(...))
  end
  return raw_write(file, ...)
end

function io.write(...)
  return io.output():write(...)
end
