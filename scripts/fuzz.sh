#!/usr/bin/env bash
# Runs the fuzz targets in fuzz/ one after another, each for SECONDS (default 600), and prints
# one summary line per target. Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Needs cargo-fuzz (installed if missing) and nightly compiler flags, which the stable toolchain
# accepts with RUSTC_BOOTSTRAP=1. Each target starts from fuzz/seeds/<target> (committed) and
# grows fuzz/corpus/<target>; crashes, hangs and out-of-memory inputs land in
# fuzz/artifacts/<target> (neither directory is committed). One process at a time: fuzzing is
# meant to leave the machine usable.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:-600}
shift || true
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

# Optimized, with debug assertions and overflow checks (set in fuzz/Cargo.toml).
cargo fuzz build -O

summary=()
status=0
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target" "seeds/$target"
    log="artifacts/$target/last-run.log"
    echo "== $target: ${seconds}s" >&2
    set +e
    cargo fuzz run -O "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 \
        -max_len=65536 -print_final_stats=1 2>&1 | tee "$log" | grep -E '^#[0-9]+\s+(pulse|DONE)|ERROR|SUMMARY|panicked|Test unit written' >&2
    code=${PIPESTATUS[0]}
    set -e
    execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
    line=$(grep -E '^#[0-9]+' "$log" | tail -1)
    cov=$(grep -oE 'cov: [0-9]+' <<<"$line" | tail -1)
    ft=$(grep -oE 'ft: [0-9]+' <<<"$line" | tail -1)
    units=$(grep -oE 'corp: [0-9]+' <<<"$line" | tail -1)
    if [ "$code" -eq 0 ]; then
        result=ok
    else
        result="FAILED (exit $code; input in fuzz/artifacts/$target)"
        status=1
    fi
    summary+=("$(printf '%-16s %6ss  execs %-10s %-10s %-10s %-11s %s' "$target" "$seconds" "${execs:-?}" "${cov:-cov: ?}" "${ft:-ft: ?}" "${units:-corp: ?}" "$result")")
done

echo
printf '%s\n' "${summary[@]}"
exit $status
