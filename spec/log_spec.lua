-- log: levels, fields, formats, and the redaction that keeps secrets out of every output.
package.path = "spec/support/?.lua;" .. package.path
local child = require("child")

describe("log", function()
  it("writes levelled lines with sorted fields to stderr", function()
    local r = child.lua([[log.info("rollout finished", { deployment = "api", seconds = 42, note = "two words" })
      log.debug("hidden at the default level")]])
    assert.are.equal(0, r.code)
    assert.are.equal("", r.stdout)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ INFO rollout finished " ..
      "deployment=api note=\"two words\" seconds=42\n$", r.stderr)
  end)

  it("honours TUG_LOG_LEVEL and log.set_level", function()
    local r = child.lua([[log.debug("one"); log.set_level("error"); log.warn("two"); log.error("three")]],
      { env = { TUG_LOG_LEVEL = "debug" } })
    assert.matches("DEBUG one", r.stderr)
    assert.is_nil(r.stderr:find("two", 1, true))
    assert.matches("ERROR three", r.stderr)
  end)

  it("rejects an unknown level by name", function()
    local ok, err = pcall(log.set_level, "loud")
    assert.is_false(ok)
    assert.matches("unknown log level 'loud'", err)
  end)

  it("writes one JSON object per line in json format", function()
    local r = child.lua([[log.set_format("json"); log.warn("slow", { p95_ms = 612 })]])
    local record = json.decode(r.stderr)
    assert.are.equal("warn", record.level)
    assert.are.equal("slow", record.msg)
    assert.are.equal(612, record.p95_ms)
  end)

  it("adds bound fields with log.with", function()
    local r = child.lua([[log.with({ run = "r1" }).info("step", { n = 2 })]])
    assert.matches("INFO step n=2 run=r1", r.stderr)
  end)

  it("sends records to a sink instead of stderr", function()
    local seen = {}
    log.set_sink(function(record) seen[#seen + 1] = record end)
    log.info("to the sink", { a = 1 })
    log.set_sink(nil)
    assert.are.equal("to the sink", seen[1].message)
    assert.are.equal(1, seen[1].fields.a)
  end)

  describe("redaction", function()
    local leak = [[
      log.secret("s3cr3t-t0ken")
      print("print: s3cr3t-t0ken")
      io.write("io.write: s3cr3t-t0ken\n")
      io.stderr:write("stderr: s3cr3t-t0ken\n")
      log.info("log", { token = "s3cr3t-t0ken" })
      log.set_format("json"); log.info("json s3cr3t-t0ken")
      error(tug.error.new("auth", "login failed with token s3cr3t-t0ken"))
    ]]

    it("keeps a secret out of print, io.write, logs, JSON and error messages", function()
      local r = child.lua(leak)
      assert.are.equal(1, r.code)
      local all = r.stdout .. r.stderr
      assert.is_nil(all:find("s3cr3t", 1, true), all)
      assert.matches("print: %*%*%*", r.stdout)
      assert.matches("io.write: %*%*%*", r.stdout)
      assert.matches("stderr: %*%*%*", r.stderr)
      assert.matches("token=%*%*%*", r.stderr)
      assert.matches("login failed with token %*%*%*", r.stderr)
    end)

    it("keeps a secret out of a structured error raised by a native module", function()
      local r = child.lua([[log.secret("pw-123456"); time.parse_duration(1); task.sleep("pw-123456")]])
      assert.are.equal(1, r.code)
      assert.is_nil(r.stderr:find("pw-123456", 1, true), r.stderr)
      assert.matches("'%*%*%*' is not a duration", r.stderr)
    end)

    it("masks the longer of two overlapping secrets whole", function()
      log.secret("abc")
      log.secret("abcdef")
      assert.are.equal("x *** y ***", log.redact("x abcdef y abc"))
    end)

    it("leaves files other than stdout and stderr untouched", function()
      local path = os.tmpname()
      local r = child.lua(([[log.secret("filetoken"); local f = io.open(%q, "w"); f:write("filetoken"); f:close()]]):format(path))
      assert.are.equal(0, r.code)
      local f = io.open(path); local text = f:read("a"); f:close(); os.remove(path)
      assert.are.equal("filetoken", text)
    end)
  end)
end)
