#!/bin/bash
# make demo: the main job. On one simulated cluster (tug sim, on loopback), run the
# Multiship blue-green deploy of v2.2.0, which succeeds, then a canary of v2.2.1-bad,
# whose analysis fails so the run rolls back. Exits 0 when both behaved so.
set -uo pipefail
cd "$(dirname "$0")/../.."
tug=$(pwd)/tug
work=$(mktemp -d /tmp/tug-demo-XXXXXX)
sim_pid=
cleanup() { [ -n "$sim_pid" ] && kill "$sim_pid" 2> /dev/null; wait 2> /dev/null; rm -rf "$work"; }
trap cleanup EXIT

"$tug" sim --port 0 --kubeconfig "$work/kubeconfig" > "$work/sim.log" 2>&1 &
sim_pid=$!
for _ in $(seq 100); do [ -s "$work/kubeconfig" ] && break; sleep 0.05; done
server=$(sed -n 's/^ *server: *//p' "$work/kubeconfig" | head -1)
[ -n "$server" ] || { echo "demo: the simulated cluster did not start:"; cat "$work/sim.log"; exit 1; }

# An environment like local.yaml, pointed at this one shared simulated cluster.
mkdir -p "$work/environments"
cat > "$work/environments/demo.yaml" << YAML
name: demo
description: the simulated cluster tug sim serves for the demo
url: $server/svc/multiship/api-service
service_url: $server/svc/multiship/{service}
kubernetes: { kubeconfig: $work/kubeconfig, namespace: multiship }
thresholds: { p95_ms: 500, error_rate: 0.001 }
YAML
export TUG_ENVIRONMENTS="$work/environments" TUG_HOME="$work/.tug"

echo "== blue-green: deploy v2.2.0 to the idle colour, verify it, switch traffic"
"$tug" run blue-green version=v2.2.0 --env demo --yes
bg=$?
echo
echo "== canary: v2.2.1-bad (fails its health checks, 30% errors): the gate must abort it"
"$tug" run canary version=v2.2.1-bad --env demo --yes analysis_count=2 analysis_interval=1s
canary=$?
echo
echo "== the cluster afterwards (kubectl works against it too)"
"$tug" lua -e '
  local c = k8s.connect({ kubeconfig = arg[1], namespace = "multiship" })
  local svc = c:get("service", "api-service")
  print("api-service selects colour " .. svc.spec.selector.colour)
  for _, name in ipairs({ "api-blue", "api-green", "api-canary" }) do
    local d = c:get("deployment", name)
    print(string.format("%-11s %d replicas  %s", name, d.spec.replicas, d.spec.template.spec.containers[1].image))
  end' "$work/kubeconfig"

echo
if [ "$bg" -eq 0 ] && [ "$canary" -eq 1 ]; then
  echo "demo: blue-green succeeded and the bad canary was rolled back, as they should"
  exit 0
fi
echo "demo: unexpected outcome (blue-green exit $bg, canary exit $canary)"
exit 1
