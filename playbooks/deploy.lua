-- deploy: the seed's pipeline deploy of the API in place. Check the image (in ECR when the
-- environment names a repository), set it, wait for the rollout, verify health, and scan
-- the pods' recent logs for errors. The undo is `kubectl rollout undo` to the revision
-- the run started from.
local multiship = require("multiship")

-- Error lines in the logs of the deployment's pods: the last `tail` lines of each running
-- container, and of the previous container of any that restarted (a crash during start-up
-- is gone from the current log once the container is back).
local function error_lines(deployment, pattern, tail)
  local found = {}
  for _, l in ipairs(k8s.logs("deployment/" .. deployment, { tail = tail, grep = pattern }).lines) do
    found[#found + 1] = l
  end
  local d = k8s.get("deployment", deployment)
  local pods = k8s.list("pod", { labels = d.spec.selector.matchLabels })
  for _, pod in ipairs(pods.items) do
    for _, cs in ipairs(pod.status and pod.status.containerStatuses or {}) do
      if (cs.restartCount or 0) > 0 then
        local previous = k8s.logs("pod/" .. pod.metadata.name, { container = cs.name, previous = true, tail = tail,
          grep = pattern })
        for _, l in ipairs(previous.lines) do
          l.text = l.text .. " (before restart " .. cs.restartCount .. ")"
          found[#found + 1] = l
        end
      end
    end
  end
  return found
end

return playbook {
  description = "check the image, set it, wait for the rollout, verify health, scan the logs",
  params = {
    version = { type = "string", required = true, pattern = "^v%d+%.%d+%.%d+[%w%-]*$",
      help = "image tag to deploy, e.g. v2.2.0" },
    deployment = { type = "string", default = "api" },
    rollout_timeout = { type = "duration", default = "5m" },
    verify_within = { type = "duration", default = "1m" },
    error_pattern = { type = "string", default = "ERROR", help = "a Lua pattern: log lines that count as errors" },
  },
  lock = "deploy",
  steps = {
    step "check the image" {
      read_only = true,
      run = function(ctx)
        local image = multiship.image(ctx.env, ctx.params.version)
        if ctx.env.ecr_repository then
          local repo = ctx.env.ecr_repository
          aws.configure(ctx.env.aws or {})
          if not aws.ecr.image_exists(repo, ctx.params.version) then
            error(string.format("%s:%s is not in ECR (repository %s): push it first", repo, ctx.params.version, repo), 0)
          end
          ctx.log.info(string.format("%s:%s is in ECR", repo, ctx.params.version))
        end
        local d = k8s.get("deployment", ctx.params.deployment)
        ctx.state.previous_image = multiship.container_image(d)
        ctx.state.previous_revision = tonumber(d.metadata.annotations
          and d.metadata.annotations["deployment.kubernetes.io/revision"])
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
        -- nothing changed when it already ran this image; a rollout undo would go back further
        if ctx.state.previous_image == ctx.state.image then return end
        k8s.rollout_undo(ctx.params.deployment, { to_revision = ctx.state.previous_revision })
        if not ctx.plan then
          k8s.rollout_status(ctx.params.deployment, { timeout = ctx.params.rollout_timeout, quiet = true })
        end
        ctx.log.warn(ctx.params.deployment .. " is back on " .. ctx.state.previous_image)
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
        local lines = error_lines(ctx.params.deployment, ctx.params.error_pattern, 100)
        ctx.state.error_lines = #lines
        if #lines > 0 then
          error(string.format("%d error line%s in the pods' logs, first (%s): %s", #lines, #lines == 1 and "" or "s",
            lines[1].pod, lines[1].text))
        end
      end,
    },
  },
}
