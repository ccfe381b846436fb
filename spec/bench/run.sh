#!/bin/bash
# make bench: tug's figures beside what users would otherwise reach for. Nothing here is
# asserted; the README's "Performance" section records a run and its targets.
set -euo pipefail
cd "$(dirname "$0")/../.."
tug=${TUG:-./tug}

echo "== start-up: tug lua -e '' against lua5.4 -e '' (target: within 1 ms)"
hyperfine -N --warmup 50 --runs 500 "$tug lua -e ''" "lua5.4 -e ''" 2>&1 | grep -v "^ *$"

echo
echo "== loop round trips: 100,000 task.sleep(0) (target: under 2 us each)"
"$tug" lua spec/bench/yield.lua 100000
lua5.4 spec/bench/coroutine.lua 100000

echo
echo "== child processes: 1,000 /bin/true, 50 at a time (target: parity with xargs -P 50)"
hyperfine -N --warmup 2 --runs 10 \
  "$tug lua spec/bench/exec_true.lua 1000 50" \
  "xargs -P 50 -n 1 -a spec/bench/thousand.txt /bin/true" 2>&1 | grep -v "^ *$"

echo
echo "== engine: per-step overhead, 10,000 no-op steps (target: under 20 us a step)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$tug" lua spec/bench/engine.lua "$work"
tug_abs=$(cd "$(dirname "$tug")" && pwd)/$(basename "$tug")
per_step() { # $1 = TUG_HOME; prints the per-step cost from one timed run
  local t0 t1
  t0=$(date +%s%N)
  (cd "$work" && TUG_HOME="$1" CI=true "$tug_abs" run noop10k --output json > /dev/null)
  t1=$(date +%s%N)
  awk -v ns=$((t1 - t0)) 'BEGIN { printf "%.1f us a step (%.2f s in all)\n", ns / 1000 / 10000, ns / 1e9 }'
}
printf "journal on tmpfs (/dev/shm), fsync is free:  "; per_step /dev/shm/tug-bench-$$
printf "journal on this disk, fsync at each step:     "; per_step "$work/.tug"
rm -rf /dev/shm/tug-bench-$$

echo
echo "== secret redaction: 10 MB of output with 20 secrets registered (target: under 0.2 s)"
"$tug" lua spec/bench/redact.lua 10 20 > /dev/null
echo "== engine: a state that grows, 10,000 steps each adding a key to ctx.state (journal on tmpfs)"
echo "   (before the journal recorded patches: a 781 MB journal and 158 s on this machine, loaded)"
grow_home=/dev/shm/tug-bench-grow-$$
(cd "$work" && TUG_HOME="$grow_home" CI=true /usr/bin/time -f "tug run of grow10k: %e s wall, %U s user, %M KB peak RSS" \
  "$tug_abs" run grow10k > /dev/null)
du -b "$grow_home"/runs/*.jsonl | awk '{ printf "journal: %.1f MB\n", $1 / 1e6 }'
rm -rf "$grow_home"

echo
echo "== tug plan of 50 steps against ansible-playbook --list-tasks of 50 tasks (target: 100x faster)"
if command -v ansible-playbook > /dev/null; then
  (cd "$work/plan" && hyperfine -N --warmup 2 --runs 10 "$tug_abs plan plan50 --output json" \
    "ansible-playbook --list-tasks plan50.yml" 2>&1 | grep -v "^ *$")
else
  echo "ansible-playbook is not installed (vendor/install.sh bench installs ansible-core)"
fi

echo
echo "== peak memory of a run (target: under 10 MB)"
(cd "$work" && TUG_HOME=/dev/shm/tug-bench-rss-$$ CI=true /usr/bin/time -f "tug run of 10,000 steps: %M KB peak RSS" \
  "$tug_abs" run noop10k --output json > /dev/null)
(cd "$work/plan" && CI=true /usr/bin/time -f "tug plan of 50 steps:      %M KB peak RSS" "$tug_abs" plan plan50 > /dev/null)
rm -rf /dev/shm/tug-bench-rss-$$

echo
echo "== HTTP: 10,000 URLs with 50 in flight vs curl --parallel --parallel-max 50 (target: parity)"
# spec/bench/http_fetch.lua starts its own nginx, runs both under /usr/bin/time -v for peak RSS
"$tug" lua spec/bench/http_fetch.lua 10000 50

# ---- k8s (modules/k8s): rollout waits against kubectl, on the simulated cluster ----
echo
echo "== k8s: rollout marked complete -> rollout_status returns, vs kubectl rollout status (target: under 50 ms, no slower than kubectl)"
"$tug" lua spec/bench/k8s.lua latency 20
echo
echo "== k8s: a command in a pod (exec over WebSocket, v5.channel.k8s.io), vs kubectl exec"
"$tug" lua spec/bench/k8s.lua exec 50
echo
echo "== k8s: 100 Deployments updated and awaited at once from one step, vs 100 concurrent kubectl pipelines"
"$tug" lua spec/bench/k8s.lua many 100

echo
echo "== health.load beside wrk: nginx on loopback, 50 connections, one thread each, 5 s (target: 80% of wrk's requests/s)"
"$tug" lua spec/bench/health.lua 5

echo
echo "== pg: 10,000 simple queries, one connection and ten at once, beside psql -f and pgbench -n -f"
"$tug" lua spec/bench/pg.lua 10000

# ---- aws (modules/aws): s3.sync against the AWS CLI, both to s3rver ----
echo
echo "== aws: s3.sync of 500 small files + 3 x 20 MiB (multipart) to s3rver, against aws s3 sync"
if [ -x /usr/bin/aws ] && command -v node > /dev/null; then
  "$tug" lua spec/bench/aws.lua 500 3 20
else
  echo "needs /usr/bin/aws (awscli) and node with vendor/node/node_modules/@20minutes/s3rver"
fi

# ---- simulated cluster (modules/sim) ----
echo
echo "== simulated cluster: 1,000 Deployments x 10 replicas, rolled out at once"
echo "   (time until every Deployment is complete, API list latency meanwhile, peak RSS)"
/usr/bin/time -f "sim: peak RSS %M KB" "$tug" lua spec/bench/sim.lua 1000 10
if command -v kwok > /dev/null; then
  echo "kwok is installed: compare with 'kwokctl create cluster' and the same 1,000 Deployments"
else
  echo "kwok (the usual fake-kubelet cluster) is not installed: no side-by-side figure"
fi
