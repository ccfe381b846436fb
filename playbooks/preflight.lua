-- preflight: the seed's pre-deployment checklist. tug checks what a machine can tell (the
-- image is in ECR with no CRITICAL findings, line coverage, release notes, the migrations
-- the database has not applied yet, staging running the candidate) and asks a person the
-- rest on a terminal; in CI a person affirms those with confirmed=ID,ID. The last step
-- prints the checklist (✓ ✗ ? and why) and the verdict; the run fails when any item is not
-- a ✓. It changes nothing: every step only reads.
local checklist = require("preflight")
local database = require("database")

local function why(err)
  if type(err) == "table" then return tostring(err.message or err) end
  return tostring(err)
end

local function set(ctx, id, status, reason)
  ctx.state.items[id] = { status = status, reason = reason }
end

-- tug cannot tell here: the item becomes a question for a person.
local function cannot_tell(ctx, ids, reason)
  for _, id in ipairs(ids) do
    ctx.state.items[id] = { status = "ask", reason = "tug cannot tell: " .. reason }
  end
end

local function values(ctx)
  return { version = ctx.params.version, coverage_min = ctx.params.coverage_min,
    ecr_repository = ctx.env.ecr_repository or ctx.env.image_repository or "the image" }
end

local HUMAN_IDS = table.concat(checklist.ids(function(i) return not i.check end), ", ")

