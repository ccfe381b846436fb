-- Specs for the json module (modules/json/json.c): faithful round trips of Kubernetes
-- objects, exact 64-bit integers, and errors that say where the problem is.

local json = require("json")

-- An apps/v1 Deployment as the API server returns it (fields from the Kubernetes API
-- reference), with the values a naive encoder loses: [] vs {}, null, 64-bit-safe integers.
local DEPLOYMENT = [[
{
  "apiVersion": "apps/v1",
  "kind": "Deployment",
  "metadata": {
    "name": "checkout",
    "namespace": "shop",
    "uid": "5f0c6a3e-8d1b-4c2e-9a57-0b6f3e2d1c4a",
    "resourceVersion": "184467",
    "generation": 3,
    "creationTimestamp": "2024-05-14T09:21:07Z",
    "labels": {
      "app.kubernetes.io/name": "checkout",
      "app.kubernetes.io/part-of": "shop",
      "tier": "backend"
    },
    "annotations": {
      "deployment.kubernetes.io/revision": "3",
      "kubernetes.io/change-cause": "tug run blue-green version=v2.2.0"
    }
  },
  "spec": {
    "replicas": 3,
    "revisionHistoryLimit": 10,
    "progressDeadlineSeconds": 600,
    "selector": {
      "matchLabels": {
        "app.kubernetes.io/name": "checkout"
      }
    },
    "strategy": {
      "type": "RollingUpdate",
      "rollingUpdate": {
        "maxSurge": "25%",
        "maxUnavailable": 0
      }
    },
    "template": {
      "metadata": {
        "creationTimestamp": null,
        "labels": {
          "app.kubernetes.io/name": "checkout"
        }
      },
      "spec": {
        "containers": [
          {
            "name": "checkout",
            "image": "registry.example.com/shop/checkout:v2.2.0",
            "imagePullPolicy": "IfNotPresent",
            "args": ["--listen=:8080", "--log-format=json"],
            "ports": [
              { "name": "http", "containerPort": 8080, "protocol": "TCP" }
            ],
            "env": [
              {
                "name": "DATABASE_URL",
                "valueFrom": { "secretKeyRef": { "name": "checkout-db", "key": "url" } }
              },
              { "name": "FEATURE_FLAGS", "value": "" },
              { "name": "GOMAXPROCS", "value": "2" }
            ],
            "resources": {
              "limits": { "cpu": "500m", "memory": "256Mi" },
              "requests": { "cpu": "250m", "memory": "128Mi" }
            },
            "readinessProbe": {
              "httpGet": { "path": "/healthz", "port": 8080, "scheme": "HTTP" },
              "initialDelaySeconds": 5,
              "periodSeconds": 10,
              "timeoutSeconds": 1,
              "successThreshold": 1,
              "failureThreshold": 3
            },
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File"
          }
        ],
        "volumes": [],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "securityContext": {},
        "schedulerName": "default-scheduler"
      }
    }
  },
  "status": {
    "observedGeneration": 3,
    "replicas": 3,
    "updatedReplicas": 3,
    "readyReplicas": 3,
    "availableReplicas": 3,
    "conditions": [
      {
        "type": "Available",
        "status": "True",
        "lastUpdateTime": "2024-05-14T09:22:41Z",
        "lastTransitionTime": "2024-05-14T09:22:41Z",
        "reason": "MinimumReplicasAvailable",
        "message": "Deployment has minimum availability."
      }
    ]
  }
}
]]

