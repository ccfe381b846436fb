-- clock.lua (sim.clock): the simulator's time and its one worker task on tug's loop.
-- Everything the cluster does by itself (controllers reconciling, pods starting and
-- becoming ready, crash loops, progress deadlines, background traffic) is a callback
-- run by this task: either soon (`defer`, the controllers' work queues) or at a time
-- (`after`, a binary heap of timers). One task for thousands of pods, woken through a
-- task.event when work arrives, yielding between batches so the API keeps serving.
--
-- `pause` stops the world (nothing runs, timers stay due); `resume` goes on, running
-- what fell due meanwhile. A cancelled timer stays in the heap until it comes up, unless
-- cancelled ones are most of the heap: then it is rebuilt without them (a controller
-- that moves a 600 s progress deadline at every sync would otherwise keep 600 s of them).

local log = require("log")
local task = require("task")
local time = require("time")

local clock = {}
local Clock = {}
Clock.__index = Clock

-- The worker yields after this much work (seconds) or this many callbacks, so a burst of
-- work cannot hold up the API server's requests for long.
local SLICE = 0.005
local BATCH = 500
-- The heap is rebuilt when more than this many of its timers, and more than half, are
-- cancelled ones.
local COMPACT_AFTER = 64

function clock.new()
  return setmetatable({
    heap = {},
    n = 0,
    cancelled = 0, -- timers in the heap whose cancel() was called
    seq = 0,
    queue = {}, -- deferred callbacks, in order
    qhead = 1,
    qtail = 0,
    signal = task.event(),
    paused = false,
    stopped = false,
    idle_signal = task.event(),
    busy = false,
    errors = 0,
  }, Clock)
end

function Clock:now() return time.now() end

-- ---- the heap ----

local function less(a, b)
  if a.at ~= b.at then return a.at < b.at end
  return a.seq < b.seq
end

local function push(self, t)
  local heap = self.heap
  local n = self.n + 1
  self.n = n
  heap[n] = t
  while n > 1 do
    local parent = n // 2
    if less(heap[n], heap[parent]) then
      heap[n], heap[parent] = heap[parent], heap[n]
      n = parent
    else
      break
    end
  end
end

local function pop(self)
  local heap = self.heap
  local top = heap[1]
  if top.cancelled then self.cancelled = self.cancelled - 1 end
  local n = self.n
  heap[1] = heap[n]
  heap[n] = nil
  n = n - 1
  self.n = n
  local i = 1
  while true do
    local l, r, m = 2 * i, 2 * i + 1, i
    if l <= n and less(heap[l], heap[m]) then m = l end
    if r <= n and less(heap[r], heap[m]) then m = r end
    if m == i then break end
    heap[i], heap[m] = heap[m], heap[i]
    i = m
  end
  return top
end

-- ---- scheduling ----

-- Runs fn() after `seconds`; returns a handle whose :cancel() forgets it.
function Clock:after(seconds, fn)
  self.seq = self.seq + 1
  local t = { at = time.now() + math.max(seconds or 0, 0), seq = self.seq, fn = fn }
  t.cancel = function()
    if t.fn == nil then return end -- ran, or cancelled already
    t.fn, t.cancelled = nil, true
    self.cancelled = self.cancelled + 1
    if self.cancelled > COMPACT_AFTER and self.cancelled * 2 > self.n then self:compact() end
  end
  push(self, t)
  if self.n == 1 or self.heap[1] == t then self.signal:notify() end
  return t
end

-- Rebuilds the heap without its cancelled timers (a sorted array is a heap).
function Clock:compact()
  local live, n = {}, 0
  for i = 1, self.n do
    local t = self.heap[i]
    if t.fn then
      n = n + 1
      live[n] = t
    end
  end
  table.sort(live, less)
  self.heap, self.n, self.cancelled = live, n, 0
end

-- Runs fn() soon, in order with other deferred callbacks.
function Clock:defer(fn)
  local tail = self.qtail + 1
  self.qtail = tail
  self.queue[tail] = fn
  if tail == self.qhead then self.signal:notify() end
end

local function run(self, fn)
  local ok, err = pcall(fn)
  if not ok then
    if type(err) == "table" and err.kind == "cancelled" then error(err, 0) end
    self.errors = self.errors + 1
    log.error("sim: a controller step failed", { error = tostring(err) })
  end
end

-- Pending work: deferred callbacks, and timers (due now or later).
function Clock:pending()
  local timers = 0
  for i = 1, self.n do
    if self.heap[i].fn then timers = timers + 1 end
  end
  return self.qtail - self.qhead + 1, timers
end

local function worker(self)
  while not self.stopped do
    if self.paused then
      self.signal:wait()
    else
      self.busy = true
      local done = 0
      local slice_end = time.monotonic() + SLICE
      local full = false
      -- deferred work first: it is what the last writes asked for
      while self.qhead <= self.qtail and not self.paused do
        local fn = self.queue[self.qhead]
        self.queue[self.qhead] = nil
        self.qhead = self.qhead + 1
        run(self, fn)
        done = done + 1
        if done % 16 == 0 and (done >= BATCH or time.monotonic() > slice_end) then
          full = true
          break
        end
      end
      local now = time.now()
      while not full and self.n > 0 and self.heap[1].at <= now and not self.paused do
        local t = pop(self)
        if t.fn then
          local fn = t.fn
          t.fn = nil
          run(self, fn)
          done = done + 1
          if done % 16 == 0 and (done >= BATCH or time.monotonic() > slice_end) then full = true end
        end
      end
      if self.qhead > self.qtail then
        self.qhead, self.qtail = 1, 0
      end
      if full then
        task.yield()
      else
        self.busy = false
        self.idle_signal:notify()
        if self.qhead > self.qtail and not self.stopped then
          -- skip cancelled timers at the top so they do not wake us for nothing
          while self.n > 0 and self.heap[1].fn == nil do pop(self) end
          if self.n > 0 then
            self.signal:wait(math.max(self.heap[1].at - time.now(), 0))
          else
            self.signal:wait()
          end
        end
      end
    end
  end
end

function Clock:start()
  self.task = task.spawn(worker, self)
end

function Clock:stop()
  self.stopped = true
  if self.task then
    self.task:cancel()
    self.task = nil
  end
end

function Clock:pause() self.paused = true end

function Clock:resume()
  self.paused = false
  self.signal:notify()
end

-- Runs everything that is due (deferred work and timers up to now) in the calling task,
-- until nothing more is: for tests and for a warm start.
function Clock:drain(limit)
  limit = limit or 1e6
  local n = 0
  while n < limit do
    if self.qhead <= self.qtail then
      local fn = self.queue[self.qhead]
      self.queue[self.qhead] = nil
      self.qhead = self.qhead + 1
      run(self, fn)
    elseif self.n > 0 and self.heap[1].at <= time.now() then
      local t = pop(self)
      if t.fn then
        local fn = t.fn
        t.fn = nil
        run(self, fn)
      end
    else
      break
    end
    n = n + 1
  end
  if self.qhead > self.qtail then self.qhead, self.qtail = 1, 0 end
  return n
end

return clock
