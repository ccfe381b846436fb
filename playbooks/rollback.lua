-- rollback: the seed's immediate rollback (critical issues). Undo the last rollout, wait
-- for it, and verify health. There is no undo: rolling forward again is a deploy.
local multiship = require("multiship")

return playbook {
  description = "roll the API back to its previous revision and verify it",
  params = {
    deployment = { type = "string", default = "api" },
    to_revision = { type = "integer", min = 1, help = "a revision from `kubectl rollout history` (default: the previous one)" },
    rollout_timeout = { type = "duration", default = "5m" },
    verify_within = { type = "duration", default = "1m" },
  },
  lock = "deploy",
  steps = {
    step "record the current revision" {
      read_only = true,
      run = function(ctx)
        local history = k8s.rollout_history(ctx.params.deployment)
        ctx.state.revisions = #history
        local d = k8s.get("deployment", ctx.params.deployment)
        ctx.state.image_before = multiship.container_image(d)
        ctx.state.revision_before = d.metadata.annotations and d.metadata.annotations["deployment.kubernetes.io/revision"]
        if not ctx.params.to_revision and #history < 2 then
          error(string.format("%s has no earlier revision to roll back to (its history holds %d, running %s)",
            ctx.params.deployment, #history, ctx.state.image_before), 0)
        end
        ctx.log.info(string.format("%s runs %s (revision %s)", ctx.params.deployment, ctx.state.image_before,
          tostring(ctx.state.revision_before)))
      end,
    },

    step "roll back" {
      confirm = "Roll {params.deployment} on {env} back from {state.image_before}?",
      run = function(ctx)
        -- a resumed run that died after sending the undo finds a new revision: another
        -- undo would roll forward again, so it only waits for the first
        local d = k8s.get("deployment", ctx.params.deployment)
        local revision = d.metadata.annotations and d.metadata.annotations["deployment.kubernetes.io/revision"]
        if revision ~= ctx.state.revision_before then
          ctx.log.info(string.format("%s already runs %s (revision %s): the rollback was sent", ctx.params.deployment,
            multiship.container_image(d), tostring(revision)))
        else
          local r = k8s.rollout_undo(ctx.params.deployment, { to_revision = ctx.params.to_revision })
          if r and r.skipped then ctx.log.warn(r.message) end
        end
        if ctx.plan then return end
        k8s.rollout_status(ctx.params.deployment, { timeout = ctx.params.rollout_timeout })
        ctx.state.image_after = multiship.container_image(k8s.get("deployment", ctx.params.deployment))
        ctx.log.info("now running " .. ctx.state.image_after)
      end,
    },

    step "verify health" {
      read_only = true,
      run = function(ctx)
        if ctx.plan then return end
        local base = multiship.api_url(ctx.env, ctx.env.deploy_service or "api")
        local r = health.check({ base .. "/health", within = ctx.params.verify_within, interval = "1s" })
        if not r.ok then error(string.format("after the rollback to %s: %s", ctx.state.image_after, r.reason)) end
      end,
    },
  },
}
