-- default_scenario.lua (sim.default_scenario): the cluster `tug sim` and the `local`
-- environment start with when no scenario is given: Multiship in namespace multiship.
-- It is YAML, the same format as a scenario file (`tug sim --scenario FILE`), so it is
-- also the reference example of one.

return [==[
# Multiship on the simulated cluster.
namespace: multiship          # where objects below without a namespace go

timing:
  pod_start: 500ms            # ContainerCreating -> Running
  ready_after: 1s             # Running -> Ready
  terminate_after: 0s         # how long a deleted pod stays Terminating (at most its grace period)
  crash_after: 1s             # how long a crash-looping container runs before it exits
  restart_backoff: 2s         # the first CrashLoopBackOff wait; doubles, up to 30x
  bookmark_interval: 60s      # BOOKMARK events on watches that allow them

warm_start: true              # the objects below start rolled out: pods Ready, Deployments Available

admin_token: sim-admin-token  # Bearer token of the feature-flag admin API
features:                     # feature flags the API starts with
  new-shipment-tracking: false
  bulk-label-printing: true
providers:                    # healthy, degraded or down
  easypost: healthy
  shippo: healthy
  veeqo: healthy

images:
  multiship/api:
    app: multiship            # the Multiship API model (health, providers, orders, admin)
    default:                  # tags not listed below
      latency: { p50: 20ms, p95: 60ms }
      error_rate: 0.0005
    versions:
      v2.1.0:
        latency: { p50: 25ms, p95: 80ms }
        error_rate: 0.0005
      v2.2.0:
        latency: { p50: 20ms, p95: 60ms }
        error_rate: 0.0005
      v2.2.1-bad:             # passes readiness, fails its health checks, errors 30% of the time
        health: 503
        error_rate: 0.3
        latency: { p50: 60ms, p95: 400ms }

traffic:                      # background requests, counted in /metrics (not sent)
  - { service: api-service, rps: 20 }
  - { service: api, rps: 10 }

objects:
  - apiVersion: v1
    kind: Namespace
    metadata: { name: multiship }

  - apiVersion: v1
    kind: ConfigMap
    metadata: { name: api-config }
    data:
      NODE_ENV: production
      LOG_LEVEL: warn

  # The API, rolled out in place (kubectl set image / rollout status / rollout undo).
  - apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: api
      labels: { app: api }
      annotations: { kubernetes.io/change-cause: "initial release v2.1.0" }
    spec:
      replicas: 4
      selector: { matchLabels: { app: api, track: main } }
      strategy: { type: RollingUpdate, rollingUpdate: { maxSurge: 25%, maxUnavailable: 25% } }
      template:
        metadata: { labels: { app: api, track: main } }
        spec: &api_pod
          containers:
            - name: api
              image: multiship/api:v2.1.0
              ports: [ { name: http, containerPort: 8080 } ]
              env: [ { name: NODE_ENV, value: production } ]
              readinessProbe: { tcpSocket: { port: 8080 } }

  # Blue-green: two colours, the Service selects one.
  - apiVersion: apps/v1
    kind: Deployment
    metadata: { name: api-blue, labels: { app: api, colour: blue } }
    spec:
      replicas: 4
      selector: { matchLabels: { app: api, colour: blue, track: stable } }
      template:
        metadata: { labels: { app: api, colour: blue, track: stable } }
        spec: *api_pod

  - apiVersion: apps/v1
    kind: Deployment
    metadata: { name: api-green, labels: { app: api, colour: green } }
    spec:
      replicas: 0
      selector: { matchLabels: { app: api, colour: green, track: stable } }
      template:
        metadata: { labels: { app: api, colour: green, track: stable } }
        spec: *api_pod

  # Canary: its pods carry the live colour, so api-service sends them a share of the
  # traffic in proportion to their number.
  - apiVersion: apps/v1
    kind: Deployment
    metadata: { name: api-canary, labels: { app: api, track: canary } }
    spec:
      replicas: 0
      selector: { matchLabels: { app: api, track: canary } }
      template:
        metadata: { labels: { app: api, colour: blue, track: canary } }
        spec: *api_pod

  - apiVersion: v1
    kind: Service
    metadata: { name: api-service, labels: { app: api } }
    spec:
      selector: { app: api, colour: blue }
      ports: [ { name: http, port: 80, targetPort: 8080 } ]

  - apiVersion: v1
    kind: Service
    metadata: { name: api, labels: { app: api } }
    spec:
      selector: { app: api, track: main }
      ports: [ { name: http, port: 80, targetPort: 8080 } ]
]==]
