#!/usr/bin/env bash
# Builds and runs every Ferry fuzz target for a while, one after the other.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# SECONDS per target (default 60); TARGETs default to all of them. For each
# target it first replays the inputs under fuzz/regressions/<target>/ (each
# once), then fuzzes from fuzz/corpus/<target>/ (kept between runs, git-
# ignored) plus the checked-in seeds in fuzz/seeds/<target>/. Prints, per
# target, the executions, exec/s, final coverage and whether it crashed;
# exits non-zero if any target crashed. Crashing inputs land in
# fuzz/artifacts/<target>/, the libFuzzer log in fuzz/artifacts/<target>/fuzz.log.
#
# Environment:
#   FUZZ_SANITIZER     libFuzzer sanitizer (default none: Ferry has no unsafe
#                      code; use "address" for ASan)
#   FUZZ_NICE          prefix for cargo commands (default "nice -n 15";
#                      set it empty to run at normal priority)
#   FERRY_FUZZ_STRICT  0 to steer around the issues (fixed since) that the
#                      targets used to steer around (see README.md)
#
# Runs one fuzzing job at a time (no -jobs/-workers). Needs a nightly
# toolchain; installs cargo-fuzz if it is missing.
set -euo pipefail

SECONDS_PER_TARGET="${1:-60}"
shift || true
ALL_TARGETS=(record_decode segment_recovery request_validation)
if [[ $# -gt 0 ]]; then
    TARGETS=("$@")
else
    TARGETS=("${ALL_TARGETS[@]}")
fi
if ! [[ "$SECONDS_PER_TARGET" =~ ^[0-9]+$ ]] || [[ "$SECONDS_PER_TARGET" -eq 0 ]]; then
    echo "usage: $0 [SECONDS] [TARGET...]   (SECONDS a positive integer)" >&2
    exit 2
fi

SANITIZER="${FUZZ_SANITIZER:-none}"
read -r -a NICE <<<"${FUZZ_NICE-nice -n 15}"
FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$FUZZ_DIR"

# Toolchain and cargo-fuzz.
if ! cargo +nightly --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null 2>&1; then
        echo "== installing the nightly toolchain"
        rustup toolchain install nightly --profile minimal
    else
        echo "error: a nightly toolchain (cargo +nightly) is required" >&2
        exit 2
    fi
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    "${NICE[@]}" cargo install cargo-fuzz --locked
fi

# Seeds are checked in; regenerate them only if a directory went missing.
for t in "${TARGETS[@]}"; do
    if [[ -z "$(ls -A "seeds/$t" 2>/dev/null)" ]]; then
        echo "== seeds/$t missing: generating the seed corpus"
        "${NICE[@]}" cargo +nightly run --quiet --release --example gen_seeds
        break
    fi
done

echo "== building ${TARGETS[*]} (sanitizer: $SANITIZER)"
"${NICE[@]}" cargo +nightly fuzz build -s "$SANITIZER"

last_field() { # last value of "name: value" / "name value" among lines
    grep -o "$1[^ ]*" | tail -n 1 | sed "s/^$1//"
}

declare -A RESULT
failed=0
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log="artifacts/$t/fuzz.log"
    status="ok"

    shopt -s nullglob
    regressions=("regressions/$t"/*)
    shopt -u nullglob
    if [[ ${#regressions[@]} -gt 0 ]]; then
        echo "== $t: replaying ${#regressions[@]} regression input(s)"
        if ! "${NICE[@]}" cargo +nightly fuzz run -s "$SANITIZER" "$t" "${regressions[@]}" \
            >"artifacts/$t/regressions.log" 2>&1; then
            echo "   a regression input crashes again; see artifacts/$t/regressions.log"
            status="CRASH (regression)"
        fi
    fi

    echo "== $t: fuzzing for ${SECONDS_PER_TARGET}s"
    rc=0
    "${NICE[@]}" cargo +nightly fuzz run -s "$SANITIZER" "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=60 -print_final_stats=1 \
        >"$log" 2>&1 || rc=$?
    execs=$(last_field 'stat::number_of_executed_units: *' <"$log" || true)
    rate=$(last_field 'stat::average_exec_per_sec: *' <"$log" || true)
    cov=$(grep -E '^#[0-9]+' "$log" | last_field 'cov: ' || true)
    ft=$(grep -E '^#[0-9]+' "$log" | last_field 'ft: ' || true)
    corp=$(grep -E '^#[0-9]+' "$log" | last_field 'corp: ' || true)
    if [[ $rc -ne 0 ]]; then
        crash=$(grep -o 'artifacts/[^ ]*/\(crash\|leak\|timeout\|oom\|slow-unit\)-[0-9a-f]*' "$log" | head -n 1 || true)
        fuzz_status="CRASH (${crash:-exit $rc}; see $log)"
        if [[ "$status" == ok ]]; then
            status="$fuzz_status"
        else
            status="$status; $fuzz_status"
        fi
    fi
    if [[ "$status" != ok ]]; then
        failed=1
    fi
    RESULT[$t]=$(printf '%-20s execs=%-10s exec/s=%-8s cov=%-6s ft=%-6s corpus=%-12s %s' \
        "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$status")
    echo "   ${RESULT[$t]}"
done

echo
echo "== summary (${SECONDS_PER_TARGET}s per target, sanitizer $SANITIZER)"
for t in "${TARGETS[@]}"; do
    echo "${RESULT[$t]}"
done
exit "$failed"
