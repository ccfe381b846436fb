-- api.lua (sim.api): the HTTP face of the simulator, one handler for http.server.
--
--   /version /healthz /livez /readyz                  the server itself
--   /api /apis /api/v1 /apis/GROUP[/VERSION]          discovery (legacy and aggregated)
--   /openapi/v3[/PATH]                                enough for server-side validation
--   /api/v1/..., /apis/GROUP/VERSION/...              the resources: get, list, watch,
--                                                     create, update, patch, delete,
--                                                     deletecollection; status, scale,
--                                                     log, proxy and exec subresources
--                                                     (exec: sim.exec, over WebSocket)
--   /svc/NAMESPACE/SERVICE/PATH                       the simulated applications (sim.apps)
--   /metrics                                          Prometheus exposition (sim.metrics)
--   /sim/faults[/ID], /sim/timing, /sim/state         the simulator's own admin API
--
-- Failures are metav1.Status objects (sim.errors); lists and gets become meta.k8s.io
-- Tables when the client asks (sim.tables); watches are chunked streams of one JSON
-- event per line, from the store's event log.

local json = require("json")
local task = require("task")
local discovery = require("sim.discovery")
local errors = require("sim.errors")
local patch = require("sim.patch")
local resources = require("sim.resources")
local selectors = require("sim.selectors")
local tables = require("sim.tables")
local util = require("sim.util")

local api = {}

local JSON = "application/json"
local TABLE_TYPE = "application/json;as=Table;v=v1;g=meta.k8s.io"
local DEFAULT_WATCH_TIMEOUT = 1800

local function respond(code, obj, content_type)
  return { status = code, headers = { ["content-type"] = content_type or JSON }, body = json.encode(obj) }
end

-- ---- encoding stored objects ----
-- A stored object never changes, so its JSON is made once and kept as long as the object
-- lives: the list form (without kind and apiVersion, as list items are sent), from which
-- the full form is made by putting them back in front.
local item_cache = setmetatable({}, { __mode = "k" })

-- A shallow copy without kind and apiVersion: how items appear in a list.
local function as_item(obj)
  local t = {}
  for k, v in pairs(obj) do t[k] = v end
  t.kind, t.apiVersion = nil, nil
  return t
end

local function item_json(obj)
  local text = item_cache[obj]
  if not text then
    text = json.encode(as_item(obj))
    item_cache[obj] = text
  end
  return text
end

local function object_json(obj)
  if type(obj.kind) ~= "string" or type(obj.apiVersion) ~= "string" then return json.encode(obj) end
  local item = item_json(obj)
  local head = '{"apiVersion":' .. json.encode(obj.apiVersion) .. ',"kind":' .. json.encode(obj.kind)
  if item == "{}" then return head .. "}" end
  return head .. "," .. item:sub(2)
end
api.object_json = object_json

local function respond_object(code, obj)
  return { status = code, headers = { ["content-type"] = JSON }, body = object_json(obj) }
end

local function list_json(def, items, meta)
  local parts = {}
  for i, obj in ipairs(items) do parts[i] = item_json(obj) end
  return '{"apiVersion":' .. json.encode(def.api_version) .. ',"items":[' .. table.concat(parts, ",")
    .. '],"kind":' .. json.encode(def.list_kind) .. ',"metadata":' .. json.encode(meta) .. "}"
end

local function fail(st)
  local r = respond(st.code, st)
  if st.code == 429 then r.headers["retry-after"] = tostring(st.details and st.details.retryAfterSeconds or 1) end
  return r
end

local function truthy(v) return v == "true" or v == "1" end

local function decode_body(req)
  local body = req.body or ""
  if body == "" then return nil, errors.bad_request("the request body is empty") end
  local ctype = (req.headers["content-type"] or ""):lower()
  local ok, doc
  if ctype:find("yaml", 1, true) and not ctype:find("apply-patch", 1, true) then
    ok, doc = pcall(require("yaml").decode, body)
  else
    ok, doc = pcall(json.decode, body)
  end
  if not ok then
    return nil, errors.bad_request("couldn't get version/kind; json parse error: " .. tostring(doc):gsub("^json%.decode: ", ""))
  end
  return doc
