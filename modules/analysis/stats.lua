-- stats.lua: the statistics behind analysis.compare (module analysis.stats): the
-- Mann-Whitney U test (Wilcoxon rank-sum) of a canary's samples against a baseline's, with
-- the Hodges-Lehmann estimate of the shift between them and its confidence interval, as
-- R's wilcox.test computes them:
--   * exact p-value and interval when both samples have fewer than 50 values and there are
--     no ties (the distribution of U counted exactly);
--   * otherwise the normal approximation with the tie correction and the continuity
--     correction, and the interval from the normal approximation to U's quantile.
-- Everything is two-sided. Pure Lua: samples of a canary window are small.

local M = {}

local SQRT2 = math.sqrt(2)
local SQRT_PI = math.sqrt(math.pi)
local MAX_PAIRS = 1000000 -- beyond this the m*n differences stop fitting comfortably

-- ---- the normal distribution ----

-- erfc: the power series of erf below 2.5 (error about 1e-13 absolute there), a continued
-- fraction above it (converges fast for large x).
function M.erfc(x)
  if x ~= x then return x end
  if x < 0 then return 2 - M.erfc(-x) end
  if x < 2.5 then
    local sum, term, n = x, x, 0
    local x2 = x * x
    repeat
      n = n + 1
      term = -term * x2 / n
      local add = term / (2 * n + 1)
      sum = sum + add
    until math.abs(add) <= 1e-17 * math.abs(sum) or n > 200
    return 1 - 2 / SQRT_PI * sum
  end
  if x > 27 then return 0 end
  local f = x
  for k = 120, 1, -1 do f = x + (k / 2) / f end
  return math.exp(-x * x) / SQRT_PI / f
end

-- P(Z <= z) for a standard normal Z.
function M.normal_cdf(z)
  return 0.5 * M.erfc(-z / SQRT2)
end

-- z with P(Z <= z) = p, by bisection (exact to the last bits; it runs a few times per call).
function M.normal_quantile(p)
  if p <= 0 then return -math.huge end
  if p >= 1 then return math.huge end
  local lo, hi = -40, 40
  for _ = 1, 200 do
    local mid = (lo + hi) / 2
    if M.normal_cdf(mid) < p then lo = mid else hi = mid end
    if hi - lo < 1e-15 then break end
  end
  return (lo + hi) / 2
end

-- ---- descriptive statistics ----

function M.mean(xs)
  if #xs == 0 then return 0 / 0 end
  local s = 0
  for _, x in ipairs(xs) do s = s + x end
  return s / #xs
end

