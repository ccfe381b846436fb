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

-- io.write and file:write to stdout and stderr redact secrets, as print does. The C side
-- treats each as a stream, holding back a tail that may be the start of a secret until the
-- next write; reading standard input writes it out first, so a prompt always shows.
local core = require("log.core")
local file_methods = getmetatable(io.stdout).__index
local raw_write, raw_read, raw_lines = file_methods.write, file_methods.read, file_methods.lines
local io_lines = io.lines
local stdin, stdout, stderr = io.stdin, io.stdout, io.stderr

local function joined(...)
  local n = select("#", ...)
  if n == 1 then return tostring((...)) end
  local parts = { ... }
  for i = 1, n do parts[i] = tostring(parts[i]) end
  return table.concat(parts, "", 1, n)
end

function file_methods.write(file, ...)
  if file == stdout or file == stderr then
    local ok, err, code = core.write(file == stdout and "stdout" or "stderr", joined(...), false)
    if not ok then return nil, err, code end
    return file
  end
  return raw_write(file, ...)
end

function file_methods.read(file, ...)
  if file == stdin then core.flush() end
  return raw_read(file, ...)
end

function file_methods.lines(file, ...)
  if file == stdin then core.flush() end
  return raw_lines(file, ...)
end

function io.write(...)
  return io.output():write(...)
end

function io.read(...)
  return io.input():read(...)
end

function io.lines(name, ...)
  if name == nil and io.input() == stdin then core.flush() end
  return io_lines(name, ...)
end

-- A program started through the shell writes straight to the terminal: what is held back
-- goes first, so the output keeps its order.
local execute, popen = os.execute, io.popen
function os.execute(...)
  core.flush()
  return execute(...)
end
function io.popen(...)
  core.flush()
  return popen(...)
end
