#!/usr/bin/env bash
# The simulation's long run (tests/api/simulation.rs): a seeded sequence of operations on
# every inbound path, checked against a reference model after each one.
#
#   scripts/simulate.sh [ops] [seed] [sqlite|postgres|both]
#
# ops defaults to 1000000 and the databases to both, one after the other; the seed defaults
# to a random one. Each run prints progress lines and, at the end, its figures: operations
# by kind, what they came to, and operations per second. A failure prints the seed, the
# operation and the command that replays it (the same seed draws the same operations).
#
# The test binary is built with the release profile: the debug build CI uses runs a few
# hundred operations a second, which would make a million take hours. The CI-sized run is
# part of `cargo test` (20,000 operations per database).
set -euo pipefail
cd "$(dirname "$0")/.."

ops="${1:-1000000}"
seed="${2:-$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')}"
which="${3:-both}"
case "$which" in
    both) databases="sqlite postgres" ;;
    sqlite | postgres) databases="$which" ;;
    *)
        echo "usage: $0 [ops] [seed] [sqlite|postgres|both]" >&2
        exit 2
        ;;
esac

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/paystep/target}"
export PAYSTEP_TEST_POSTGRES_URL="${PAYSTEP_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}"

build_log="$(mktemp)"
trap 'rm -f "$build_log"' EXIT
if ! cargo test --release --no-run --test api >"$build_log" 2>&1; then
    cat "$build_log" >&2
    exit 1
fi
binary="$(sed -n 's/.*Executable tests\/api\/main.rs (\(.*\))/\1/p' "$build_log" | tail -n 1)"
if [ ! -x "$binary" ]; then
    cat "$build_log" >&2
    echo "cannot find the api test binary in cargo's output" >&2
    exit 1
fi

status=0
for database in $databases; do
    echo "== simulation on $database: $ops operations, seed $seed"
    if ! PAYSTEP_SIM_OPS="$ops" PAYSTEP_SIM_SEED="$seed" RUST_LOG="${RUST_LOG:-error}" \
        "$binary" "simulation::simulation::on_$database" --exact --nocapture; then
        status=1
    fi
done
exit "$status"