end

-- ---- paths ----

local function split(path)
  local segs = {}
  for s in path:gmatch("[^/]+") do segs[#segs + 1] = s end
  return segs
end

local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- /api/v1/... or /apis/G/V/... -> { def, ns, name, sub, subpath, watch } or nil, Status
local function parse_resource_path(path)
  local group, version, rest
  local r = path:match("^/api/v1/(.*)$")
  if r then
    group, version, rest = "", "v1", r
  else
    local g, v, r2 = path:match("^/apis/([^/]+)/([^/]+)/(.*)$")
    if not g then return nil end
    group, version, rest = g, v, r2
  end
  local segs = split(rest)
  local watch_prefix = false
  if segs[1] == "watch" then
    watch_prefix = true
    table.remove(segs, 1)
  end
  local ns
  if segs[1] == "namespaces" and #segs >= 3 then
    local d = resources.lookup(group, version, segs[3])
    if d and d.namespaced then
      ns = unescape(segs[2])
      table.remove(segs, 1)
      table.remove(segs, 1)
    end
  end
  local def = segs[1] and resources.lookup(group, version, segs[1])
  if not def then return nil, errors.page_not_found() end
  if def.namespaced == false and ns then return nil, errors.page_not_found() end
  local subpath
  if #segs > 3 then
    subpath = "/" .. table.concat(segs, "/", 4)
    if path:sub(-1) == "/" then subpath = subpath .. "/" end
  elseif #segs == 3 and path:sub(-1) == "/" then
    subpath = "/"
  end
  return {
    def = def, ns = ns, name = segs[2] and unescape(segs[2]), sub = segs[3], subpath = subpath,
    watch = watch_prefix, group = group, version = version,
  }
end

-- ---- the handler ----

local Handler = {}
Handler.__index = Handler

function api.new(sim)
  return setmetatable({ sim = sim, store = sim.store }, Handler)
end

function api.handler(sim)
  local h = api.new(sim)
  return function(req) return h:handle(req) end
end

local function wants_table(req, def)
  local v = tables.wanted(req.headers["accept"])
  if v and tables.supported(def.name) then return v end
  return nil
end

local function list_meta(rv, cont, remaining)
  local m = { resourceVersion = tostring(rv) }
  if cont then m.continue = cont end
  if remaining then m.remainingItemCount = remaining end
  return m
end

function Handler:parse_selectors(def, q)
  local label, err = selectors.parse_labels(q.labelSelector)
  if not label then return nil, nil, errors.bad_request(err) end
  local field
  field, err = selectors.parse_fields(def.name, q.fieldSelector)
  if not field then return nil, nil, errors.bad_request(err) end
  if (q.labelSelector or "") == "" then label = nil end
  if (q.fieldSelector or "") == "" then field = nil end
  return label, field
end

function Handler:get(def, ns, name, req)
  local obj = self.store:get(def.name, ns, name)
  if not obj then return fail(errors.not_found(def, name)) end
  local tv = wants_table(req, def)
  if tv then
    local t = tables.table(def.name, { obj }, { resourceVersion = obj.metadata.resourceVersion }, req.query.includeObject)
    t.apiVersion = "meta.k8s.io/" .. tv
    return respond(200, t, TABLE_TYPE)
  end
  return respond_object(200, obj)
end

function Handler:list(def, ns, req)
  local q = req.query
  local label, field, err = self:parse_selectors(def, q)
  if err then return fail(err) end
  local limit = tonumber(q.limit)
  local items, rv, cont, remaining = self.store:list(def.name, ns, { label = label, field = field, limit = limit, continue = q.continue })
  if not items then return fail(rv) end
  local tv = wants_table(req, def)
  if tv then
    local t = tables.table(def.name, items, list_meta(rv, cont, remaining), q.includeObject)
    t.apiVersion = "meta.k8s.io/" .. tv
    return respond(200, t, TABLE_TYPE)
  end
  return { status = 200, headers = { ["content-type"] = JSON }, body = list_json(def, items, list_meta(rv, cont, remaining)) }
end

-- ---- watch ----

function Handler:watch(def, ns, req)
  local q = req.query
  local label, field, err = self:parse_selectors(def, q)
  if err then return fail(err) end
  local store = self.store
  local sim = self.sim
  local table_version = wants_table(req, def)
  local include = q.includeObject
  local bookmarks = truthy(q.allowWatchBookmarks) and not table_version
  local timeout = tonumber(q.timeoutSeconds) or DEFAULT_WATCH_TIMEOUT
  local rv_text = q.resourceVersion or ""
  local initial
  local from
  if rv_text == "" or rv_text == "0" then
    initial = store:list(def.name, ns, { label = label, field = field })
    from = store:current_rv()
  else
    from = tonumber(rv_text)
    if not from then return fail(errors.bad_request(("invalid resource version: %q"):format(rv_text))) end
  end
  local cursor, expired = store:cursor_after(def.name, from)
  local drop_after = sim.faults:watch_drop(def.name)
  local signal = store:signal(def.name)
  local first_table = true

  local function encode_object(obj)
    if table_version then
      local t = tables.table(def.name, { obj }, { resourceVersion = obj.metadata.resourceVersion }, include, first_table)
      t.apiVersion = "meta.k8s.io/" .. table_version
      first_table = false
      return json.encode(t)
    end
    return object_json(obj)
  end

  -- An object's JSON is made once (object_json's cache, which lives as long as the
  -- object); the event line around it is made per watch and not kept.
  local function event_line(kind, obj)
    return '{"type":"' .. kind .. '","object":' .. encode_object(obj) .. "}\n"
  end

  local function matches(obj)
    if ns and obj.metadata.namespace ~= ns then return false end
    if label and not label(obj.metadata.labels) then return false end
    if field and not field(obj) then return false end
    return true
  end

  local function bookmark_line()
    local obj = { kind = def.kind, apiVersion = def.api_version,
      metadata = { resourceVersion = tostring(store:current_rv()), creationTimestamp = json.null } }
    return json.encode({ type = "BOOKMARK", object = obj }) .. "\n"
  end

  local stream = function(write)
    if expired then
      write(json.encode({ type = "ERROR", object = expired }) .. "\n")
      return
    end
    for _, obj in ipairs(initial or {}) do
      if not write(event_line("ADDED", obj)) then return end
    end
    local start = util.now()
    local deadline = start + timeout
    local interval = sim.timing.bookmark_interval or 60
    local next_bookmark = start + interval
    local drop_at = drop_after and (start + drop_after) or nil
    local filtered = label ~= nil or field ~= nil
    while true do
      while true do
        local e = store:entry(def.name, cursor)
        if e == "expired" then
          write(json.encode({ type = "ERROR", object = errors.expired(("too old resource version: %d (%d)")
            :format(from, store:state(def.name).trimmed_rv + 1)) }) .. "\n")
          return
        end
        if e == nil then break end
        cursor = cursor + 1
        from = e.rv
        local kind, obj = e.type, e.obj
        local line
        if not filtered then
          if not ns or obj.metadata.namespace == ns then line = event_line(kind, obj) end
        else
          -- objects entering or leaving the selection are ADDED or DELETED for this watch
          local now_in = kind ~= "DELETED" and matches(obj)
          local was_in = e.old ~= nil and matches(e.old)
          if kind == "DELETED" then
            if matches(obj) then line = event_line("DELETED", obj) end
          elseif now_in and was_in then
            line = event_line("MODIFIED", obj)
          elseif now_in then
            line = event_line("ADDED", obj)
          elseif was_in then
            line = event_line("DELETED", obj)
          end
        end
        if line and not write(line) then return end
      end
      local now = util.now()
      if now >= deadline then return end
      if drop_at and now >= drop_at then return end
      if bookmarks and now >= next_bookmark then
        if not write(bookmark_line()) then return end
        next_bookmark = now + interval
      end
      local wake = deadline
      if bookmarks then wake = math.min(wake, next_bookmark) end
      if drop_at then wake = math.min(wake, drop_at) end
      signal:wait(math.max(wake - now, 0))
    end
  end
  return { status = 200, headers = { ["content-type"] = table_version and TABLE_TYPE or JSON }, stream = stream }