-- median of a sorted array
local function median_sorted(s)
  local n = #s
  if n == 0 then return 0 / 0 end
  if n % 2 == 1 then return s[(n + 1) // 2] end
  return (s[n // 2] + s[n // 2 + 1]) / 2
end

function M.median(xs)
  local s = table.move(xs, 1, #xs, 1, {})
  table.sort(s)
  return median_sorted(s)
end

function M.stddev(xs)
  local n = #xs
  if n < 2 then return 0 end
  local m = M.mean(xs)
  local s = 0
  for _, x in ipairs(xs) do s = s + (x - m) ^ 2 end
  return math.sqrt(s / (n - 1))
end

-- { n, mean, median, stddev, min, max } of a sample; only n for an empty one (no NaN, so
-- the summary can be written as JSON).
function M.describe(xs)
  if #xs == 0 then return { n = 0 } end
  local s = table.move(xs, 1, #xs, 1, {})
  table.sort(s)
  return { n = #s, mean = M.mean(s), median = median_sorted(s), stddev = M.stddev(s), min = s[1], max = s[#s] }
end

-- ---- the exact distribution of U ----

-- counts[u + 1] = the number of arrangements of m values of one sample and n of the other
-- (no ties) in which U = u, where U counts the pairs whose first-sample value is larger.
-- f(i, j, u) = f(i - 1, j, u - j) + f(i, j - 1, u): the largest of the i + j values belongs
-- to the first sample (and beats all j of the second) or to the second.
function M.u_distribution(m, n)
  local prev = {}
  for j = 0, n do prev[j] = { 1 } end -- i = 0: U is 0 whatever j
  for i = 1, m do
    local row = {}
    row[0] = { 1 }                     -- j = 0: U is 0
    for j = 1, n do
      local size = i * j + 1
      local a, b, out = prev[j], row[j - 1], {}
      for u = 0, size - 1 do
        local v = 0
        if u - j >= 0 then v = a[u - j + 1] or 0 end
        v = v + (b[u + 1] or 0)
        out[u + 1] = v
      end
      row[j] = out
    end
    prev = row
  end
  return prev[n]
end

local function exact_cdf(counts, total)
  local cdf, acc = {}, 0
  for u = 0, #counts - 1 do
    acc = acc + counts[u + 1]
    cdf[u] = acc / total
  end
  return cdf
end

-- ---- the test ----

-- Ranks of the combined sample, ties sharing their average rank; returns the ranks and the
-- sum over tie groups of t^3 - t.
local function rank(values)
  local order = {}
  for i = 1, #values do order[i] = i end
  table.sort(order, function(a, b) return values[a] < values[b] end)
  local ranks, ties = {}, 0
  local i = 1
  while i <= #order do
    local j = i
    while j < #order and values[order[j + 1]] == values[order[i]] do j = j + 1 end
    local r = (i + j) / 2
    for k = i, j do ranks[order[k]] = r end
    local t = j - i + 1
    if t > 1 then ties = ties + t * t * t - t end
    i = j + 1
  end
  return ranks, ties
end

-- M.mann_whitney(canary, baseline [, { confidence = 0.95, method = "auto"|"exact"|"normal" }])
-- -> { u, u_baseline, n_canary, n_baseline, p_value, z, method, estimate, ci = { lo, hi },
--      cles }. `u` counts the pairs in which the canary value is larger (ties count half);
-- `estimate` is the Hodges-Lehmann shift (median of canary_i - baseline_j) and `ci` its
-- interval at `confidence`; `cles` = u / (m n), the probability that a canary value beats a
-- baseline value.
function M.mann_whitney(x, y, opts)
  opts = opts or {}
  local confidence = opts.confidence or 0.95
  local m, n = #x, #y
  if m == 0 or n == 0 then error("mann_whitney: both samples need values", 2) end
  if m * n > MAX_PAIRS then
    error(("mann_whitney: %d x %d samples are too many (at most %d pairs): use a coarser step"):format(m, n, MAX_PAIRS), 2)
  end
  for _, xs in ipairs({ x, y }) do
    for _, v in ipairs(xs) do
      if type(v) ~= "number" or v ~= v then error("mann_whitney: samples must be numbers, not NaN", 2) end
    end
  end
  local combined = {}
  for i = 1, m do combined[i] = x[i] end
  for j = 1, n do combined[m + j] = y[j] end
  local ranks, ties = rank(combined)
  local r1 = 0
  for i = 1, m do r1 = r1 + ranks[i] end
  local u = r1 - m * (m + 1) / 2
  local mn = m * n

  -- every difference, sorted: the estimate and the interval are order statistics of them
  local diffs, k = {}, 0
  for i = 1, m do
    local xi = x[i]
    for j = 1, n do
      k = k + 1
      diffs[k] = xi - y[j]
    end
  end
  table.sort(diffs)
  local estimate = median_sorted(diffs)

  local method = opts.method or "auto"
  if method == "auto" then method = (m < 50 and n < 50 and ties == 0) and "exact" or "normal" end
  local alpha = 1 - confidence
  local result = {
    u = u, u_baseline = mn - u, n_canary = m, n_baseline = n, method = method,
    estimate = estimate, cles = u / mn, confidence = confidence,
  }

  local qu
  if method == "exact" then
    local counts = M.u_distribution(m, n)
    local total = 0
    for _, c in ipairs(counts) do total = total + c end
    local cdf = exact_cdf(counts, total)
    -- the two-sided p doubles the smaller tail (R's rule); U is symmetric about mn / 2, so
    -- P(U >= u) = P(U <= mn - u), which keeps tiny tails exact (1 - cdf would round to 0)
    local stat = math.floor(u + 0.5)
    local p
    if stat > mn / 2 then p = cdf[mn - stat] else p = cdf[stat] end
    result.p_value = math.min(2 * p, 1)
    -- the smallest q with P(U <= q) >= alpha / 2
    qu = 0
    while qu < mn and cdf[qu] < alpha / 2 * (1 - 1e-12) do qu = qu + 1 end
  else
    local N = m + n
    local sigma = math.sqrt(mn / 12 * ((N + 1) - ties / (N * (N - 1))))
    local d = u - mn / 2
    if sigma == 0 then
      result.z, result.p_value = 0, 1
      qu = math.floor(mn / 2)
    else
      local correction = (d > 0 and 0.5) or (d < 0 and -0.5) or 0
      local z = (d - correction) / sigma
      result.z = z
      result.p_value = math.min(1, 2 * M.normal_cdf(-math.abs(z)))
      local zq = M.normal_quantile(1 - alpha / 2)
      qu = math.ceil(mn / 2 - 0.5 - zq * sigma)
    end
  end
  if qu < 1 then qu = 1 end
  if qu > mn then qu = mn end
  local upper = mn - qu + 1
  if upper < qu then upper = qu end
  result.ci = { diffs[qu], diffs[upper] }
  return result
end

return M
