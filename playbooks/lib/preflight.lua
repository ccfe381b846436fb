-- preflight.lua: the seed's pre-deployment checklist as data, and the readers the preflight
-- playbook's checks use: coverage reports (istanbul json-summary, lcov) and release notes
-- (a CHANGELOG section or a file of their own); the repository's Prisma migrations are
-- database.migrations_in's. Each reader returns plain values; the playbook decides what passes.
local read_file = require("database").read_file

local M = {}

-- The checklist, in the seed's order. `check` names the step of the playbook that decides
-- the item; the others only a person can answer. `na`: "n/a" is an honest answer.
M.SECTIONS = {
  { title = "Code quality", items = {
    { id = "tests", text = "All tests pass" },
    { id = "coverage", text = "Code coverage at or above {coverage_min}%", check = "coverage" },
    { id = "lint", text = "No linting errors" },
    { id = "image", text = "Image {ecr_repository}:{version} is in ECR", check = "ecr" },
    { id = "security_scan", text = "Security scan passed (no CRITICAL findings)", check = "ecr" },
    { id = "dependencies", text = "Dependencies updated" },
  } },
  { title = "Documentation", items = {
    { id = "api_docs", text = "API documentation updated" },
    { id = "migration_guide", text = "Migration guide created (for breaking changes)", na = true },
    { id = "release_notes", text = "Release notes written", check = "release_notes" },
    { id = "runbooks", text = "Runbooks updated" },
  } },
  { title = "Database changes", items = {
    { id = "migrations_tested", text = "Database migrations tested", na = true },
    { id = "pending_migrations", text = "Pending migrations listed", check = "migrations" },
    { id = "backup_strategy", text = "Backup strategy verified" },
    { id = "rollback_plan", text = "Rollback plan documented" },
    { id = "data_migrations", text = "Data migration scripts ready", na = true },
  } },
  { title = "Infrastructure changes", items = {
    { id = "staging", text = "Staging runs {version}", check = "staging" },
    { id = "infrastructure_tested", text = "Infrastructure changes tested in staging", na = true },
    { id = "resource_limits", text = "Resource limits reviewed" },
    { id = "scaling_policies", text = "Scaling policies updated", na = true },
    { id = "alerts", text = "Monitoring alerts configured" },
  } },
}

M.ITEMS, M.BY_ID = {}, {}
for _, section in ipairs(M.SECTIONS) do
  for _, item in ipairs(section.items) do
    item.section = section.title
    M.ITEMS[#M.ITEMS + 1] = item
    M.BY_ID[item.id] = item
  end
end

function M.ids(filter)
  local out = {}
  for _, item in ipairs(M.ITEMS) do
    if filter == nil or filter(item) then out[#out + 1] = item.id end
  end
  return out
end

-- The item's line with {version}, {coverage_min}, {ecr_repository} filled in.
function M.text(item, values)
  return (item.text:gsub("{([%w_]+)}", function(k) return tostring(values[k] or ("<" .. k .. ">")) end))
end

M.MARK = { pass = "✓", fail = "✗", unknown = "?" }

-- ---- coverage ----

M.COVERAGE_REPORTS = { "coverage/coverage-summary.json", "coverage/lcov.info" }

-- Line coverage from one report: pct, or nil and why.
function M.coverage_of(path, text)
  if path:match("%.json$") then
    local ok, doc = pcall(json.decode, text)
    if not ok or type(doc) ~= "table" then return nil, path .. " is not valid JSON" end
    local lines = type(doc.total) == "table" and doc.total.lines
    if type(lines) ~= "table" then
      return nil, path .. " has no total.lines (an istanbul json-summary report is expected)"
    end
    if type(lines.pct) ~= "number" then
      return nil, string.format("%s reports no line coverage (total.lines.pct is %s)", path, tostring(lines.pct))
    end
    return lines.pct
  end
  local found, hit, records = 0, 0, 0
  for line in text:gmatch("[^\n]+") do
    local key, n = line:match("^(L[FH]):(%d+)")
    if key == "LF" then found, records = found + tonumber(n), records + 1
    elseif key == "LH" then hit = hit + tonumber(n) end
  end
  if records == 0 then return nil, path .. " has no LF: lines (an lcov tracefile is expected)" end
  if found == 0 then return nil, path .. " counts no lines" end
  return hit * 100 / found
end

-- Finds the report (the given path, else the usual places) and reads it:
-- { pct, path } or nil and why.
function M.coverage(repo, given)
  local candidates = given and { given } or M.COVERAGE_REPORTS
  for _, rel in ipairs(candidates) do
    local text = read_file(repo .. "/" .. rel)
    if text then
      local pct, why = M.coverage_of(rel, text)
      if not pct then return nil, why end
      return { pct = pct, path = rel }
    end
  end
  if given then return nil, string.format("no coverage report at %s in %s", given, repo) end
  return nil, string.format("no coverage report in %s (looked for %s)", repo, table.concat(candidates, " and "))
end

-- ---- release notes ----

local function escape(s) return (s:gsub("%p", "%%%0")) end

-- The section of `text` under a Markdown heading that names the version (with or without
-- its "v"), to the next heading of the same or a higher level: heading, lines, or nil.
function M.section(text, version)
  local bare = escape(version:gsub("^v", ""))
  local lines = {}
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = line end
  for i, line in ipairs(lines) do
    local hashes, title = line:match("^(#+)%s+(.-)%s*$")
    if hashes and (" " .. title .. " "):match("[^%w%.]v?" .. bare .. "[^%w%.%-]") then
      local body = 0
      for j = i + 1, #lines do
        local next_hashes = lines[j]:match("^(#+)%s")
        if next_hashes and #next_hashes <= #hashes then break end
        if lines[j]:match("%S") then body = body + 1 end
      end
      return line, body
    end
  end
  return nil
end

-- Release notes for the version: { path, heading, lines } or nil and why. A file whose name
-- carries the version (release-notes/v2.2.0.md) is the notes; any other needs a section.
function M.release_notes(repo, version, given)
  local bare = version:gsub("^v", "")
  local candidates = given and { given } or { "CHANGELOG.md", "RELEASE_NOTES.md", "release-notes/" .. version .. ".md",
    "release-notes/" .. bare .. ".md", "docs/releases/" .. version .. ".md" }
  local looked, problem = {}, nil
  for _, rel in ipairs(candidates) do
    local text = read_file(repo .. "/" .. rel)
    if text then
      local heading, body = M.section(text, version)
      local lines = 0
      for l in text:gmatch("[^\n]+") do if l:match("%S") then lines = lines + 1 end end
      if heading and body > 0 then return { path = rel, heading = heading, lines = body } end
      if heading then
        problem = problem or string.format("%s has a heading for %s (\"%s\") with nothing under it", rel, bare, heading)
      elseif rel:match("[^/]*$"):find(bare, 1, true) then
        if lines > 0 then return { path = rel, lines = lines } end
        problem = problem or rel .. " is empty"
      else
        looked[#looked + 1] = rel
      end
    end
  end
  if problem then return nil, problem end
  if #looked == 0 then
    return nil, string.format("no release notes for %s: none of %s exists", version, table.concat(candidates, ", "))
  end
  return nil, string.format("no release notes for %s: %s %s no section for it", version, table.concat(looked, " and "),
    #looked == 1 and "has" or "have")
end

return M
