---@meta yaml
-- yaml: YAML 1.2 documents to Lua values and back (modules/yaml/README.md).

---@class tug.yaml.DecodeOptions
---@field name? string what error messages call the text (a file name); default "<string>"

---@class tug.yaml.EncodeOptions
---@field explicit_start? boolean begin the document with `---`

---@class tug.yaml
yaml = {}

---The null sentinel, the same value as `json.null`.
---@type lightuserdata
yaml.null = nil

---Decodes a stream that holds one document; nil when it holds none. Raises `NAME:LINE:COL: message`.
---@param text string
---@param opts? tug.yaml.DecodeOptions
---@return any
function yaml.decode(text, opts) end

---Decodes a multi-document stream (`---`-separated manifests) into a marked array.
---@param text string
---@param opts? tug.yaml.DecodeOptions
---@return any[]
function yaml.decode_all(text, opts) end

---Reads the file at `path` and decodes it as one document; errors name the file.
---@param path string
---@param opts? tug.yaml.DecodeOptions
---@return any
function yaml.load_file(path, opts) end

---`value` as a YAML document: block style, 2-space indents, keys sorted, a final newline.
---@param value any
---@param opts? tug.yaml.EncodeOptions
---@return string
function yaml.encode(value, opts) end

return yaml
