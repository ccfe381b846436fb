describe("time", function()
  it("parses durations the way playbooks write them", function()
    assert.are.equal(90, time.parse_duration("1m30s"))
    assert.are.equal(0.5, time.parse_duration("500ms"))
    assert.are.equal(7200, time.parse_duration("2h"))
    assert.are.equal(1.5, time.parse_duration("1.5s"))
    assert.are.equal(86400 + 3600, time.parse_duration("1d1h"))
    assert.are.equal(30, time.parse_duration("30"))
    assert.are.equal(12, time.parse_duration(12))
  end)

  it("returns nil and a message for text that is not a duration", function()
    for _, bad in ipairs({ "", "abc", "5 minutes", "1x", "-5s", "m" }) do
      local v, err = time.parse_duration(bad)
      assert.is_nil(v, bad)
      assert.matches("is not a duration", err)
    end
  end)

  it("refuses durations longer than 876000h (100 years), which would overflow timers", function()
    assert.are.equal(3153600000, time.parse_duration("876000h"))
    for _, long in ipairs({ "99999999999999999999h", "876000h1s", "1e300", "1e308h1e308h", "4000000000" }) do
      local v, err = time.parse_duration(long)
      assert.is_nil(v, long)
      assert.matches("is longer than the longest duration, 876000h %(100 years%)", err)
    end
    for _, bad in ipairs({ -1, 0 / 0, math.huge, -math.huge, 1e300 }) do
      local v, err = time.parse_duration(bad)
      assert.is_nil(v, tostring(bad))
      assert.matches("seconds is not a duration %(from 0 to 876000h", err)
    end
    local ok, err = pcall(task.sleep, "99999999999999999999h")
    assert.is_false(ok)
    assert.matches("is longer than the longest duration", err)
    ok, err = pcall(task.timeout, 1e20, function() end)
    assert.is_false(ok)
    assert.matches("seconds must be a number from 0 to 876000h", err)
  end)

  it("formats durations for people", function()
    assert.are.equal("1m30.5s", time.format_duration(90.5))
    assert.are.equal("2h", time.format_duration(7200))
    assert.are.equal("250ms", time.format_duration(0.25))
    assert.are.equal("0s", time.format_duration(0))
  end)

  it("formats times as UTC ISO 8601 by default", function()
    assert.are.equal("2026-11-28T00:00:00Z", time.format(1795824000))
    assert.are.equal("2026-11-28", time.format(1795824000, "%Y-%m-%d"))
  end)

  it("has a wall clock near the system's and a monotonic clock that does not go back", function()
    assert.is_true(math.abs(time.now() - os.time()) < 2)
    local a = time.monotonic()
    task.sleep(0.01)
    assert.is_true(time.monotonic() > a)
  end)
end)
