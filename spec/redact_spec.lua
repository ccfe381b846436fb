-- Redaction end to end: a ${secret:...} value with quotes, backslashes, &<>, %, +, /, a
-- newline or non-ASCII characters, run through a playbook that writes it every way a step
-- can, must not show in any spelling (raw, JSON-escaped once or twice, XML-escaped,
-- percent-encoded, base64, Lua-quoted) in any byte tug writes: plain lines, the live view,
-- --output json, --junit, GitHub annotations and step summary, the journal and `tug show`.
-- Also the stream rules: a secret split across writes, and held bytes that must still
-- show (before a prompt reads stdin, at exit).
package.path = "spec/support/?.lua;" .. package.path
local child = require("child")
local project = require("project")

-- ---- the spellings, worked out here independently of runtime/redact.c ----

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = (a << 16) | ((b or 0) << 8) | (c or 0)
    for k = 0, 3 do
      local v = (n >> (18 - 6 * k)) & 63
      out[#out + 1] = B64:sub(v + 1, v + 1)
    end
  end
  return table.concat(out)
end

-- The base64 characters that depend on the secret alone when it starts `shift` bytes into a
-- group of three (what shows inside a longer base64 text, such as user:password).
local function base64_core(secret, shift)
  local encoded = base64(("\0"):rep(shift) .. secret)
  local first = math.ceil(8 * shift / 6)        -- characters that mix in the bytes before
  local last = (8 * (shift + #secret)) // 6     -- characters wholly inside
  return encoded:sub(first + 1, last)
end

local function percent(s, pattern, fmt)
  return (s:gsub(pattern, function(c) return fmt:format(c:byte()) end))
end

local function spellings(secret)
  local json1 = json.encode(secret):sub(2, -2)
  local list = {
    raw = secret,
    json = json1,
    json_twice = json.encode(json1):sub(2, -2),
    json_ascii = (json1:gsub("[\128-\255]+", function(bytes) -- \uXXXX for non-ASCII
      local out = {}
      for _, cp in utf8.codes(bytes) do out[#out + 1] = ("\\u%04x"):format(cp) end
      return table.concat(out)
    end)),
    xml = (secret:gsub("[&<>\"']", { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&#39;" })),
    url_upper = percent(secret, "[^%w%-%._~]", "%%%02X"),
    url_lower = percent(secret, "[^%w%-%._~]", "%%%02x"),
    url_form = percent(secret, "[^%w%-%._~ ]", "%%%02X"):gsub(" ", "+"),
    lua_quoted = ("%q"):format(secret):sub(2, -2),
  }
  for shift = 0, 2 do list["base64_" .. shift] = base64_core(secret, shift) end
  return list
end

-- Fails naming the spelling and the output when any spelling of secret is in text.
local function assert_hidden(secret, text, where)
  for name, form in pairs(spellings(secret)) do
    local at = text:find(form, 1, true)
    if at then
      error(("%s: the secret shows %s as %q: ...%s..."):format(where, name, form,
        text:sub(math.max(1, at - 40), at + #form + 40)), 2)
    end
  end
end

-- Every character class the issue names, one per secret, and all of them together.
local SECRETS = {
  { "quote and backslash", 'pa"ss\\word-q1' },
  { "&, < and >", "a&b<c>d-tok-x2" },
  { "percent signs", "hundred%25%-pct-3" },
  { "+, / and =", "plus+and/slash=4" },
  { "a newline", "two\nlines-tok-5" },
  { "non-ASCII", "ünïcødé-tøken-6" },
  { "spaces", "spaced secret token 7" },
  { "all of them", 'k"\\&<>%+/ é\n\'Z9-all' },
}

-- A playbook that writes the secret every way a step can. FORMS (not secret: the spec
-- passes the spellings) are printed too, to show that text already encoded is masked.
local PLAYBOOK = [[
local function tok(ctx) return ctx.env.tok end
local function forms() return json.decode(os.getenv("FORMS")) end
return playbook { steps = {
  step "speak" {
    run = function(ctx)
      local t = tok(ctx)
      print("print " .. t)
      io.write("split ", t:sub(1, 3))
      io.write(t:sub(4), "\n")
      io.stderr:write("stderr " .. t .. "\n")
      ctx.log.info("ctx.log " .. t)
      log.info("log", { token = t }) -- in a run, the fields go to the event
      log.set_format("json"); log.info("json log " .. t); log.set_format("text")
      print("json " .. json.encode({ token = t }))
      print("url " .. http.get("http://127.0.0.1:1/x", { query = { t = t } }).message)
      for name, form in pairs(forms()) do print("form " .. name .. " " .. form) end
      ctx.state.token = t
      ctx.state.nested = { json.encode({ token = t }) }
    end,
    undo = function(ctx) error("undo refused " .. tok(ctx)) end,
  },
  step "retry" {
    retries = 1, retry_delay = 0,
    run = function(ctx)
      ctx.state.tries = (ctx.state.tries or 0) + 1
      if ctx.state.tries == 1 then error("first attempt with " .. tok(ctx)) end
    end,
  },
  step "fail" {
    run = function(ctx)
      local t = tok(ctx)
      local r = http.get("http://127.0.0.1:1/x", { query = { t = t } })
      error(table.concat({ "rejected", t, json.encode({ token = t }), r.message }, " | "))
    end,
  },
} }
]]

local function setup(p)
  p:write("environments/s.yaml", "name: s\nprotected: false\ntok: ${secret:env:S}\n")
  p:write("playbooks/pb.lua", PLAYBOOK)
end

local function env_for(secret, extra)
  local env = { S = secret, FORMS = json.encode(spellings(secret)) }
  for k, v in pairs(extra or {}) do env[k] = v end
  return env
end

describe("redaction", function()
  for _, case in ipairs(SECRETS) do
    local label, secret = case[1], case[2]

    describe("of a secret with " .. label, function()
      local p
      before_each(function() p = project.new(); setup(p) end)
      after_each(function() p:remove() end)

      it("keeps it out of plain output, --junit, GitHub annotations and the step summary", function()
        p:write("summary.md", "")
        local r = p:tug({ "run", "pb", "--env", "s", "--junit", "junit.xml" }, { env = env_for(secret, {
          GITHUB_ACTIONS = "true", GITHUB_STEP_SUMMARY = p.dir .. "/summary.md" }) })
        assert.are.equal(5, r.code, r.stderr) -- rolled back, one undo failed
        assert_hidden(secret, r.stdout, "stdout")
        assert_hidden(secret, r.stderr, "stderr")
        local junit, summary = p:read("junit.xml"), p:read("summary.md")
        assert_hidden(secret, junit, "junit.xml")
        assert_hidden(secret, summary, "the step summary")
        -- the masks are where the secret was, and nothing else went missing
        assert.truthy(r.stdout:find("print ***\n", 1, true), r.stdout)
        assert.truthy(r.stdout:find("split ***\n", 1, true), r.stdout)
        assert.truthy(r.stdout:find('json {"token":"***"}', 1, true), r.stdout)
        assert.truthy(r.stdout:find("url GET http://127.0.0.1:1/x?t=***: connect", 1, true), r.stdout)
        assert.truthy(r.stdout:find("attempt 1 failed: playbooks/pb.lua:26: first attempt with ***;", 1, true), r.stdout)
        assert.truthy(r.stdout:find("undo refused ***", 1, true), r.stdout)
        assert.truthy(r.stdout:find("::error title=fail failed::", 1, true), r.stdout)
        assert.truthy(r.stderr:find("stderr ***\n", 1, true), r.stderr)
        assert.truthy(junit:find('<failure message="playbooks/pb.lua:33: rejected | *** | {&quot;token&quot;:&quot;***&quot;} | GET http://127.0.0.1:1/x?t=***: connect', 1, true), junit)
        assert.truthy(summary:find("| fail | ❌ failed |", 1, true), summary)
        for name in pairs(spellings(secret)) do
          assert.truthy(r.stdout:find("form " .. name .. " ***\n", 1, true), name .. "\n" .. r.stdout)
        end
      end)

      it("keeps it out of --output json, the journal and tug show", function()
        local r = p:tug({ "run", "pb", "--env", "s", "--output", "json" }, { env = env_for(secret) })
        assert.are.equal(5, r.code, r.stderr) -- rolled back, one undo failed
        assert_hidden(secret, r.stdout, "stdout")
        assert_hidden(secret, r.stderr, "stderr")
        local events, id = p:journal()
        local journal = p:read(".tug/runs/" .. id .. ".jsonl")
        assert_hidden(secret, journal, "the journal")
        local failed
        for line in r.stdout:gmatch("[^\n]+") do
          if line:sub(1, 1) == "{" then
            local e = json.decode(line) -- every event line is still valid JSON
            if e.event == "step_end" and e.status == "failed" then failed = e end
          end
        end
        assert.are.equal('playbooks/pb.lua:33: rejected | *** | {"token":"***"} | GET http://127.0.0.1:1/x?t=***: connect: Connection refused',
          failed.error)
        -- the journal records state patches: the state it rebuilds is masked
        local state = require("tug.journal").summarise(events).state
        assert.are.equal("***", state.token)
        assert.are.same({ '{"token":"***"}' }, state.nested)
        local show = p:tug({ "show", id })
        assert.are.equal(0, show.code, show.stderr)
        assert_hidden(secret, show.stdout .. show.stderr, "tug show")
        assert.truthy(show.stdout:find("rejected | *** |", 1, true), show.stdout)
      end)

      it("keeps it out of the live view on a terminal", function()
        local cmd = ("%q run pb --env s"):format(child.tug)
        local env = env_for(secret, { CI = false, TERM = "xterm", TUG_PATH = false, TUG_ENVIRONMENTS = false,
          TUG_HOME = false, GITHUB_ACTIONS = false })
        local r = exec.run({ "script", "-qfec", cmd, "/dev/null" }, { cwd = p.dir, env = env, timeout = 30 })
        assert.are.equal(5, r.code, r.stdout)
        assert.truthy(r.stdout:find("\27[", 1, true), "not the live view: " .. r.stdout)
        assert_hidden(secret, r.stdout, "the terminal")
        assert.truthy(r.stdout:find("rejected | *** |", 1, true), r.stdout)
      end)
    end)
  end

  it("keeps it out of what tug tells a notify: channel about a run", function()
    local secret = SECRETS[#SECRETS][2]
    local bodies = {}
    local srv <close> = http.server({ handler = function(req)
      bodies[#bodies + 1] = req.body
      return 200
    end })
    local p = project.new()
    setup(p)
    p:write("environments/s.yaml", "name: s\nprotected: false\ntok: ${secret:env:S}\nnotify:\n  hook:\n"
      .. "    type: webhook\n    url: " .. srv.url .. "/hook\n")
    local r = p:tug({ "run", "pb", "--env", "s" }, { env = env_for(secret) })
    p:remove()
    assert.are.equal(5, r.code, r.stderr)
    assert.are.equal(2, #bodies) -- started, rollback_failed
    local all = table.concat(bodies, "\n")
    assert_hidden(secret, all, "the webhook")
    assert.truthy(all:find("rejected | *** |", 1, true), all)
  end)

  describe("on stdout and stderr as streams", function()
    it("masks a secret written in pieces, and writes out a piece that was not one", function()
      local r = child.lua([[log.secret("topsecret123") io.write("tops") io.write("ecret123\n")
        io.write("to") io.stdout:write("p") print("secret123 and tops")
        io.stderr:write("top") io.stderr:write("s") io.stderr:write("ecret123 topsail\n")]])
      assert.are.equal(0, r.code, r.stderr)
      assert.are.equal("***\n*** and tops\n", r.stdout)
      assert.are.equal("*** topsail\n", r.stderr)
    end)

    it("writes out what it holds back at exit, os.exit and an error exit", function()
      local r = child.lua([[log.secret("topsecret123") io.write("done: tops")]])
      assert.are.same({ 0, "done: tops" }, { r.code, r.stdout })
      r = child.lua([[log.secret("topsecret123") io.write("done: tops") os.exit(3)]])
      assert.are.same({ 3, "done: tops" }, { r.code, r.stdout })
      r = child.lua([[log.secret("topsecret123") io.write("done: tops") io.stderr:write("tops") error("boom")]])
      assert.are.same({ 1, "done: tops" }, { r.code, r.stdout })
      assert.matches("^topstug: %(command line%):1: boom", r.stderr)
    end)

    it("masks written pieces exactly as it masks the whole text", function()
      -- random text from escapes, pieces of them and secrets, written in random pieces to
      -- stdout and masked whole to stderr: the two must be the same bytes
      local r = child.lua([[
        math.randomseed(7)
        local secrets = { 'pa"ss\\wo', "a&b<c>d%", "x+y z/'q", "é\nü", "\\\\\\\\" }
        for _, s in ipairs(secrets) do log.secret(s) end
        local alphabet = { "\\", "\\\\", "\\\"", "&", "&quot;", "&amp;", "&#x", "%", "%2", "%22", "+",
          "'", "'\\''", "''", "\\u00", "\\u00e9", "\\ud83d", "a", "p", "x", "é", "\n", ";", "0", "9" }
        for _, s in ipairs(secrets) do table.insert(alphabet, s); table.insert(alphabet, json.encode(s)) end
        for _ = 1, 2000 do
          local parts = {}
          for i = 1, math.random(1, 30) do parts[i] = alphabet[math.random(#alphabet)] end
          local text = table.concat(parts) .. "\n"
          io.stderr:write(log.redact(text))
          local at = 1
          while at <= #text do
            local n = math.random(1, 5)
            io.write(text:sub(at, at + n - 1))
            at = at + n
          end
        end
      ]], { timeout = 60 })
      assert.are.equal(0, r.code)
      assert.truthy(r.stdout:find("***", 1, true))
      assert.are.equal(r.stderr, r.stdout)
    end)

    it("writes what it holds back before a shell command writes to the terminal", function()
      local r = child.lua([[log.secret("topsecret123") io.write("tops") os.execute("printf X")
        io.write("to") io.popen("printf Y"):close() io.write("\n")]])
      assert.are.same({ 0, "topsXto\n" }, { r.code, r.stdout })
    end)

    it("shows a prompt that may start a secret before it reads the answer", function()
      for _, read in ipairs({ "io.read('l')", "tug.sys.read_line()" }) do
        local dir = exec.run({ "mktemp", "-d" }).stdout:gsub("\n$", "")
        exec.run({ "mkfifo", dir .. "/in" }, { check = true })
        local code = ([[log.secret("topsecret123") io.write("tops") local a = %s io.write("|", a, "|\n")]]):format(read)
        local proc = exec.spawn({ "sh", "-c", 'exec "$0" lua -e "$1" < "$2/in" > "$2/out"', child.tug, code, dir })
        local fifo = assert(io.open(dir .. "/in", "w")) -- returns once the child opens it
        local shown = project.wait_for(function()
          local f = io.open(dir .. "/out")
          local text = f and f:read("a")
          if f then f:close() end
          return text == "tops"
        end, 5)
        fifo:write("answer\n")
        fifo:close()
        local r = proc:wait()
        local f = io.open(dir .. "/out")
        local out = f:read("a")
        f:close()
        exec.run({ "rm", "-rf", dir })
        assert.is_true(shown, read .. ": the prompt did not show before the read")
        assert.are.same({ 0, "tops|answer|\n" }, { r.code, out })
      end
    end)
  end)

  it("masks a secret in a response body that an error quotes cut short and squeezed", function()
    -- the secret has a newline and straddles the 300 bytes an http error quotes: cut or
    -- with its spaces squeezed first, the text would no longer be the secret
    local r = child.lua([[
      local secret = "line-one\n\tline-two-secret"
      log.secret(secret)
      local srv <close> = http.server({ handler = function()
        return 401, {}, ("x"):rep(290) .. " " .. secret .. " denied"
      end })
      local ok, err = pcall(function() http.get(srv.url .. "/"):raise() end)
      print(ok, err.message, err.body)
    ]])
    assert.are.equal(0, r.code, r.stderr)
    assert_hidden("line-one\n\tline-two-secret", r.stdout, "stdout")
    for _, part in ipairs({ "line-one", "line-two" }) do assert.is_nil(r.stdout:find(part, 1, true), r.stdout) end
    assert.matches("false\tGET http://127.0.0.1:%d+/: HTTP 401 Unauthorized: x+ %*%*%* denie", r.stdout)
  end)

  describe("log.redact", function()
    -- Runs code in a child tug and checks what it printed.
    local function prints(expected, code, args)
      local r = child.lua(code, { args = args })
      assert.are.equal(0, r.code, r.stderr)
      assert.are.equal(expected, r.stdout)
    end

    it("masks each spelling of a secret, and a mix of them", function()
      prints('[***]\n[["***","***"]]\n{"body":"{\\"token\\":\\"***\\"}"}\n', [[
        local s = 'k"\\&<>%+/ é\n\'Z9-all'
        log.secret(s)
        local forms = json.decode(arg[1])
        for name, form in pairs(forms) do
          local out = log.redact("<" .. form .. ">")
          if out ~= "<***>" then print(name, out) end
        end
        -- an encoder may escape any character, or not: here every other one
        local mixed = s:gsub("()(.)", function(i, c) return i % 2 == 0 and ("%%%02x"):format(c:byte()) or c end)
        print(log.redact("[" .. mixed .. "]"))
        print(log.redact("[" .. json.encode({ s, s }) .. "]"))
        print(log.redact(json.encode(log.redact({ body = json.encode({ token = s }) }))))
      ]], { json.encode(spellings('k"\\&<>%+/ é\n\'Z9-all')) })
    end)

    it("leaves text alone that only looks like part of a secret", function()
      prints('pa\\"ss\\\\wor\tpa%22ss\tpa&quot;ss\\\\word-q2\n100% done & dusted: \\n %zz &bogus; \\u12\n', [[
        log.secret("pa\"ss\\word-q1")
        print(log.redact('pa\\"ss\\\\wor'), log.redact("pa%22ss"), log.redact("pa&quot;ss\\\\word-q2"))
        print(log.redact("100% done & dusted: \\n %zz &bogus; \\u12"))
      ]])
    end)

    it("returns a table with every string masked, keeping json.array, or the table itself", function()
      prints("x ***\t***\ttrue\t1\ttrue\ttrue\ntrue\ttrue\tnil\n", [[
        log.secret("s3cr3t-value")
        local t = { a = "x s3cr3t-value", list = json.array({ "s3cr3t-value" }), n = 1, clean = { "ok" } }
        local m = log.redact(t)
        print(m.a, m.list[1], getmetatable(m.list) == getmetatable(json.array()), m.n, m.clean == t.clean,
          t.a == "x s3cr3t-" .. "value")
        local same = { "nothing here" }
        print(log.redact(same) == same, log.redact(true), log.redact(nil))
      ]])
    end)
  end)
end)
