---@meta health
-- health: health probes, load checks and their gate (modules/health/README.md).

---@class tug.health.Check
---@field url string
---@field name? string
---@field expect_status? integer|integer[] default 200
---@field expect_json? table<string, any> `{ [path] = value }` the JSON body must hold
---@field expect_body? string a Lua pattern the body must contain
---@field headers? table<string, string>
---@field tls? tug.http.TLS
---@field timeout? tug.Duration one probe's limit (default "10s")

---The checks in the array part (URLs or tables), plus defaults for every check.
---@class tug.health.CheckOptions
---@field url? string one check
---@field expect_status? integer|integer[] default 200
---@field expect_json? table<string, any>
---@field expect_body? string
---@field headers? table<string, string>
---@field tls? tug.http.TLS
---@field timeout? tug.Duration one probe's limit (default "10s")
---@field within? tug.Duration how long to keep trying (default "2m")
---@field interval? tug.Duration between probe starts (default "2s")
---@field [integer] string|tug.health.Check

---@class tug.health.CheckOutcome
---@field url string
---@field name string?
---@field ok boolean
---@field status integer?
---@field latency number? seconds, of the last probe
---@field attempts integer
---@field reason string? why the last probe failed
---@field error string? the transport failure kind

---@class tug.health.CheckResult
---@field ok boolean every check passed
---@field checks tug.health.CheckOutcome[]
---@field reason string? when not ok: each failed URL with its last reason and attempts
---@field duration number seconds

---@class tug.health.LoadOptions
---@field url string http:// (the native engine) or https:// (the http engine)
---@field duration? tug.Duration how long to send (default "30s")
---@field concurrency? integer closed-loop connections (default 50)
---@field rate? number open-loop: requests a second
---@field max_connections? integer open-loop: connections open at most (default 1000)
---@field method? string default "GET"
---@field headers? table<string, string>
---@field body? string
---@field timeout? tug.Duration a request unanswered this long fails (default "10s")
---@field ok_status? integer|integer[] the statuses that are not errors (default 2xx)
---@field tls? tug.http.TLS
---@field engine? "native"|"http"

---@class tug.health.LoadResult
---@field count integer requests that ended
---@field responses integer requests answered
---@field errors integer
---@field error_rate number errors / count
---@field statuses table<integer, integer>
---@field transport_errors { connect: integer, timeout: integer, closed: integer, protocol: integer }
---@field error_summary string?
---@field rps number
---@field p50 number? seconds
---@field p90 number?
---@field p95 number?
---@field p99 number?
---@field max number?
---@field min number?
---@field mean number?
---@field histogram tug.health.Histogram
---@field elapsed number
---@field connects integer?
---@field bytes integer?
---@field scheduled integer?
---@field mode "closed"|"open"
---@field engine "native"|"http"
---@field url string
---@field method string
---@field duration number
---@field concurrency integer?
---@field rate number?
---@field planned boolean? under `tug plan`: nothing was sent
---@field would_send integer?
---@field error string? the check could not run at all
---@field message string?

---@class tug.health.Limits
---@field p50_ms? number|false
---@field p90_ms? number|false
---@field p95_ms? number|false
---@field p99_ms? number|false
---@field max_ms? number|false
---@field mean_ms? number|false
---@field error_rate? number|false a fraction: 0.001 is 0.1%
---@field min_rps? number|false
---@field min_count? integer|false

---The latency histogram (log-linear buckets, values kept in microseconds).
---@class tug.health.Histogram
local Histogram = {}

---Adds a sample (n times).
---@param seconds number
---@param n? integer
function Histogram:record(seconds, n) end

---Seconds at or below which p% of the samples lie (nil when empty).
---@param p number
---@return number?
function Histogram:percentile(p) end

---@return integer
function Histogram:count() end

---@return number?
function Histogram:min() end

---@return number?
function Histogram:max() end

---@return number?
function Histogram:mean() end

---@param other tug.health.Histogram
function Histogram:merge(other) end

function Histogram:reset() end

---@class tug.health
health = {}

---The seed's thresholds, the defaults of `health.gate` (`p95_ms = 500`, `error_rate = 0.001`).
---@type tug.health.Limits
health.defaults = {}

---Probes every URL at once until all pass or `within` runs out; never raises for a failing service.
---@param opts string|tug.health.CheckOptions
---@return tug.health.CheckResult
function health.check(opts) end

---Sends load (closed-loop with `concurrency`, open-loop with `rate`) and measures it.
---@param opts tug.health.LoadOptions
---@return tug.health.LoadResult
function health.load(opts) end

---Judges a check or load result: `assert(health.gate(r))` raises with the sentence.
---@param result tug.health.CheckResult|tug.health.LoadResult
---@param limits? tug.health.Limits added to (or replacing) `health.defaults`; false drops one
---@return boolean ok
---@return string sentence
function health.gate(result, limits) end

---A new, empty histogram.
---@return tug.health.Histogram
function health.histogram() end

return health