return playbook {
  description = "the pre-deployment checklist: checks what a machine can tell, asks the rest, gives a verdict",
  params = {
    version = { type = "string", required = true, pattern = "^v%d+%.%d+%.%d+[%w%-%.]*$",
      help = "the candidate's image tag, e.g. v2.2.0" },
    repo = { type = "string", default = ".", help = "the application's repository (coverage, release notes, migrations)" },
    confirmed = { type = "list",
      help = "items a person has checked, for runs without a terminal: " .. HUMAN_IDS ..
        " (and any item tug cannot check in this environment)" },
    coverage_min = { type = "number", default = 90, min = 0, max = 100, help = "lowest line coverage, in percent" },
    coverage_report = { type = "string", help = "the report, relative to repo (default coverage/coverage-summary.json, else coverage/lcov.info)" },
    release_notes = { type = "string", help = "the release notes file, relative to repo (default CHANGELOG.md and the usual places)" },
    scan_wait = { type = "duration", default = "2m", help = "how long to wait for an ECR scan in progress" },
  },
  steps = {
    step "check the params and the repository" {
      read_only = true,
      run = function(ctx)
        local p = ctx.params
        local unknown = {}
        for _, id in ipairs(p.confirmed or {}) do
          if not checklist.BY_ID[id] then unknown[#unknown + 1] = "'" .. id .. "'" end
        end
        if #unknown > 0 then
          error(string.format("param 'confirmed': unknown item %s (items: %s)", table.concat(unknown, ", "),
            table.concat(checklist.ids(), ", ")), 0)
        end
        if exec.run({ "test", "-d", p.repo }, { read_only = true }).code ~= 0 then
          error(string.format("param 'repo': %s is not a directory", p.repo), 0)
        end
        ctx.state.items = {}
      end,
    },

    step "check the image and its scan in ECR" {
      read_only = true,
      timeout = "10m",
      run = function(ctx)
        local repository, tag = ctx.env.ecr_repository, ctx.params.version
        if not repository then
          return cannot_tell(ctx, { "image", "security_scan" }, "the " .. ctx.env.name .. " environment has no ecr_repository")
        end
        aws.configure(ctx.env.aws or {})
        local image = repository .. ":" .. tag
        local ok, exists = pcall(aws.ecr.image_exists, repository, tag)
        if not ok then
          set(ctx, "image", "fail", "cannot ask ECR: " .. why(exists))
          set(ctx, "security_scan", "fail", "cannot ask ECR: " .. why(exists))
          return
        end
        if not exists then
          set(ctx, "image", "fail", image .. " is not in ECR")
          set(ctx, "security_scan", "fail", "no image to scan")
          return
        end
        set(ctx, "image", "pass", image .. " is in ECR")
        local got, scan = pcall(aws.ecr.scan_findings, repository, tag, { wait = ctx.params.scan_wait })
        if not got then
          set(ctx, "security_scan", "fail", "no scan result: " .. why(scan))
          return
        end
        local c = scan.counts
        local others = {}
        for _, severity in ipairs({ "HIGH", "MEDIUM", "LOW" }) do
          if c[severity] > 0 then others[#others + 1] = string.format("%d %s", c[severity], severity) end
        end
        local also = #others > 0 and table.concat(others, ", ") or "nothing else"
        if scan.status ~= "COMPLETE" then
          set(ctx, "security_scan", "fail", string.format("the scan of %s is %s after %gs", image, scan.status,
            ctx.params.scan_wait))
        elseif c.CRITICAL > 0 then
          set(ctx, "security_scan", "fail", string.format("%d CRITICAL findings (and %s)", c.CRITICAL, also))
        else
          set(ctx, "security_scan", "pass", "no CRITICAL findings (" .. also .. ")")
        end
      end,
    },

    step "check the test coverage" {
      read_only = true,
      run = function(ctx)
        local p = ctx.params
        local report, problem = checklist.coverage(p.repo, p.coverage_report)
        if not report then return set(ctx, "coverage", "fail", problem) end
        ctx.state.coverage = report.pct
        local ok = report.pct >= p.coverage_min
        set(ctx, "coverage", ok and "pass" or "fail", string.format("%.1f%% of lines (%s)%s", report.pct, report.path,
          ok and "" or string.format(", below %g%%", p.coverage_min)))
      end,
    },

    step "check the release notes" {
      read_only = true,
      run = function(ctx)
        local notes, problem = checklist.release_notes(ctx.params.repo, ctx.params.version, ctx.params.release_notes)
        if not notes then return set(ctx, "release_notes", "fail", problem) end
        local count = string.format("%d line%s", notes.lines, notes.lines == 1 and "" or "s")
        set(ctx, "release_notes", "pass", notes.heading
          and string.format("%s, \"%s\" (%s)", notes.path, notes.heading, count)
          or string.format("%s (%s)", notes.path, count))
      end,
    },

    step "list the pending migrations" {
      read_only = true,
      timeout = "2m",
      run = function(ctx)
        local db = ctx.env.database
        if not (db and db.migrations) then
          return cannot_tell(ctx, { "pending_migrations" }, "the " .. ctx.env.name .. " environment has no database.migrations")
        end
        if not ctx.env.database_url then
          return cannot_tell(ctx, { "pending_migrations" }, "the " .. ctx.env.name .. " environment has no database_url")
        end
        local dir = ctx.params.repo .. "/" .. db.migrations
        local names = database.migrations_in(dir)
        if not names then
          return set(ctx, "pending_migrations", "fail", string.format("no migrations directory %s (database.migrations)", dir))
        end
        local ok, m = pcall(function()
          local conn <close> = pg.connect(ctx.env.database_url, { timeout = "10s" })
          return pg.migrations.prisma(conn, { expected = names })
        end)
        if not ok then return set(ctx, "pending_migrations", "fail", "cannot read the database: " .. why(m)) end
        ctx.state.pending_migrations = m.pending
        if #m.failed > 0 then
          return set(ctx, "pending_migrations", "fail", string.format("the database has failed migrations: %s " ..
            "(resolve them with prisma migrate resolve first)", table.concat(m.failed, ", ")))
        end
        local known, unknown = {}, {}
        for _, n in ipairs(names) do known[n] = true end
        for _, n in ipairs(m.applied) do if not known[n] then unknown[#unknown + 1] = n end end
        local reason
        if #m.pending == 0 then
          reason = string.format("none pending (%d applied, latest %s)", #m.applied, tostring(m.latest))
        else
          reason = string.format("%d pending: %s", #m.pending, table.concat(m.pending, ", "))
        end
        if #unknown > 0 then
          reason = reason .. "; the database also has " .. table.concat(unknown, ", ") .. ", which the repository does not"
        end
        set(ctx, "pending_migrations", "pass", reason)
      end,
    },

    step "check staging runs the candidate" {
      read_only = true,
      timeout = "2m",
      run = function(ctx)
        local base = ctx.env.staging_url
        if not base then
          return cannot_tell(ctx, { "staging" }, "the " .. ctx.env.name .. " environment has no staging_url")
        end
        local url = base:gsub("/+$", "") .. "/health"
        -- several answers: staging has several pods, and a rollout in progress shows as a mix
        local seen, order, statuses, answers = {}, {}, {}, 5
        for _ = 1, answers do
          local r = http.get(url, { timeout = "10s" })
          if not r.status then return set(ctx, "staging", "fail", "staging did not answer: " .. r.message) end
          local ok, doc = pcall(r.json, r)
          local v = ok and type(doc) == "table" and doc.version or nil
          if type(v) ~= "string" then
            return set(ctx, "staging", "fail", string.format("%s answered %d without a version", url, r.status))
          end
          if not seen[v] then seen[v], order[#order + 1] = 0, v end
          seen[v] = seen[v] + 1
          if r.status ~= 200 then statuses[#statuses + 1] = r.status end
        end
        local wanted = ctx.params.version
        ctx.state.staging_versions = seen
        if #order == 1 and order[1] == wanted then
          if #statuses > 0 then
            return set(ctx, "staging", "fail", string.format("staging runs %s but %s answered %d", wanted, url, statuses[1]))
          end
          return set(ctx, "staging", "pass", string.format("%s: %s in %d of %d answers", url, wanted, answers, answers))
        end
        local parts = {}
        for _, v in ipairs(order) do parts[#parts + 1] = string.format("%s (%d of %d)", v, seen[v], answers) end
        set(ctx, "staging", "fail", string.format("staging answers with %s, not only %s%s", table.concat(parts, ", "),
          wanted, #order > 1 and ": its rollout has not finished" or ""))
      end,
    },

    step "ask what only people can tell" {
      read_only = true,
      run = function(ctx)
        local p, items = ctx.params, ctx.state.items
        local affirmed = {}
        for _, id in ipairs(p.confirmed or {}) do affirmed[id] = true end
        local terminal = ctx.interactive
        local silent -- why nobody is asked, once a prompt went unanswered
        for _, item in ipairs(checklist.ITEMS) do
          local it = items[item.id]
          if it == nil or it.status == "ask" then
            local note = it and (" (" .. it.reason .. ")") or ""
            local text = checklist.text(item, values(ctx))
            local question = string.format("Preflight %s: %s?", p.version, text)
            local choices = item.na and { "yes", "no", "n/a" } or { "yes", "no" }
            if affirmed[item.id] then
              set(ctx, item.id, "pass", "confirmed on the command line" .. note)
              ctx.log.info("confirmed on the command line: " .. text)
            elseif ctx.plan then
              ctx:ask(question, { choices = choices })
              set(ctx, item.id, "unknown", "would ask" .. note)
            elseif ctx.yes or not terminal or silent then
              set(ctx, item.id, "unknown", string.format("not confirmed (%s; affirm with confirmed=%s)%s",
                silent or (ctx.yes and "--yes does not answer checklist items" or "no terminal to ask on"), item.id, note))
            else
              local ok, answer = pcall(ctx.ask, ctx, question, { choices = choices })
              if not ok then
                if type(answer) ~= "table" or answer.kind ~= "confirm" then error(answer, 0) end
                silent = "no answer at the prompt"
                set(ctx, item.id, "unknown", "not confirmed (" .. silent .. ")" .. note)
              elseif answer == "yes" then
                set(ctx, item.id, "pass", "answered yes" .. note)
              elseif answer == "n/a" then
                set(ctx, item.id, "pass", "not applicable (answered n/a)")
              else
                set(ctx, item.id, "fail", "answered no" .. note)
              end
            end
          elseif affirmed[item.id] then
            it.reason = it.reason .. " (tug checked it: confirmed= does not override a check)"
          end
        end
      end,
    },

    step "print the checklist and the verdict" {
      read_only = true,
      run = function(ctx)
        local items, v = ctx.state.items, values(ctx)
        local failed, unknown, lines, rows = {}, {}, {}, {}
        for _, section in ipairs(checklist.SECTIONS) do
          ctx.log.info(section.title)
          rows[#rows + 1] = string.format("| **%s** | | |", section.title)
          for _, item in ipairs(section.items) do
            local it = items[item.id] or { status = "unknown", reason = "not checked" }
            if it.status == "fail" then failed[#failed + 1] = item.id end
            if it.status ~= "pass" and it.status ~= "fail" then unknown[#unknown + 1] = item.id end
            local mark = checklist.MARK[it.status] or "?"
            local text = checklist.text(item, v)
            ctx.log[it.status == "pass" and "info" or "warn"](string.format("  %s %s: %s", mark, text, it.reason),
              { item = item.id, status = it.status, reason = it.reason })
            lines[#lines + 1] = { id = item.id, section = section.title, text = text, status = it.status, reason = it.reason }
            rows[#rows + 1] = string.format("| %s | %s | %s |", mark, text, (it.reason:gsub("|", "\\|")))
          end
        end
        local verdict
        if #failed == 0 and #unknown == 0 then
          verdict = string.format("ready to deploy %s: all %d items pass", ctx.params.version, #lines)
        else
          local parts = {}
          if #failed > 0 then parts[#parts + 1] = string.format("%d failed (%s)", #failed, table.concat(failed, ", ")) end
          if #unknown > 0 then
            parts[#parts + 1] = string.format("%d %s (%s)", #unknown, ctx.plan and "to ask" or "not confirmed",
              table.concat(unknown, ", "))
          end
          verdict = string.format("not ready to deploy %s: %s", ctx.params.version, table.concat(parts, ", "))
        end
        ctx.state.checklist, ctx.state.verdict = lines, verdict
        local summary = os.getenv("GITHUB_STEP_SUMMARY")
        if not ctx.plan and os.getenv("GITHUB_ACTIONS") == "true" and summary and summary ~= "" then
          local f = io.open(summary, "a")
          if f then
            f:write(string.format("### Preflight %s on %s\n\n| | item | why |\n| --- | --- | --- |\n%s\n\n**%s**\n\n",
              ctx.params.version, ctx.env.name, table.concat(rows, "\n"), verdict))
            f:close()
          end
        end
        if ctx.plan then return ctx.log.info("plan: " .. verdict) end
        if #failed > 0 or #unknown > 0 then error(verdict, 0) end
        ctx.log.info(verdict)
      end,
    },
  },
}
