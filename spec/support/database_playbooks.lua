-- database_playbooks.lua: what the specs of the database playbooks (migrate,
-- migrate-rollback, data-recovery) share on top of playbook_harness: queries against the
-- test's database, the backups a run left, a run's logs and step state, and a run on a
-- terminal (tmux) for the questions only a person answers.
--
--   db.query(url, sql, ...) / db.value(url, sql, ...)   a session of its own for each call
--   db.backups(dir)            the *.dump files in dir, sorted
--   db.state_of(h, r, step)    the state a step ended with; db.logs(h, r) the run's log lines
--   local screen, keys = db.terminal(h, socket, { "run", "migrate-rollback", ... })
--     starts `tug ARGS --env sim --playbooks ROOT/playbooks --output plain; echo EXIT=$?` in a
--     tmux session on socket (killing the socket's server first); the caller kills it in
--     a finally.
package.path = "spec/support/?.lua;" .. package.path
local harness = require("playbook_harness")
local child = require("child")

local db = {}

function db.query(url, statement, ...)
  local conn <close> = pg.connect(url)
  return conn:query(statement, ...)
end

function db.value(url, statement, ...)
  local conn <close> = pg.connect(url)
  return conn:value(statement, ...)
end

function db.backups(dir)
  local out = {}
  for _, e in ipairs(tug.sys.listdir(dir) or {}) do
    if e.name:match("%.dump$") then out[#out + 1] = e.name end
  end
  table.sort(out)
  return out
end

function db.state_of(h, r, step)
  for _, e in ipairs(h:events(r, "step_end")) do
    if e.name == step then return e.state end
  end
end

function db.logs(h, r)
  local out = {}
  for _, e in ipairs(h:events(r, "log")) do out[#out + 1] = e.message end
  return table.concat(out, "\n")
end

-- screen() is the pane with 200 lines of history; keys(...) sends tmux key names.
function db.terminal(h, socket, args)
  local argv = { child.tug }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  for _, a in ipairs({ "--env", "sim", "--playbooks", harness.ROOT .. "/playbooks", "--output", "plain" }) do
    argv[#argv + 1] = a
  end
  local command = table.concat(argv, " ") .. "; echo EXIT=$?; sleep 60"
  exec.run({ "tmux", "-L", socket, "kill-server" })
  exec.run({ "tmux", "-L", socket, "new-session", "-d", "-x", "220", "-y", "60", "-e", "CI=", "-e", "GITHUB_ACTIONS=",
    "-e", "TUG_ENVIRONMENTS=" .. h.dir .. "/environments", "-e", "TUG_HOME=" .. h.dir .. "/.tug", command },
    { check = true })
  local function screen() return exec.run({ "tmux", "-L", socket, "capture-pane", "-p", "-J", "-S", "-200" }).stdout end
  local function keys(...) exec.run({ "tmux", "-L", socket, "send-keys", ... }, { check = true }) end
  return screen, keys
end

return db
