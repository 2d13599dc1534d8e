#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers at paystep's edges.
#
#   scripts/fuzz.sh [seconds-per-target] [target...]     (default: 60 s, every target)
#   scripts/fuzz.sh --list
#
# How it works. Every fuzz target is an ordinary #[test] in a `fuzz_tests` module beside the
# code it reads, written with bolero (`bolero::check!()`). Under `cargo test` bolero feeds
# it a bounded number of random inputs: that is the short run, part of the suite CI runs
# (scripts/test.sh). This script runs the same tests under libFuzzer, coverage-guided, the
# way `cargo bolero test --engine libfuzzer --sanitizer NONE` does: it builds each package's
# library tests with cargo-bolero 0.13's libFuzzer flags (`--cfg fuzzing_libfuzzer`,
# SanitizerCoverage), which make bolero link libFuzzer and run the test under it, then runs
# the test binary with libFuzzer's arguments in BOLERO_LIBFUZZER_ARGS. It does the two
# steps itself because `cargo bolero test` builds every test target of a package, and the
# integration tests, which do not use bolero, then fail to link against the
# instrumentation. The build goes to its own target directory ($FUZZ_TARGET_DIR), with
# the `fuzz` profile of Cargo.toml (optimised, debug assertions and overflow checks on),
# and without a sanitizer (AddressSanitizer needs a nightly compiler, and the code under
# test has no `unsafe`); stable Rust and a C++ compiler (libFuzzer is built from source)
# suffice. Each target runs for the given time, one after the other, at low priority. Its
# corpus stays in $FUZZ_DIR/<target>/corpus between runs, so every run starts where the
# last one stopped; the log of its last run is $FUZZ_DIR/<target>/last-run.log. One line
# per target sums up the run: its executions (from libFuzzer's "#N DONE" line, or its last
# "#N" line when it stopped early), its corpus size, and whether it held.
#
# Without libFuzzer, `BOLERO_RANDOM_ITERATIONS=100000 cargo test <test path>` runs a target on
# that many random inputs instead of its default. A target that fails under `cargo test`
# prints `BOLERO_RANDOM_SEED=<n>`; setting it replays that input.
#
# When a target fails. libFuzzer stops at the first failing input and writes it to
# $FUZZ_DIR/<target>/crashes/crash-<sha1>; bolero shrinks it and prints it in the log after
# "Input:" (the generated value, as Rust's Debug shows it) with the failed assertion or
# panic. To make it a regression test:
#   1. Add a #[test] to the target's `fuzz_tests` module, named after what the input found
#      (for example `caller_ids_with_spaces_..._stay_whole_in_the_next_url`), that runs the
#      target's checks on that input written out as a literal, with a comment naming the
#      target that found it. Run it and see it fail.
#   2. Fix the bug; the test passes, and so does the target under `cargo test`.
#   3. Say in the commit what the target found. Rerun this script for that target: its
#      corpus still holds the input's neighbours.
# To replay the raw crash file instead, copy it into the target's bolero work directory,
# `__fuzz__/<crate>__<module path>__<test>/crashes/` (path separators `__`) beside the
# target's source file; `cargo test` replays every file there before its random inputs.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_DIR="${FUZZ_DIR:-$HOME/.cache/paystep/fuzz}"
# Instrumented builds live apart from the ordinary ones, which they would otherwise evict.
FUZZ_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/paystep/fuzz-target}"
# The longest one input may take before libFuzzer calls it a hang.
INPUT_TIMEOUT_S="${INPUT_TIMEOUT_S:-10}"

# name | package | test path. A new fuzz target is added here too.
TARGETS="
money-amounts|paystep|domain::money::fuzz_tests::amounts_parse_without_panic_and_never_round
money-minor-units|paystep|domain::money::fuzz_tests::every_positive_amount_in_minor_units_formats_and_parses_back
config|paystep|config::fuzz_tests::any_configuration_file_loads_or_is_refused_with_a_reason
voice-forms|paystep|http::voice::fuzz_tests::any_form_body_is_read_without_panic_and_posted_fields_arrive_unchanged
voice-caller-ids|paystep|http::voice::fuzz_tests::caller_ids_come_back_unchanged_from_the_urls_they_are_put_in
sms-grammar|paystep-channels|sms::grammar::fuzz_tests::any_reply_text_parses_to_a_well_formed_message
gsm-ucs2-decode|paystep-channels|sms::encoding::fuzz_tests::received_octets_decode_in_every_data_coding_without_growing
gsm-round-trip|paystep-channels|sms::encoding::fuzz_tests::gsm_texts_round_trip_through_septets
sms-segments|paystep-channels|sms::encoding::fuzz_tests::texts_split_into_parts_that_each_decode_to_their_share_of_the_text
smpp-bytes|paystep-channels|sms::inbound::fuzz_tests::any_octets_from_an_smsc_are_read_without_panic
smpp-deliver-sm|paystep-channels|sms::inbound::fuzz_tests::every_well_formed_deliver_sm_reaches_the_grammar_or_the_receipts
smpp-receipt-text|paystep-channels|sms::inbound::fuzz_tests::receipt_texts_and_sender_addresses_are_read_without_panic
pap-response|paystep-channels|wap_push::pap::fuzz_tests::any_ppg_answer_is_read_without_panic_and_codes_are_what_it_says
pap-notification|paystep-channels|wap_push::notification::fuzz_tests::any_result_notification_is_read_without_panic_and_answered_with_its_push_id
voice-signature|paystep-channels|voice::fuzz_tests::platform_requests_pass_exactly_when_signed_with_the_auth_token
voice-documents|paystep-channels|voice::fuzz_tests::call_steps_render_as_documents_that_say_what_the_step_says
"