-- The same object as encode writes it by default: compact, keys sorted.
local DEPLOYMENT_CANONICAL = table.concat({
  [[{"apiVersion":"apps/v1","kind":"Deployment",]],
  [["metadata":{"annotations":{"deployment.kubernetes.io/revision":"3",]],
  [["kubernetes.io/change-cause":"tug run blue-green version=v2.2.0"},]],
  [["creationTimestamp":"2024-05-14T09:21:07Z",]],
  [["generation":3,"labels":{"app.kubernetes.io/name":"checkout",]],
  [["app.kubernetes.io/part-of":"shop","tier":"backend"},]],
  [["name":"checkout","namespace":"shop","resourceVersion":"184467",]],
  [["uid":"5f0c6a3e-8d1b-4c2e-9a57-0b6f3e2d1c4a"},]],
  [["spec":{"progressDeadlineSeconds":600,"replicas":3,]],
  [["revisionHistoryLimit":10,"selector":{"matchLabels":{"app.kubernetes.io/name":"checkout"]],
  [[}},"strategy":{"rollingUpdate":{"maxSurge":"25%",]],
  [["maxUnavailable":0},"type":"RollingUpdate"},]],
  [["template":{"metadata":{"creationTimestamp":null,]],
  [["labels":{"app.kubernetes.io/name":"checkout"}},]],
  [["spec":{"containers":[{"args":["--listen=:8080",]],
  [["--log-format=json"],"env":[{"name":"DATABASE_URL",]],
  [["valueFrom":{"secretKeyRef":{"key":"url","name":"checkout-db"}}},]],
  [[{"name":"FEATURE_FLAGS","value":""},{"name":"GOMAXPROCS",]],
  [["value":"2"}],"image":"registry.example.com/shop/checkout:v2.2.0",]],
  [["imagePullPolicy":"IfNotPresent","name":"checkout",]],
  [["ports":[{"containerPort":8080,"name":"http",]],
  [["protocol":"TCP"}],"readinessProbe":{"failureThreshold":3,]],
  [["httpGet":{"path":"/healthz","port":8080,"scheme":"HTTP"},]],
  [["initialDelaySeconds":5,"periodSeconds":10,]],
  [["successThreshold":1,"timeoutSeconds":1},"resources":{"limits":{"cpu":"500m",]],
  [["memory":"256Mi"},"requests":{"cpu":"250m",]],
  [["memory":"128Mi"}},"terminationMessagePath":"/dev/termination-log",]],
  [["terminationMessagePolicy":"File"}],"dnsPolicy":"ClusterFirst",]],
  [["restartPolicy":"Always","schedulerName":"default-scheduler",]],
  [["securityContext":{},"terminationGracePeriodSeconds":30,]],
  [["volumes":[]}}},"status":{"availableReplicas":3,]],
  [["conditions":[{"lastTransitionTime":"2024-05-14T09:22:41Z",]],
  [["lastUpdateTime":"2024-05-14T09:22:41Z","message":"Deployment has minimum availability."]],
  [[,"reason":"MinimumReplicasAvailable","status":"True",]],
  [["type":"Available"}],"observedGeneration":3,]],
  [["readyReplicas":3,"replicas":3,"updatedReplicas":3}}]],
})

local function encode_error(value, opts)
  local ok, err = pcall(json.encode, value, opts)
  assert.is_false(ok, "expected json.encode to fail")
  return err
end

local function decode_error(text)
  local ok, err = pcall(json.decode, text)
  assert.is_false(ok, "expected json.decode to fail")
  return err
end

