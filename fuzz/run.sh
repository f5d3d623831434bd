#!/usr/bin/env bash
# Run pullgate's fuzz targets; see docs/fuzzing.md. Needs a nightly toolchain and cargo-fuzz.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# Each target (all of them by default) runs for SECONDS (default 600), its corpus growing in
# fuzz/corpus/<target> from the seeds in fuzz/seeds/<target>. A line per target (executions,
# executions per second, result) is printed at the end; a crashing input is kept in
# fuzz/artifacts/<target>/ and the script exits non-zero.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-600}
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

cargo +nightly fuzz build
summary=()
failed=0
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target" "artifacts/$target"
  corpora=("corpus/$target")
  [[ -d "seeds/$target" ]] && corpora+=("seeds/$target")
  log="artifacts/$target/last-run.log"
  result=ok
  if ! cargo +nightly fuzz run "$target" "${corpora[@]}" -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    result="FAILED, see fuzz/$log"
    failed=1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  summary+=("$(printf '%-18s %5ss %12s execs %8s exec/s  %s' \
    "$target" "$seconds" "${execs:-?}" "${rate:-?}" "$result")")
done
printf '%s\n' "${summary[@]}"
exit "$failed"