end

-- ---- writes ----

function Handler:create(def, ns, req)
  local body, err = decode_body(req)
  if not body then return fail(err) end
  if type(body) ~= "table" or util.is_array(body) then
    return fail(errors.bad_request("the body of the request was not a JSON object"))
  end
  if body.apiVersion and body.apiVersion ~= def.api_version then
    return fail(errors.bad_request(("the API version in the data (%s) does not match the expected API version (%s)")
      :format(tostring(body.apiVersion), def.api_version)))
  end
  if body.kind and body.kind ~= def.kind then
    return fail(errors.bad_request(("the kind in the data (%s) does not match the expected kind (%s)")
      :format(tostring(body.kind), def.kind)))
  end
  body.metadata = body.metadata or {}
  if def.namespaced then
    local bns = body.metadata.namespace
    if bns and bns ~= "" and bns ~= ns then
      return fail(errors.bad_request("the namespace of the provided object does not match the namespace sent on the request"))
    end
    body.metadata.namespace = ns
  end
  local obj
  obj, err = self.store:create(def.name, body, { dry_run = req.query.dryRun == "All" })
  if not obj then return fail(err) end
  return respond_object(201, obj)
end

local function check_identity(def, body, ns, name)
  if type(body) ~= "table" or util.is_array(body) then
    return errors.bad_request("the body of the request was not a JSON object")
  end
  body.metadata = body.metadata or {}
  if body.metadata.name ~= nil and body.metadata.name ~= name then
    return errors.bad_request(("the name of the object (%s) does not match the name on the URL (%s)")
      :format(tostring(body.metadata.name), name))
  end
  body.metadata.name = name
  if def.namespaced then
    local bns = body.metadata.namespace
    if bns and bns ~= "" and bns ~= ns then
      return errors.bad_request("the namespace of the provided object does not match the namespace sent on the request")
    end
    body.metadata.namespace = ns
  end
  return nil
