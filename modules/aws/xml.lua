-- aws/xml.lua: the little XML that S3 and CloudFront speak. Parses a response into a tree of
-- elements ({ name, attrs, children, text }) and escapes text for request bodies. Not a
-- general XML parser: no DTDs, namespaces reduced to local names, which is all the AWS REST
-- APIs need.

local M = {}

local ENTITIES = { lt = "<", gt = ">", amp = "&", quot = "\"", apos = "'" }

local function utf8_char(code)
  if code and code >= 0 and code <= 0x10FFFF then return utf8.char(code) end
  return "?"
end

local function unescape(s)
  if not s:find("&", 1, true) then return s end
  return (s:gsub("&(#?[xX]?)(%w+);", function(kind, name)
    if kind == "" then return ENTITIES[name] end
    if kind == "#" then return utf8_char(tonumber(name)) end
    return utf8_char(tonumber(name, 16))
  end))
end

function M.escape(s)
  return (tostring(s):gsub("[<>&\"']", {
    ["<"] = "&lt;", [">"] = "&gt;", ["&"] = "&amp;", ["\""] = "&quot;", ["'"] = "&apos;",
  }))
end

local function local_name(name)
  return name:match(":([^:]+)$") or name
end

local function parse_attrs(text)
  local attrs = {}
  for name, quote, value in text:gmatch("([%w_:%.%-]+)%s*=%s*([\"'])(.-)%2") do
    attrs[local_name(name)] = unescape(value)
  end
  return attrs
end

-- M.parse(text) -> the root element, or nil and a message when the text is not XML.
function M.parse(text)
  if type(text) ~= "string" then return nil, "no XML document" end
  local document = { name = "#document", children = {}, text = "" }
  local stack = { document }
  local pos, len = 1, #text
  local texts = { {} }
  while pos <= len do
    local lt = text:find("<", pos, true)
    local chunk = text:sub(pos, (lt or len + 1) - 1)
    if chunk ~= "" then
      local buf = texts[#texts]
      buf[#buf + 1] = unescape(chunk)
    end
    if not lt then break end
    if text:sub(lt, lt + 3) == "<!--" then
      local e = text:find("-->", lt + 4, true)
      if not e then return nil, "unterminated comment" end
      pos = e + 3
    elseif text:sub(lt, lt + 8) == "<![CDATA[" then
      local e = text:find("]]>", lt + 9, true)
      if not e then return nil, "unterminated CDATA section" end
      local buf = texts[#texts]
      buf[#buf + 1] = text:sub(lt + 9, e - 1)
      pos = e + 3
    elseif text:sub(lt, lt + 1) == "<?" or text:sub(lt, lt + 1) == "<!" then
      local e = text:find(">", lt + 2, true)
      if not e then return nil, "unterminated declaration" end
      pos = e + 1
    elseif text:sub(lt, lt + 1) == "</" then
      local name, e = text:match("^</%s*([^%s>]+)%s*>()", lt)
      if not name then return nil, "malformed closing tag at byte " .. lt end
      local node = stack[#stack]
      if #stack == 1 or node.name ~= local_name(name) then
        return nil, ("unexpected </%s> at byte %d"):format(name, lt)
      end
      node.text = table.concat(texts[#texts])
      stack[#stack], texts[#texts] = nil, nil
      pos = e
    else
      local name, attrs, slash, e = text:match("^<([^%s/>]+)(.-)(/?)>()", lt)
      if not name then return nil, "malformed tag at byte " .. lt end
      local node = { name = local_name(name), attrs = parse_attrs(attrs), children = {}, text = "" }
      local parent = stack[#stack]
      parent.children[#parent.children + 1] = node
      if slash == "" then
        stack[#stack + 1] = node
        texts[#texts + 1] = {}
      end
      pos = e
    end
  end
  if #stack > 1 then return nil, "unclosed <" .. stack[#stack].name .. ">" end
  local root = document.children[1]
  if not root then return nil, "no XML element" end
  return root
end

-- The first child element called name, or nil.
function M.child(node, name)
  if not node then return nil end
  for _, c in ipairs(node.children) do
    if c.name == name then return c end
  end
end

-- Every child element called name, in order.
function M.children(node, name)
  local out = {}
  if not node then return out end
  for _, c in ipairs(node.children) do
    if c.name == name then out[#out + 1] = c end
  end
  return out
end

-- The text of the first child called name (a path "A/B" walks down), or nil.
function M.text(node, path)
  for name in path:gmatch("[^/]+") do
    node = M.child(node, name)
    if not node then return nil end
  end
  return node.text
end

return M
