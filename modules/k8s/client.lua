-- client.lua (k8s.client): the REST client. One Client per connection (k8s.connect makes
-- them): requests with the connection's credentials and TLS, retries, API errors turned
-- into structured errors, discovery (which kinds the server has, cached per client), and
-- the generic verbs get, list, create, replace, patch and delete for any kind discovery
-- lists. Watches (k8s.watch), the rollout verbs (k8s.verbs) and leases (k8s.lease) add
-- their methods to the same Client.
--
-- Retry policy: 429 and every 5xx are retried for every verb (the API server answers them
-- before doing anything), waiting Retry-After when the server sends one (up to 30 s) and
-- otherwise backoff * 2^n with jitter (up to 5 s); a connection that could not be made is
-- retried too; a read that timed out is retried, a write that timed out is not (it may
-- have happened). A 401 with an exec plugin or a token file refetches the credential once.
--
-- Plan mode: reads run; create, replace, patch and delete read the object, work out what
-- it would become (patches applied locally, see k8s.patch), record the difference with
-- tug.plan.record("k8s", "patch deployment NS/NAME", diff) and send nothing.

local http = require("http")
local json = require("json")
local log = require("log")
local task = require("task")
local time = require("time")
local auth = require("k8s.auth")
local diff = require("k8s.diff")
local localpatch = require("k8s.patch")
local util = require("k8s.util")

local M = {}
local Client = {}
Client.__index = Client
M.Client = Client

local RETRY_AFTER_MAX = 30
local BACKOFF_MAX = 5

local AGGREGATED = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
local AGGREGATED_BETA = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
local DISCOVERY_ACCEPT = AGGREGATED .. "," .. AGGREGATED_BETA .. ",application/json"

local PATCH_TYPES = {
  strategic = "application/strategic-merge-patch+json",
  merge = "application/merge-patch+json",
  json = "application/json-patch+json",
  apply = "application/apply-patch+yaml",
}

local REASONS = {
  [400] = "BadRequest", [401] = "Unauthorized", [403] = "Forbidden", [404] = "NotFound",
  [405] = "MethodNotAllowed", [406] = "NotAcceptable", [409] = "Conflict", [410] = "Expired",
  [415] = "UnsupportedMediaType", [422] = "Invalid", [429] = "TooManyRequests",
  [500] = "InternalError", [503] = "ServiceUnavailable", [504] = "Timeout",
}

-- ---- errors ----

local function k8s_error(message, fields)
  return tug.error.new("k8s", message, fields)
end
M.error = k8s_error

-- The structured error for a failed response: what was being done, the API's Status
-- message, its reason and code.
function M.response_error(what, r)
  if r.error then
    return k8s_error(("%s: %s"):format(what, r.message or r.error),
      { what = what, reason = "Transport", error = r.error })
  end
  local st
  local ok, body = pcall(json.decode, r.body or "")
  if ok and type(body) == "table" and body.kind == "Status" then st = body end
  local api_message = st and type(st.message) == "string" and st.message ~= "" and st.message
    or util.excerpt(r.body, 300)
  if api_message == "" then api_message = ("the server answered HTTP %d"):format(r.status) end
  local reason = st and type(st.reason) == "string" and st.reason ~= "" and st.reason
    or REASONS[r.status] or "Unknown"
  return k8s_error(("%s: %s (%s %d)"):format(what, api_message, reason, r.status), {
    what = what, status = r.status, code = r.status, reason = reason, api_message = api_message,
    details = st and st.details or nil,
  })
end

-- ---- the client ----

function M.new(conn, opts)
  opts = opts or {}
  return setmetatable({
    conn = conn,
    server = conn.server,
    namespace = conn.namespace or "default",
    context = conn.context,
    auth = auth.new(conn),
    retries = opts.retries or 5,
    backoff = opts.backoff or 0.2,
    timeout = opts.timeout or 30,
    field_manager = opts.field_manager or "tug",
    stats = { requests = 0, retries = 0 },
    hubs = {},
  }, Client)
end

function Client:__tostring()
  return ("k8s.client %s (context %s, namespace %s)"):format(self.server, tostring(self.context), self.namespace)
end

local function retryable(r, method)
  if r.error then
    if r.error == "connect" or r.error == "dns" then return true end
    return method == "GET" and (r.error == "timeout" or r.error == "protocol")
  end
  return r.status == 429 or r.status >= 500
end

