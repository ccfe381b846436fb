-- Specs for the yaml module (modules/yaml/yaml.c): YAML 1.2 core-schema scalars,
-- anchors and merge keys, Kubernetes manifest streams that survive a trip through json,
-- errors that point at the line and column, and an encoder whose output reads back the same.

local yaml = require("yaml")
local json = require("json")

local function kind(t)
  local mt = getmetatable(t)
  return mt and mt.__name
end

local function error_of(f, ...)
  local ok, err = pcall(f, ...)
  assert.is_false(ok, "expected an error")
  return tostring(err)
end

local function write_file(contents)
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  f:write(contents)
  f:close()
  return path
end

-- The shape `kubectl apply -f` takes: two objects in one stream, with an empty list and an
-- empty map that must stay [] and {} when the objects are sent to the API as JSON.
local MANIFESTS = [[
# checkout service, rendered for staging
apiVersion: apps/v1
kind: Deployment
metadata:
  name: checkout
  namespace: shop
  labels:
    app.kubernetes.io/name: checkout
    tier: backend
  annotations: {}
spec:
  replicas: 3
  revisionHistoryLimit: 10
  selector:
    matchLabels:
      app.kubernetes.io/name: checkout
  template:
    metadata:
      labels:
        app.kubernetes.io/name: checkout
    spec:
      containers:
        - name: checkout
          image: registry.example.com/shop/checkout:v2.2.0
          args: []
          ports:
            - containerPort: 8080
              protocol: TCP
          env:
            - name: FEATURE_FLAGS
              value: "on"
            - name: LOG_JSON
              value: "true"
          resources:
            limits: {cpu: 500m, memory: 256Mi}
      volumes:
        - name: cache
          emptyDir: {}
---
apiVersion: v1
kind: Service
metadata:
  name: checkout
  namespace: shop
spec:
  type: ClusterIP
  selector:
    app.kubernetes.io/name: checkout
  ports:
    - port: 80
      targetPort: 8080
]]

