#!/bin/bash
# make soak: two long-running tug processes under load, and whether their memory and
# descriptors stay flat.
#   (a) `tug sim` (spec/soak/scenario.yaml) under kubectl-like API traffic on one
#       Deployment (spec/soak/traffic.lua: gets, lists, Tables, watches, logs, rollout
#       history, Service proxy requests; a write every 3 s: annotate, scale, set image
#       and rollout status, restart)
#   (b) `tug run smoke --every 1s --env local` (its own simulated cluster in-process)
# Both are sampled every 5 s (VmRSS from /proc/PID/status, entries of /proc/PID/fd). The
# start figure is the median of the samples in the SOAK_WINDOW seconds after the warm-up,
# the end figure the median of the last SOAK_WINDOW seconds (medians, so that one
# garbage-collection cycle or one open watch at a sampling instant does not decide).
# The warm-up is as long as the cluster's bounded histories take to fill under this
# traffic, so that what grows after it is a leak: the ReplicaSets a Deployment keeps
# (revisionHistoryLimit 10, a new pod template every 12 s), the watch cache (75 s of
# events, at least 100 per resource), the Events (the soak scenario keeps 100).
# Fails when an end figure is more than 10% above its start, or when a process dies or
# the traffic gets errors.
#
#   SOAK_SECONDS=600   how long the load runs
#   SOAK_WARMUP=120    seconds before the start window
#   SOAK_WINDOW=30     length of the start and end windows
#   SOAK_RATE=15       reads a second of the traffic (writes: one every 3 s)
#   SOAK_SCENARIO=spec/soak/scenario.yaml   the simulator's scenario ('' = the default)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
tug=${TUG:-./tug}
tug=$(cd "$(dirname "$tug")" && pwd)/$(basename "$tug")
seconds=${SOAK_SECONDS:-600}
warmup=${SOAK_WARMUP:-120}
window=${SOAK_WINDOW:-30}
rate=${SOAK_RATE:-15}
scenario=${SOAK_SCENARIO-spec/soak/scenario.yaml}
limit=10 # percent

if (( seconds < warmup + 2 * window )); then
  echo "soak: SOAK_SECONDS ($seconds) must be at least SOAK_WARMUP + 2 x SOAK_WINDOW ($((warmup + 2 * window)))" >&2
  exit 2
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2> /dev/null || true; done
  wait 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# (a) the simulator, then the traffic once its kubeconfig is written
sim_args=(sim --port 0 --kubeconfig "$work/kubeconfig")
[ -n "$scenario" ] && sim_args+=(--scenario "$scenario")
"$tug" "${sim_args[@]}" > "$work/sim.out" 2>&1 &
sim_pid=$!
pids+=("$sim_pid")
for _ in $(seq 100); do [ -s "$work/kubeconfig" ] && break; sleep 0.1; done
if [ ! -s "$work/kubeconfig" ]; then
  echo "soak: tug sim did not start:" >&2
  cat "$work/sim.out" >&2
  exit 1
fi
"$tug" lua spec/soak/traffic.lua "$work/kubeconfig" "$seconds" "$rate" > "$work/traffic.out" 2>&1 &
traffic_pid=$!
pids+=("$traffic_pid")

# (b) the smoke playbook every second, its journal in a home of its own
(cd "$root" && TUG_HOME="$work/home" CI=true exec "$tug" run smoke --every 1s --env local) > "$work/every.out" 2>&1 &
every_pid=$!
pids+=("$every_pid")

echo "soak: $seconds s; tug sim (pid $sim_pid${scenario:+, scenario $scenario}) under $rate reads/s and a write every 3 s;"
echo "      tug run smoke --every 1s --env local (pid $every_pid); samples every 5 s"

rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2> /dev/null || echo 0; }
fds() { ls "/proc/$1/fd" 2> /dev/null | wc -l; }
alive() { kill -0 "$1" 2> /dev/null; }

start=$SECONDS
died=""
next_report=60
while (( SECONDS - start < seconds )); do
  sleep 5
  t=$((SECONDS - start))
  for who in sim every; do
    pid=$sim_pid
    [ "$who" = every ] && pid=$every_pid
    if ! alive "$pid"; then died="$died $who"; continue; fi
    echo "$t $(rss "$pid") $(fds "$pid")" >> "$work/$who.samples"
  done
  [ -n "$died" ] && break
  if (( t >= next_report )); then
    next_report=$((next_report + 60))
    printf "  %4d s   tug sim %6d kB %3d fds   smoke --every %6d kB %3d fds\n" "$t" \
      "$(rss "$sim_pid")" "$(fds "$sim_pid")" "$(rss "$every_pid")" "$(fds "$every_pid")"
  fi
done

status=0
if [ -n "$died" ]; then
  for who in $died; do
    echo "soak: FAILED: the $who process exited early; its output ends:" >&2
    tail -20 "$work/$who.out" >&2
  done
  exit 1
fi

kill -INT "$every_pid" 2> /dev/null || true
wait "$every_pid" 2> /dev/null || true
traffic_ok=true
wait "$traffic_pid" || traffic_ok=false
kill -INT "$sim_pid" 2> /dev/null || true
wait "$sim_pid" 2> /dev/null || true
pids=()

# median of column $2 of the samples whose time is within [$3, $4]
median() {
  awk -v col="$2" -v lo="$3" -v hi="$4" '$1 >= lo && $1 <= hi { print $col }' "$1" | sort -n |
    awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else print v[int((NR + 1) / 2)] }'
}

echo
printf "%-32s %12s %12s %9s\n" "" "start" "end" "change"
printf "%-32s %12s %12s\n" "" "($warmup-$((warmup + window)) s)" "($((seconds - window))-$seconds s)"
compare() { # label file column unit
  local a b change
  a=$(median "$2" "$3" "$warmup" $((warmup + window)))
  b=$(median "$2" "$3" $((seconds - window)) "$seconds")
  change=$(awk -v a="$a" -v b="$b" 'BEGIN { if (a == 0) print "n/a"; else printf "%+.1f%%", (b - a) * 100 / a }')
  printf "%-32s %9s %-2s %9s %-2s %9s\n" "$1" "$a" "$4" "$b" "$4" "$change"
  if awk -v a="$a" -v b="$b" -v l="$limit" 'BEGIN { exit !(a == 0 || b > a * (1 + l / 100)) }'; then
    echo "soak: FAILED: $1 grew by more than $limit% ($a -> $b $4)" >&2
    status=1
  fi
}
compare "tug sim: RSS" "$work/sim.samples" 2 kB
compare "tug sim: descriptors" "$work/sim.samples" 3 ""
compare "smoke --every 1s: RSS" "$work/every.samples" 2 kB
compare "smoke --every 1s: descriptors" "$work/every.samples" 3 ""
echo
cat "$work/traffic.out"
grep "the loop stopped" "$work/every.out" | sed 's/^tug: /smoke --every: /' || true
if ! $traffic_ok; then
  echo "soak: FAILED: the API traffic got errors (above)" >&2
  status=1
fi
exit $status
