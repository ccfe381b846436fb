-- discovery.lua (sim.discovery): what the simulated API server says about itself:
-- /version, legacy discovery (/api, /apis, /api/v1, /apis/GROUP/VERSION), aggregated
-- discovery (apidiscovery.k8s.io/v2, which kubectl 1.32 asks for first), and the little
-- OpenAPI v3 that lets `kubectl create -f` validate on the server (fieldValidation)
-- instead of failing for want of a schema.

local json = require("json")
local resources = require("sim.resources")

local discovery = {}

discovery.AGGREGATED_TYPE = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
discovery.AGGREGATED_TYPE_BETA = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"

function discovery.version()
  return {
    major = "1", minor = "32", gitVersion = "v1.32.0", gitCommit = "70d3cc986aa8221cd1dfb1121852688902d3bf53",
    gitTreeState = "clean", buildDate = "2024-12-11T17:59:15Z", goVersion = "go1.23.3",
    compiler = "gc", platform = "linux/amd64",
  }
end

local function arr(t) return json.array(t or {}) end

local function copy_list(t)
  local out = json.array()
  for i, v in ipairs(t) do out[i] = v end
  return out
end

local SCALE_KIND = { group = "autoscaling", version = "v1", kind = "Scale" }

-- ---- legacy ----

function discovery.api_versions(host)
  return {
    kind = "APIVersions", versions = arr({ "v1" }),
    serverAddressByClientCIDRs = arr({ { clientCIDR = "0.0.0.0/0", serverAddress = host or "127.0.0.1" } }),
  }
end

local function group_entry(g)
  local gv = { groupVersion = g.name .. "/" .. g.version, version = g.version }
  return { name = g.name, versions = arr({ gv }), preferredVersion = gv }
end

