-- What a long-running simulated cluster keeps, and its bounds: the watch cache (a
-- window of time, a floor and a ceiling of events per resource, 410 Expired before it),
-- the clock's timers (cancelled ones do not pile up), the newest Events only, and the
-- figures /sim/state gives to watch them. `make soak` (spec/soak/run.sh) is the long
-- version: ten minutes of traffic, memory and descriptors compared.

local http = require("http")
local json = require("json")
local sim = require("sim")
local store_mod = require("sim.store")
local clock_mod = require("sim.clock")
local events_mod = require("sim.events")

-- A store whose clock the test moves.
local function store_at(opts)
  local now = 1000
  opts = opts or {}
  opts.clock = function() return now end
  local s = store_mod.new(opts)
  assert(s:create("namespaces", { metadata = { name = "ns" } }))
  return s, function(seconds) now = now + seconds end
end

local function configmap(name)
  return { apiVersion = "v1", kind = "ConfigMap", metadata = { name = name, namespace = "ns" }, data = { v = "1" } }
end

local function cached(s, resource)
  local r = s:state(resource)
  return r.last - r.first + 1
end

describe("sim memory", function()
  describe("the watch cache", function()
    it("keeps watch_cache_window of a resource's history, never fewer than 100 events", function()
      local s, advance = store_at({ log_window = 75 })
      for i = 1, 150 do assert(s:create("configmaps", configmap("c" .. i))) end
      local early = s.rv
      assert.are.equal(150, cached(s, "configmaps"))
      advance(80) -- all 150 are now older than the window
      assert(s:create("configmaps", configmap("late")))
      assert.are.equal(100, cached(s, "configmaps"))
      -- a watch from a resourceVersion the cache still reaches starts there
      assert.truthy(s:cursor_after("configmaps", early))
      -- one from before what the cache holds gets 410 Expired, as from kube-apiserver
      local cursor, st = s:cursor_after("configmaps", 3)
      assert.is_nil(cursor)
      assert.are.equal(410, st.code)
      assert.are.equal("Expired", st.reason)
      -- recent history is kept whole, past the floor: "late" and 300 writes over 30 s
      for i = 1, 300 do
        advance(0.1)
        assert(s:create("configmaps", configmap("r" .. i)))
      end
      assert.are.equal(301, cached(s, "configmaps"))
    end)

    it("stays bounded under an hour of steady writes (10 a second)", function()
      local s, advance = store_at({ log_window = 75 })
      assert(s:create("configmaps", configmap("hot")))
      for i = 1, 36000 do
        advance(0.1)
        local cm = configmap("hot")
        cm.data.v = tostring(i)
        assert(s:update("configmaps", cm))
      end
      -- 75 s at 10 a second (and the write that trimmed), not 10,000 (the ceiling)
      local n = cached(s, "configmaps")
      assert.is_true(n >= 750 and n <= 752, "watch cache holds " .. n .. " events")
    end)

    it("never holds more than watch_cache events, whatever the window", function()
      local s = store_at({ log_window = 3600, log_capacity = 20 })
      for i = 1, 50 do assert(s:create("configmaps", configmap("c" .. i))) end
      assert.are.equal(20, cached(s, "configmaps"))
    end)

    it("answers a watch from before watch_cache_window with an ERROR event (410 Expired) over HTTP", function()
      local c = sim.start({ port = 0, scenario = "extends: default\nwatch_cache_window: 300ms\n" })
      local ok, err = pcall(function()
        local from = c.store.rv
        for i = 1, 120 do assert(c:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "w" .. i } })) end
        task.sleep(0.4)
        assert(c:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "trim" } }))
        local lines = {}
        http.request({ url = c.url .. "/api/v1/namespaces/multiship/configmaps?watch=true&timeoutSeconds=1&resourceVersion="
          .. from, timeout = 5, on_line = function(line) lines[#lines + 1] = json.decode(line) end })
        assert.are.equal(1, #lines)
        assert.are.equal("ERROR", lines[1].type)
        assert.are.equal(410, lines[1].object.code)
        assert.matches("^too old resource version: " .. from .. " %(", lines[1].object.message)
        -- from the newest resourceVersion it streams as before
        local now = c.store.rv
        local got = {}
        local watcher = task.spawn(http.request, { url = c.url .. "/api/v1/namespaces/multiship/configmaps?watch=true&timeoutSeconds=1&resourceVersion="
          .. now, timeout = 5, on_line = function(line) got[#got + 1] = json.decode(line) end })
        task.sleep(0.1)
        assert(c:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "after" } }))
        watcher:wait()
        assert.are.equal(1, #got)
        assert.are.equal("ADDED", got[1].type)
        assert.are.equal("after", got[1].object.metadata.name)
      end)
      c:close()
      assert(ok, err)
    end)
  end)

  describe("the clock", function()
    it("does not keep cancelled timers by the thousand (a progress deadline moved at every sync)", function()
      local clock = clock_mod.new()
      local ran = {}
      for i = 1, 5 do clock:after(0, function() ran[#ran + 1] = i end) end
      for i = 1, 10000 do
        local t = clock:after(600 + (i % 7), function() error("a cancelled timer ran") end)
        t.cancel()
      end
      assert.is_true(clock.n < 200, "the heap holds " .. clock.n .. " timers")
      -- what is left is still a heap: earliest first
      for i = 2, clock.n do assert.is_true(clock.heap[i // 2].at <= clock.heap[i].at) end
      clock:drain()
      assert.are.same({ 1, 2, 3, 4, 5 }, ran)
      local live = select(2, clock:pending())
      assert.are.equal(0, live)
    end)

    it("keeps live timers through a rebuild, and counts a cancel only once", function()
      local clock = clock_mod.new()
      local keep = {}
      for i = 1, 50 do keep[i] = clock:after(1000 + i, function() end) end
      for _ = 1, 200 do
        local t = clock:after(500, function() end)
        t.cancel()
        t.cancel()
      end
      assert.are.equal(50, select(2, clock:pending()))
      assert.is_true(clock.cancelled <= clock.n)
      for i = 1, 50 do keep[i].cancel() end
      assert.are.equal(0, select(2, clock:pending()))
    end)
  end)

  describe("events", function()
    it("keeps only the newest events.max Events", function()
      local s = store_at()
      local recorder = events_mod.new(s, { max = 5 })
      local cm = assert(s:create("configmaps", configmap("subject")))
      for i = 1, 20 do recorder:record(cm, "Normal", "Test", "event " .. i, "test") end
      local kept = {}
      for _, e in ipairs(s:list("events", "ns")) do kept[#kept + 1] = e.message end
      table.sort(kept)
      assert.are.same({ "event 16", "event 17", "event 18", "event 19", "event 20" }, kept)
    end)
  end)

  describe("scenario keys", function()
    it("reject a watch_cache_window, watch_cache or events.max that is not one, naming the key", function()
      local cases = {
        { "watch_cache_window: soon\n", "watch_cache_window must be a duration above 0 such as 75s %(got soon%)" },
        { "watch_cache_window: 0s\n", "watch_cache_window must be a duration above 0" },
        { "watch_cache: 0\n", "watch_cache must be a whole number above 0 %(got 0%)" },
        { "watch_cache: many\n", "watch_cache must be a whole number above 0 %(got many%)" },
        { "events: { max: 2.5 }\n", "events.max must be a whole number above 0 %(got 2.5%)" },
        { "events: 7\n", "events must be a mapping" },
      }
      for _, case in ipairs(cases) do
        local ok, err = pcall(sim.start, { serve = false, scenario = "extends: default\n" .. case[1] })
        assert.is_false(ok, case[1])
        assert.matches(case[2], tostring(err))
      end
    end)
  end)

  describe("/sim/state", function()
    it("reports what the cluster holds that grows with use", function()
      local c = sim.start({ port = 0 })
      local ok, err = pcall(function()
        local r = http.get(c.url .. "/sim/state", { timeout = 5 })
        assert.are.equal(200, r.status)
        local m = r:json().memory
        assert.is_true(m.lua_heap_kb > 100)
        assert.is_true(m.watch_cache_events > 0)
        assert.is_true(m.timers >= 0)
        assert.is_true(m.container_log_lines > 0) -- the warm pods' start-up lines
        assert.are.same(m.watch_cache_events, c:state().memory.watch_cache_events)
      end)
      c:close()
      assert(ok, err)
    end)
  end)
end)