describe("json", function()
  describe("a Kubernetes Deployment", function()
    it("survives decode -> encode -> decode unchanged", function()
      local first = json.decode(DEPLOYMENT)
      local second = json.decode(json.encode(first))
      assert.are.same(first, second)
      assert.are.equal(3, second.spec.replicas)
      assert.are.equal("25%", second.spec.strategy.rollingUpdate.maxSurge)
      assert.are.equal("checkout", second.spec.template.spec.containers[1].name)
      assert.are.equal(8080, second.spec.template.spec.containers[1].ports[1].containerPort)
    end)

    it("encodes to the canonical text, keeping [], {} and null", function()
      local text = json.encode(json.decode(DEPLOYMENT))
      assert.are.equal(DEPLOYMENT_CANONICAL, text)
      assert.truthy(text:find('"volumes":[]', 1, true))
      assert.truthy(text:find('"securityContext":{}', 1, true))
      assert.truthy(text:find('"creationTimestamp":null', 1, true))
    end)

    it("keeps [] and {} apart after the decoded tables are edited", function()
      local deployment = json.decode(DEPLOYMENT)
      local pod = deployment.spec.template.spec
      assert.are.equal("[]", json.encode(pod.volumes))
      assert.are.equal("{}", json.encode(pod.securityContext))
      pod.volumes[1] = { name = "cache", emptyDir = json.object() }
      pod.securityContext.runAsNonRoot = true
      assert.are.equal('[{"emptyDir":{},"name":"cache"}]', json.encode(pod.volumes))
      assert.are.equal('{"runAsNonRoot":true}', json.encode(pod.securityContext))
    end)

    it("decodes null as json.null, so the key is still there", function()
      local deployment = json.decode(DEPLOYMENT)
      local metadata = deployment.spec.template.metadata
      assert.are.equal(json.null, metadata.creationTimestamp)
      local keys = {}
      for k in pairs(metadata) do
        keys[#keys + 1] = k
      end
      table.sort(keys)
      assert.are.same({ "creationTimestamp", "labels" }, keys)
    end)
  end)

  describe("numbers", function()
    it("keeps 64-bit integers exact", function()
      for _, text in ipairs({
        "9007199254740993",
        "9223372036854775807",
        "-9223372036854775808",
        "0",
        "-1",
      }) do
        local n = json.decode(text)
        assert.are.equal("integer", math.type(n))
        assert.are.equal(text, json.encode(n))
      end
      assert.are.equal(math.maxinteger, json.decode("9223372036854775807"))
      assert.are.equal(math.mininteger, json.decode("-9223372036854775808"))
      assert.are.equal(9007199254740993, json.decode("9007199254740993"))
      assert.are.equal("[9007199254740993]", json.encode({ 9007199254740993 }))
    end)

    it("rejects integers beyond 64 bits instead of rounding them", function()
      assert.matches("too big integer", decode_error("18446744073709551616"))
    end)

    it("keeps floats floats and integers integers", function()
      assert.are.equal("float", math.type(json.decode("1.0")))
      assert.are.equal("1.0", json.encode(json.decode("1.0")))
      assert.are.equal("float", math.type(json.decode("1e2")))
      assert.are.equal(1.5, json.decode("1.5"))
      assert.are.equal("1.5", json.encode(1.5))
      assert.are.equal("[1,2.0]", json.encode({ 1, 2.0 }))
    end)

    it("writes floats with the fewest digits that read back exactly", function()
      assert.are.equal("0.1", json.encode(0.1))
      assert.are.equal("[0.1,0.25,-0.0]", json.encode({ 0.1, 0.25, -0.0 }))
      -- one precision per document: 0.1 + 0.2 needs 17 digits, 0.1 then still reads back exactly
      assert.are.same({ 0.1, 0.1 + 0.2 }, json.decode(json.encode({ 0.1, 0.1 + 0.2 })))
      for _, x in ipairs({ 1 / 3, 2 ^ -1074, 1.7976931348623157e308, 123456.789 }) do
        local back = json.decode(json.encode(x))
        assert.are.equal(x, back)
        assert.are.equal("float", math.type(back))
      end
    end)

    it("refuses NaN and infinities", function()
      assert.matches("cannot encode NaN at %$%.ratio", encode_error({ ratio = 0 / 0 }), 1)
      assert.matches("cannot encode inf at %$%[1%]", encode_error({ 1, math.huge }))
      assert.matches("cannot encode %-inf at %$", encode_error(-math.huge))
    end)
  end)

  describe("strings", function()
    it("decodes unicode escapes to UTF-8, including surrogate pairs", function()
      assert.are.equal("é😀", json.decode([["\u00e9\ud83d\ude00"]]))
      assert.are.equal("é😀", json.decode('"é😀"'))
    end)

    it("writes UTF-8 as is and escapes quotes, backslashes and control characters", function()
      assert.are.equal('"é😀"', json.encode("é😀"))
      assert.are.equal([["say \"hi\"\\n\n\t"]], json.encode('say "hi"\\n\n\t'))
      assert.are.equal('say "hi"\\n\n\t', json.decode(json.encode('say "hi"\\n\n\t')))
    end)

    it("keeps embedded NUL bytes", function()
      local s = json.decode([["a\u0000b"]])
      assert.are.equal(3, #s)
      assert.are.equal("a\0b", s)
      assert.are.equal([["a\u0000b"]], json.encode("a\0b"))
    end)

    it("refuses bytes that are not UTF-8, naming the place", function()
      assert.matches("not valid UTF%-8 %(byte 3%) at %$%.metadata%.name",
        encode_error({ metadata = { name = "ab\xffcd" } }))
      assert.matches("not valid UTF%-8", encode_error("\xed\xa0\x80")) -- a UTF-16 surrogate
      assert.matches("not valid UTF%-8", encode_error("\xc0\xaf")) -- an overlong '/'
      assert.matches("object key is not valid UTF%-8", encode_error({ ["k\xff"] = 1 }))
      assert.matches("unable to decode byte 0xff", decode_error('"\xff"'))
    end)
  end)

  describe("null, arrays and objects", function()
    it("has one null sentinel", function()
      assert.are.equal(json.null, json.null)
      assert.are.equal(json.null, json.decode("null"))
      assert.are.equal(json.null, json.decode("[null]")[1])
      assert.are.equal("null", json.encode(json.null))
      assert.are.equal('{"a":null}', json.encode({ a = json.null }))
      assert.are_not.equal(nil, json.null)
      assert.are_not.equal(false, json.null)
    end)

    it("writes an unmarked empty table as {} and json.array{} as []", function()
      assert.are.equal("{}", json.encode({}))
      assert.are.equal("[]", json.encode(json.array({})))
      assert.are.equal("[]", json.encode(json.array()))
      assert.are.equal("{}", json.encode(json.object()))
      assert.are.equal('{"items":[],"spec":{}}', json.encode({ items = json.array(), spec = {} }))
    end)

    it("marks tables in place and returns them", function()
      local t = { 1, 2 }
      assert.are.equal(t, json.array(t))
      assert.are.equal(getmetatable(json.decode("[]")), getmetatable(t))
      assert.are.equal(getmetatable(json.decode("{}")), getmetatable(json.object({})))
      assert.are.equal("[1,2]", json.encode(t))
      assert.matches("already has a metatable", select(2, pcall(json.array, setmetatable({}, {}))))
    end)

    it("writes plain Lua sequences as arrays and string-keyed tables as objects", function()
      assert.are.equal('[1,"two",true]', json.encode({ 1, "two", true }))
      assert.are.equal('{"a":1,"b":[false]}', json.encode({ b = { false }, a = 1 }))
      assert.are.equal('"x"', json.encode("x"))
      assert.are.equal("true", json.encode(true))
    end)

    it("decodes scalars at the top level", function()
      assert.are.equal("x", json.decode('"x"'))
      assert.are.equal(false, json.decode(" false "))
      assert.are.equal(42, json.decode("42"))
    end)
  end)

  describe("encode options", function()
    it("pretty-prints with opts.indent", function()
      local value = { name = "web", ports = { 80, 443 }, labels = {} }
      assert.are.equal(table.concat({
        "{",
        '  "labels": {},',
        '  "name": "web",',
        '  "ports": [',
        "    80,",
        "    443",
        "  ]",
        "}",
      }, "\n"), json.encode(value, { indent = 2 }))
      assert.are.equal('{"labels":{},"name":"web","ports":[80,443]}',
        json.encode(value, { indent = 0 }))
    end)

    it("sorts keys unless opts.sort_keys is false", function()
      local value = {}
      for i = 1, 50 do
        value["key" .. i] = i
      end
      local sorted = json.encode(value)
      assert.truthy(sorted:find('^{"key1":1,"key10":10,"key11":11,'))
      assert.are.equal(sorted, json.encode(value, { sort_keys = true }))
      local unsorted = json.encode(value, { sort_keys = false })
      assert.are.same(json.decode(sorted), json.decode(unsorted))
    end)

    it("rejects bad options", function()
      assert.matches("opts.indent must be an integer from 0 to 31",
        encode_error({}, { indent = 32 }))
      assert.matches("opts.indent must be an integer", encode_error({}, { indent = 1.5 }))
      assert.matches("opts.sort_keys must be a boolean", encode_error({}, { sort_keys = "yes" }))
      assert.matches("unknown option 'indnet'", encode_error({}, { indnet = 2 }))
    end)
  end)

  describe("encode errors name the place in the value", function()
    it("for a function", function()
      local deployment = json.decode(DEPLOYMENT)
      deployment.spec.template.spec.containers[1].name = print
      assert.are.equal(
        "json.encode: cannot encode a function at $.spec.template.spec.containers[0].name",
        encode_error(deployment))
    end)

    it("for keys that are not identifiers", function()
      local labels = { ["app.kubernetes.io/name"] = coroutine.create(print) }
      local err = encode_error({ metadata = { labels = labels } })
      assert.are.equal(
        'json.encode: cannot encode a thread at $.metadata.labels["app.kubernetes.io/name"]', err)
    end)

    it("for a table with both array items and keys", function()
      assert.matches("mixes array items .* at %$%.args",
        encode_error({ args = { "a", "b", x = 1 } }))
    end)

    it("for a number key in an object", function()
      local labels = json.decode('{"tier":"web"}')
      labels[1] = "oops"
      assert.matches("object key 1 is a number.* at %$%.labels", encode_error({ labels = labels }))
    end)

    it("for holes and stray keys in an array", function()
      assert.matches("nil inside an array %(use json%.null for null%) at %$%[1%]",
        encode_error(json.array({ 1, nil, 3 })))
      local items = json.decode("[1,2]")
      items.extra = true
      assert.matches("array has a string key outside 1..2 at %$", encode_error(items))
    end)

    it("for nil at the top level", function()
      assert.matches("cannot encode nil", encode_error(nil))
    end)

    it("for a cycle", function()
      local deployment = { spec = { template = {} } }
      deployment.spec.template.owner = deployment
      assert.matches("cycle %(the table at %$ contains itself%) at %$%.spec%.template%.owner",
        encode_error(deployment))
      local shared = { a = 1 }
      assert.are.equal('{"x":{"a":1},"y":{"a":1}}', json.encode({ x = shared, y = shared }))
    end)

    it("for nesting too deep, without crashing", function()
      local root = {}
      local t = root
      for _ = 1, 100000 do
        t[1] = {}
        t = t[1]
      end
      assert.matches("nested deeper than 2048 levels at %$%[0%].-%.%.%.", encode_error(root))
    end)
  end)

  describe("shared tables", function()
    it("writes a table shared by two branches in both places", function()
      local labels = { app = "checkout" }
      assert.are.equal('{"selector":{"app":"checkout"},"template":{"app":"checkout"}}',
        json.encode({ selector = labels, template = labels }))
    end)

    it("refuses shared tables that repeat more than 1,000,000 values, in seconds", function()
      -- 30 levels of a pair of the same table would write 2^30 strings.
      local t = json.array({ "lol" })
      for _ = 1, 30 do t = json.array({ t, t }) end
      local started = time.monotonic()
      local err = encode_error(t)
      assert.is_true(time.monotonic() - started < 30) -- unbounded, it would take hours
      assert.matches("^json%.encode: tables shared by several branches repeat more than 1000000 "
        .. "values %(shared tables nested in shared tables multiply%) at %$%[0%]", err)
    end)

    it("counts a repeated long string for its length: one value per 64 bytes", function()
      -- each repeat of a table holding 64 KiB writes a string weighing 1 + 65536 / 64 = 1,025
      -- values: the first of 977 is written, the 976 repeats weigh 1,000,400; one fewer, 999,375
      local big = json.array({ ("x"):rep(65536) })
      local list = json.array({})
      for i = 1, 977 do list[i] = big end
      assert.matches("repeat more than 1000000 values .* at %$%[976%]%[0%]$", encode_error(list))
      list[977] = nil
      assert.are.equal(976 * (65536 + 5) + 1, #json.encode(list))
    end)

    it("writes a shared structure that repeats up to the limit", function()
      -- n levels write 2^(n+1)-1 values, of which about 2^(n+1) - n are repeats (every
      -- second branch): 524,269 for 18 levels, 1,048,556 for 19.
      local function doubled(levels)
        local t = json.array({ "x" })
        for _ = 1, levels do t = json.array({ t, t }) end
        return t
      end
      assert.are.equal(2 ^ 18, select(2, json.encode(doubled(18)):gsub('"x"', "")))
      assert.matches("repeat more than 1000000 values", encode_error(doubled(19)))
    end)
  end)

  describe("decode errors", function()
    it("give the byte, line and column", function()
      assert.are.equal("json.decode: invalid token near 'tru' at byte 9 (line 1, column 9)",
        decode_error('{"a": tru}'))
      -- 'tru' ends on the 9th column of line 2, the 25th byte of the text
      assert.are.equal("json.decode: invalid token near 'tru' at byte 25 (line 2, column 9)",
        decode_error('{"name": "web",\n "x": tru}'))
    end)

    it("reject trailing garbage", function()
      assert.matches("end of file expected near 'x' at byte 5", decode_error("[1] x"))
      assert.matches("end of file expected", decode_error('{"a":1}{"b":2}'))
    end)

    it("reject empty input", function()
      assert.matches("^json%.decode: ", decode_error(""))
      assert.matches("^json%.decode: ", decode_error("   "))
    end)

    it("stop deep nesting with an error instead of a crash", function()
      assert.matches("maximum parsing depth reached", decode_error(string.rep("[", 100000)))
      local deep = string.rep("[", 2048) .. string.rep("]", 2048)
      assert.are.equal(deep, json.encode(json.decode(deep)))
    end)

    it("require a string", function()
      assert.matches("bad argument #1", select(2, pcall(json.decode, {})))
    end)

    it("refuse a raw NUL byte anywhere, even after a complete value", function()
      -- jansson's reader stops at a NUL after a value: "123\0" read as 123 (JSONTestSuite
      -- n_multidigit_number_then_00). The whole text is read, by its length.
      assert.are.equal(
        "json.decode: NUL byte (a raw 0x00; write \\u0000 inside a string) at byte 4 (line 1, column 4)",
        decode_error("123\0"))
      assert.matches("NUL byte .* at byte 7 %(line 2, column 3%)", decode_error("[1,\n2]\0 "))
      assert.matches("NUL byte .* at byte 2 ", decode_error("[\0]"))
      assert.matches("NUL byte .* at byte 3 ", decode_error('"a\0"'))
    end)

    it("keep the byte, line and column of an error after a key holding \\u0000", function()
      -- the same error as in the same text with another 6-character escape in the key
      for _, text in ipairs({ '{"a\\u0000": 1, "b": tru}', '{"a\\u0000": 1,\n "b": \\u0000}' }) do
        local plain = decode_error((text:gsub("^{\"a\\u0000", '{"a\\u0041')))
        assert.are.equal(plain, decode_error(text))
      end
      assert.are.equal("json.decode: invalid token near 'tru' at byte 23 (line 1, column 23)",
        decode_error('{"a\\u0000": 1, "b": tru}'))
    end)

    it("refuse \\u0000 in a key of a text that also holds U+FDD0 (the mark that carries it)", function()
      assert.matches("NUL byte in object key not supported", decode_error('{"\\ufdd0\\u0000": 1}'))
      assert.matches("NUL byte in object key not supported", decode_error('{"\xef\xb7\x90": 1, "\\u0000": 2}'))
    end)
  end)

  describe("object keys holding \\u0000 (JSONTestSuite y_object_escaped_null_in_key)", function()
    it("decode to keys with a NUL byte, and encode back the same", function()
      local v = json.decode('{"foo\\u0000bar": 42, "\\u0000": "x\\u0000y", "plain": ["\\u0000"]}')
      assert.are.equal(42, v["foo\0bar"])
      assert.are.equal("x\0y", v["\0"])
      assert.are.equal("\0", v.plain[1])
      assert.are.equal('{"\\u0000":"x\\u0000y","foo\\u0000bar":42,"plain":["\\u0000"]}', json.encode(v))
      assert.are.same(v, json.decode(json.encode(v)))
    end)

    it("leave an escaped backslash followed by u0000 alone", function()
      local v = json.decode('{"a\\\\u0000": 1, "b\\u0000": 2}')
      assert.are.equal(1, v["a\\u0000"])
      assert.are.equal(2, v["b\0"])
    end)

    it("keep the last of two equal keys, as for any key", function()
      assert.are.equal(2, json.decode('{"\\u0000": 1, "\\u0000": 2}')["\0"])
    end)
  end)

  -- Cases of JSONTestSuite's test_parsing (named after its files) that a decoder commonly
  -- gets wrong: y_ must decode, n_ must not.
  describe("JSONTestSuite cases", function()
    local must_accept = {
      y_object_duplicated_key = '{"a":"b","a":"c"}',
      y_string_escaped_noncharacter = '["\\uFFFF"]',
      y_string_null_escape = '["\\u0000"]',
      y_object_escaped_null_in_key = '{"foo\\u0000bar": 42}',
      y_number_real_capital_e_neg_exp = "[1E-2]",
      y_number_negative_zero = "[-0]",
      y_structure_lonely_null = "null",
      y_structure_whitespace_array = " [] ",
      y_string_utf8 = '["€𝄞"]',
      y_string_surrogates_U_1D11E_MUSICAL_SYMBOL_G_CLEF = '["\\uD834\\uDd1e"]',
    }
    local must_refuse = {
      n_multidigit_number_then_00 = "123\0",
      ["n_structure_null-byte-outside-string"] = "[\0]",
      n_string_unescaped_tab = '["\t"]',
      ["n_number_-01"] = "[-01]",
      n_number_infinity = "[Infinity]",
      n_number_NaN = "[NaN]",
      n_number_hex_1_digit = "[0x1]",
      n_number_real_without_fractional_part = "[1.]",
      n_array_extra_comma = '["",]',
      n_object_trailing_comma = '{"id":0,}',
      n_object_single_quote = "{'a':0}",
      n_string_single_quote = "['single quote']",
      n_string_invalid_utf8_after_escape = '["\\u00e9\xe5"]',
      n_string_incomplete_surrogate_escape_invalid = '["\\uD800\\uD800\\x"]',
      n_structure_trailing_hash = '{"a":"b"}#',
      n_structure_whitespace_formfeed = "[\f]",
      n_structure_UTF8_BOM_no_data = "\xef\xbb\xbf",
      n_structure_unclosed_array = "[1",
      n_single_space = " ",
    }

    for name, text in pairs(must_accept) do
      it("decodes " .. name, function()
        local ok, err = pcall(json.decode, text)
        assert.is_true(ok, err)
      end)
    end
    for name, text in pairs(must_refuse) do
      it("refuses " .. name, function()
        assert.matches("^json%.decode: ", decode_error(text))
      end)
    end
  end)
end)