function discovery.group_list()
  local groups = json.array()
  for _, g in ipairs(resources.GROUPS) do
    if g.name ~= "" then groups[#groups + 1] = group_entry(g) end
  end
  return { kind = "APIGroupList", apiVersion = "v1", groups = groups }
end

function discovery.group(name)
  for _, g in ipairs(resources.GROUPS) do
    if g.name == name and name ~= "" then
      local e = group_entry(g)
      e.kind, e.apiVersion = "APIGroup", "v1"
      return e
    end
  end
  return nil
end

function discovery.resource_list(group, version)
  for _, g in ipairs(resources.GROUPS) do
    if g.name == group and g.version == version then
      local list = json.array()
      for _, name in ipairs(g.resources) do
        local def = resources.get(name)
        local entry = {
          name = name, singularName = def.singular, namespaced = def.namespaced, kind = def.kind,
          verbs = copy_list(def.verbs),
        }
        if #def.short > 0 then entry.shortNames = copy_list(def.short) end
        if #def.categories > 0 then entry.categories = copy_list(def.categories) end
        list[#list + 1] = entry
        for _, sub in ipairs({ "log", "scale", "status", "proxy", "finalize" }) do
          if def.subresources[sub] then
            local s = { name = name .. "/" .. sub, singularName = "", namespaced = def.namespaced, kind = def.kind,
              verbs = copy_list(resources.SUB_VERBS) }
            if sub == "scale" then
              s.group, s.version, s.kind = "autoscaling", "v1", "Scale"
            elseif sub == "log" then
              s.kind, s.verbs = "Pod", arr({ "get" })
            elseif sub == "proxy" then
              s.kind, s.verbs = "ServiceProxyOptions", arr({ "create", "delete", "get", "patch", "update" })
            elseif sub == "finalize" then
              s.verbs = arr({ "update" })
            end
            list[#list + 1] = s
          end
        end
      end
      return {
        kind = "APIResourceList", apiVersion = "v1",
        groupVersion = group == "" and version or (group .. "/" .. version), resources = list,
      }
    end
  end
  return nil
end

-- ---- aggregated (apidiscovery.k8s.io/v2) ----

local function aggregated_group(g)
  local res = json.array()
  for _, name in ipairs(g.resources) do
    local def = resources.get(name)
    local subs = json.array()
    for _, sub in ipairs({ "log", "scale", "status", "proxy", "finalize" }) do
      if def.subresources[sub] then
        local kind = { group = "", version = "", kind = def.kind }
        local verbs = copy_list(resources.SUB_VERBS)
        if sub == "scale" then
          kind = SCALE_KIND
        elseif sub == "log" then
          kind, verbs = { group = "", version = "", kind = "Pod" }, arr({ "get" })
        elseif sub == "proxy" then
          kind, verbs = { group = "", version = "", kind = "ServiceProxyOptions" }, arr({ "create", "delete", "get", "patch", "update" })
        elseif sub == "finalize" then
          verbs = arr({ "update" })
        end
        subs[#subs + 1] = { subresource = sub, responseKind = kind, verbs = verbs }
      end
    end
    local entry = {
      resource = name, responseKind = { group = "", version = "", kind = def.kind },
      scope = def.namespaced and "Namespaced" or "Cluster", singularResource = def.singular,
      verbs = copy_list(def.verbs),
    }
    if #def.short > 0 then entry.shortNames = copy_list(def.short) end
    if #def.categories > 0 then entry.categories = copy_list(def.categories) end
    if #subs > 0 then entry.subresources = subs end
    res[#res + 1] = entry
  end
  local meta = { creationTimestamp = json.null }
  if g.name ~= "" then meta.name = g.name end
  return {
    metadata = meta,
    versions = arr({ { version = g.version, resources = res, freshness = "Current" } }),
  }
end

-- core: true for /api (the core group alone), false for /apis (every other group).
function discovery.aggregated(core, api_version)
  local items = json.array()
  for _, g in ipairs(resources.GROUPS) do
    if (g.name == "") == core then items[#items + 1] = aggregated_group(g) end
  end
  return {
    kind = "APIGroupDiscoveryList", apiVersion = api_version or "apidiscovery.k8s.io/v2",
    metadata = {}, items = items,
  }
end

-- Which discovery form an Accept header asks for: "v2", "v2beta1" or nil (legacy).
function discovery.wants_aggregated(accept)
  if type(accept) ~= "string" then return nil end
  for part in accept:gmatch("[^,]+") do
    local p = part:gsub("%s", "")
    if p:find("as=APIGroupDiscoveryList", 1, true) and p:find("g=apidiscovery.k8s.io", 1, true) then
      if p:find("v=v2beta1", 1, true) then return "v2beta1" end
      if p:find("v=v2", 1, true) then return "v2" end
    elseif p:match("^application/json") or p:match("^%*/%*") then
      return nil
    end
  end
  return nil
end

-- ---- OpenAPI v3 ----

local function gv_path(g)
  return g.name == "" and ("api/" .. g.version) or ("apis/" .. g.name .. "/" .. g.version)
end

function discovery.openapi_root()
  local paths = {}
  for _, g in ipairs(resources.GROUPS) do
    local p = gv_path(g)
    paths[p] = { serverRelativeURL = "/openapi/v3/" .. p .. "?hash=SIM" .. g.version .. #g.resources }
  end
  return { paths = paths }
end

-- A document with each resource's item path and its PATCH operation, carrying the
-- group/version/kind extension and the fieldValidation parameter: what kubectl's
-- QueryParamVerifierV3 looks for before it leaves validation to the server.
function discovery.openapi_group(path)
  for _, g in ipairs(resources.GROUPS) do
    if gv_path(g) == path then
      local paths = {}
      for _, name in ipairs(g.resources) do
        local def = resources.get(name)
        local base = "/" .. path .. (def.namespaced and "/namespaces/{namespace}/" or "/") .. name .. "/{name}"
        local gvk = { group = def.group, version = def.version, kind = def.kind }
        local params = arr({
          { name = "dryRun", ["in"] = "query", schema = { type = "string", uniqueItems = true } },
          { name = "fieldManager", ["in"] = "query", schema = { type = "string", uniqueItems = true } },
          { name = "fieldValidation", ["in"] = "query", schema = { type = "string", uniqueItems = true } },
        })
        paths[base] = {
          get = { operationId = "read" .. def.kind, ["x-kubernetes-action"] = "get",
            ["x-kubernetes-group-version-kind"] = gvk, responses = { ["200"] = { description = "OK" } } },
          put = { operationId = "replace" .. def.kind, ["x-kubernetes-action"] = "put",
            ["x-kubernetes-group-version-kind"] = gvk, parameters = params, responses = { ["200"] = { description = "OK" } } },
          patch = { operationId = "patch" .. def.kind, ["x-kubernetes-action"] = "patch",
            ["x-kubernetes-group-version-kind"] = gvk, parameters = params, responses = { ["200"] = { description = "OK" } } },
        }
      end
      return {
        openapi = "3.0.0", info = { title = "Kubernetes (tug sim)", version = "v1.32.0" },
        paths = paths, components = { schemas = {} },
      }
    end
  end
  return nil
end

return discovery
