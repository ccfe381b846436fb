-- Specs for meta/: the editor type definitions (LuaLS `---@meta` files) must describe the
-- real thing. Every function and field they declare must exist, as that kind, on the real
-- module (or on a real object of the declared class); every public function a module
-- exports must be declared; the playbook DSL's fields must be the ones
-- runtime/lua/playbooks.lua accepts, and ctx's members those of a ctx the engine made.
-- A renamed or removed function, or a new one nobody declared, fails here.

local playbooks = require("tug.playbooks")

local META = "meta"
local MODULES = { "task", "time", "json", "yaml", "exec", "log", "http", "ws", "health", "k8s",
  "sim", "aws", "metrics", "analysis", "notify", "pg" }

-- Exported, but not for scripts: not declared on purpose. A path excludes what is below it.
local INTERNAL = {
  -- k8s: the engine's lock backend (modules/k8s/README.md, "Leases and the engine's lock")
  ["k8s.lock_backend"] = true,
  -- k8s: the kubeconfig reading behind k8s.connect (kubeconfig.lua)
  ["k8s.kubeconfig"] = true,
  -- k8s: the client's plumbing, which the verbs use to resolve kinds and share watches
  ["k8s.Client.resource_for"] = true, ["k8s.Client.namespace_for"] = true,
  ["k8s.Client.path"] = true, ["k8s.Client.subscribe"] = true,
  -- ws: URL parsing shared with the k8s module's exec
  ["ws.parse_url"] = true,
  -- aws: S3 helpers shared with sync.lua (the verbs above them are declared)
  ["aws.s3.parse_url"] = true, ["aws.s3.object_url"] = true, ["aws.s3.pool"] = true,
  ["aws.s3.upload_file"] = true, ["aws.s3.put_object"] = true, ["aws.s3.delete_objects"] = true,
  ["aws.s3.human_size"] = true,
  -- aws: the ${secret:aws:...} provider the environment loader calls
  ["aws.secretsmanager.provider"] = true,
  -- sim: the simulator's own helpers (sim/util.lua), for its specs
  ["sim.util"] = true,
}