end

local function to_scale(obj)
  local st = obj.status or {}
  return {
    kind = "Scale", apiVersion = "autoscaling/v1",
    metadata = { name = obj.metadata.name, namespace = obj.metadata.namespace, uid = obj.metadata.uid,
      resourceVersion = obj.metadata.resourceVersion, creationTimestamp = obj.metadata.creationTimestamp },
    spec = { replicas = obj.spec.replicas },
    status = { replicas = st.replicas or 0, selector = util.format_selector(obj.spec.selector) },
  }
end

-- Applies a Scale (from PUT or PATCH) to its Deployment or ReplicaSet.
function Handler:apply_scale(def, current, scale, dry_run)
  if type(scale) ~= "table" then return fail(errors.bad_request("the body of the request was not a Scale")) end
  local want = scale.spec and scale.spec.replicas
  if want == nil then want = 0 end
  if math.type(want) ~= "integer" or want < 0 then
    return fail(errors.invalid({ kind = "Scale", group = "autoscaling", name = def.name }, current.metadata.name,
      { resources.ERR.invalid("spec.replicas", want, "must be greater than or equal to 0") }))
  end
  local rv = scale.metadata and scale.metadata.resourceVersion
  if rv and rv ~= "" and rv ~= current.metadata.resourceVersion then
    return fail(errors.conflict(def, current.metadata.name))
  end
  local obj = util.copy(current)
  obj.spec.replicas = want
  local out, err = self.store:update(def.name, obj, { dry_run = dry_run })
  if not out then return fail(err) end
  return respond(200, to_scale(out))
end

