---@meta metrics
-- metrics: numbers from Prometheus, Datadog or any JSON endpoint (modules/metrics/README.md).

---A provider: a name configured in the environment's `metrics:` (or `metrics.configure`),
---a table of settings (`{ type = "prometheus", url = ... }`), or what `metrics.provider` returned.
---@alias tug.metrics.ProviderSpec string|table

---@class tug.metrics.QueryOptions
---@field at? number the time to evaluate at (seconds since the epoch; default now)
---@field range? tug.Duration query the series over [at - range, at]
---@field step? tug.Duration the resolution of a range query (default range / 100, at least 1 s)
---@field timeout? tug.Duration default the provider's, else 10 s

---@class tug.metrics.Series
---@field labels table<string, string>
---@field value number? instant queries
---@field time number? instant queries
---@field points { [1]: number, [2]: number }[]? range queries: { time, value } each

---@class tug.metrics.Result
---@field outcome "value"|"nan"|"empty"|"many"|"series"
---@field value number? the number when exactly one series matched (NaN for "nan")
---@field nan boolean
---@field empty boolean
---@field type "instant"|"range"
---@field series tug.metrics.Series[]
---@field provider string
---@field query string
---@field warnings string[]?

---A provider type written in Lua (`metrics.register`).
---@class tug.metrics.ProviderType
---@field check? fun(config: table) raises when the settings are wrong
---@field query fun(config: table, expr: string, opts: tug.metrics.QueryOptions): number|table|nil a number, nil (no data) or { type, series } for metrics.result

---@class tug.metrics
metrics = {}

---Evaluates `expr` on a provider; raises `{ kind = "metrics", reason = ... }` on failure.
---@param provider tug.metrics.ProviderSpec
---@param expr string
---@param opts? tug.metrics.QueryOptions
---@return tug.metrics.Result
function metrics.query(provider, expr, opts) end

---Resolves a name or a table to a provider (raises `config` errors).
---@param spec tug.metrics.ProviderSpec
---@param env? tug.Environment the environment whose `metrics:` names providers (default: the run's)
---@return table provider
function metrics.provider(spec, env) end

---Names providers for this process (`{ name = settings }`); nil forgets them.
---@param providers table<string, table>|nil
function metrics.configure(providers) end

---The environment of the run in progress, if any (its `metrics:` names providers).
---@return tug.Environment?
function metrics.environment() end

---Adds a provider type.
---@param type string
---@param impl tug.metrics.ProviderType
function metrics.register(type, impl) end

---The provider types known, sorted.
---@return string[]
function metrics.types() end

---A value as people read it: `0.00042`, `512`, `NaN`, `+Inf`, `no data`.
---@param v number?
---@return string
function metrics.show(v) end

---"NaN", "+Inf", "0.25" -> numbers (nil when not a number).
---@param text string|number
---@return number?
function metrics.number(text) end

---Whether `v` is NaN.
---@param v any
---@return boolean
function metrics.is_nan(v) end

---For provider types: completes what a provider's `query` returned into a result.
---@param r table
---@return tug.metrics.Result
function metrics.result(r) end

---For provider types: raises `{ kind = "metrics", reason, message, ... }`.
---@param reason "query"|"auth"|"unavailable"|"response"|"config"|"provider"
---@param message string
---@param fields? table more fields for the error
function metrics.fail(reason, message, fields) end

---For provider types: raises the metrics error for a response that is not a success.
---@param what string what was being done
---@param r tug.http.Response
---@param detail? string
function metrics.http_failure(what, r, detail) end

---For provider types: the provider's `headers` plus a bearer `token` or basic `username`/`password`.
---@param config table
---@return table<string, string>
function metrics.auth_headers(config) end

---For provider types: standard base64 of `s`.
---@param s string
---@return string
function metrics.base64(s) end

---For provider types: a short excerpt of a response body, for messages.
---@param body string
---@return string
function metrics.excerpt(body) end

return metrics
