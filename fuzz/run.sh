#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (default 20) on its committed seed
# corpus (fuzz/corpus/<target>/), FUZZ_JOBS targets at a time (default: the number of cores).
# New inputs found go to a scratch directory, not into the repository. One summary line per
# target; exits non-zero if any target crashed, naming the crash input.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# cargo fuzz needs nightly-only flags (-Z sanitizer); it runs here on the stable toolchain
# with RUSTC_BOOTSTRAP=1, so no second toolchain is installed.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-20}"
shift || true
jobs="${FUZZ_JOBS:-$(nproc)}"
max_len="${FUZZ_MAX_LEN:-4096}"
export RUSTC_BOOTSTRAP=1

if ! command -v c++ >/dev/null 2>&1; then
    echo "fuzz: installing g++ (libfuzzer-sys compiles libFuzzer)"
    apt-get update -qq && apt-get install -y -qq g++ >/dev/null
fi
if ! cargo fuzz --version 2>/dev/null | grep -q '^cargo-fuzz 0\.13\.'; then
    echo "fuzz: installing cargo-fuzz 0.13"
    cargo install cargo-fuzz --version '^0.13' --locked
fi

targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

# One build of every target, even when only some run: building one target by name takes
# other build flags, and rebuilds every crate beneath it.
echo "fuzz: building the targets"
start=$SECONDS
cargo fuzz build --release --debug-assertions
echo "fuzz: built in $((SECONDS - start))s"

scratch="$(mktemp -d "${TMPDIR:-/tmp}/mesh-fuzz.XXXXXX")"
echo "fuzz: running each target for ${seconds}s, ${jobs} at a time; logs and new inputs in $scratch"

run_one() {
    local target="$1"
    local seeds="corpus/$target"
    local found="$scratch/corpus/$target"
    local log="$scratch/$target.log"
    mkdir -p "$found" "$seeds" "$scratch/artifacts/$target"
    # The scratch corpus comes first: libFuzzer adds new inputs to the first directory only.
    # The exit status goes to a file: `wait -n` below may reap the job before the summary.
    set +e
    cargo fuzz run --release --debug-assertions "$target" "$found" "$seeds" -- \
        -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$scratch/artifacts/$target/" -print_final_stats=1 >"$log" 2>&1
    echo "$?" >"$scratch/$target.status"
}

names=()
for target in "${targets[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
        wait -n || true
    done
    run_one "$target" &
    names+=("$target")
done

failed=0
wait
for target in "${names[@]}"; do
    log="$scratch/$target.log"
    if [ "$(cat "$scratch/$target.status" 2>/dev/null)" = 0 ]; then
        status=ok
    else
        status=CRASH
        failed=1
    fi
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
    printf 'fuzz: %-22s %-5s runs=%-9s exec/s=%s\n' "$target" "$status" "${runs:-?}" "${rate:-?}"
    if [ "$status" = CRASH ]; then
        grep -E '^(==[0-9]+==ERROR|thread .* panicked|.*panicked at)' "$log" | head -n 3 | sed 's/^/fuzz:     /'
        grep -E 'Test unit written to' "$log" | sed 's/^/fuzz:     /'
        echo "fuzz:     log: $log"
    fi
done
if [ "$failed" -ne 0 ]; then
    echo "fuzz: a target crashed; reproduce with: RUSTC_BOOTSTRAP=1 cargo fuzz run --release --debug-assertions TARGET ARTIFACT (in fuzz/)"
    exit 1
fi
echo "fuzz: all ${#targets[@]} targets ran ${seconds}s without a crash"