local function internal(path)
  for prefix in pairs(INTERNAL) do
    if path == prefix or path:sub(1, #prefix + 1) == prefix .. "." then return true end
  end
  return false
end

-- ---- reading a meta file ----

-- Returns { classes = { NAME = { fields = { name = type text }, order, parent, local_name, path } },
-- locals = { local name = class name }, functions = { { owner, member, sep, line } },
-- values = { { path, line } }, globals = { name = "table" | "function" } }.
local function parse(path)
  local out = { classes = {}, locals = {}, functions = {}, values = {}, globals = {} }
  local class -- the class an annotation block names, until the statement it annotates
  local n = 0
  for line in io.lines(path) do
    n = n + 1
    local name, parent = line:match("^%-%-%-@class%s+([%w_.]+)%s*:?%s*([%w_.]*)")
    if name then
      assert(not out.classes[name], path .. ":" .. n .. ": class " .. name .. " declared twice")
      class = { name = name, parent = parent ~= "" and parent or nil, fields = {}, order = {} }
      out.classes[name] = class
    elseif line:match("^%-%-%-@field") then
      local field, rest = line:match("^%-%-%-@field%s+([%w_]+)%??%s+(.*)$")
      if field and class then
        class.fields[field] = rest
        class.order[#class.order + 1] = field
      end
    elseif line:match("^%-%-") or line:match("^%s*$") then -- luacheck: ignore
      -- annotations and comments: the block goes on
    else
      local lname = line:match("^local%s+([%w_]+)%s*=%s*{}")
      local owner, sep, member = line:match("^function%s+([%w_.]+)([.:])([%w_]+)%s*%(")
      local gfunc = line:match("^function%s+([%w_]+)%s*%(")
      local gtable = line:match("^([%w_]+)%s*=%s*{}%s*$")
      local vpath = line:match("^([%w_]+%.[%w_.]+)%s*=")
      if lname then
        if class then class.local_name, out.locals[lname] = lname, class.name end
      elseif owner then
        out.functions[#out.functions + 1] = { owner = owner, member = member, sep = sep, line = n }
      elseif gfunc then
        out.globals[gfunc] = "function"
      elseif gtable then
        out.globals[gtable] = "table"
        if class then class.path = gtable end
      elseif vpath then
        out.values[#out.values + 1] = { path = vpath, line = n }
        if class then class.path = vpath end
      end
      class = nil
    end
  end
  return out
end

local function get_path(root, dotted)
  local value = root
  for part in dotted:gmatch("[^.]+") do
    if type(value) ~= "table" and type(value) ~= "userdata" then return nil end
    value = value[part]
  end
  return value
end

-- The real object a dotted path names: NAME.a.b is require(NAME).a.b (tug: the global).
local function real(path)
  local root, rest = path:match("^([%w_]+)%.?(.*)$")
  local base = root == "tug" and tug or require(root)
  if rest == "" then return base end
  return get_path(base, rest)
end

local function kind(v)
  return type(v) == "function" and "function" or v == nil and "nothing" or "value"
end

-- ---- real objects of the classes that are not reachable from a module ----

local fixtures = {}

-- An http server whose handler keeps the request it got and answers WebSocket upgrades.
local function http_fixture()
  if fixtures.http then return fixtures.http end
  local f = {}
  f.server = http.server({ port = 0, handler = function(req)
    if ws.is_upgrade(req) then
      f.server_ws = ws.upgrade(req)
      if f.server_ws then f.server_ws:recv() end
      return
    end
    f.request = req
    return 200, { ["content-type"] = "application/json" }, "{}"
  end })
  f.response = http.get(f.server.url .. "/x")
  assert(f.response.status == 200, f.response.message)
  f.ws = ws.connect("ws://127.0.0.1:" .. f.server.port .. "/ws")
  fixtures.http = f
  return f
end

-- A ctx made by the engine: a plan run of a one-step playbook that keeps what its step got.
local function ctx_fixture()
  if fixtures.ctx then return fixtures.ctx end
  local dir = exec.run({ "mktemp", "-d", "/tmp/tug-meta-XXXXXX" }).stdout:gsub("\n$", "")
  local path = dir .. "/meta-spec.lua"
  local f = assert(io.open(path, "w"))
  f:write([[
package.loaded["meta_spec.dsl"] = { playbook = playbook, step = step }
return playbook {
  steps = { step "keep the ctx" { run = function(ctx) package.loaded["meta_spec.ctx"] = ctx end } },
}
]])
  f:close()
  local pb = assert(playbooks.load(path))
  local engine = require("tug.engine")
  local code = engine.run({ pb = pb, env = { name = "meta-spec" }, params = {}, plan = true,
    reporter = { event = function() end } })
  exec.run({ "rm", "-rf", dir })
  assert(code == engine.EXIT.ok, "the plan run failed: " .. tostring(code))
  fixtures.ctx = assert(package.loaded["meta_spec.ctx"])
  fixtures.dsl = package.loaded["meta_spec.dsl"]
  package.loaded["meta_spec.ctx"], package.loaded["meta_spec.dsl"] = nil, nil
  return fixtures.ctx
end

-- class name -> a function returning a real object of it
local INSTANCES = {
  ["tug.task.Handle"] = function()
    local h = task.spawn(function() end)
    h:wait()
    return h
  end,
  ["tug.task.Event"] = function() return task.event() end,
  ["tug.exec.Process"] = function()
    local p = exec.spawn({ "true" })
    p:wait()
    p:close()
    return p
  end,
  ["tug.log.Logger"] = function() return log.with({}) end,
  ["tug.health.Histogram"] = function() return health.histogram() end,
  ["tug.http.Server"] = function() return http_fixture().server end,
  ["tug.http.Request"] = function() return http_fixture().request end,
  ["tug.http.Response"] = function() return http_fixture().response end,
  ["tug.ws.Connection"] = function() return http_fixture().ws end,
  -- pg.connect's connections take their methods from this table (no server needed)
  ["tug.pg.Connection"] = function() return require("pg.core").methods end,
  ["tug.sim.Cluster"] = function()
    fixtures.sim = fixtures.sim or sim.start({ serve = false })
    return fixtures.sim
  end,
  ["tug.Ctx"] = ctx_fixture,
  ["tug.CtxLog"] = function() return ctx_fixture().log end,
}

-- Classes whose objects need more than this spec can start: their methods are checked
-- against the source that defines them.
local SOURCE_ONLY = {
  ["tug.k8s.Lease"] = "modules/k8s/lease.lua", -- a held Lease needs a cluster
}

local function source_defines(file, member)
  local f = assert(io.open(file))
  local text = f:read("a")
  f:close()
  return text:find("\nfunction [%w_]+[:.]" .. member .. "%s*%(") ~= nil
end

-- The functions an object offers: its own, and its methods table, wherever its metatable
-- keeps it: __index itself, a `methods` field, or the first upvalue of an __index function
-- (the C modules' userdata).
local function functions_of(obj)
  local names = {}
  local function add(t)
    if type(t) ~= "table" then return end
    for k, v in pairs(t) do
      if type(k) == "string" and type(v) == "function" and not k:match("^_") then names[k] = true end
    end
  end
  if type(obj) == "table" then add(obj) end
  local mt = getmetatable(obj)
  if type(mt) == "table" then
    add(mt.__index)
    add(mt.methods)
    if type(mt.__index) == "function" then add(select(2, debug.getupvalue(mt.__index, 1))) end
  end
  return names
end

-- ---- the files ----

local function meta_files()
  local files = {}
  for _, e in ipairs(assert(tug.sys.listdir(META))) do
    if e.type == "file" and e.name:match("%.lua$") then files[#files + 1] = e.name end
  end
  table.sort(files)
  return files
end

local parsed = {}
local function meta(name)
  parsed[name] = parsed[name] or parse(META .. "/" .. name .. ".lua")
  return parsed[name]
end

describe("meta/", function()
  teardown(function()
    if fixtures.http then
      fixtures.http.ws:close()
      if fixtures.http.server_ws then fixtures.http.server_ws:close() end
      fixtures.http.server:close()
      fixtures.http = nil -- a connection counts until it is closed and collected
      -- both ends gone before the next spec file, which may count connections (ws_spec)
      local deadline = time.monotonic() + 5
      while ws.stats().connections > 0 and time.monotonic() < deadline do
        collectgarbage()
        task.sleep(0.05)
      end
    end
    if fixtures.sim then fixtures.sim:close() end
  end)

  it("has a file for every module, tug and the playbook DSL, and nothing else", function()
    local want = { "playbook.lua", "tug.lua" }
    for _, m in ipairs(MODULES) do want[#want + 1] = m .. ".lua" end
    table.sort(want)
    assert.same(want, meta_files())
    local modules = {}
    for _, m in ipairs(tug.modules) do modules[#modules + 1] = m end
    table.sort(modules)
    local listed = { table.unpack(MODULES) }
    table.sort(listed)
    assert.same(modules, listed)
  end)

  it("loads every file with Lua's own loader, each a ---@meta file", function()
    for _, name in ipairs(meta_files()) do
      local chunk, err = loadfile(META .. "/" .. name, "t", {})
      assert(chunk, err)
      local first = assert(io.open(META .. "/" .. name)):read("l")
      assert(first:match("^%-%-%-@meta "), name .. " must start with ---@meta")
    end
  end)

  for _, name in ipairs(MODULES) do
    describe(name .. ".lua", function()
      it("declares the module as the global it is", function()
        local m = meta(name)
        assert.equal("table", m.globals[name], "meta/" .. name .. ".lua must declare `" .. name .. " = {}`")
        assert.equal(require(name), _G[name])
      end)

      it("declares only functions and fields that exist, as that kind", function()
        local m = meta(name)
        local checked = 0
        for _, f in ipairs(m.functions) do
          local where = ("meta/%s.lua:%d: %s%s%s"):format(name, f.line, f.owner, f.sep, f.member)
          local root = f.owner:match("^[%w_]+")
          local class = m.locals[root]
          if class then
            local file = SOURCE_ONLY[class]
            if file then
              assert(source_defines(file, f.member), where .. ": " .. file .. " defines no " .. f.member)
            else
              local make = INSTANCES[class]
              assert(make, where .. ": no real " .. class .. " to check against (add it to INSTANCES)")
              local obj = make()
              assert.equal("function", kind(obj[f.member]), where .. " is not a function of a real " .. class)
            end
          else
            assert.equal(name, root, where .. ": declared outside the module")
            local owner = real(f.owner)
            assert(type(owner) == "table", where .. ": " .. f.owner .. " is not a table")
            assert.equal("function", kind(owner[f.member]), where .. " is not a function of the module")
          end
          checked = checked + 1
        end
        -- a field whose type is a function, on an object the spec can make, must be one
        for class_name, class in pairs(m.classes) do
          if class.local_name and INSTANCES[class_name] then
            for field, rest in pairs(class.fields) do
              if rest:match("^fun%(") then
                assert.equal("function", kind(INSTANCES[class_name]()[field]), class_name .. "." .. field)
                checked = checked + 1
              end
            end
          end
        end
        for _, v in ipairs(m.values) do
          local where = ("meta/%s.lua:%d: %s"):format(name, v.line, v.path)
          assert.equal("value", kind(real(v.path)), where .. " is not a value of the module")
          checked = checked + 1
        end
        assert(checked > 0, "meta/" .. name .. ".lua declares nothing")
      end)

      it("declares every public function the module exports", function()
        local m = meta(name)
        local declared = {}
        for _, f in ipairs(m.functions) do
          if not m.locals[f.owner:match("^[%w_]+")] then declared[f.owner .. "." .. f.member] = true end
        end
        for _, v in ipairs(m.values) do declared[v.path] = true end
        local missing = {}
        local function walk(t, path, depth)
          for k, v in pairs(t) do
            local sub = path .. "." .. tostring(k)
            if type(k) == "string" and not k:match("^_") and not internal(sub) then
              if type(v) == "function" and not declared[sub] then
                missing[#missing + 1] = sub
              elseif type(v) == "table" and depth < 2 then
                walk(v, sub, depth + 1)
              end
            end
          end
        end
        walk(require(name), name, 0)
        table.sort(missing)
        assert.same({}, missing)
      end)

      it("declares every method of the module's objects", function()
        local m = meta(name)
        local by_class = {}
        for _, f in ipairs(m.functions) do
          local class = m.locals[f.owner:match("^[%w_]+")]
          if class then
            by_class[class] = by_class[class] or {}
            by_class[class][f.member] = true
          end
        end
        for class_name, class in pairs(m.classes) do
          local members = by_class[class_name]
          if members then
            for field, rest in pairs(class.fields) do
              if rest:match("^fun%(") then members[field] = true end
            end
            -- a class that extends the module (`---@class tug.log.Logger: tug.log`) has its functions
            local parent = class.parent and m.classes[class.parent]
            if parent and parent.path then
              for _, f in ipairs(m.functions) do
                if f.owner == parent.path then members[f.member] = true end
              end
            end
          end
        end
        local missing = {}
        for class, members in pairs(by_class) do
          if INSTANCES[class] then
            for fn in pairs(functions_of(INSTANCES[class]())) do
              if not members[fn] then missing[#missing + 1] = class .. ":" .. fn end
            end
          end
        end
        table.sort(missing)
        assert.same({}, missing)
      end)
    end)
  end

  -- Option tables: the fields of each options class are the keys the module accepts (it
  -- raises "unknown option" for any other), read from the table the module checks them with.
  local OPTION_TABLES = {
    { "http", "tug.http.Options", { "modules/http/http.lua", "OPTIONS" } },
    { "http", "tug.http.TLS", { "modules/http/http.lua", "TLS_OPTIONS" } },
    { "http", "tug.http.ServerOptions", { "modules/http/server.lua", "OPTIONS" } },
    { "exec", "tug.exec.Options", { "modules/exec/exec.lua", "SPAWN_OPTIONS" }, { "modules/exec/exec.lua", "RUN_OPTIONS" } },
    { "k8s", "tug.k8s.Config", { "modules/k8s/k8s.lua", "CONNECT_OPTIONS" } },
    { "k8s", "tug.k8s.ExecOptions", { "modules/k8s/exec.lua", "OPTIONS" } },
    { "health", "tug.health.Check", { "modules/health/health.lua", "SPEC_OPTIONS" } },
    { "health", "tug.health.CheckOptions", { "modules/health/health.lua", "CHECK_OPTIONS" } },
    { "health", "tug.health.LoadOptions", { "modules/health/health.lua", "LOAD_OPTIONS" } },
    { "health", "tug.health.Limits", { "modules/health/health.lua", "LATENCY_LIMITS" }, { "modules/health/health.lua", "GATE_OPTIONS" } },
    { "analysis", "tug.analysis.RunSpec", { "modules/analysis/analysis.lua", "RUN_OPTIONS" } },
    { "analysis", "tug.analysis.Metric", { "modules/analysis/analysis.lua", "METRIC_OPTIONS" } },
    { "analysis", "tug.analysis.CompareSpec", { "modules/analysis/analysis.lua", "COMPARE_OPTIONS" } },
    { "analysis", "tug.analysis.CompareMetric", { "modules/analysis/analysis.lua", "COMPARE_METRIC_OPTIONS" } },
    { "aws", "tug.aws.Settings", { "modules/aws/client.lua", "SETTINGS" } },
    { "aws", "tug.aws.SignOptions", { "modules/aws/aws.lua", "SIGN_OPTIONS" } },
    -- sync takes the settings too (client.settings(opts, OPTIONS))
    { "aws", "tug.aws.SyncOptions", { "modules/aws/sync.lua", "OPTIONS" }, { "modules/aws/client.lua", "SETTINGS" } },
    { "aws", "tug.aws.RequestOptions", { "modules/aws/client.lua", "REQUEST_OPTIONS" }, { "modules/aws/client.lua", "SETTINGS" } },
    { "aws", "tug.aws.PutOptions", { "modules/aws/s3.lua", "PUT_OPTIONS" }, { "modules/aws/s3.lua", "OBJECT_HEADERS" },
      { "modules/aws/client.lua", "SETTINGS" } },
    { "ws", "tug.ws.ConnectOptions", { "modules/ws/ws.lua", "CONNECT_OPTIONS" } },
    { "ws", "tug.ws.UpgradeOptions", { "modules/ws/ws.lua", "UPGRADE_OPTIONS" } },
    { "pg", "tug.pg.ConnectOptions", { "modules/pg/pg.lua", "CONNECT_OPTIONS" } },
    { "sim", "tug.sim.Options", { "modules/sim/sim.lua", "OPTIONS" } },
    { "metrics", "tug.metrics.QueryOptions", { "modules/metrics/metrics.lua", "QUERY_OPTIONS" } },
    { "notify", "tug.notify.Slack", { "modules/notify/notify.lua", "SLACK" }, { "modules/notify/notify.lua", "COMMON" } },
    { "notify", "tug.notify.PagerDuty", { "modules/notify/notify.lua", "PAGERDUTY" }, { "modules/notify/notify.lua", "COMMON" } },
    { "notify", "tug.notify.Statuspage", { "modules/notify/notify.lua", "STATUSPAGE" }, { "modules/notify/notify.lua", "COMMON" } },
    { "notify", "tug.notify.Webhook", { "modules/notify/notify.lua", "WEBHOOK" }, { "modules/notify/notify.lua", "COMMON" } },
  }

  -- The keys of `local NAME = { a = true, ... }` (or `M.NAME = {`, or `local NAME = f({`) in a source file; for a
  -- list of `{ key = "a", ... }` entries (health's LATENCY_LIMITS), those keys.
  local function table_keys(file, name)
    local f = assert(io.open(file))
    local text = f:read("a")
    f:close()
    local body = text:match("\nlocal " .. name .. " = [%w_]*%(?(%b{})") or text:match("\nM%." .. name .. " = (%b{})")
    assert(body, file .. " has no table " .. name)
    local keys = {}
    if body:find('key = "', 1, true) then
      for key in body:gmatch('key = "([%w_]+)"') do keys[key] = true end
    else
      for key in body:gmatch("([%a_][%w_]*)%s*=") do keys[key] = true end
    end
    return keys
  end

  -- A class's fields, with those of the classes it extends (in the same file).
  local function all_fields(m, class_name)
    local fields = {}
    local class = m.classes[class_name]
    while class do
      for field in pairs(class.fields) do fields[field] = true end
      class = class.parent and m.classes[class.parent]
    end
    return fields
  end

  for _, entry in ipairs(OPTION_TABLES) do
    local module, class_name = entry[1], entry[2]
    it(("declares %s as the options %s accepts"):format(class_name, entry[3][1]), function()
      local accepted = {}
      for i = 3, #entry do
        for key in pairs(table_keys(entry[i][1], entry[i][2])) do accepted[key] = true end
      end
      local declared = all_fields(meta(module), class_name)
      local only_declared, only_accepted = {}, {}
      for key in pairs(declared) do if not accepted[key] then only_declared[#only_declared + 1] = key end end
      for key in pairs(accepted) do if not declared[key] then only_accepted[#only_accepted + 1] = key end end
      table.sort(only_declared)
      table.sort(only_accepted)
      assert.same({ declared_not_accepted = {}, accepted_not_declared = {} },
        { declared_not_accepted = only_declared, accepted_not_declared = only_accepted })
    end)
  end

  describe("tug.lua", function()
    it("declares only what the tug global has, as that kind", function()
      local m = meta("tug")
      assert.equal("table", m.globals.tug)
      for _, f in ipairs(m.functions) do
        assert.equal("function", kind(real(f.owner)[f.member]), "meta/tug.lua:" .. f.line .. ": " .. f.owner .. "." .. f.member)
      end
      for _, v in ipairs(m.values) do
        assert.equal("value", kind(real(v.path)), "meta/tug.lua:" .. v.line .. ": " .. v.path)
      end
    end)

    it("declares the environment keys the runtime reads", function()
      -- environment.lua checks protected and lock; the engine reads kubernetes and notify
      local fields = meta("tug").classes["tug.Environment"].fields
      for _, key in ipairs({ "name", "protected", "lock", "kubernetes", "notify" }) do
        assert(fields[key], "tug.Environment has no field " .. key)
      end
    end)
  end)

  describe("playbook.lua", function()
    -- how each of playbooks.lua's field types must be written in the annotation
    local TYPE_PATTERNS = {
      string = "^string", boolean = "^boolean", integer = "^integer", number = "^number",
      duration = "^tug%.Duration", ["function"] = "^fun%(", any = "^any",
      table = "^[%w_.<>, ]*[%[{<]",
    }
    -- an alias of string literals is a string too
    local ALIASES = { ["tug.ParamType"] = "string" }

    local function check_class(class_name, fields)
      local class = meta("playbook").classes[class_name]
      local declared, real_names = {}, {}
      for field, rest in pairs(class.fields) do
        declared[#declared + 1] = field
        local want = fields[field]
        assert(want, class_name .. " declares " .. field .. ", which playbooks.lua does not accept")
        local alias = rest:match("^([%w_.]+)")
        assert(rest:match(TYPE_PATTERNS[want]) or ALIASES[alias] == want,
          ("%s.%s is a %s in playbooks.lua, declared as: %s"):format(class_name, field, want, rest))
      end
      for field in pairs(fields) do real_names[#real_names + 1] = field end
      table.sort(declared)
      table.sort(real_names)
      assert.same(real_names, declared)
    end

    it("declares the fields playbook { ... } accepts, with their types", function()
      check_class("tug.PlaybookDecl", playbooks.PLAYBOOK_FIELDS)
    end)

    it("declares the fields step \"...\" { ... } accepts, with their types", function()
      check_class("tug.StepDecl", playbooks.STEP_FIELDS)
    end)

    it("declares the fields of a param, and its types", function()
      check_class("tug.ParamDecl", playbooks.PARAM_FIELDS)
      local alias = assert(io.open(META .. "/playbook.lua")):read("a"):match("%-%-%-@alias tug%.ParamType ([^\n]+)")
      local types = {}
      for t in alias:gmatch('"([%w_]+)"') do types[#types + 1] = t end
      assert.same(playbooks.PARAM_TYPES, types)
    end)

    it("declares playbook and step, the globals of a playbook file", function()
      local m = meta("playbook")
      ctx_fixture()
      assert.equal("function", m.globals.playbook)
      assert.equal("function", m.globals.step)
      assert.equal("function", type(fixtures.dsl.playbook))
      assert.equal("function", type(fixtures.dsl.step))
    end)

    it("declares ctx as the engine makes it: every member, each as its kind", function()
      local ctx = ctx_fixture()
      local m = meta("playbook")
      local class = m.classes["tug.Ctx"]
      local declared = {}
      for field in pairs(class.fields) do
        declared[field] = "value"
        assert(ctx[field] ~= nil, "tug.Ctx declares " .. field .. ", which a ctx does not have")
        assert.equal("value", kind(ctx[field]), "ctx." .. field)
      end
      for _, f in ipairs(m.functions) do
        if m.locals[f.owner] == "tug.Ctx" then
          declared[f.member] = "function"
          assert.equal(":", f.sep, "ctx methods are called as ctx:" .. f.member)
        end
      end
      for key, value in pairs(ctx) do
        assert.equal(kind(value), declared[key], "ctx." .. key .. " is not declared as a " .. kind(value))
      end
      for key, k in pairs(declared) do assert.equal(k, kind(ctx[key]), "ctx." .. key) end
    end)

    it("declares ctx.log's functions", function()
      local log_fields = meta("playbook").classes["tug.CtxLog"].fields
      local ctx = ctx_fixture()
      local declared, real_names = {}, {}
      for field, rest in pairs(log_fields) do
        declared[#declared + 1] = field
        assert(rest:match("^fun%("), "tug.CtxLog." .. field .. " is a function")
      end
      for k, v in pairs(ctx.log) do
        assert.equal("function", type(v))
        real_names[#real_names + 1] = k
      end
      table.sort(declared)
      table.sort(real_names)
      assert.same(real_names, declared)
    end)
  end)

  describe("the spec's own parser", function()
    it("finds a renamed function and an undeclared one", function()
      local path = os.tmpname()
      local f = assert(io.open(path, "w"))
      f:write("---@meta time\n---@class tug.time\ntime = {}\nfunction time.nowish() end\n---@type number\ntime.x = 1\n")
      f:close()
      local m = parse(path)
      os.remove(path)
      assert.same({ { owner = "time", member = "nowish", sep = ".", line = 4 } }, m.functions)
      assert.same({ { path = "time.x", line = 6 } }, m.values)
      assert.equal("nothing", kind(real("time")[m.functions[1].member]))
      assert.equal("nothing", kind(real(m.values[1].path)))
    end)
  end)
end)
