---@meta _
-- The playbook DSL (playbooks/README.md): a playbook file ends with
--   return playbook { name = ..., params = { ... }, steps = { step "..." { run = ... }, ... } }
-- and every step's run, undo and when get the run's `ctx`. runtime/lua/playbooks.lua checks
-- each field below; an unknown one is an error naming the file and line.

---@alias tug.ParamType "string"|"integer"|"number"|"boolean"|"enum"|"duration"|"list"

---A param: `key=value` on the command line, converted to its type.
---@class tug.ParamDecl
---@field type? tug.ParamType default "string"
---@field required? boolean
---@field default? any
---@field pattern? string a Lua pattern a string must match
---@field help? string
---@field min? number integer and number params
---@field max? number integer and number params
---@field values? any[] an enum's values

---@class tug.PlaybookDecl
---@field name? string default: the file's name, with - for _
---@field description? string as shown by `tug list`
---@field params? table<string, tug.ParamDecl> name -> declaration
---@field lock? string a lock held per environment for the whole run
---@field steps tug.Step[] the steps, in order
---@field undo_timeout? tug.Duration default time limit for each undo (default 10m)
---@field step_by_step? boolean on-call runbooks: `tug run` asks before every step

---@class tug.StepDecl
---@field run fun(ctx: tug.Ctx): any does the work; raising an error fails the step
---@field undo? fun(ctx: tug.Ctx): any compensates a completed step when a later one fails (or on Ctrl-C)
---@field when? fun(ctx: tug.Ctx): boolean skip the step when it returns false
---@field timeout? tug.Duration each attempt is cancelled after this long
---@field retries? integer attempts after the first (default 0)
---@field retry_delay? tug.Duration before attempt 2 (default 1s)
---@field backoff? number attempt n+1 waits retry_delay * backoff^(n-1) (default 1)
---@field confirm? string a question asked before the step; {env}, {run_id}, {params.X}, {state.X} are filled in
---@field tags? string[] for --tags
---@field read_only? boolean the step changes nothing: protected environments do not ask before it
---@field undo_timeout? tug.Duration time limit for this step's undo
---@field description? string

---A declared step (what `step "name" { ... }` returns).
---@class tug.Step: tug.StepDecl
---@field name string

---A loaded playbook (what `playbook { ... }` returns).
---@class tug.Playbook: tug.PlaybookDecl
---@field path string

---The run's log: lines in its output and journal.
---@class tug.CtxLog
---@field debug fun(message: string, fields?: table)
---@field info fun(message: string, fields?: table)
---@field warn fun(message: string, fields?: table)
---@field error fun(message: string, fields?: table)

---What run, undo and when receive: the run's params, environment and state.
---@class tug.Ctx
---@field params table<string, any> the params, converted to their types
---@field env tug.Environment the environment (environments/NAME.yaml, references resolved)
---@field state table filled by the steps; saved to the journal after each step (plain data only)
---@field run_id string
---@field plan boolean true under `tug plan`
---@field playbook string the playbook's name
---@field yes boolean the run was given --yes
---@field interactive boolean there is a terminal to ask on
---@field log tug.CtxLog
local Ctx = {}

---Asks on the terminal; true with --yes (and in a plan); fails the step when nobody can answer.
---@param message string {env}, {run_id}, {params.X}, {state.X} are filled in
---@return boolean
function Ctx:confirm(message) end

---Asks for an answer (one of `choices` when given; an empty line takes `default`); --yes and
---plans take `default`, and without one --yes fails the step. Recorded as a decision.
---@param question string
---@param opts? { choices?: string[], default?: string }
---@return string?
function Ctx:ask(question, opts) end

---Under `tug plan`, shows `description` as a change the step would make; returns ctx.plan.
---@param description string
---@return boolean
function Ctx:would(description) end

---Declares a playbook: `return playbook { ... }` ends a playbook file.
---@param decl tug.PlaybookDecl
---@return tug.Playbook
function playbook(decl) end

---Declares a step: `step "what it does" { run = function(ctx) ... end }`.
---@param name string a sentence an on-call engineer understands
---@return fun(decl: tug.StepDecl): tug.Step
function step(name) end
