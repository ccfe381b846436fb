-- service-outage: the seed's emergency procedure for a service outage, in its six steps,
-- across what users reach: the API behind api-service (blue-green: the live colour), its
-- database as the API sees it, the shipping providers and the website. Assess the impact
-- (which components are down, how many pods are ready, the error rate), notify the on-call
-- engineers, communicate (status page and the team's chat), mitigate (fail over to the
-- stable colour, roll the live colour back, or scale it up), investigate, restore and
-- verify. It asks before every step; a mitigation that does not bring the service back is
-- undone (--no-undo keeps it).
local multiship = require("multiship")
local incident = require("incident")

local MITIGATIONS = { "failover", "rollback", "scale", "none" }

local function suggest(a, live, idle)
  local pods_failing = live.ready < live.replicas or live.crash_looping > 0
  local failing = a.unavailable or a.errors_high or a.failed["/api/health/database"] or pods_failing
  if failing and idle and idle.image ~= live.image then return "failover" end
  if failing and live.recent_change then return "rollback" end
  if live.replicas == 0 or pods_failing then return "scale" end
  return "none"
end

local function component_line(components)
  local parts = {}
  for _, name in ipairs({ "api", "database", "providers", "pods", "website" }) do
    if components[name] then parts[#parts + 1] = name .. " " .. components[name] end
  end
  return table.concat(parts, ", ")
end

return playbook {
  description = "the six-step outage procedure: assess, notify, communicate, mitigate, investigate, restore",
  step_by_step = true,
  params = incident.params({ "load_duration", "rollout_timeout", "gate_count" }, {
    mitigation = { type = "enum", values = MITIGATIONS, help = "answers \"Mitigation?\"" },
    replicas = { type = "integer", min = 1,
      help = "replicas for the colour that is scaled up (default: the live colour's, at least 2)" },
    recent = { type = "duration", default = "1h", help = "how recent a rollout must be to be a suspect" },
    verify_within = { type = "duration", default = "2m", help = "how long the service may take to answer healthy again" },
  }),
  lock = "deploy",
  steps = {
    step "assess the impact" {
      read_only = true,
      run = function(ctx)
        local url = incident.user_url(ctx.env)
        ctx.log.info("users reach the API at " .. url)
        local a = incident.assess_api(ctx, url, { "/health", "/api/health/database", "/api/providers/health" },
          ctx.params.load_duration)
        local components = {
          api = a.unavailable and "down" or a.errors_high and "erring" or "up",
          database = a.failed["/api/health/database"] and "down" or "up",
          providers = a.failed["/api/providers/health"] and "failing" or "up",
        }
        if ctx.env.site_url then
          local site = incident.probe(ctx.env.site_url, { "/" })[1]
          components.website = site.ok and "up" or "down"
          if not site.ok then incident.finding(ctx, "the website " .. ctx.env.site_url .. ": " .. site.reason) end
        end
        local live_colour, idle_colour = multiship.live_colour()
        local live = incident.deployment("api-" .. live_colour, ctx.params.recent)
        local idle = k8s.get("deployment", "api-" .. idle_colour, { optional = true })
          and incident.deployment("api-" .. idle_colour, ctx.params.recent) or nil
        components.pods = string.format("%d/%d ready (%s)", live.ready, live.replicas, live_colour)
        local line = incident.describe_deployment(live)
        if live.ready < live.replicas or live.replicas == 0 or live.crash_looping > 0 then
          incident.finding(ctx, "live colour " .. line)
        else
          ctx.log.info("live colour " .. line)
        end
        if idle then ctx.log.info("stable colour " .. incident.describe_deployment(idle)) end
        ctx.state.evidence = incident.report_evidence(ctx, live.name, "before mitigating")
        ctx.log.info("components: " .. component_line(components))
        ctx.state.components = components
        ctx.state.live = { colour = live_colour, name = live.name, image = live.image, replicas = live.replicas,
          revision = live.revision, previous_revision = live.previous_revision, previous_image = live.previous_image }
        ctx.state.idle = idle and { colour = idle_colour, name = idle.name, image = idle.image, replicas = idle.replicas }
        ctx.state.suggested = suggest(a, live, idle)
        ctx.state.summary = component_line(components)
        ctx.state.error_rate = a.error_rate
        local default = (a.unavailable or a.critical or components.database == "down" or live.ready == 0) and "sev1"
          or (#(ctx.state.findings or {}) > 0 and "sev2") or "sev3"
        incident.severity(ctx, default)
      end,
    },

    step "notify the on-call engineers" {
      run = function(ctx)
        incident.page(ctx, "service outage: " .. ctx.state.summary, { findings = incident.findings_line(ctx),
          components = ctx.state.summary, error_rate = incident.percent(ctx.state.error_rate) })
      end,
    },

    step "communicate: status page and stakeholders" {
      run = function(ctx)
        local c = ctx.state.components
        local down = {}
        for _, name in ipairs({ "api", "database", "providers", "website" }) do
          if c[name] and c[name] ~= "up" then down[#down + 1] = name end
        end
        incident.post_status(ctx,
          #down > 0 and ("Service disruption: " .. table.concat(down, ", ")) or "Service disruption",
          "We are investigating a disruption of the Multiship service.")
      end,
    },

    step "choose a mitigation" {
      read_only = true,
      run = function(ctx)
        local live, idle = ctx.state.live, ctx.state.idle
        local choices = incident.offered(MITIGATIONS, function(m)
          return (m ~= "failover" or idle) and (m ~= "rollback" or live.previous_revision)
        end)
        if idle then
          ctx.log.info(string.format("failover: traffic from %s (%s) to %s (%s, %d replicas)", live.colour, live.image,
            idle.colour, idle.image, idle.replicas))
        end
        local m = incident.decide(ctx, "mitigation", "Mitigation?", { choices = choices, default = ctx.state.suggested })
        ctx.state.mitigation = m
        if m == "failover" or m == "scale" then
          local n = ctx.params.replicas or math.max(live.replicas, 2)
          ctx.state.scale_to = n
          incident.record(ctx, "Replicas for the " .. (m == "failover" and "stable" or "live") .. " colour?", n,
            ctx.params.replicas and "param replicas" or "the live colour's, at least 2")
        end
      end,
    },

    step "scale up the stable colour" {
      when = function(ctx) return ctx.state.mitigation == "failover" end,
      run = function(ctx)
        local idle = ctx.state.idle
        if idle.replicas >= ctx.state.scale_to then
          ctx.log.info(string.format("%s already has %d replicas", idle.name, idle.replicas))
        else
          k8s.scale(idle.name, ctx.state.scale_to)
        end
        if not incident.wait_rollout(ctx, idle.name, { quiet = true }) then return end
        ctx.log.info(string.format("%s (%s) has %d ready replicas", idle.name, idle.image, ctx.state.scale_to))
      end,
      undo = function(ctx)
        k8s.scale(ctx.state.idle.name, ctx.state.idle.replicas)
      end,
    },

    step "switch traffic to the stable colour" {
      when = function(ctx) return ctx.state.mitigation == "failover" end,
      run = function(ctx)
        multiship.switch_traffic(ctx, ctx.state.idle.colour)
        ctx.log.info(string.format("api-service now sends traffic to %s (%s)", ctx.state.idle.colour, ctx.state.idle.image))
      end,
      undo = function(ctx)
        k8s.patch_service_selector("api-service", { colour = ctx.state.live.colour })
      end,
    },

    step "roll back the live colour" {
      when = function(ctx) return ctx.state.mitigation == "rollback" end,
      run = function(ctx) incident.roll_back(ctx, ctx.state.live.name, ctx.state.live.image) end,
      undo = function(ctx)
        local live = ctx.state.live
        incident.roll_forward(live.name, live.image, live.revision)
      end,
    },

    step "scale up the live colour" {
      when = function(ctx) return ctx.state.mitigation == "scale" end,
      run = function(ctx) incident.scale(ctx, ctx.state.live.name, ctx.state.scale_to) end,
      undo = function(ctx)
        k8s.scale(ctx.state.live.name, ctx.state.live.replicas)
      end,
    },

    step "tell the status page the fix is in" {
      when = function(ctx) return ctx.state.mitigation ~= "none" and incident.status_open(ctx) end,
      run = function(ctx) incident.fix_in(ctx) end,
    },

    step "investigate the root cause" {
      read_only = true,
      run = function(ctx)
        local live = ctx.state.live.name
        ctx.state.evidence_after = incident.report_evidence(ctx, live, live .. " now")
        ctx.state.changes = incident.report_changes(ctx, live)
      end,
    },

    step "verify every component is restored" {
      read_only = true,
      run = function(ctx)
        if ctx.plan then return end
        local url = incident.user_url(ctx.env)
        incident.verify(ctx, url, { paths = { "/health", "/api/health/database" } })
        if ctx.env.site_url then
          local r = health.check({ ctx.env.site_url, within = ctx.params.verify_within, interval = "2s" })
          if not r.ok then error("the website is not restored: " .. r.reason, 0) end
        end
        local providers = incident.probe(url, { "/api/providers/health" })[1]
        if not providers.ok then
          ctx.log.warn("the shipping providers still fail (" .. providers.reason .. "): see the provider-failure runbook")
        end
      end,
    },

    step "restore: resolve the incident" {
      run = function(ctx)
        local how = ({ failover = "moved traffic to the stable release", rollback = "rolled back the release",
          scale = "added capacity" })[ctx.state.mitigation]
        incident.resolve(ctx, "The Multiship service is operating normally again" .. (how and (": we " .. how) or "") .. ".")
      end,
    },
  },
}
