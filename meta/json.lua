---@meta json
-- json: JSON text to Lua values and back (modules/json/README.md).

---@class tug.json.EncodeOptions
---@field indent? integer 0..31 spaces per level; 0 (the default) is compact
---@field sort_keys? boolean write object keys in byte order (default true)

---@class tug.json
json = {}

---The null sentinel (a light userdata, the same value as `yaml.null`); truthy: test `v == json.null`.
---@type lightuserdata
json.null = nil

---Parses `text`; objects and arrays come back marked (`json.object`/`json.array`), `null`
---as `json.null`, integers exact. Raises a message naming the byte, line and column.
---@param text string
---@return any
function json.decode(text) end

---The JSON text for `value`: compact, keys sorted unless `opts` says otherwise. An empty
---unmarked table is `{}`; use `json.array()` for `[]`.
---@param value any
---@param opts? tug.json.EncodeOptions
---@return string
function json.encode(value, opts) end

---Marks `t` (or a new table) as a JSON array and returns it.
---@generic T: table
---@param t? T
---@return T
function json.array(t) end

---Marks `t` (or a new table) as a JSON object and returns it.
---@generic T: table
---@param t? T
---@return T
function json.object(t) end

return json