function Handler:update(def, ns, name, sub, req)
  local body, err = decode_body(req)
  if not body then return fail(err) end
  local bad = check_identity(def, body, ns, name)
  if bad then return fail(bad) end
  local dry_run = req.query.dryRun == "All"
  if sub == "scale" then
    local current = self.store:get(def.name, ns, name)
    if not current then return fail(errors.not_found(def, name)) end
    return self:apply_scale(def, current, body, dry_run)
  end
  local obj
  obj, err = self.store:update(def.name, body, { subresource = sub, dry_run = dry_run })
  if not obj then return fail(err) end
  return respond_object(200, obj)
end

local PATCH_TYPES = {
  ["application/json-patch+json"] = "json",
  ["application/merge-patch+json"] = "merge",
  ["application/strategic-merge-patch+json"] = "strategic",
}

function Handler:patch(def, ns, name, sub, req)
  local ctype = (req.headers["content-type"] or ""):lower():gsub(";.*$", ""):gsub("%s", "")
  local kind = PATCH_TYPES[ctype]
  if not kind then return fail(errors.unsupported_media_type(ctype)) end
  local ok, p = pcall(json.decode, req.body or "")
  if not ok then return fail(errors.bad_request("error decoding patch: " .. tostring(p):gsub("^json%.decode: ", ""))) end
  local current = self.store:get(def.name, ns, name)
  if not current then return fail(errors.not_found(def, name)) end
  local doc = sub == "scale" and to_scale(current) or util.copy(current)
  local out, perr, malformed
  if kind == "json" then
    out, perr, malformed = patch.json_patch(doc, p)
  elseif kind == "merge" or sub == "scale" then
    out, perr = patch.json_merge(doc, p)
    if not out then malformed = true end
  else
    out, perr = patch.strategic(def.name, doc, p)
  end
  if not out then
    if malformed then return fail(errors.bad_request(perr)) end
    return fail(errors.unprocessable(perr))
  end
  local dry_run = req.query.dryRun == "All"
  if sub == "scale" then return self:apply_scale(def, current, out, dry_run) end
  if type(out) ~= "table" or type(out.metadata) ~= "table" then
    return fail(errors.unprocessable("the patched object has no metadata"))
  end
  if out.metadata.name ~= name or (def.namespaced and out.metadata.namespace ~= ns) then
    return fail(errors.invalid(def, name, { resources.ERR.invalid("metadata.name", out.metadata.name, "field is immutable") }))
  end
  local obj, err = self.store:update(def.name, out, { subresource = sub, dry_run = dry_run })
  if not obj then return fail(err) end
  return respond_object(200, obj)
end

local function delete_options(req)
  local opts = {}
  local body = req.body or ""
  if body ~= "" then
    local ok, doc = pcall(json.decode, body)
    if not ok or type(doc) ~= "table" then return nil, errors.bad_request("the body of the request was not DeleteOptions") end
    opts.propagation = doc.propagationPolicy
    if doc.orphanDependents == true then opts.propagation = "Orphan" end
    if doc.gracePeriodSeconds ~= nil then opts.grace = tonumber(doc.gracePeriodSeconds) end
    if type(doc.preconditions) == "table" then
      opts.rv, opts.uid = doc.preconditions.resourceVersion, doc.preconditions.uid
    end
    if type(doc.dryRun) == "table" and doc.dryRun[1] == "All" then opts.dry_run = true end
  end
  local q = req.query
  if q.propagationPolicy then opts.propagation = q.propagationPolicy end
  if q.gracePeriodSeconds then opts.grace = tonumber(q.gracePeriodSeconds) end
  if q.dryRun == "All" then opts.dry_run = true end
  local p = opts.propagation
  if p ~= nil and p ~= "Background" and p ~= "Foreground" and p ~= "Orphan" then
    return nil, errors.bad_request(("propagationPolicy: Unsupported value: %q: supported values: \"Foreground\", \"Background\", \"Orphan\""):format(p))
  end
  return opts
end

