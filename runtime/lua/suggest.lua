-- suggest.lua: "did you mean ...?" for a mistyped name (a playbook, a param, an option, a
-- field, an environment): the closest known name by edit distance, when it is close
-- enough to be a typo.

local M = {}

-- Optimal string alignment distance: insertions, deletions, substitutions and swaps of
-- two neighbouring characters each count one.
local function distance(a, b)
  local prev2, prev, cur = {}, {}, {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    cur = { [0] = i }
    for j = 1, #b do
      local cost = a:byte(i) == b:byte(j) and 0 or 1
      local d = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
      if i > 1 and j > 1 and a:byte(i) == b:byte(j - 1) and a:byte(i - 1) == b:byte(j) then
        d = math.min(d, prev2[j - 2] + 1)
      end
      cur[j] = d
    end
    prev2, prev = prev, cur
  end
  return prev[#b]
end

-- The known name closest to `word`, or nil when none is a likely typo of it.
function M.closest(word, names)
  word = tostring(word):lower()
  local limit = #word <= 4 and 1 or #word <= 8 and 2 or 3
  local best, best_distance
  for _, name in ipairs(names) do
    local d = distance(word, tostring(name):lower())
    if d <= limit and (best_distance == nil or d < best_distance) then
      best, best_distance = name, d
    end
  end
  return best
end

-- "; did you mean 'NAME'?" (with the quoting `format` gives, "'%s'" by default), or "".
function M.hint(word, names, format)
  local name = M.closest(word, names)
  if not name then return "" end
  return "; did you mean " .. string.format(format or "'%s'", name) .. "?"
end

return M