usage() {
    sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

if [[ "${1:-}" == "--list" ]]; then
    echo "$TARGETS" | awk -F'|' 'NF == 3 { printf "%-20s %-17s %s\n", $1, $2, $3 }'
    exit 0
fi
seconds="${1:-60}"
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || usage
shift || true
wanted=("$@")

# cargo-bolero 0.13's flags for libFuzzer: coverage counters, the PC table and comparison
# tracing, which libFuzzer's mutations feed on.
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module --cfg fuzzing_libfuzzer \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares \
-Cllvm-args=-sanitizer-coverage-stack-depth"
export BOLERO_FUZZER=libfuzzer
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"

# Sets `exe` to the instrumented library test binary of a package, built once per run.
declare -A binaries=()
instrumented_tests() {
    local package="$1"
    if [[ -z "${binaries[$package]:-}" ]]; then
        local build_log="$FUZZ_DIR/build-$package.log"
        echo "== Building the instrumented tests of $package (log: $build_log)"
        if ! nice -n 10 cargo test --package "$package" --lib --no-run --profile fuzz \
            --target "$TRIPLE" --target-dir "$FUZZ_TARGET_DIR" >"$build_log" 2>&1; then
            tail -n 30 "$build_log" >&2
            exit 1
        fi
        binaries[$package]=$(sed -n 's/^ *Executable unittests src\/lib.rs (\(.*\))$/\1/p' \
            "$build_log" | tail -n 1)
        [[ -x "${binaries[$package]}" ]] || {
            echo "no test binary in $build_log" >&2
            exit 1
        }
    fi
    exe="${binaries[$package]}"
}

# The executions of a libFuzzer run: its "#N DONE" line, else its last "#N" status line.
executions() {
    local log="$1" done_line
    done_line=$(grep -aoE '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true)
    if [[ -n "$done_line" ]]; then
        grep -oE '[0-9]+' <<<"$done_line"
    else
        grep -aoE '^#[0-9]+' "$log" | tail -n 1 | tr -d '#' || true
    fi
}

selected=()
while IFS='|' read -r name package path; do
    [[ -n "$name" ]] || continue
    if [[ ${#wanted[@]} -eq 0 ]] || [[ " ${wanted[*]} " == *" $name "* ]]; then
        selected+=("$name|$package|$path")
    fi
done <<<"$TARGETS"
for name in "${wanted[@]}"; do
    grep -q "^$name|" <<<"$TARGETS" || {
        echo "no fuzz target named $name; scripts/fuzz.sh --list names them" >&2
        exit 2
    }
done

mkdir -p "$FUZZ_DIR"
summary=()
failed=0
for entry in "${selected[@]}"; do
    IFS='|' read -r name package path <<<"$entry"
    work="$FUZZ_DIR/$name"
    mkdir -p "$work/corpus" "$work/crashes"
    log="$work/last-run.log"
    echo "== $name: $seconds s ($package $path)"
    instrumented_tests "$package"
    status=0
    # As cargo-bolero runs a libtest target: the one test, in the harness, on one thread.
    BOLERO_TEST_NAME="$path" BOLERO_LIBTEST_HARNESS=1 \
        BOLERO_LIBFUZZER_ARGS="$work/corpus $work/crashes -artifact_prefix=$work/crashes/ \
-timeout=$INPUT_TIMEOUT_S -max_total_time=$seconds" \
        nice -n 10 "$exe" "$path" --exact --nocapture --quiet --test-threads 1 \
        >"$log" 2>&1 || status=$?
    runs=$(executions "$log")
    corpus=$(find "$work/corpus" -type f | wc -l)
    if [[ $status -eq 0 ]] && grep -qaE '^#[0-9]+[[:space:]]+DONE' "$log"; then
        outcome="held"
    else
        outcome="FAILED (exit $status; input and message in $log)"
        failed=1
        grep -a -A 12 -m 1 '^Input:' "$log" || tail -n 20 "$log"
    fi
    summary+=("$(printf '%-20s %12s executions  %6s corpus  %s' "$name" "${runs:-0}" "$corpus" "$outcome")")
done

echo
echo "== Summary: ${seconds} s per target"
printf '%s\n' "${summary[@]}"
exit $failed
