-- api-outage: the on-call runbook for an API that is down or failing (the seed's critical
-- alerts "API unavailable for > 2 minutes" and "error rate > 1%"), for the API rolled out
-- in place: the Deployment `api` behind its Service (service-outage covers the blue-green
-- api-service as a whole). It asks before every step. Assess with live checks, page the
-- on-call engineers and open a status page incident, mitigate (roll back, scale up,
-- restart, or switch off a recently enabled feature flag), investigate, verify, resolve.
-- If the API does not come back, the mitigation is undone so that the next attempt starts
-- from what was there (--no-undo keeps it).
local multiship = require("multiship")
local incident = require("incident")

local MITIGATIONS = { "rollback", "scale", "restart", "disable-flag", "none" }

local function service(ctx)
  return ctx.params.service or ctx.env.deploy_service or "api"
end

-- What to do about what was seen, as an on-call engineer would start: a Deployment at 0
-- scales up; a failing API after a recent rollout rolls back; pods that crash or are not
-- ready are restarted (after a dependency came back, that skips their back-off); errors
-- from healthy pods after a recent flag change switch the flag off.
local function suggest(a, flags)
  local d = a.deployment
  local pods_failing = d.crash_looping > 0 or d.ready < d.replicas
  if d.replicas == 0 then return "scale" end
  if (a.unavailable or a.errors_high or pods_failing) and d.recent_change then return "rollback" end
  if pods_failing then return "restart" end
  if (a.unavailable or a.errors_high) and flags.recent then return "disable-flag" end
  return "none"
end

