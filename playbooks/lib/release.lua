-- release.lua: what the release playbook needs besides its steps: git through exec (reads
-- marked read_only so plans run them), semantic version numbers, and bumping the version in
-- a JSON manifest (only the top-level "version" member's value changes, every other byte
-- stays as it was) or in a plain VERSION file.

local M = {}

-- git never waits for a password nobody can type; messages stay in English for the reasons
-- the steps quote.
local GIT_ENV = { GIT_TERMINAL_PROMPT = "0", LC_ALL = "C", LANGUAGE = false }

-- What git said: the remote's own words (a hook's reason) first, then its last lines.
local function git_said(text)
  local remote, lines = {}, {}
  for line in (text or ""):gmatch("[^\n]+") do
    line = line:match("^%s*(.-)%s*$")
    if line:match("^remote: ") and #remote < 5 then remote[#remote + 1] = line end
    lines[#lines + 1] = line
  end
  local last = {}
  for i = math.max(1, #lines - 2), #lines do
    if not lines[i]:match("^remote: ") then last[#last + 1] = lines[i] end
  end
  for _, line in ipairs(last) do remote[#remote + 1] = line end
  return table.concat(remote, " / ")
end

-- M.git(repo, { "status", "--porcelain" }, { read_only = true, allow_fail = true, timeout = "5m",
-- what = "pushing the tag" }). Runs git -C repo ARGS; raises "git ARGS: <stderr>" (or
-- "WHAT: <stderr>") when it fails, unless allow_fail.
function M.git(repo, args, opts)
  opts = opts or {}
  local argv = { "git", "-C", repo }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local r = exec.run(argv, { read_only = opts.read_only, timeout = opts.timeout or "1m", env = GIT_ENV })
  if r.code ~= 0 and not opts.allow_fail then
    local why = r.timed_out and "timed out" or git_said(r.stderr ~= "" and r.stderr or r.stdout)
    error(string.format("%s: %s", opts.what or ("git " .. table.concat(args, " ")), why), 0)
  end
  return r
end

-- A read: runs under plan too, returns stdout without its final newline, or nil when git fails.
function M.read(repo, args)
  local r = M.git(repo, args, { read_only = true, allow_fail = true })
  if r.code ~= 0 then return nil, r end
  return (r.stdout:gsub("\n$", "")), r
end

-- "v2.2.0" or "2.2.0" -> { 2, 2, 0 }, or nil.
function M.parse_version(text)
  local x, y, z = tostring(text):match("^v?(%d+)%.(%d+)%.(%d+)$")
  if not x then return nil end
  return { tonumber(x), tonumber(y), tonumber(z) }
end

-- true when version a is greater than b (both parsed).
function M.greater(a, b)
  for i = 1, 3 do
    if a[i] ~= b[i] then return a[i] > b[i] end
  end
  return false
end

-- Where the end quote of the JSON string starting at `i` (a quote) is.
local function string_end(text, i)
  local j = i + 1
  while true do
    local k = text:find('[\\"]', j)
    if not k then return nil end
    if text:sub(k, k) == "\\" then j = k + 2 else return k end
  end
end

-- The top-level "version" member's value in JSON text: the positions of its quotes, or nil
-- and why. A "version" key inside a nested object or array is not it.
local function json_version_span(text)
  if not text:match("^%s*{") then return nil, "the top level is not an object" end
  local i, depth = 1, 0
  while i <= #text do
    local c = text:sub(i, i)
    if c == '"' then
      local j = string_end(text, i)
      if not j then return nil, "a string is not closed" end
      if depth == 1 and text:sub(i, j) == '"version"' then
        local value_at = text:match("^%s*:%s*()", j + 1)
        if value_at then
          if text:sub(value_at, value_at) ~= '"' then return nil, "\"version\" is not a string" end
          local value_end = string_end(text, value_at)
          if not value_end then return nil, "a string is not closed" end
          return value_at, value_end
        end
      end
      i = j + 1
    else
      if c == "{" or c == "[" then depth = depth + 1 elseif c == "}" or c == "]" then depth = depth - 1 end
      i = i + 1
    end
  end
  return nil, "it has no top-level \"version\""
end

-- Reads the version a file holds. kind: "json" (a manifest such as package.json) for names
-- ending in .json, else "plain" (the whole file is the version, as in VERSION).
-- Returns { kind, current } or nil and why.
function M.read_version(path, text)
  if path:match("%.json$") then
    local ok, doc = pcall(json.decode, text)
    if not ok or type(doc) ~= "table" then
      return nil, "is not valid JSON: " .. tostring(doc):gsub("^json%.decode: ", "")
    end
    local at, why = json_version_span(text)
    if not at then return nil, why end
    if type(doc.version) ~= "string" or not M.parse_version(doc.version) then
      return nil, string.format("has version \"%s\", not X.Y.Z", tostring(doc.version))
    end
    return { kind = "json", current = doc.version }
  end
  local version = text:match("^%s*(v?%d+%.%d+%.%d+)%s*$")
  if not version then
    return nil, string.format("does not hold a version X.Y.Z (it holds \"%s\")", text:sub(1, 40):gsub("\n", "\\n"))
  end
  return { kind = "plain", current = version }
end

-- The text with its version replaced by `version` (X.Y.Z; a "v" is kept or left out as the
-- file had it). Raises on text read_version refuses.
function M.bump(path, text, version)
  local info, why = M.read_version(path, text)
  if not info then error(path .. " " .. why, 0) end
  local bare = version:gsub("^v", "")
  local new = (info.current:match("^v") and "v" or "") .. bare
  if info.kind == "json" then
    local at, stop = json_version_span(text)
    return text:sub(1, at) .. new .. text:sub(stop), info.current, new
  end
  local before, after = text:match("^(%s*)v?%d+%.%d+%.%d+(%s*)$")
  return before .. new .. after, info.current, new
end

return M
