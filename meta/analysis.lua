---@meta analysis
-- analysis: the gates that promote or abort (modules/analysis/README.md).

---A condition: a function, or text such as "value < 0.001" (value, thresholds, vars,
---arithmetic, comparisons, and/or/not, abs min max floor ceil sqrt exp log isnan isinf).
---@alias tug.analysis.Condition string|fun(value: number, result: tug.metrics.Result): boolean

---@alias tug.analysis.Verdict "success"|"inconclusive"|"error"|"failure"

---@class tug.analysis.Metric
---@field name string required, unique
---@field query string
---@field provider? tug.metrics.ProviderSpec default: the run's
---@field success? tug.analysis.Condition
---@field failure? tug.analysis.Condition
---@field no_data? "inconclusive"|"fail"|"pass" default "inconclusive"
---@field dry_run? boolean measured and reported, never fails the run
---@field failure_limit? integer
---@field inconclusive_limit? integer
---@field consecutive_error_limit? integer
---@field min_samples? integer
---@field timeout? tug.Duration

---@class tug.analysis.RunSpec
---@field metrics tug.analysis.Metric[] required
---@field interval? tug.Duration between measurements (default 30s)
---@field count? integer measurements per metric (default 1)
---@field initial_delay? tug.Duration before the first measurement (default 0)
---@field failure_limit? integer default 0
---@field inconclusive_limit? integer default 0
---@field consecutive_error_limit? integer default 4
---@field min_samples? integer
---@field provider? tug.metrics.ProviderSpec the default provider of the metrics
---@field env? tug.Environment default: the current run's
---@field vars? table<string, number> more names for text conditions
---@field timeout? tug.Duration per query
---@field progress? boolean log each measurement at info level (default: on a terminal)
---@field on_measurement? fun(metric_name: string, measurement: tug.analysis.Measurement)
---@field plan_check? boolean in plan mode, measure each metric once (default true)
---@field name? string prefix of the log lines (default "analysis")

---@class tug.analysis.Measurement
---@field n integer
---@field time number
---@field phase "success"|"failure"|"inconclusive"|"error"
---@field value number? the number when finite
---@field observed string what was seen, as text
---@field outcome string
---@field message string?

---@class tug.analysis.MetricReport
---@field verdict tug.analysis.Verdict
---@field reason string
---@field dry_run boolean?
---@field provider string
---@field query string
---@field condition string?
---@field no_data string
---@field count { success: integer, failure: integer, inconclusive: integer, error: integer }
---@field measurements tug.analysis.Measurement[]

---@class tug.analysis.Report
---@field verdict tug.analysis.Verdict
---@field reason string one line naming the metric, the value and the threshold
---@field rounds integer
---@field duration number
---@field started number
---@field metrics table<string, tug.analysis.MetricReport>
---@field planned boolean? under `tug plan`
---@field worst_case { promote: number, abort: number, error: number, inconclusive: number }? under `tug plan`

---@class tug.analysis.CompareMetric
---@field name string
---@field baseline string|number[] a query (run as a range query) or the samples
---@field canary string|number[]
---@field provider? tug.metrics.ProviderSpec
---@field direction? "increase"|"decrease"|"either"
---@field tolerance? number
---@field min_difference? number
---@field critical? boolean
---@field critical_increase? number
---@field critical_decrease? number
---@field must_have_data? boolean
---@field weight? number default 1
---@field allowed_increase? number
---@field allowed_decrease? number
---@field nan? "remove"|"zero"
---@field min_samples? integer

---@class tug.analysis.CompareSpec
---@field metrics? tug.analysis.CompareMetric[] (or one metric's baseline/canary at the top level)
---@field baseline? string|number[]
---@field canary? string|number[]
---@field name? string
---@field provider? tug.metrics.ProviderSpec
---@field env? tug.Environment
---@field window? tug.Duration
---@field step? tug.Duration
---@field at? number
---@field confidence? number default 0.98
---@field tolerance? number default 0
---@field band? number default 0.25
---@field direction? "increase"|"decrease"|"either" default "increase"
---@field min_samples? integer default 5
---@field nan? "remove"|"zero" default "remove"
---@field pass_score? number default 95
---@field marginal_score? number default 75
---@field min_difference? number default 0
---@field critical? boolean
---@field must_have_data? boolean
---@field allowed_increase? number
---@field allowed_decrease? number
---@field timeout? tug.Duration

---@class tug.analysis.CompareMetricReport
---@field classification "pass"|"high"|"low"|"nodata"|"error"
---@field p_value number?
---@field estimate number?
---@field ci number[]?
---@field ratio number?
---@field baseline table
---@field canary table

---@class tug.analysis.CompareReport
---@field verdict tug.analysis.Verdict
---@field score number 0-100
---@field reason string
---@field metrics table<string, tug.analysis.CompareMetricReport>

---@class tug.analysis
analysis = {}

---The order of verdicts: success 1 < inconclusive 2 < error 3 < failure 4.
---@type table<tug.analysis.Verdict, integer>
analysis.SEVERITY = {}

---Measures every metric each `interval`, `count` times, and stops as soon as one exceeds a limit.
---@param spec tug.analysis.RunSpec
---@return tug.analysis.Report
function analysis.run(spec) end

---Judges a canary against its baseline (Mann-Whitney U, Hodges-Lehmann, a score).
---@param spec tug.analysis.CompareSpec
---@return tug.analysis.CompareReport
function analysis.compare(spec) end

return analysis