return playbook {
  description = "when the API is down: assess, page, post status, mitigate (rollback, scale, restart, flag off), verify",
  step_by_step = true,
  params = incident.params({ "load_duration", "rollout_timeout", "gate_count" }, {
    deployment = { type = "string", default = "api", help = "the API's Deployment" },
    service = { type = "string", help = "the Service in front of it (default: the environment's deploy_service, else api)" },
    mitigation = { type = "enum", values = MITIGATIONS, help = "answers \"Mitigation?\"" },
    flag = { type = "string", pattern = "^[%w%-_%.]+$", help = "the flag to switch off (default: the one switched on last)" },
    replicas = { type = "integer", min = 1, help = "replicas to scale up to (default: twice the current, at least 2)" },
    recent = { type = "duration", default = "1h", help = "how recent a rollout or flag change must be to be a suspect" },
    verify_within = { type = "duration", default = "2m", help = "how long the API may take to answer healthy again" },
  }),
  lock = "deploy",
  steps = {
    step "assess the impact" {
      read_only = true,
      run = function(ctx)
        local base = multiship.api_url(ctx.env, service(ctx))
        local a = incident.assess_api(ctx, base, { "/health", "/api/health/detailed" }, ctx.params.load_duration)
        local d = incident.deployment(ctx.params.deployment, ctx.params.recent)
        a.deployment = d
        local line = incident.describe_deployment(d)
        if d.ready < d.replicas or d.replicas == 0 or d.crash_looping > 0 or d.stalled then
          incident.finding(ctx, line)
        else
          ctx.log.info(line)
        end
        if d.ready == 0 then a.unavailable = true end
        -- the failing pods' logs, kept before a mitigation replaces them
        ctx.state.evidence = incident.report_evidence(ctx, ctx.params.deployment, "before mitigating")
        local flags, why = incident.flags(ctx, ctx.params.recent)
        local suspects = { enabled = {} }
        if flags then
          for _, f in ipairs(flags) do
            if f.enabled then
              suspects.enabled[#suspects.enabled + 1] = f.feature
              if f.recent and not suspects.recent then
                suspects.recent = f.feature
                ctx.log.info(string.format("feature flag %s was switched on %s ago", f.feature,
                  time.format_duration(math.floor(f.age))))
              end
            end
          end
        else
          ctx.log.warn("feature flags not read: " .. why)
        end
        ctx.state.flags = suspects
        ctx.state.deployment = { image = d.image, replicas = d.replicas, ready = d.ready, revision = d.revision,
          previous_revision = d.previous_revision, previous_image = d.previous_image, recent_change = d.recent_change }
        ctx.state.suggested = suggest(a, suspects)
        ctx.state.summary = a.unavailable and "the API is unavailable"
          or a.errors_high and ("the API errs on " .. incident.percent(a.error_rate) .. " of requests")
          or (#(ctx.state.findings or {}) > 0 and ctx.state.findings[1])
          or "the API answers normally"
        ctx.state.error_rate = a.error_rate
        local default = (a.unavailable or a.critical) and "sev1"
          or (#(ctx.state.findings or {}) > 0 and "sev2") or "sev3"
        incident.severity(ctx, default)
      end,
    },

    step "page the on-call engineers" {
      run = function(ctx)
        local d = ctx.state.deployment
        incident.page(ctx, "API outage: " .. ctx.state.summary, { findings = incident.findings_line(ctx),
          deployment = string.format("%s %s, %d/%d ready", ctx.params.deployment, d.image, d.ready, d.replicas),
          error_rate = incident.percent(ctx.state.error_rate) })
      end,
    },

    step "post to the status page" {
      run = function(ctx)
        incident.post_status(ctx, ctx.state.severity == "sev1" and "API unavailable" or "Elevated API errors",
          "We are investigating errors in the Multiship API.")
      end,
    },

    step "choose a mitigation" {
      read_only = true,
      run = function(ctx)
        local d, flags = ctx.state.deployment, ctx.state.flags
        local choices = incident.offered(MITIGATIONS, function(m)
          return (m ~= "rollback" or d.previous_revision) and (m ~= "disable-flag" or #flags.enabled > 0)
        end)
        local suggested = ctx.state.suggested
        if d.previous_revision then
          ctx.log.info(string.format("rollback: revision %d (%s) back to revision %d (%s)", d.revision, d.image,
            d.previous_revision, d.previous_image or "?"))
        end
        local m = incident.decide(ctx, "mitigation", "Mitigation?", { choices = choices, default = suggested })
        ctx.state.mitigation = m
        if m == "disable-flag" then
          ctx.state.flag = incident.decide(ctx, "flag", "Which feature flag to switch off?",
            { choices = flags.enabled, default = flags.recent or flags.enabled[1] })
        elseif m == "scale" then
          local n = ctx.params.replicas or math.max(2 * d.replicas, 2)
          ctx.state.scale_to = n
          incident.record(ctx, "Replicas to scale up to?", n,
            ctx.params.replicas and "param replicas" or "twice the current, at least 2")
        end
      end,
    },

    step "roll back to the previous revision" {
      when = function(ctx) return ctx.state.mitigation == "rollback" end,
      run = function(ctx)
        local name = ctx.params.deployment
        incident.roll_back(ctx, name, ctx.state.deployment.image)
        if ctx.plan then return end
        ctx.state.image_after = multiship.container_image(k8s.get("deployment", name))
        ctx.log.info(string.format("%s rolled back from %s to %s", name, ctx.state.deployment.image, ctx.state.image_after))
      end,
      undo = function(ctx)
        -- back to the revision that was live (not waited for: it may be the one that crashes)
        local was = ctx.state.deployment
        if not incident.roll_forward(ctx.params.deployment, was.image, was.revision) then return end
        ctx.log.warn(string.format("%s rolled forward again to revision %d (%s)", ctx.params.deployment,
          ctx.state.deployment.revision, ctx.state.deployment.image))
      end,
    },

    step "scale up the API" {
      when = function(ctx) return ctx.state.mitigation == "scale" end,
      run = function(ctx)
        if not incident.scale(ctx, ctx.params.deployment, ctx.state.scale_to) then return end
        ctx.log.info(string.format("%s scaled from %d to %d replicas", ctx.params.deployment,
          ctx.state.deployment.replicas, ctx.state.scale_to))
      end,
      undo = function(ctx)
        k8s.scale(ctx.params.deployment, ctx.state.deployment.replicas)
      end,
    },

    step "restart the API's pods" {
      -- a restart cannot be taken back, and needs no taking back: no undo
      when = function(ctx) return ctx.state.mitigation == "restart" end,
      run = function(ctx)
        k8s.restart(ctx.params.deployment)
        if not incident.wait_rollout(ctx, ctx.params.deployment, { quiet = true }) then return end
        ctx.log.info(ctx.params.deployment .. " restarted: every pod replaced")
      end,
    },

    step "switch off the suspect feature flag" {
      when = function(ctx) return ctx.state.mitigation == "disable-flag" end,
      run = function(ctx) incident.set_flag(ctx, ctx.state.flag, false) end,
      undo = function(ctx) incident.set_flag(ctx, ctx.state.flag, true) end,
    },

    step "tell the status page the fix is in" {
      when = function(ctx) return ctx.state.mitigation ~= "none" and incident.status_open(ctx) end,
      run = function(ctx) incident.fix_in(ctx) end,
    },

    step "investigate: logs and events" {
      read_only = true,
      run = function(ctx)
        ctx.state.evidence_after = incident.report_evidence(ctx, ctx.params.deployment, "now")
        ctx.state.changes = incident.report_changes(ctx, ctx.params.deployment)
      end,
    },

    step "verify the API is restored" {
      read_only = true,
      run = function(ctx)
        if ctx.plan then return end
        incident.verify(ctx, multiship.api_url(ctx.env, service(ctx)),
          { paths = { "/health", "/api/health/detailed" } })
      end,
    },

    step "resolve the incident" {
      run = function(ctx)
        local how = ({ rollback = "rolled back to the previous release", scale = "scaled up",
          restart = "restarted", ["disable-flag"] = "switched off a feature" })[ctx.state.mitigation]
        incident.resolve(ctx, "The API is answering normally again" .. (how and (": we " .. how) or "") .. ".")
      end,
    },
  },
}
