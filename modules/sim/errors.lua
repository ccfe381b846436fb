-- errors.lua (sim.errors): the API server's failures as metav1.Status objects, with the
-- codes, reasons, messages and details a real cluster sends (clients such as kubectl
-- and client-go switch on `reason` and `code`, and print `message`).

local errors = {}

local function status(code, reason, message, details)
  return {
    kind = "Status", apiVersion = "v1", metadata = {}, status = "Failure",
    message = message, reason = reason, details = details, code = code,
  }
end
errors.status = status

local function details(def, name)
  local d = { name = name, kind = def.name }
  if def.group ~= "" then d.group = def.group end
  return d
end

function errors.not_found(def, name)
  return status(404, "NotFound", ("%s %q not found"):format(def.qualified, name), details(def, name))
end

function errors.namespace_not_found(ns)
  return status(404, "NotFound", ("namespaces %q not found"):format(ns), { name = ns, kind = "namespaces" })
end

function errors.already_exists(def, name)
  return status(409, "AlreadyExists", ("%s %q already exists"):format(def.qualified, name), details(def, name))
end

function errors.conflict(def, name, why)
  return status(409, "Conflict", ("Operation cannot be fulfilled on %s %q: %s"):format(def.qualified, name,
    why or "the object has been modified; please apply your changes to the latest version and try again"),
    details(def, name))
end

-- 422 with one cause per field error ({ field, reason, message }).
function errors.invalid(def, name, causes)
  local parts = {}
  for i, c in ipairs(causes) do parts[i] = c.field .. ": " .. c.message end
  local text = #parts == 1 and parts[1] or ("[" .. table.concat(parts, ", ") .. "]")
  local kind = def.kind .. (def.group ~= "" and ("." .. def.group) or "")
  local d = { name = name, kind = def.kind, causes = causes }
  if def.group ~= "" then d.group = def.group end
  return status(422, "Invalid", ("%s %q is invalid: %s"):format(kind, name or "", text), d)
end

-- 422 without a field: a patch that cannot apply.
function errors.unprocessable(message)
  return status(422, "Invalid", message)
end

function errors.bad_request(message)
  return status(400, "BadRequest", message)
end

function errors.method_not_allowed()
  return status(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
end

function errors.not_acceptable(message)
  return status(406, "NotAcceptable", message)
end

function errors.unsupported_media_type(content_type)
  return status(415, "UnsupportedMediaType", ("the body of the request was in an unknown format - "
    .. "accepted media types include: application/json-patch+json, application/merge-patch+json, "
    .. "application/strategic-merge-patch+json (got %q)"):format(content_type or ""))
end

-- The watch was asked to start before what the server still remembers.
function errors.expired(message)
  return status(410, "Expired", message)
end

function errors.gone(message)
  return status(410, "Gone", message)
end

function errors.page_not_found()
  return status(404, "NotFound", "the server could not find the requested resource", {})
end

function errors.internal(message)
  return status(500, "InternalError", "Internal error occurred: " .. message,
    { causes = { { message = message } } })
end

function errors.service_unavailable(message)
  return status(503, "ServiceUnavailable", message)
end

function errors.too_many_requests(message, retry_after)
  return status(429, "TooManyRequests", message, { retryAfterSeconds = retry_after })
end

function errors.timeout(message)
  return status(504, "Timeout", message)
end

function errors.is_status(v)
  return type(v) == "table" and v.kind == "Status" and type(v.code) == "number"
end

return errors
