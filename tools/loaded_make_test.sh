#!/usr/bin/env bash
# The suite on a loaded machine (issue 9): in each of ROUNDS rounds, two full `make test`
# runs of COMMIT, each in its own clean clone with its own venv, run side by side on this
# machine's cores. Prints one line per round; logs go to OUT.
#   tools/loaded_make_test.sh [COMMIT] [ROUNDS] [OUT]
set -u
repo=$(cd "$(dirname "$0")/.." && pwd)
commit=${1:-$(git -C "$repo" rev-parse HEAD)}
rounds=${2:-3}
out=${3:-/tmp/loaded}
mkdir -p "$out"
for name in A B; do
  rm -rf "$out/$name"
  git clone -q "$repo" "$out/$name" && git -C "$out/$name" checkout -q "$commit" || exit 2
done
for round in $(seq 1 "$rounds"); do
  start=$(date +%s)
  for name in A B; do
    (cd "$out/$name" && make test > "$out/${name}_$round.log" 2>&1; echo $? > "$out/${name}_$round.rc") &
  done
  wait
  line="round $round ($commit):"
  for name in A B; do
    line="$line $name rc $(cat "$out/${name}_$round.rc"), $(tail -n 1 "$out/${name}_$round.log") |"
  done
  echo "$line $(( $(date +%s) - start )) s, load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/summary.txt"
done