local function retry_delay(r, n, base)
  local after = r.headers and tonumber(r.headers["retry-after"])
  if after and (r.status == 429 or (r.status or 0) >= 500) then
    return math.min(math.max(after, 0), RETRY_AFTER_MAX)
  end
  return math.min(base * 2 ^ (n - 1) * (0.75 + 0.5 * math.random()), BACKOFF_MAX)
end

-- One API call with retries. spec: method, path, query, body (string), content_type,
-- accept, timeout, on_line (a stream: no retries here, the watch loop has its own).
-- Returns the http response, whatever its status.
function Client:request(spec)
  local method = spec.method or "GET"
  local url = self.server .. spec.path
  local n, reauthenticated = 0, false
  while true do
    n = n + 1
    local headers = { Accept = spec.accept or "application/json" }
    if spec.content_type then headers["Content-Type"] = spec.content_type end
    local tls = self.auth:apply(headers)
    local timeout = spec.timeout
    if timeout == nil then timeout = self.timeout end
    self.stats.requests = self.stats.requests + 1
    local r = http.request({
      method = method, url = url, query = spec.query, headers = headers, body = spec.body,
      timeout = timeout, tls = tls, proxy = self.conn.proxy, on_line = spec.on_line,
      read_only = true, -- plan mode is decided above this layer, with a diff
    })
    if r.status == 401 and not reauthenticated and self.auth:unauthorized() then
      reauthenticated = true
      n = n - 1
    elseif spec.on_line or n > self.retries or not retryable(r, method) then
      r.attempts = n
      return r
    else
      self.stats.retries = self.stats.retries + 1
      local delay = retry_delay(r, n, self.backoff)
      log.debug("k8s: retrying", { method = method, path = spec.path, status = r.status, error = r.error,
        attempt = n, delay = delay })
      task.sleep(delay)
    end
  end
end

-- A request whose answer must be 2xx JSON; raises the API's error otherwise.
function Client:call(what, spec)
  local r = self:request(spec)
  if r.error or r.status < 200 or r.status >= 300 then error(M.response_error(what, r), 0) end
  if spec.raw then return r.body, r end
  if r.body == "" then return nil, r end
  local ok, value = pcall(json.decode, r.body)
  if not ok then
    error(k8s_error(("%s: the server's answer is not JSON: %s"):format(what, util.excerpt(r.body, 120)),
      { what = what, status = r.status }), 0)
  end
  return value, r
end

-- ---- discovery ----

