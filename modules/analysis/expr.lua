-- expr.lua: conditions written as text ("value < 0.001", "value <= thresholds.p95_ms / 1000
-- and not isnan(value)") compiled into plain Lua closures by a small parser. Nothing is
-- handed to `load`, so a condition can reach only what it is given: `value`, the
-- variables passed in (numbers, booleans and tables of them, read-only), a few math
-- functions and constants. Unknown names and bad syntax are errors when the condition is
-- compiled, before any measurement is taken.
--
-- Grammar (Lua's precedence; && || ! != are accepted as well):
--   expr := or;  or := and {or and};  and := not {and not};  not := [not] cmp
--   cmp  := sum [(< <= > >= == ~= !=) sum];  sum := prod {(+ -) prod}
--   prod := unary {(* / %) unary};  unary := [-] pow;  pow := atom [^ unary]
--   atom := number | true | false | name{.name} [( args )] | ( expr )

local M = {}

local FUNCTIONS = {
  abs = math.abs, floor = math.floor, ceil = math.ceil, sqrt = math.sqrt, exp = math.exp,
  log = function(x, base) return math.log(x, base) end,
  min = math.min, max = math.max,
  isnan = function(x) return x ~= x end,
  isinf = function(x) return x == math.huge or x == -math.huge end,
}
local CONSTANTS = { inf = math.huge, nan = 0 / 0, pi = math.pi, huge = math.huge }

-- ---- lexer ----

local function tokenize(text)
  local tokens, i = {}, 1
  local function push(kind, value, at) tokens[#tokens + 1] = { kind = kind, value = value, at = at } end
  while i <= #text do
    local c = text:sub(i, i)
    if c:match("%s") then
      i = i + 1
    else
      local num = text:match("^%d+%.?%d*[eE][%+%-]?%d+", i) or text:match("^%.%d+[eE][%+%-]?%d+", i)
        or text:match("^%d+%.?%d*", i) or text:match("^%.%d+", i)
      if num then
        local n = tonumber(num)
        if not n then error(("bad number '%s' at position %d"):format(num, i), 0) end
        push("number", n, i)
        i = i + #num
      else
        local name = text:match("^[%a_][%w_]*", i)
        if name then
          push("name", name, i)
          i = i + #name
        else
          local op = text:match("^[<>=~!]=", i) or text:match("^&&", i) or text:match("^||", i)
            or text:match("^[%+%-%*/%%%^%(%)<>,%.!]", i)
          if not op then error(("unexpected '%s' at position %d"):format(c, i), 0) end
          push("op", op, i)
          i = i + #op
        end
      end
    end
  end
  push("end", nil, #text + 1)
  return tokens
end

-- ---- parser: each rule returns a closure fn(env) -> value ----

local function compile(text, known, samples)
  local tokens = tokenize(text)
  local pos = 1
  local function peek() return tokens[pos] end
  local function is(kind, value)
    local t = tokens[pos]
    return t.kind == kind and (value == nil or t.value == value)
  end
  local function take() pos = pos + 1; return tokens[pos - 1] end
  local function expect(value)
    if not is("op", value) then
      local t = peek()
      error(("expected '%s' at position %d"):format(value, t.at), 0)
    end
    take()
  end

  local parse_expr

  local function number_of(v, what)
    if type(v) ~= "number" then
      error(("%s is %s, not a number"):format(what, v == nil and "nil" or type(v)), 0)
    end
    return v
  end

  local function parse_atom()
    local t = peek()
    if t.kind == "number" then
      take()
      local n = t.value
      return function() return n end
    elseif is("op", "(") then
      take()
      local inner = parse_expr()
      expect(")")
      return inner
    elseif t.kind == "name" then
      take()
      local name = t.value
      if name == "true" or name == "false" then
        local b = name == "true"
        return function() return b end
      end
      local path = { name }
      while is("op", ".") do
        take()
        local part = peek()
        if part.kind ~= "name" then error(("expected a name after '.' at position %d"):format(part.at), 0) end
        take()
        path[#path + 1] = part.value
      end
      local dotted = table.concat(path, ".")
      if is("op", "(") then
        take()
        local fname = path[#path]
        local fn = (#path == 1 or (#path == 2 and path[1] == "math")) and FUNCTIONS[fname]
        if not fn then error(("unknown function '%s' at position %d"):format(dotted, t.at), 0) end
        local args = {}
        if not is("op", ")") then
          args[1] = parse_expr()
          while is("op", ",") do
            take()
            args[#args + 1] = parse_expr()
          end
        end
        expect(")")
        return function(env)
          local values = {}
          for i, a in ipairs(args) do values[i] = number_of(a(env), dotted .. "'s argument " .. i) end
          return fn(table.unpack(values, 1, #args))
        end
      end
      if #path == 1 and CONSTANTS[name] and not known[name] then
        local k = CONSTANTS[name]
        return function() return k end
      end
      if #path == 2 and path[1] == "math" and CONSTANTS[path[2]] then
        local k = CONSTANTS[path[2]]
        return function() return k end
      end
      if not known[name] then
        local names = {}
        for k in pairs(known) do names[#names + 1] = k end
        table.sort(names)
        error(("unknown name '%s' at position %d (known: %s)"):format(name, t.at, table.concat(names, ", ")), 0)
      end
      -- a path into a table known now is checked now: a typo fails before any measurement
      local sample = samples[name]
      for i = 2, #path do
        if sample == nil then break end
        if type(sample) ~= "table" then
          error(("'%s' is not a table (at position %d)"):format(table.concat(path, ".", 1, i - 1), t.at), 0)
        end
        sample = sample[path[i]]
        if sample == nil then
          error(("'%s' has no '%s' (at position %d)"):format(table.concat(path, ".", 1, i - 1), path[i], t.at), 0)
        end
      end
      return function(env)
        local v = env[name]
        for i = 2, #path do
          if type(v) ~= "table" then return nil end
          v = v[path[i]]
        end
        return v
      end
    end
    error(("unexpected %s at position %d"):format(t.kind == "end" and "end of condition"
      or ("'" .. tostring(t.value) .. "'"), t.at), 0)
  end

  local parse_unary

  local function parse_pow()
    local base = parse_atom()
    if is("op", "^") then
      take()
      local exponent = parse_unary()
      return function(env) return number_of(base(env), "the base of ^") ^ number_of(exponent(env), "the exponent") end
    end
    return base
  end

  function parse_unary()
    if is("op", "-") then
      take()
      local operand = parse_unary()
      return function(env) return -number_of(operand(env), "the operand of -") end
    end
    return parse_pow()
  end

  local ARITH = {
    ["+"] = function(a, b) return a + b end, ["-"] = function(a, b) return a - b end,
    ["*"] = function(a, b) return a * b end, ["/"] = function(a, b) return a / b end,
    ["%"] = function(a, b) return math.fmod(a, b) end,
  }

  local function binary_chain(next_rule, ops)
    return function()
      local left = next_rule()
      while peek().kind == "op" and ops[peek().value] do
        local op = take().value
        local right = next_rule()
        local fn, l = ARITH[op], left
        left = function(env)
          return fn(number_of(l(env), "the left side of " .. op), number_of(right(env), "the right side of " .. op))
        end
      end
      return left
    end
  end

  local parse_prod = binary_chain(parse_unary, { ["*"] = true, ["/"] = true, ["%"] = true })
  local parse_sum = binary_chain(parse_prod, { ["+"] = true, ["-"] = true })

  local COMPARE = {
    ["<"] = function(a, b) return a < b end, ["<="] = function(a, b) return a <= b end,
    [">"] = function(a, b) return a > b end, [">="] = function(a, b) return a >= b end,
    ["=="] = function(a, b) return a == b end, ["~="] = function(a, b) return a ~= b end,
    ["!="] = function(a, b) return a ~= b end,
  }

  local function parse_cmp()
    local left = parse_sum()
    local t = peek()
    if t.kind == "op" and COMPARE[t.value] then
      take()
      local right = parse_sum()
      local fn, op = COMPARE[t.value], t.value
      if op == "==" or op == "~=" or op == "!=" then
        return function(env) return fn(left(env), right(env)) end
      end
      return function(env)
        return fn(number_of(left(env), "the left side of " .. op), number_of(right(env), "the right side of " .. op))
      end
    end
    return left
  end

  local function truth(v, what)
    if type(v) ~= "boolean" then
      error(("%s is %s, not true or false"):format(what, v == nil and "nil" or type(v)), 0)
    end
    return v
  end

  local function parse_not()
    if is("name", "not") or is("op", "!") then
      take()
      local operand = parse_not()
      return function(env) return not truth(operand(env), "the operand of not") end
    end
    return parse_cmp()
  end

  local function parse_and()
    local left = parse_not()
    while is("name", "and") or is("op", "&&") do
      take()
      local right, l = parse_not(), left
      left = function(env) return truth(l(env), "the left side of and") and truth(right(env), "the right side of and") end
    end
    return left
  end

  function parse_expr()
    local left = parse_and()
    while is("name", "or") or is("op", "||") do
      take()
      local right, l = parse_and(), left
      left = function(env) return truth(l(env), "the left side of or") or truth(right(env), "the right side of or") end
    end
    return left
  end

  local root = parse_expr()
  if not is("end") then
    local t = peek()
    error(("unexpected '%s' at position %d"):format(tostring(t.value), t.at), 0)
  end
  return root
end

-- M.compile(text, vars) -> fn(value) -> boolean. `vars` are the other names a condition
-- may use (thresholds, baseline ...), fixed when it is compiled. Raises "condition
-- 'TEXT': MESSAGE" on a syntax error or an unknown name.
function M.compile(text, vars)
  if type(text) ~= "string" then error("a condition must be a string", 2) end
  vars = vars or {}
  local known = { value = true }
  for k in pairs(vars) do known[k] = true end
  local ok, root = pcall(compile, text, known, vars)
  if not ok then error(("condition '%s': %s"):format(text, tostring(root)), 0) end
  return function(value)
    local env = setmetatable({ value = value }, { __index = vars })
    local ok2, result = pcall(root, env)
    if not ok2 then error(("condition '%s': %s"):format(text, tostring(result)), 0) end
    if type(result) ~= "boolean" then
      error(("condition '%s' gave %s, not true or false"):format(text, type(result)), 0)
    end
    return result
  end
end

-- M.evaluate(text, vars) -> the value of an expression (for numbers, not only conditions).
function M.evaluate(text, vars)
  vars = vars or {}
  local known = {}
  for k in pairs(vars) do known[k] = true end
  local ok, root = pcall(compile, text, known, vars)
  if not ok then error(("expression '%s': %s"):format(text, tostring(root)), 0) end
  return root(vars)
end

return M
