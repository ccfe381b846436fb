-- completion.lua: shell completion. `tug completion bash|zsh|fish` prints a script for
-- the shell; the script asks tug itself for candidates (`tug __complete WORD...`, the
-- words typed so far, the last one being completed), so playbooks, their params and
-- enum values, environments and run ids are always those of the current directory.

local M = {}

local help = require("tug.help")

-- The flags a command takes, as help.lua documents them ("--env E" -> "--env").
local function flags_of(command)
  local c = help.by_name[command]
  local out = {}
  for _, o in ipairs(c and c.options or {}) do
    local flag = o[1]:match("^(%-%-[%w%-]+)")
    if flag then out[#out + 1] = flag end
  end
  out[#out + 1] = "--help"
  return out
end

-- Flags whose value is the next word, and what completes that value.
local VALUE_FLAGS = {
  ["--env"] = "environment", ["--output"] = "output", ["--from"] = "step", ["--tags"] = "none",
  ["--junit"] = "file", ["--playbooks"] = "dir", ["--every"] = "none", ["--metrics-listen"] = "none",
}

local function playbook_names(flags)
  local playbooks = require("tug.playbooks")
  local ok, found = pcall(playbooks.discover, playbooks.dirs(flags.playbooks))
  local out = {}
  for _, pb in ipairs(ok and found.list or {}) do out[#out + 1] = pb.name end
  return out, ok and found or nil
end

local function find_playbook(flags, name)
  local _, found = playbook_names(flags)
  return found and found.by_name[name]
end

-- Candidates for the last word of `words` (the words after `tug`).
function M.candidates(words)
  local current = words[#words] or ""
  local before = {}
  for i = 1, #words - 1 do before[i] = words[i] end
  local command = before[1]
  if not command then
    local out = {}
    for _, c in ipairs(help.commands) do
      if c.name ~= "version" then out[#out + 1] = c.name end
    end
    return out
  end
  if command == "help" then
    local out = {}
    for _, c in ipairs(help.commands) do out[#out + 1] = c.name end
    return out
  end
  if command == "completion" then return { "bash", "zsh", "fish" } end
  -- the flags and words typed so far
  local flags, positional = {}, {}
  local i = 2
  while i <= #before do
    local w = before[i]
    if VALUE_FLAGS[w] then
      flags[w:sub(3)] = before[i + 1]
      i = i + 1
    elseif not w:match("^%-") and not w:find("=", 1, true) then
      positional[#positional + 1] = w
    end
    i = i + 1
  end
  local previous = before[#before]
  local kind = VALUE_FLAGS[previous]
  if kind == "environment" then return require("tug.environment").available() end
  if kind == "output" then return { "tty", "plain", "json" } end
  if kind == "step" then
    local pb = positional[1] and find_playbook(flags, positional[1])
    local out = {}
    for _, s in ipairs(pb and pb.steps or {}) do out[#out + 1] = s.name end
    return out
  end
  if kind then return {} end -- a file, a directory or free text: the shell's own completion
  if current:match("^%-") then return flags_of(command) end
  if command == "resume" or command == "show" then
    if positional[1] then return {} end
    local out = {}
    for _, r in ipairs(require("tug.journal").list()) do
      if command == "show" or r.status == "running" then out[#out + 1] = r.run_id end
    end
    return out
  end
  if command == "run" or command == "plan" or command == "describe" then
    if not positional[1] then return (playbook_names(flags)) end
    if command == "describe" then return {} end
    local pb = find_playbook(flags, positional[1])
    if not pb then return {} end
    local key = current:match("^([%w_%-]+)=")
    local out = {}
    if key then
      local p = pb.params[key]
      local values = p and (p.values or (p.type == "bool" and { "true", "false" })) or {}
      for _, v in ipairs(values) do out[#out + 1] = key .. "=" .. tostring(v) end
      return out
    end
    for name in pairs(pb.params) do out[#out + 1] = name .. "=" end
    table.sort(out)
    return out
  end
  return {}
end

-- ---- the shell scripts ----

local BASH = [==[
# tug completion for bash: source it, or put it in /usr/share/bash-completion/completions/tug
_tug() {
  local cur=${COMP_WORDS[COMP_CWORD]}
  local IFS=$'\n'
  local candidates
  candidates=$(tug __complete "${COMP_WORDS[@]:1:COMP_CWORD}" 2> /dev/null)
  if [ -z "$candidates" ]; then
    COMPREPLY=($(compgen -f -- "$cur"))
    return
  fi
  COMPREPLY=($(compgen -W "$candidates" -- "$cur"))
  # key= leaves the cursor after '=' for the value
  if [ ${#COMPREPLY[@]} -eq 1 ] && [ "${COMPREPLY[0]%=}" != "${COMPREPLY[0]}" ]; then
    compopt -o nospace 2> /dev/null
  fi
}
complete -F _tug tug
]==]

local ZSH = [==[
#compdef tug
# tug completion for zsh: put it on $fpath as _tug, or source it after compinit
_tug() {
  local -a candidates
  candidates=("${(@f)$(tug __complete "${(@)words[2,CURRENT]}" 2> /dev/null)}")
  if [[ -z "${candidates[*]}" ]]; then
    _files
    return
  fi
  compadd -Q -a candidates
}
compdef _tug tug
]==]

local FISH = [==[
# tug completion for fish: put it in ~/.config/fish/completions/tug.fish
function __tug_complete
  set -l words (commandline -opc) (commandline -ct)
  tug __complete $words[2..-1] 2> /dev/null
end
complete -c tug -f -a '(__tug_complete)'
]==]

M.scripts = { bash = BASH, zsh = ZSH, fish = FISH }

return M