local function add_entry(index, e)
  index.entries[#index.entries + 1] = e
  local function name(key)
    key = key:lower()
    local list = index.by_name[key]
    if not list then
      list = {}
      index.by_name[key] = list
    end
    for _, x in ipairs(list) do if x == e then return end end
    list[#list + 1] = e
  end
  name(e.kind)
  name(e.resource)
  if e.singular and e.singular ~= "" then name(e.singular) end
  for _, s in ipairs(e.short) do name(s) end
  if e.group ~= "" then
    name(e.resource .. "." .. e.group)
    name(e.resource .. "." .. e.version .. "." .. e.group)
    name(e.kind .. "." .. e.group)
    name(e.kind .. "." .. e.version .. "." .. e.group)
  end
end

local function entry(group, version, preferred, r)
  local short = {}
  for _, s in ipairs(r.shortNames ~= json.null and r.shortNames or {}) do short[#short + 1] = s end
  local verbs = {}
  for _, v in ipairs(r.verbs ~= json.null and r.verbs or {}) do verbs[v] = true end
  return {
    group = group, version = version, api_version = group == "" and version or group .. "/" .. version,
    resource = r.resource or r.name, kind = r.kind or (r.responseKind and r.responseKind.kind),
    namespaced = r.namespaced, singular = r.singularResource or r.singularName, short = short,
    verbs = verbs, subresources = {}, preferred = preferred,
  }
end

local function singular(e)
  if e.singular and e.singular ~= "" then return e.singular end
  return e.kind:lower()
end

-- Aggregated discovery (apidiscovery.k8s.io/v2): one document for /api, one for /apis.
local function index_aggregated(index, doc)
  for _, item in ipairs(doc.items or {}) do
    local group = item.metadata and item.metadata.name or ""
    if group == json.null then group = "" end
    for i, v in ipairs(item.versions or {}) do
      for _, r in ipairs(v.resources or {}) do
        local e = entry(group, v.version, i == 1, r)
        e.namespaced = r.scope == "Namespaced"
        for _, sub in ipairs(r.subresources ~= json.null and r.subresources or {}) do
          e.subresources[sub.subresource] = true
        end
        add_entry(index, e)
      end
    end
  end
end

local function index_resource_list(index, group, version, preferred, list)
  local subs = {}
  for _, r in ipairs(list.resources or {}) do
    local base, sub = r.name:match("^([^/]+)/(.+)$")
    if base then
      subs[base] = subs[base] or {}
      subs[base][sub] = true
    end
  end
  for _, r in ipairs(list.resources or {}) do
    if not r.name:find("/", 1, true) then
      local e = entry(group, version, preferred, r)
      e.subresources = subs[r.name] or {}
      add_entry(index, e)
    end
  end
end

local function is_aggregated(r)
  local ct = (r.headers["content-type"] or ""):gsub("%s", "")
  return ct:find("g=apidiscovery.k8s.io", 1, true) ~= nil
end

local function load_discovery(self)
  local index = { entries = {}, by_name = {}, versions = {} }
  local accept = self.aggregated_discovery == false and "application/json" or DISCOVERY_ACCEPT
  local core, r1 = self:call("discover the API (/api)", { path = "/api", accept = accept })
  local groups, r2 = self:call("discover the API (/apis)", { path = "/apis", accept = accept })
  if is_aggregated(r1) and is_aggregated(r2) then
    index_aggregated(index, core)
    index_aggregated(index, groups)
    index.aggregated = true
    return index
  end
  -- legacy discovery: the core group, then each group's preferred version
  local fetch = {}
  local wanted = {}
  for _, v in ipairs(core.versions or {}) do
    wanted[#wanted + 1] = { group = "", version = v, path = "/api/" .. v, preferred = #wanted == 0 }
  end
  for _, g in ipairs(groups.groups or {}) do
    local pv = g.preferredVersion and g.preferredVersion.version or (g.versions[1] and g.versions[1].version)
    if pv then
      wanted[#wanted + 1] = { group = g.name, version = pv, path = "/apis/" .. g.name .. "/" .. pv, preferred = true }
    end
  end
  for i, w in ipairs(wanted) do
    fetch[i] = function()
      return self:call("discover the API (" .. w.path .. ")", { path = w.path })
    end
  end
  local lists = { task.parallel(fetch) }
  for i, w in ipairs(wanted) do
    index_resource_list(index, w.group, w.version, w.preferred, lists[i])
    index.versions[w.group .. "/" .. w.version] = true
  end
  return index
end

-- The server's discovery, fetched once per client (concurrent callers share one fetch).
function Client:discovery(refresh)
  if self.index and not refresh then return self.index end
  if not self.discovering then
    self.discovering = task.spawn(function()
      local ok, index = pcall(load_discovery, self)
      self.discovering = nil
      if not ok then error(index, 0) end
      self.index = index
      return index
    end)
  end
  return self.discovering:wait()
end

local function find_gvk(index, group, version, kind)
  local lk = kind:lower()
  for _, e in ipairs(index.entries) do
    if e.group == group and e.version == version and (e.kind:lower() == lk or e.resource == lk) then return e end
  end
end

local function pick(index, name)
  local list = index.by_name[name:lower()]
  if not list then return nil end
  for _, e in ipairs(list) do if e.preferred then return e end end
  return list[1]
end

-- kind -> the discovery entry { group, version, api_version, resource, kind, namespaced,
-- verbs, subresources }. kind is a name as kubectl takes it ("deployment", "deploy",
-- "Deployment", "deployments.apps", "deployments.v1.apps"), "apps/v1/Deployment", or a
-- table { apiVersion = "apps/v1", kind = "Deployment" } (an object works too).
function Client:resource(kind)
  if type(kind) == "table" and kind.group and kind.resource and kind.kind then return kind end
  local group, version, name
  if type(kind) == "table" then
    if type(kind.kind) ~= "string" or type(kind.apiVersion) ~= "string" then
      error("k8s: kind must be a name or a table with apiVersion and kind", 3)
    end
    name = kind.kind
    group, version = kind.apiVersion:match("^(.+)/([^/]+)$")
    if not group then group, version = "", kind.apiVersion end
  elseif type(kind) == "string" then
    local gv, k = kind:match("^(.+)/([^/]+)$")
    if gv then
      name = k
      group, version = gv:match("^(.+)/([^/]+)$")
      if not group then group, version = "", gv end
    else
      name = kind
    end
  else
    error(("k8s: kind must be a string or a table (got %s)"):format(type(kind)), 3)
  end
  for attempt = 1, 2 do
    local index = self:discovery(attempt == 2)
    local e
    if version then
      e = find_gvk(index, group, version, name)
      if not e and not index.aggregated and not index.versions[group .. "/" .. version] then
        local path = group == "" and "/api/" .. version or "/apis/" .. group .. "/" .. version
        local r = self:request({ path = path })
        if r.status == 200 then
          index_resource_list(index, group, version, false, json.decode(r.body))
          index.versions[group .. "/" .. version] = true
          e = find_gvk(index, group, version, name)
        end
      end
    else
      e = pick(index, name)
    end
    if e then return e end
  end
  local shown = version and ((group == "" and version or group .. "/" .. version) .. " " .. name) or name
  error(k8s_error(("the server doesn't have a resource type %q"):format(shown),
    { reason = "NotFound", what = "find resource type " .. shown }), 0)
end

-- resource(kind) for an action: when discovery fails or the kind is unknown, the error
-- says which action it was for ("get deployment multiship/api: discover the API ...").
function Client:resource_for(kind, verb, name, opts)
  local ok, res = pcall(self.resource, self, kind)
  if ok then return res end
  if type(res) ~= "table" or res.kind ~= "k8s" then error(res, 0) end
  local kind_text = type(kind) == "string" and kind or type(kind) == "table" and tostring(kind.kind) or "?"
  local ns = opts and opts.namespace or self.namespace
  local what = verb .. " " .. kind_text .. (name and (" " .. ns .. "/" .. name) or (" in " .. ns))
  local fields = {}
  for k, v in pairs(res) do fields[k] = v end
  fields.what = what
  fields.message = nil
  error(k8s_error(what .. ": " .. res.message, fields), 0)
end

-- ---- paths and names ----

local function escape(s)
  return (s:gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

function Client:namespace_for(res, opts, obj)
  if not res.namespaced then return nil end
  local ns = opts and opts.namespace
  if ns == nil and obj and type(obj.metadata) == "table" and type(obj.metadata.namespace) == "string" then
    ns = obj.metadata.namespace
  end
  return ns or self.namespace
end

function Client:path(res, ns, name, sub)
  local p = res.group == "" and "/api/" .. res.version or "/apis/" .. res.group .. "/" .. res.version
  if res.namespaced and ns then p = p .. "/namespaces/" .. escape(ns) end
  p = p .. "/" .. res.resource
  if name then p = p .. "/" .. escape(name) end
  if sub then p = p .. "/" .. sub end
  return p
end

-- "deployment multiship/api", "namespace multiship", "deployments in multiship"
function M.describe(res, ns, name)
  if name then
    return singular(res) .. " " .. (ns and ns .. "/" .. name or name)
  end
  return res.resource .. (ns and " in " .. ns or "")
end
local describe = M.describe

local function check_name(name, caller)
  if type(name) ~= "string" or name == "" then
    error(("k8s.%s: name must be a non-empty string (got %s)"):format(caller, type(name)), 3)
  end
end

local function check_opts(opts, caller)
  if opts ~= nil and type(opts) ~= "table" then
    error(("k8s.%s: opts must be a table (got %s)"):format(caller, type(opts)), 3)
  end
  return opts or {}
end

-- ---- reads ----

-- get(kind, name, opts) -> object. opts: namespace, subresource, optional (nil instead of
-- a NotFound error).
function Client:get(kind, name, opts)
  opts = check_opts(opts, "get")
  check_name(name, "get")
  local res = self:resource_for(kind, "get", name, opts)
  local ns = self:namespace_for(res, opts)
  local what = "get " .. describe(res, ns, name) .. (opts.subresource and " (" .. opts.subresource .. ")" or "")
  local r = self:request({ path = self:path(res, ns, name, opts.subresource) })
  if r.status == 404 and opts.optional then return nil end
  if r.error or r.status ~= 200 then error(M.response_error(what, r), 0) end
  return json.decode(r.body)
end

local function list_query(opts)
  local q = {}
  local ok, labels = pcall(util.selector_text, opts.labels, "labels")
  if not ok then error("k8s: " .. labels, 4) end
  local fields
  ok, fields = pcall(util.selector_text, opts.fields, "fields")
  if not ok then error("k8s: " .. fields, 4) end
  if opts.name then
    fields = (fields and fields .. "," or "") .. "metadata.name=" .. opts.name
  end
  q.labelSelector, q.fieldSelector = labels, fields
  return q
end
M.list_query = list_query

-- list(kind, opts) -> the List ({ items = {...}, metadata = { resourceVersion } }). opts:
-- namespace, all_namespaces, labels, fields (text or { key = value }), limit (page size;
-- every page is fetched).
function Client:list(kind, opts)
  opts = check_opts(opts, "list")
  local res = self:resource_for(kind, "list", nil, opts)
  local ns = not opts.all_namespaces and self:namespace_for(res, opts) or nil
  local what = "list " .. describe(res, ns)
  local q = list_query(opts)
  if opts.limit then q.limit = opts.limit end
  local result
  repeat
    local page = self:call(what, { path = self:path(res, ns), query = q })
    if not result then
      result = page
      result.items = result.items ~= json.null and result.items or json.array()
    else
      for _, item in ipairs(page.items or {}) do result.items[#result.items + 1] = item end
      result.metadata = page.metadata
    end
    local cont = page.metadata and page.metadata["continue"]
    q["continue"] = cont ~= nil and cont ~= "" and cont ~= json.null and cont or nil
  until not q["continue"]
  if result.metadata then result.metadata["continue"] = nil end
  return result
end

-- ---- writes ----

local function plan_record(verb, res, ns, name, before, after, extra)
  local summary = verb .. " " .. describe(res, ns, name) .. (extra or "")
  local detail = diff.render(before, after)
  tug.plan.record("k8s", summary, detail ~= "" and detail or "(no change)")
end

-- create(obj, opts) or create(kind, obj, opts) -> the created object.
function Client:create(kind, obj, opts)
  if type(kind) == "table" and kind.metadata ~= nil then kind, obj, opts = kind, kind, obj end
  opts = check_opts(opts, "create")
  if type(obj) ~= "table" or type(obj.metadata) ~= "table" then
    error("k8s.create: the object must be a table with metadata", 2)
  end
  local res = self:resource_for(kind, "create", obj.metadata.name, opts)
  local ns = self:namespace_for(res, opts, obj)
  local name = obj.metadata.name or obj.metadata.generateName
  if tug.plan.active() then
    plan_record("create", res, ns, name, nil, obj)
    local out = util.copy(obj)
    out.planned = true
    return out
  end
  local body = util.copy(obj)
  body.apiVersion = body.apiVersion or res.api_version
  body.kind = body.kind or res.kind
  if ns then body.metadata.namespace = ns end
  local q = opts.field_manager and { fieldManager = opts.field_manager } or nil
  return (self:call("create " .. describe(res, ns, name), {
    method = "POST", path = self:path(res, ns), query = q, body = json.encode(body),
    content_type = "application/json",
  }))
end

-- replace(obj, opts) -> the stored object. PUT with the object's resourceVersion, so a
-- concurrent change answers 409 Conflict (k8s.update retries those from a fresh read).
function Client:replace(kind, obj, opts)
  if type(kind) == "table" and kind.metadata ~= nil then kind, obj, opts = kind, kind, obj end
  opts = check_opts(opts, "replace")
  if type(obj) ~= "table" or type(obj.metadata) ~= "table" or type(obj.metadata.name) ~= "string" then
    error("k8s.replace: the object must be a table with metadata.name", 2)
  end
  local res = self:resource_for(kind, "replace", obj.metadata.name, opts)
  local ns = self:namespace_for(res, opts, obj)
  local name = obj.metadata.name
  local what = "replace " .. describe(res, ns, name)
  if tug.plan.active() then
    local current = self:get(res, name, { namespace = ns, optional = true, subresource = opts.subresource })
    plan_record("replace", res, ns, name, current, obj)
    local out = util.copy(obj)
    out.planned = true
    return out
  end
  local body = util.copy(obj)
  body.apiVersion = body.apiVersion or res.api_version
  body.kind = body.kind or res.kind
  if ns then body.metadata.namespace = ns end
  return (self:call(what, {
    method = "PUT", path = self:path(res, ns, name, opts.subresource), body = json.encode(body),
    content_type = "application/json",
    query = opts.field_manager and { fieldManager = opts.field_manager } or nil,
  }))
end

-- patch(kind, name, patch, opts) -> the patched object. opts.type: "strategic" (default, as
-- kubectl), "merge", "json" (patch is a list of operations) or "apply" (server-side apply:
-- patch is the applied configuration, sent as application/apply-patch+yaml with
-- opts.field_manager, default "tug", and opts.force). opts: namespace, subresource.
function Client:patch(kind, name, patch, opts)
  opts = check_opts(opts, "patch")
  check_name(name, "patch")
  local ptype = opts.type or "strategic"
  local ctype = PATCH_TYPES[ptype]
  if not ctype then
    error(("k8s.patch: type must be strategic, merge, json or apply (got %s)"):format(tostring(ptype)), 2)
  end
  if type(patch) ~= "table" and type(patch) ~= "string" then
    error(("k8s.patch: the patch must be a table or JSON text (got %s)"):format(type(patch)), 2)
  end
  local res = self:resource_for(kind, "patch", name, opts)
  local ns = self:namespace_for(res, opts)
  local sub = opts.subresource
  local what = "patch " .. describe(res, ns, name) .. (sub and " (" .. sub .. ")" or "")
  if tug.plan.active() then
    local current = self:get(res, name, { namespace = ns, subresource = sub })
    local p = type(patch) == "string" and json.decode(patch) or patch
    local after, err = localpatch.apply(ptype, current, p, res.resource)
    if not after then
      error(k8s_error(what .. ": " .. err, { what = what, reason = "Invalid", planned = true }), 0)
    end
    plan_record("patch", res, ns, name, current, after, sub and " (" .. sub .. ")" or nil)
    after.planned = true
    return after
  end
  local q
  if ptype == "apply" then
    q = { fieldManager = opts.field_manager or self.field_manager }
    if opts.force then q.force = "true" end
  elseif opts.field_manager then
    q = { fieldManager = opts.field_manager }
  end
  local body = type(patch) == "string" and patch or json.encode(patch)
  return (self:call(what, {
    method = "PATCH", path = self:path(res, ns, name, sub), query = q, body = body, content_type = ctype,
  }))
end

-- delete(kind, name, opts) -> the API's answer (the object being deleted, or a Status).
-- opts: namespace, propagation ("Background", "Foreground", "Orphan"), grace (seconds),
-- resource_version / uid (preconditions), optional (no error when it is already gone).
function Client:delete(kind, name, opts)
  opts = check_opts(opts, "delete")
  check_name(name, "delete")
  local res = self:resource_for(kind, "delete", name, opts)
  local ns = self:namespace_for(res, opts)
  local what = "delete " .. describe(res, ns, name)
  if tug.plan.active() then
    local current = self:get(res, name, { namespace = ns, optional = true })
    if current == nil and not opts.optional then
      self:get(res, name, { namespace = ns }) -- raises the server's NotFound
    end
    if current then plan_record("delete", res, ns, name, current, nil) end
    return current and { planned = true, kind = "Status", status = "Success" } or nil
  end
  local body = { kind = "DeleteOptions", apiVersion = "v1", propagationPolicy = opts.propagation or "Background" }
  if opts.grace then body.gracePeriodSeconds = math.floor(opts.grace) end
  if opts.resource_version or opts.uid then
    body.preconditions = { resourceVersion = opts.resource_version, uid = opts.uid }
  end
  local r = self:request({
    method = "DELETE", path = self:path(res, ns, name), body = json.encode(body), content_type = "application/json",
  })
  if r.status == 404 and opts.optional then return nil end
  if r.error or r.status < 200 or r.status >= 300 then error(M.response_error(what, r), 0) end
  return json.decode(r.body)
end

-- update(kind, name, fn, opts) -> the stored object: get, fn(obj) changes it (or returns a
-- replacement), replace; on 409 Conflict, again from a fresh read (up to opts.attempts,
-- default 5). fn returning false leaves the object as it is (nothing is sent).
function Client:update(kind, name, fn, opts)
  opts = check_opts(opts, "update")
  check_name(name, "update")
  if type(fn) ~= "function" then error("k8s.update: fn must be a function", 2) end
  local res = self:resource_for(kind, "update", name, opts)
  local ns = self:namespace_for(res, opts)
  local attempts = opts.attempts or 5
  for attempt = 1, attempts do
    local obj = self:get(res, name, { namespace = ns })
    local before = tug.plan.active() and util.copy(obj) or nil
    local result = fn(obj)
    if result == false then return obj end
    if type(result) == "table" then obj = result end
    if tug.plan.active() then
      plan_record("replace", res, ns, name, before, obj)
      obj.planned = true
      return obj
    end
    local ok, out = pcall(self.replace, self, res, obj, { namespace = ns })
    if ok then return out end
    if not (type(out) == "table" and out.status == 409 and attempt < attempts) then error(out, 0) end
    log.debug("k8s: conflict, retrying from a fresh read", { what = describe(res, ns, name), attempt = attempt })
  end
end

M.PATCH_TYPES = PATCH_TYPES
M.escape = escape
M.now = time.now

return M
