#!/bin/bash
# spec/bench/locks.sh [ROUNDS] [RUNS]: the lock specs with many more rounds than `make test`
# runs (ROUNDS rounds of 10 simultaneous resumes of a killed run, and of 10 simultaneous
# --break-lock runs against a dead holder; default 200), then RUNS runs (default 50) killed
# with -9 at random moments and resumed by 5 processes at once, killed again at random
# (spec/bench/kill_resume.lua). Prints the specs' pass line and the kill counts; exits
# non-zero if a round let two proceed or a run ended inconsistently.
set -euo pipefail
cd "$(dirname "$0")/../.."
tug=${TUG:-./tug}
rounds=${1:-200}
runs=${2:-50}

echo "== $rounds rounds of 10 simultaneous resumes, and of 10 simultaneous --break-lock runs"
start=$(date +%s)
LOCK_ROUNDS=$rounds "$tug" test spec/lock_spec.lua | tail -1
echo "($(($(date +%s) - start)) s)"

echo
echo "== $runs runs killed with -9 and resumed by 5 processes at once, killed again at random"
"$tug" lua spec/bench/kill_resume.lua "$runs" 5
