return playbook {
  description = "Restart the web tier",
  params = {
    version = { type = "string", required = true, pattern = "^v%d+%.%d+%.%d+$", help = "a tag" },
    replicas = { type = "integer", default = 3, min = 1, max = 50 },
    mode = { type = "enum", values = { "fast", "safe" }, default = "safe" },
    wait = { type = "duration", default = "30s" },
  },
  steps = {
    step "Scale the web tier down" { run = function(ctx) end, undo = function(ctx) end, timeout = "5m" },
    step "Check the health page" { run = function() end, retries = 3, retry_delay = "2s", read_only = true,
      tags = { "health" } },
  },
}