function Handler:delete(def, ns, name, req)
  local opts, err = delete_options(req)
  if not opts then return fail(err) end
  local obj, gone = self.store:delete(def.name, ns, name, opts)
  if not obj then return fail(gone) end
  if def.name == "pods" then return respond_object(200, obj) end
  if not gone then return respond_object(202, obj) end
  local details = { name = name, kind = def.name, uid = obj.metadata.uid }
  if def.group ~= "" then details.group = def.group end
  return respond(200, { kind = "Status", apiVersion = "v1", metadata = {}, status = "Success", details = details })
end

function Handler:delete_collection(def, ns, req)
  local opts, err = delete_options(req)
  if not opts then return fail(err) end
  local label, field, serr = self:parse_selectors(def, req.query)
  if serr then return fail(serr) end
  local items = self.store:list(def.name, ns, { label = label, field = field })
  local out = json.array()
  for _, obj in ipairs(items) do
    local o = self.store:delete(def.name, obj.metadata.namespace, obj.metadata.name, opts)
    if o then out[#out + 1] = as_item(o) end
  end
  return respond(200, { kind = def.list_kind, apiVersion = def.api_version,
    metadata = { resourceVersion = tostring(self.store:current_rv()) }, items = out })
end

-- ---- subresources served by other parts ----

function Handler:pod_log(ns, name, req)
  local def = resources.get("pods")
  local pod = self.store:get("pods", ns, name)
  if not pod then return fail(errors.not_found(def, name)) end
  local q = req.query
  local opts = { container = q.container, tail_lines = q.tailLines, timestamps = truthy(q.timestamps), previous = truthy(q.previous) }
  local text, err = self.sim.kubelet:logs(pod, opts)
  if not text then return fail(err) end
  if not truthy(q.follow) then
    return { status = 200, headers = { ["content-type"] = "text/plain" }, body = text }
  end
  local sim = self.sim
  local uid = pod.metadata.uid
  local _, seen = sim.kubelet:log_since(pod, opts.container, math.huge, opts.timestamps)
  return { status = 200, headers = { ["content-type"] = "text/plain" }, stream = function(write)
    if text ~= "" and not write(text) then return end
    while true do
      task.sleep(0.1)
      local now = sim.store:get("pods", ns, name)
      if not now or now.metadata.uid ~= uid then return end
      local more
      more, seen = sim.kubelet:log_since(now, opts.container, seen or 0, opts.timestamps)
      if not more then return end
      if more ~= "" and not write(more) then return end
    end
  end }
end

function Handler:service_proxy(ns, name, subpath, req)
  -- NAME, NAME:PORT or SCHEME:NAME:PORT
  local svc = name:match("^https?:([^:]+):") or name:match("^([^:]+)")
  local status, headers, body = self.sim.apps:serve(ns, svc, subpath or "/", req)
  return { status = status, headers = headers, body = body }
end

-- ---- the resource dispatcher ----

local VERB_OF = { GET = "get", HEAD = "get", POST = "create", PUT = "update", PATCH = "patch", DELETE = "delete" }

function Handler:resource(req, route)
  local def, ns, name, sub = route.def, route.ns, route.name, route.sub
  local method = req.method
  local q = req.query
  local verb = VERB_OF[method]
  if not verb then return fail(errors.method_not_allowed()) end
  if def.name == "pods" and sub == "exec" and name and ns and not route.subpath then
    route.verb = "exec:create"
    local out = self.sim.execs:serve(req, ns, name)
    return out or { status = 101 } -- the connection went to the exec session
  end
  if def.name == "pods" and (sub == "attach" or sub == "portforward") then
    return fail(errors.bad_request(("the simulated cluster does not serve pods/%s"):format(sub)))
  end
  if name == nil then
    if method == "GET" or method == "HEAD" then
      verb = (route.watch or truthy(q.watch)) and "watch" or "list"
    elseif method == "DELETE" then
      verb = "deletecollection"
    elseif method ~= "POST" then
      return fail(errors.method_not_allowed())
    end
  elseif method == "POST" and sub ~= "proxy" then
    return fail(errors.method_not_allowed())
  elseif route.watch then
    verb = "watch"
  end
  route.verb = sub and (sub .. ":" .. verb) or verb
  if def.namespaced and ns == nil and name ~= nil then return fail(errors.page_not_found()) end
  if def.namespaced and ns == nil and (verb == "create" or verb == "deletecollection") then
    return fail(errors.page_not_found())
  end

  local fault = self.sim.faults:api(verb, def.name)
  if fault then
    if fault.delay and fault.delay > 0 then task.sleep(fault.delay) end
    if fault.status then
      local msg = fault.message or "simulated fault"
      local st
      if fault.status == 503 then
        st = errors.service_unavailable(msg)
      elseif fault.status == 429 then
        st = errors.too_many_requests(msg, 1)
      elseif fault.status == 504 then
        st = errors.timeout(msg)
      elseif fault.status == 500 then
        st = errors.internal(msg)
      else
        st = errors.status(fault.status, "InternalError", msg)
      end
      return fail(st)
    end
  end

  if sub ~= nil then
    if not def.subresources[sub] then return fail(errors.page_not_found()) end
    if sub == "log" then
      if method ~= "GET" then return fail(errors.method_not_allowed()) end
      return self:pod_log(ns, name, req)
    end
    if sub == "proxy" then return self:service_proxy(ns, name, route.subpath, req) end
    if route.subpath then return fail(errors.page_not_found()) end
    if method == "GET" then
      if sub == "scale" then
        local obj = self.store:get(def.name, ns, name)
        if not obj then return fail(errors.not_found(def, name)) end
        return respond(200, to_scale(obj))
      end
      return self:get(def, ns, name, req)
    end
    if method == "PUT" then return self:update(def, ns, name, sub, req) end
    if method == "PATCH" then return self:patch(def, ns, name, sub, req) end
    return fail(errors.method_not_allowed())
  end
  local allowed = false
  for _, v in ipairs(def.verbs) do
    if v == verb then allowed = true end
  end
  if not allowed then return fail(errors.method_not_allowed()) end

  if verb == "get" then return self:get(def, ns, name, req) end
  if verb == "list" then return self:list(def, ns, req) end
  if verb == "watch" then
    if name then
      q.fieldSelector = "metadata.name=" .. name .. (q.fieldSelector and q.fieldSelector ~= "" and ("," .. q.fieldSelector) or "")
    end
    return self:watch(def, ns, req)
  end
  if verb == "create" then return self:create(def, ns, req) end
  if verb == "update" then return self:update(def, ns, name, nil, req) end
  if verb == "patch" then return self:patch(def, ns, name, nil, req) end
  if verb == "delete" then return self:delete(def, ns, name, req) end
  if verb == "deletecollection" then return self:delete_collection(def, ns, req) end
  return fail(errors.method_not_allowed())
end

-- ---- the simulator's admin API ----

function Handler:admin(req)
  local sim = self.sim
  local path, method = req.path, req.method
  if path == "/sim/faults" then
    if method == "GET" then return respond(200, { faults = json.array(sim.faults:describe()) }) end
    if method == "DELETE" then return respond(200, { cleared = sim.faults:clear() }) end
    if method == "POST" then
      local ok, body = pcall(json.decode, req.body or "")
      if not ok or type(body) ~= "table" then return respond(400, { error = "the body must be a fault object or a list of them" }) end
      local list = util.is_array(body) and body or (body.faults or { body })
      local added = json.array()
      for _, spec in ipairs(list) do
        local f, err = sim.faults:add(spec)
        if not f then return respond(400, { error = err, added = added }) end
        added[#added + 1] = f.id
      end
      return respond(201, { added = added, faults = json.array(sim.faults:describe()) })
    end
    return respond(405, { error = "use GET, POST or DELETE" })
  end
  local id = path:match("^/sim/faults/([^/]+)$")
  if id then
    if method ~= "DELETE" then return respond(405, { error = "use DELETE" }) end
    local f = sim.faults:remove(id)
    if not f then return respond(404, { error = ("no fault %q"):format(id) }) end
    return respond(200, { removed = id })
  end
  if path == "/sim/timing" then
    if method == "POST" or method == "PUT" then
      local ok, body = pcall(json.decode, req.body or "")
      if not ok or type(body) ~= "table" then return respond(400, { error = "the body must be an object of durations" }) end
      local ok2, err = pcall(sim.set_timing, sim, body)
      if not ok2 then return respond(400, { error = tostring(err) }) end
    end
    return respond(200, sim.timing)
  end
  if path == "/sim/state" then
    return respond(200, sim:state())
  end
  return respond(404, { error = "unknown admin path " .. path })
end

-- ---- entry ----

local function text(code, body, ctype)
  return { status = code, headers = { ["content-type"] = ctype or "text/plain; charset=utf-8" }, body = body }
end

function Handler:route(req)
  local path = req.path
  local method = req.method
  local route, err = parse_resource_path(path)
  if route then
    local out = self:resource(req, route)
    self.sim.metrics:api_request(route.verb or method:lower(), route.def.name, out.status or 200)
    return out
  end
  if err then return fail(err) end
  if path:sub(1, 5) == "/svc/" then
    local ns, name, rest = path:match("^/svc/([^/]+)/([^/]+)(.*)$")
    if not ns then return text(404, "use /svc/NAMESPACE/SERVICE/PATH\n") end
    local status, headers, body = self.sim.apps:serve(ns, name, rest, req)
    return { status = status, headers = headers, body = body }
  end
  if path == "/version" or path == "/version/" then return respond(200, discovery.version()) end
  if path == "/healthz" or path == "/livez" or path == "/readyz" then return text(200, "ok") end
  if path == "/metrics" then
    return text(200, self.sim.metrics:render(self.sim), "text/plain; version=0.0.4; charset=utf-8")
  end
  if path:sub(1, 5) == "/sim/" or path == "/sim" then return self:admin(req) end
  if path == "/api" or path == "/api/" or path == "/apis" or path == "/apis/" then
    local core = path:sub(1, 4) == "/api" and path:sub(5, 5) ~= "s"
    local agg = discovery.wants_aggregated(req.headers["accept"])
    if agg == "v2" then
      return respond(200, discovery.aggregated(core), discovery.AGGREGATED_TYPE)
    elseif agg == "v2beta1" then
      return respond(200, discovery.aggregated(core, "apidiscovery.k8s.io/v2beta1"), discovery.AGGREGATED_TYPE_BETA)
    end
    if core then return respond(200, discovery.api_versions(req.headers["host"])) end
    return respond(200, discovery.group_list())
  end
  if path == "/api/v1" or path == "/api/v1/" then return respond(200, discovery.resource_list("", "v1")) end
  local g, v = path:match("^/apis/([^/]+)/([^/]+)/?$")
  if g then
    local list = discovery.resource_list(g, v)
    if list then return respond(200, list) end
    return fail(errors.page_not_found())
  end
  g = path:match("^/apis/([^/]+)/?$")
  if g then
    local group = discovery.group(g)
    if group then return respond(200, group) end
    return fail(errors.page_not_found())
  end
  if path == "/openapi/v3" or path == "/openapi/v3/" then return respond(200, discovery.openapi_root()) end
  local oapi = path:match("^/openapi/v3/(.+)$")
  if oapi then
    local doc = discovery.openapi_group(oapi)
    if doc then return respond(200, doc) end
  end
  if path == "/" then
    return respond(200, { paths = json.array({ "/api", "/api/v1", "/apis", "/apis/apps/v1", "/apis/coordination.k8s.io/v1",
      "/healthz", "/metrics", "/openapi/v3", "/sim/faults", "/svc", "/version" }) })
  end
  return fail(errors.page_not_found())
end

function Handler:handle(req)
  req.query = req.query or {}
  req.headers = req.headers or {}
  return self:route(req)
end

return api
