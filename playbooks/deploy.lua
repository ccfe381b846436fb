-- deploy: the seed's pipeline deploy of the API in place. Check the image, set it, wait
-- for the rollout, verify health, and scan the new pods' recent logs for errors. The undo
-- is `kubectl rollout undo`.
local multiship = require("multiship")

return playbook {
  description = "set the API's image, wait for the rollout, verify health, scan the logs",
  params = {
    version = { type = "string", required = true, pattern = "^v%d+%.%d+%.%d+[%w%-]*$",
      help = "image tag to deploy, e.g. v2.2.0" },
    deployment = { type = "string", default = "api" },
    rollout_timeout = { type = "duration", default = "5m" },
    verify_within = { type = "duration", default = "1m" },
  },
  lock = "deploy",
  steps = {
    step "check the image" {
      read_only = true,
      run = function(ctx)
        local image = multiship.image(ctx.env, ctx.params.version)
        if ctx.env.aws and ctx.env.ecr_repository then
          local repo = ctx.env.ecr_repository
          aws.configure(ctx.env.aws)
          if not aws.ecr.image_exists(repo, ctx.params.version) then
            error(string.format("%s:%s is not in ECR", repo, ctx.params.version))
          end
        end
        local d = k8s.get("deployment", ctx.params.deployment)
        ctx.state.previous_image = multiship.container_image(d)
        ctx.state.image = image
        if ctx.state.previous_image == image then
          ctx.log.warn(ctx.params.deployment .. " already runs " .. image)
        end
      end,
    },

    step "set the new image" {
      run = function(ctx)
        k8s.set_image(ctx.params.deployment, { api = ctx.state.image },
          { change_cause = "deploy " .. ctx.params.version })
      end,
      undo = function(ctx)
        k8s.rollout_undo(ctx.params.deployment)
        if not ctx.plan then k8s.rollout_status(ctx.params.deployment, { timeout = ctx.params.rollout_timeout, quiet = true }) end
      end,
    },

    step "wait for the rollout" {
      read_only = true,
      run = function(ctx)
        if ctx.plan then return end
        local r = k8s.rollout_status(ctx.params.deployment, { timeout = ctx.params.rollout_timeout })
        ctx.state.revision = r.revision
      end,
    },

    step "verify health" {
      read_only = true,
      run = function(ctx)
        if ctx.plan then return end
        local base = multiship.api_url(ctx.env, ctx.env.deploy_service or "api")
        local r = health.check({ base .. "/health", base .. "/api/health/database",
          within = ctx.params.verify_within, interval = "1s" })
        if not r.ok then error(r.reason) end
      end,
    },

    step "scan recent logs for errors" {
      read_only = true,
      run = function(ctx)
        if ctx.plan then return end
        local logs = k8s.logs("deployment/" .. ctx.params.deployment, { tail = 100, grep = "ERROR" })
        ctx.state.error_lines = #logs.lines
        if #logs.lines > 0 then
          error(string.format("%d error lines in the new pods' logs, first: %s", #logs.lines, logs.lines[1].text))
        end
      end,
    },
  },
}