describe("yaml.decode", function()
  describe("plain scalars (YAML 1.2 core schema)", function()
    it("reads decimal, hex and octal integers as exact Lua integers", function()
      local v = yaml.decode([[
small: 42
negative: -17
plus: +5
hex: 0x1F
octal: 0o17
max: 9223372036854775807
min: -9223372036854775808
]])
      assert.are.equal(42, v.small)
      assert.are.equal(-17, v.negative)
      assert.are.equal(5, v.plus)
      assert.are.equal(31, v.hex)
      assert.are.equal(15, v.octal)
      assert.are.equal(math.maxinteger, v.max)
      assert.are.equal(math.mininteger, v.min)
      for _, key in ipairs({ "small", "negative", "plus", "hex", "octal", "max", "min" }) do
        assert.are.equal("integer", math.type(v[key]), key)
      end
    end)

    it("reads a leading zero as decimal, not YAML 1.1 octal", function()
      local v = yaml.decode("defaultMode: 0644\n")
      assert.are.equal(644, v.defaultMode)
    end)

    it("keeps integers beyond 64 bits as the nearest float instead of failing", function()
      local v = yaml.decode("big: 99999999999999999999\n")
      assert.are.equal("float", math.type(v.big))
      assert.are.equal(1e20, v.big)
    end)

    it("reads floats, exponents, infinities and NaN as Lua floats", function()
      local v = yaml.decode([[
half: 1.5
thousand: 1e3
fraction: .5
negative: -2.25
inf: .inf
ninf: -.inf
nan: .nan
]])
      assert.are.equal(1.5, v.half)
      assert.are.equal("float", math.type(v.thousand))
      assert.are.equal(1000.0, v.thousand)
      assert.are.equal(0.5, v.fraction)
      assert.are.equal(-2.25, v.negative)
      assert.are.equal(math.huge, v.inf)
      assert.are.equal(-math.huge, v.ninf)
      assert.is_true(v.nan ~= v.nan)
    end)

    it("reads every null spelling as the shared null sentinel, keeping the key", function()
      local v = yaml.decode("a: null\nb: Null\nc: NULL\nd: ~\ne:\n")
      for _, key in ipairs({ "a", "b", "c", "d", "e" }) do
        assert.are.equal(yaml.null, v[key], key)
      end
      assert.are.equal(json.null, yaml.null)
    end)

    it("reads true/false in three cases as booleans", function()
      local v = yaml.decode("a: true\nb: True\nc: TRUE\nd: false\ne: False\nf: FALSE\n")
      assert.are.same({ true, true, true, false, false, false }, { v.a, v.b, v.c, v.d, v.e, v.f })
    end)

    it("keeps yes/no/on/off as strings (they are YAML 1.1 booleans only)", function()
      local v = yaml.decode("a: yes\nb: no\nc: on\nd: off\ne: Yes\nf: y\n")
      assert.are.same({ "yes", "no", "on", "off", "Yes", "y" }, { v.a, v.b, v.c, v.d, v.e, v.f })
    end)

    it("reads everything else as a string", function()
      local v = yaml.decode("image: nginx:1.25\nversion: 1.2.3\ncpu: 500m\nurl: http://x/y\n")
      assert.are.equal("nginx:1.25", v.image)
      assert.are.equal("1.2.3", v.version)
      assert.are.equal("500m", v.cpu)
      assert.are.equal("http://x/y", v.url)
    end)
  end)

  describe("quoted and block scalars", function()
    it("are always strings", function()
      local v = yaml.decode([[
double: "123"
single: 'true'
nothing: ""
tilde: '~'
literal: |
  line one
  line two
folded: >
  folded
  text
]])
      assert.are.equal("123", v.double)
      assert.are.equal("true", v.single)
      assert.are.equal("", v.nothing)
      assert.are.equal("~", v.tilde)
      assert.are.equal("line one\nline two\n", v.literal)
      assert.are.equal("folded text\n", v.folded)
    end)
  end)

  describe("explicit tags", function()
    it("honours !!str, !!int, !!float, !!bool and !!null", function()
      local v = yaml.decode([[
s: !!str 123
i: !!int "42"
f: !!float 12
b: !!bool "true"
n: !!null ""
]])
      assert.are.equal("123", v.s)
      assert.are.equal(42, v.i)
      assert.are.equal("integer", math.type(v.i))
      assert.are.equal("float", math.type(v.f))
      assert.are.equal(12.0, v.f)
      assert.is_true(v.b)
      assert.are.equal(yaml.null, v.n)
    end)

    it("resolves scalars with unknown tags as if untagged", function()
      local v = yaml.decode("bucket: !Ref AssetsBucket\ncount: !custom 3\n")
      assert.are.equal("AssetsBucket", v.bucket)
      assert.are.equal(3, v.count)
    end)

    it("rejects a value that does not fit its tag, with its position", function()
      -- a tagged node starts at its tag
      assert.are.equal("<string>:2:7: a !!int scalar must be an integer",
        error_of(yaml.decode, "a: 1\nport: !!int eighty\n"))
    end)
  end)

  describe("mappings and sequences", function()
    it("marks mappings as objects and sequences as arrays, empty ones too", function()
      local v = yaml.decode("list: [1, 2]\nmap: {a: 1}\nnone: []\nempty: {}\n")
      assert.are.equal("object", kind(v))
      assert.are.equal("array", kind(v.list))
      assert.are.equal("object", kind(v.map))
      assert.are.equal("array", kind(v.none))
      assert.are.equal("object", kind(v.empty))
      assert.are.same({ 1, 2 }, { v.list[1], v.list[2] })
    end)

    it("resolves keys like values: an integer key stays an integer key", function()
      local v = yaml.decode("1: one\n\"2\": two\ntrue: yes\n")
      assert.are.equal("one", v[1])
      assert.are.equal("two", v["2"])
      assert.are.equal("yes", v[true])
    end)

    it("rejects duplicate keys at the second occurrence", function()
      assert.are.equal('<string>:3:1: duplicate key "name"',
        error_of(yaml.decode, "name: web\nimage: nginx\nname: api\n"))
    end)

    it("rejects a collection as a key", function()
      assert.are.equal("<string>:1:3: a mapping key must be a scalar, not a sequence",
        error_of(yaml.decode, "? [a, b]\n: value\n"))
    end)
  end)

  describe("anchors and aliases", function()
    it("gives an alias the very table its anchor built", function()
      local v = yaml.decode([[
defaults: &defaults
  timeout: 30s
  retries: 3
staging: *defaults
production: *defaults
]])
      assert.are.equal(v.defaults, v.staging)
      assert.are.equal(v.defaults, v.production)
      assert.are.equal("30s", v.production.timeout)
    end)

    it("reuses anchored scalars", function()
      local v = yaml.decode("image: &img nginx:1.25\nsidecar: *img\n")
      assert.are.equal("nginx:1.25", v.sidecar)
    end)

    it("rejects an undefined alias with its position", function()
      assert.are.equal("<string>:2:10: undefined alias *prod",
        error_of(yaml.decode, "staging: {replicas: 2}\nlive:    *prod\n"))
    end)

    it("rejects an alias to the node that contains it", function()
      assert.matches("alias %*loop refers to a node that contains it",
        error_of(yaml.decode, "a: &loop [1, *loop]\n"))
    end)

    -- Nested aliases multiply: 470 bytes that expand to 10^9 strings ("billion laughs").
    -- Decoding shares the anchored tables, but every walk of the result (json.encode,
    -- resolving an environment) would visit all of them.
    local LAUGHS = { 'l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]' }
    for i = 1, 8 do
      LAUGHS[#LAUGHS + 1] = ("l%d: &l%d [%s]"):format(i, i, ("*l" .. (i - 1) .. ","):rep(10):sub(1, -2))
    end
    LAUGHS = table.concat(LAUGHS, "\n") .. "\n"

    it("refuses aliases that repeat more than 1,000,000 nodes, naming the alias and its place", function()
      local path = write_file(LAUGHS)
      local started = time.monotonic()
      local err = error_of(yaml.load_file, path)
      os.remove(path)
      assert.is_true(time.monotonic() - started < 30) -- unbounded, it would take hours
      -- l5's items are 111,111 nodes each (l4 expanded): its 9th alias crosses the limit.
      assert.are.equal(path .. ":6:38: alias *l4 would make the document's aliases repeat more "
        .. 'than 1000000 nodes (nested aliases multiply, as in a "billion laughs")', err)
    end)

    it("counts each document's aliases apart, and accepts up to the limit", function()
      -- l0..l4 repeat 123,450 nodes; eight such documents in one stream are fine.
      local doc = LAUGHS:match("^(.-\nl4:[^\n]*\n)")
      local docs = yaml.decode_all(("---\n" .. doc):rep(8))
      assert.are.equal(8, #docs)
      assert.are.equal("lol", docs[8].l4[10][10][10][10][10])
    end)

    it("counts a long anchored string for its length: one node per 64 bytes", function()
      -- 6,400 bytes weigh 101 nodes: 9,900 aliases repeat 999,900, one more crosses the limit
      local text = "s: &s " .. ("x"):rep(6400) .. "\nl: [" .. ("*s,"):rep(9900) .. "]\n"
      assert.are.equal(9900, #yaml.decode(text).l)
      text = "s: &s " .. ("x"):rep(6400) .. "\nl: [" .. ("*s,"):rep(9901) .. "]\n"
      assert.matches("^<string>:2:29705: alias %*s would make", error_of(yaml.decode, text))
    end)

    it("counts an alias inside an anchored value in every alias of that value", function()
      -- 3 aliases of a 400,001-node anchor (an alias of a 400,000-item list) pass the limit
      -- only through the expansion of the inner alias.
      local items = ("1,"):rep(399999) .. "1"
      local err = error_of(yaml.decode, "a: &a [" .. items .. "]\nb: &b [*a]\nc: [*b, *b]\n")
      assert.matches("^<string>:3:9: alias %*b would make the document's aliases repeat", err)
    end)
  end)

  describe("merge keys (<<)", function()
    it("merges a mapping, and keys written in the mapping win whatever their order", function()
      local v = yaml.decode([[
base: &base {image: nginx, replicas: 1, port: 80}
before:
  replicas: 3
  <<: *base
after:
  <<: *base
  replicas: 5
]])
      assert.are.same({ image = "nginx", replicas = 3, port = 80 }, v.before)
      assert.are.same({ image = "nginx", replicas = 5, port = 80 }, v.after)
      assert.are.equal("object", kind(v.after))
      assert.are.equal(1, v.base.replicas) -- the source is untouched
    end)

    it("merges a sequence of mappings, earlier ones winning", function()
      local v = yaml.decode([[
a: &a {x: a, y: a}
b: &b {x: b, y: b, z: b}
merged:
  <<: [*a, *b]
  y: own
]])
      assert.are.same({ x = "a", y = "own", z = "b" }, v.merged)
    end)

    it("treats a quoted << as an ordinary key", function()
      local v = yaml.decode('"<<": literal\n')
      assert.are.equal("literal", v["<<"])
    end)

    it("rejects a merge of something that is not a mapping", function()
      assert.are.equal(
        "<string>:3:7: the value of a merge key (<<) must be a mapping or a sequence of mappings",
        error_of(yaml.decode, "a: &a 1\nb:\n  <<: *a\n"))
      assert.are.equal("<string>:3:7: item 2 of the merge key's (<<) sequence is not a mapping",
        error_of(yaml.decode, "a: &a {x: 1}\nb:\n  <<: [*a, 1]\n"))
    end)
  end)

  describe("documents", function()
    it("returns nil for an empty stream and null for an empty document", function()
      assert.is_nil(yaml.decode(""))
      assert.is_nil(yaml.decode("# nothing here\n"))
      assert.are.equal(yaml.null, yaml.decode("---\n"))
    end)

    it("refuses a second document, naming its line", function()
      assert.are.equal(
        "<string>:3:1: expected a single document but found another (use yaml.decode_all)",
        error_of(yaml.decode, "---\na: 1\n---\nb: 2\n"))
    end)

    it("keeps [] and {} apart when a decoded Deployment is encoded as JSON", function()
      local deployment = yaml.decode_all(MANIFESTS)[1]
      local text = json.encode(deployment)
      assert.matches('"args":%[%]', text)
      assert.matches('"emptyDir":{}', text)
      assert.matches('"annotations":{}', text)
      assert.matches('"value":"on"', text)
      assert.matches('"replicas":3', text)
    end)
  end)

  describe("errors", function()
    it("points at a tab used for indentation", function()
      assert.are.equal("<string>:4:1: found character that cannot start any token"
        .. " (while scanning for the next token)",
        error_of(yaml.decode, "metadata:\n  name: web\nspec:\n\treplicas: 3\n"))
    end)

    it("points at a malformed flow sequence and says where it started", function()
      assert.are.equal("<string>:4:11: did not find expected ',' or ']'"
        .. " (while parsing a flow sequence that started at line 3, column 10)",
        error_of(yaml.decode, "spec:\n  replicas: 3\n  ports: [80, 443\n  selector: {}\n"))
    end)

    it("points at a mis-indented key", function()
      assert.are.equal("<string>:3:10: mapping values are not allowed in this context",
        error_of(yaml.decode, "spec:\n  replicas: 3\n    image: nginx\n"))
    end)

    it("uses opts.name in place of <string>", function()
      assert.are.equal('environments/staging.yaml:2:1: duplicate key "a"',
        error_of(yaml.decode, "a: 1\na: 2\n", { name = "environments/staging.yaml" }))
    end)

    it("places bytes that are not UTF-8", function()
      assert.are.equal("<string>:2:7: invalid leading UTF-8 octet (#xFF)",
        error_of(yaml.decode, "a: 1\nname: \xff\n"))
    end)

    it("checks its arguments", function()
      assert.matches("bad argument #1 to 'yaml.decode'", error_of(yaml.decode))
      assert.matches("unknown option 'nmae'", error_of(yaml.decode, "a: 1", { nmae = "x" }))
      assert.matches("opts.name must be a string", error_of(yaml.decode, "a: 1", { name = 1 }))
    end)
  end)
end)

describe("yaml.decode_all", function()
  it("reads a Kubernetes manifest stream into an array of documents", function()
    local docs = yaml.decode_all(MANIFESTS)
    assert.are.equal("array", kind(docs))
    assert.are.equal(2, #docs)
    assert.are.equal("Deployment", docs[1].kind)
    assert.are.equal(3, docs[1].spec.replicas)
    local container = docs[1].spec.template.spec.containers[1]
    assert.are.equal("registry.example.com/shop/checkout:v2.2.0", container.image)
    assert.are.equal(8080, container.ports[1].containerPort)
    assert.are.equal("on", container.env[1].value)
    assert.are.equal("true", container.env[2].value)
    assert.are.equal("Service", docs[2].kind)
    assert.are.equal(8080, docs[2].spec.ports[1].targetPort)
  end)

  it("returns an empty array for an empty stream", function()
    local docs = yaml.decode_all("")
    assert.are.equal(0, #docs)
    assert.are.equal("[]", json.encode(docs))
  end)

  it("keeps empty documents as null so the array has no holes", function()
    local docs = yaml.decode_all("--- 1\n---\n--- 3\n")
    assert.are.equal(3, #docs)
    assert.are.equal(yaml.null, docs[2])
  end)

  it("scopes anchors to their document", function()
    assert.are.equal("<string>:3:4: undefined alias *x",
      error_of(yaml.decode_all, "a: &x 1\n---\nb: *x\n"))
  end)
end)

describe("yaml.load_file", function()
  it("decodes one document from a file", function()
    local path = write_file("region: eu-west-1\nreplicas: 2\n")
    local v = yaml.load_file(path)
    os.remove(path)
    assert.are.same({ region = "eu-west-1", replicas = 2 }, v)
  end)

  it("names the file in parse errors", function()
    local path = write_file("namespace: shop\nprotected: true\n  confirm: yes\n")
    local err = error_of(yaml.load_file, path)
    os.remove(path)
    assert.are.equal(path .. ":3:10: mapping values are not allowed in this context", err)
  end)

  it("says why a file cannot be read", function()
    assert.are.equal("/nonexistent/staging.yaml: No such file or directory",
      error_of(yaml.load_file, "/nonexistent/staging.yaml"))
  end)
end)

describe("yaml.encode", function()
  it("writes block style with two-space indents, sorted keys and a final newline", function()
    local text = yaml.encode({
      kind = "Service",
      metadata = { name = "checkout", labels = { tier = "backend", app = "checkout" } },
      spec = { ports = { { port = 80, targetPort = 8080 } } },
    })
    assert.are.equal([[
kind: Service
metadata:
  labels:
    app: checkout
    tier: backend
  name: checkout
spec:
  ports:
  - port: 80
    targetPort: 8080
]], text)
  end)

  it("writes --- only when asked", function()
    assert.are.equal("a: 1\n", yaml.encode({ a = 1 }))
    assert.are.equal("---\na: 1\n", yaml.encode({ a = 1 }, { explicit_start = true }))
  end)

  it("writes scalars the way they read back", function()
    assert.are.equal("42\n", yaml.encode(42))
    assert.are.equal("1.0\n", yaml.encode(1.0))
    assert.are.equal("1.0e+20\n", yaml.encode(1e20))
    assert.are.equal(".inf\n", yaml.encode(math.huge))
    assert.are.equal("-.inf\n", yaml.encode(-math.huge))
    assert.are.equal(".nan\n", yaml.encode(0 / 0))
    assert.are.equal("true\n", yaml.encode(true))
    assert.are.equal("null\n", yaml.encode(yaml.null))
    assert.are.equal("hello\n", yaml.encode("hello"))
  end)

  it("writes {} for an empty table and [] for an array-marked one", function()
    assert.are.equal("a: {}\nb: []\n", yaml.encode({ a = {}, b = json.array({}) }))
  end)

  it("double-quotes strings that would read back as something else", function()
    local text = yaml.encode({ a = "true", b = "123", c = "", d = "yes", e = "null", f = "1.10" })
    assert.are.equal('a: "true"\nb: "123"\nc: ""\nd: "yes"\ne: "null"\nf: "1.10"\n', text)
  end)

  it("writes multi-line strings as literal blocks", function()
    assert.are.equal("script: |\n  set -e\n  make\n", yaml.encode({ script = "set -e\nmake\n" }))
  end)

  it("round-trips nested values with ambiguous strings", function()
    local value = {
      strings = json.array({ "true", "False", "~", "null", "", "0x1F", "0o17", "1e3", ".inf",
        "-.nan", "+1", "0644", "yes", "No", "on", "off", "y", "<<", " leading", "trailing ",
        "a: b", "a #b", "#c", "- x", "[x]", "{x}", "*x", "&x", "!x", "%x", "@x", "'q'", '"q"',
        "---", "...", "1_000", "1:30", "2024-01-31", "tab\there", "two\nlines", "end\n\n",
        "\nlead", "ctl\1", "ünïcødé ☸" }),
      numbers = json.array({ 0, -1, math.maxinteger, math.mininteger, 0.1, -0.0, 2.0, 1 / 3 }),
      flags = { on = true, off = false, unset = yaml.null },
      empty = { list = json.array({}), map = {} },
      [7] = "integer key",
      ["7"] = "string key",
    }
    assert.are.same(value, yaml.decode(yaml.encode(value)))
    local back = yaml.decode(yaml.encode(value))
    assert.are.equal("float", math.type(back.numbers[7]))
    assert.are.equal("array", kind(back.empty.list))
  end)

  it("names the path of a value it cannot encode", function()
    assert.are.equal("yaml.encode: cannot encode a function at $.spec.hooks[1]",
      error_of(yaml.encode, { spec = { hooks = { "ok", print } } }))
    assert.are.equal(
      'yaml.encode: cannot encode a table that mixes array items (1..n) with other keys at $["my key"]',
      error_of(yaml.encode, { ["my key"] = { 1, x = 2 } }))
    assert.are.equal("yaml.encode: cannot encode a string that is not valid UTF-8 at $.blob",
      error_of(yaml.encode, { blob = "\xff\xfe" }))
    assert.are.equal("yaml.encode: cannot encode a table as a mapping key at $.a",
      error_of(yaml.encode, { a = { [{}] = 1 } }))
  end)

  it("rejects cycles", function()
    local t = { name = "loop" }
    t.self = t
    assert.are.equal("yaml.encode: cycle (the table contains itself) at $.self",
      error_of(yaml.encode, t))
  end)

  it("refuses shared tables that repeat more than 1,000,000 values, in seconds", function()
    -- n levels of a pair of the same table repeat about 2^(n+1) - n values: 524,269 for 18,
    -- 1,048,556 for 19; 30 levels would write 2^30 strings.
    local function doubled(levels)
      local t = { "x" }
      for _ = 1, levels do t = { t, t } end
      return t
    end
    assert.are.equal(2 ^ 18, select(2, yaml.encode(doubled(18)):gsub("x", "")))
    assert.matches("^yaml%.encode: tables shared by several branches repeat more than 1000000 "
      .. "values %(shared tables nested in shared tables multiply%) at %$%[1%]", error_of(yaml.encode, doubled(19)))
    local started = time.monotonic()
    assert.matches("repeat more than 1000000 values", error_of(yaml.encode, doubled(30)))
    assert.is_true(time.monotonic() - started < 30) -- unbounded, it would take hours
  end)

  it("writes a table shared by two branches twice", function()
    local shared = { x = 1 }
    assert.are.equal("a:\n  x: 1\nb:\n  x: 1\n", yaml.encode({ a = shared, b = shared }))
  end)

  it("checks its arguments", function()
    assert.matches("bad argument #1 to 'yaml.encode'", error_of(yaml.encode))
    assert.matches("unknown option 'explicit'", error_of(yaml.encode, 1, { explicit = true }))
  end)
end)
