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
