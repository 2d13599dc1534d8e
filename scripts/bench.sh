#!/usr/bin/env bash
# paystep's benchmark, from outside, on the release build (issue 9). BENCHMARKS.md explains
# the method and every figure. One run measures, each part on fresh databases:
#   raw      raw SQLite tx/s: one UPDATE per transaction, WAL, synchronous=FULL
#   pgbench  pgbench -b simple-update tps at 64 clients on a scratch database
#   steps    /healthz req/s (wrk, 64 connections); durable steps/s at 64 connections on 64
#            processes and on 1 process, delivery on and off; 1/4/16 connections for the
#            plot; the outbox backlog and its drain; latency at half the maximum rate; daemon
#            CPU per step; start-up time and idle RSS
#   open     RSS with OPEN_PROCESSES (100,000) open processes
#   sms      SMS confirmation requests/s into the project's SMSC simulator, answering at
#            once and after 20 ms
#   kannel   Kannel's sendsms (bearerbox + smsbox) into the same simulator, same window
# steps, open and sms run on each of DATABASES (SQLite and PostgreSQL).
# Every figure is the median of RUNS runs. Prints the table and ratios, appends a dated
# section to bench-results/RUN-<date>.md, and writes the raw CSV and a plot beside it.
#
#   scripts/bench.sh                      # everything, 3 runs (roughly an hour on 2 cores)
#   QUICK=1 scripts/bench.sh              # a smoke test: 1 run, short loads, small counts
#   RUNS=5 DATABASES=sqlite SKIP=open,kannel scripts/bench.sh
#
# Knobs (environment): RUNS, QUICK, DURATION (s per load), OPEN_PROCESSES, OPEN_TIMEOUT,
# SMS_COUNT, SMS_CLIENTS, SMS_WINDOW, DRAIN_TIMEOUT, DATABASES ("sqlite postgres"),
# SKIP / ONLY (comma-separated parts: raw,pgbench,steps,open,sms,kannel), BUILD=0 (use the
# binary already built), BENCH_POSTGRES_URL, RESULTS_DIR, KEEP_WORKDIR=1,
# BENCH_NO_DELIVERY_ENV (how to turn delivery off; found out when unset). Any other
# PAYSTEP__SECTION__KEY in the environment reaches every daemon started here.
# Each part runs in a subshell with its own PIDS and PG_DBS, on purpose:
# shellcheck disable=SC2030,SC2031
set -euo pipefail
case "${1:-}" in
"") ;;
-h | --help)
    sed -n '2,/^# Knobs/{/^# Knobs/q;s/^# \{0,1\}//;p}' "$0"
    echo "Knobs, parts and every figure: see BENCHMARKS.md."
    exit 0
    ;;
*)
    echo "usage: [VAR=value ...] $0   (configured by environment variables; see --help)" >&2
    exit 2
    ;;
esac
cd "$(dirname "$0")/.."
ROOT=$PWD
HELPER="$ROOT/scripts/bench/bench.py"
SMSC_JS="$ROOT/tests/peers/smsc/smsc.js"
INVOCATION="scripts/bench.sh"

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
    RUNS=${RUNS:-1} DURATION=${DURATION:-3} OPEN_PROCESSES=${OPEN_PROCESSES:-2000}
    OPEN_TIMEOUT=${OPEN_TIMEOUT:-120} SMS_COUNT=${SMS_COUNT:-200} DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-30}
else
    RUNS=${RUNS:-3} DURATION=${DURATION:-10} OPEN_PROCESSES=${OPEN_PROCESSES:-100000}
    OPEN_TIMEOUT=${OPEN_TIMEOUT:-900} SMS_COUNT=${SMS_COUNT:-2000} DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-180}
fi
CONNECTIONS=64 # the issue's client count: wrk connections, pgbench clients
SMS_CLIENTS=${SMS_CLIENTS:-32}
SMS_WINDOW=${SMS_WINDOW:-10}
DATABASES=${DATABASES:-sqlite postgres}
SKIP=${SKIP:-}
ONLY=${ONLY:-}
BUILD=${BUILD:-1}
POSTGRES_URL=${BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/bench-results}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/paystep/target}"
BIN="$CARGO_TARGET_DIR/release/paystep"
ADMIN_TOKEN="bench-admin-token-0123456789"
STEP_BODY='{"amount":"0.01"}'

say() { printf '\n== %s\n' "$*" >&2; }
info() { printf '   %s\n' "$*" >&2; }
die() {
    printf 'bench.sh: %s\n' "$*" >&2
    exit 1
}
# A remark that goes into the results file as well.
note() {
    printf -- '- %s\n' "$*" >>"$NOTES"
    info "NOTE: $*"
}
h() { python3 "$HELPER" "$@"; }
# A helper whose JSON summary is shown indented, on stderr.
hshow() { h "$@" | sed -u 's/^/   /' >&2; }
want() {
    if [ -n "$ONLY" ]; then
        [[ ",$ONLY," == *",$1,"* ]]
    else
        [[ ",$SKIP," != *",$1,"* ]]
    fi
}
has_db() { [[ " $DATABASES " == *" $1 "* ]]; }
is_count() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }

for knob in RUNS DURATION OPEN_PROCESSES OPEN_TIMEOUT SMS_COUNT SMS_CLIENTS SMS_WINDOW DRAIN_TIMEOUT; do
    is_count "${!knob}" || die "$knob must be a positive whole number (is '${!knob}')"
done
for db in $DATABASES; do
    [[ "$db" == sqlite || "$db" == postgres ]] || die "DATABASES takes sqlite and postgres (is '$DATABASES')"
done
for part in ${SKIP//,/ } ${ONLY//,/ }; do
    [[ " raw pgbench steps open sms kannel " == *" $part "* ]] ||
        die "unknown part '$part' in SKIP/ONLY (parts: raw,pgbench,steps,open,sms,kannel)"
done

# --- Processes and databases, cleaned up on every exit -----------------------------------

PIDS=()     # services started by this shell (or this part's subshell)
PG_DBS=()   # PostgreSQL databases created by this shell (or this part's subshell)
WORK=""

alive() { [ -r "/proc/$1/stat" ] && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]; }

forget_pid() {
    local keep=() pid
    for pid in "${PIDS[@]}"; do [ "$pid" = "$1" ] || keep+=("$pid"); done
    PIDS=("${keep[@]}")
}

# Stops one process by its PID: SIGTERM, up to GRACE seconds, then SIGKILL.
stop_pid() {
    local pid=$1 grace=${2:-10} i
    if alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < grace * 10; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            info "PID $pid still running ${grace} s after SIGTERM: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do
                alive "$pid" || break
                sleep 0.1
            done
        fi
    fi
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
}

drop_pg_database() {
    psql "$POSTGRES_URL/postgres" -qAt -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" >/dev/null 2>&1 || true
    local keep=() name
    for name in "${PG_DBS[@]}"; do [ "$name" = "$1" ] || keep+=("$name"); done
    PG_DBS=("${keep[@]}")
}

# What a part's subshell leaves: its services, its databases.
part_cleanup() {
    local status=$? i
    trap - TERM
    set +e
    if [ "$status" -ne 0 ] && [ -n "${D_DIR:-}" ] && [ -s "$D_DIR/daemon.err" ]; then
        info "the last daemon's log ($D_DIR/daemon.err) ends:"
        tail -n 10 "$D_DIR/daemon.err" | sed 's/^/     /' >&2
    fi
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}" 10; done
    for name in "${PG_DBS[@]}"; do drop_pg_database "$name"; done
}

cleanup() {
    local status=$? pidfile
    set +e
    part_cleanup
    if [ -n "$WORK" ]; then
        # Daemons are started in their own session: find any a part left by its pid file.
        for pidfile in "$WORK"/*/pid; do
            [ -f "$pidfile" ] && stop_pid "$(cat "$pidfile")" 10
        done
        if has_db postgres; then
            psql "$POSTGRES_URL/postgres" -qAt -c \
                "SELECT datname FROM pg_database WHERE datname LIKE 'paystep\_bench\_$$\_%'" 2>/dev/null |
                while read -r name; do drop_pg_database "$name"; done
        fi
        if [ "${KEEP_WORKDIR:-0}" = 1 ]; then
            info "The work directory (logs, databases) is kept: $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$status"
}
# An interrupt stops the running part (its load generators first, then the part cleans up
# after itself), then everything else.
PART_PID=""
descendants() {
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        descendants "$child"
        echo "$child"
    done
}
on_signal() {
    trap - INT TERM
    if [ -n "$PART_PID" ] && alive "$PART_PID"; then
        info "stopping (signal): ending the running part, PID $PART_PID"
        # shellcheck disable=SC2046 # a list of PIDs
        kill -TERM $(descendants "$PART_PID") "$PART_PID" 2>/dev/null || true
        wait "$PART_PID" 2>/dev/null || true
    fi
    exit "$1"
}
trap cleanup EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

# Runs one part in a subshell with its own cleanup: a part that fails leaves a note and the
# others still run. The subshell runs in the background so that a signal reaches on_signal
# at once (bash runs traps only between foreground commands).
run_part() {
    local name=$1 status
    shift
    (
        set -e
        PIDS=()
        PG_DBS=()
        trap part_cleanup EXIT
        trap 'exit 143' TERM
        "$@"
    ) &
    PART_PID=$!
    set +e
    wait "$PART_PID"
    status=$?
    set -e
    PART_PID=""
    if [ "$status" -ne 0 ]; then
        note "run $RUN: $name failed (exit $status); its figures are missing from this run (see the messages above)"
    fi
}

# Starts a command in the background with its output in DIR/NAME.out and .err; sets BG_PID.
start_bg() {
    local log=$1
    shift
    "$@" >"$log.out" 2>"$log.err" </dev/null &
    BG_PID=$!
    PIDS+=("$BG_PID")
}

new_database() { # KIND DIR LABEL -> DB_URL
    case $1 in
    sqlite) DB_URL="sqlite://$2/paystep.db" ;;
    postgres)
        local name="paystep_bench_$$_$3"
        psql "$POSTGRES_URL/postgres" -qAt -c "CREATE DATABASE $name" >/dev/null
        PG_DBS+=("$name")
        DB_URL="$POSTGRES_URL/$name"
        ;;
    esac
}

drop_database() { # KIND LABEL
    if [ "$1" = postgres ]; then drop_pg_database "paystep_bench_$$_$2"; fi
}

# Starts the daemon on DB_URL, in its own directory, and waits for /readyz.
#   start_daemon NAME [--figures] [VAR=VALUE...]   (D_CONFIG: a --config file, optional)
# Sets D_PID, D_URL, D_DIR, D_CONSOLE. --figures records start-up time and idle RSS.
start_daemon() {
    local name=$1 figures=() port out
    shift
    if [ "${1:-}" = --figures ]; then
        figures=(--figures --record "$RAW" --run "$RUN" --db "$DB")
        shift
    fi
    D_DIR="$WORK/$name"
    mkdir -p "$D_DIR"
    port=$(h free-port)
    D_URL="http://127.0.0.1:$port"
    D_CONSOLE="$D_DIR/console.jsonl"
    local config=()
    if [ -n "${D_CONFIG:-}" ]; then config=(--config "$D_CONFIG"); fi
    if ! out=$(env \
        PAYSTEP__DATABASE__URL="$DB_URL" \
        PAYSTEP__HTTP__LISTEN="127.0.0.1:$port" \
        PAYSTEP__HTTP__PUBLIC_URL="$D_URL" \
        PAYSTEP__ADMIN__TOKEN="$ADMIN_TOKEN" \
        PAYSTEP__CHANNELS__CONSOLE__PATH="$D_CONSOLE" \
        PAYSTEP__LOG__LEVEL=warn \
        PAYSTEP__LIMITS__STEPS_PER_PROCESS_MAX=100000000 \
        PAYSTEP__ENGINE__CONFIRMATION_TTL_S=86400 \
        "$@" \
        python3 "$HELPER" launch "${figures[@]}" --pidfile "$D_DIR/pid" --cwd "$D_DIR" \
        --stdout "$D_DIR/daemon.out" --stderr "$D_DIR/daemon.err" \
        --ready "$D_URL/readyz" --timeout 120 -- "$BIN" "${config[@]}" serve); then
        [ -s "$D_DIR/pid" ] && PIDS+=("$(cat "$D_DIR/pid")")
        die "the daemon ($name) did not start"
    fi
    D_PID=$(cat "$D_DIR/pid")
    PIDS+=("$D_PID")
    info "daemon $name: PID $D_PID on $D_URL, $out"
}

stop_daemon() {
    stop_pid "$D_PID" 20
    rm -f "$D_DIR/pid"
    if [ -s "$D_DIR/daemon.err" ]; then
        info "daemon log (warnings and errors), last lines:"
        tail -n 5 "$D_DIR/daemon.err" | sed 's/^/     /' >&2
    fi
}

# Waits (bounded) until the daemon's outbox has nothing queued.
drain() {
    hshow drain --url "$D_URL" --admin "$ADMIN_TOKEN" --timeout "$DRAIN_TIMEOUT"
}

# The SMSC simulator (tests/peers/smsc/smsc.js) on free ports: SIM_PID, SIM_HTTP, SIM_SMPP.
start_simulator() { # DIR DELAY_MS
    local dir=$1 i
    start_bg "$dir/smsc" node "$SMSC_JS" --smpp-port 0 --http-port 0 \
        --record "$dir/submits.jsonl" --auto-dlr off --resp-delay-ms "$2"
    SIM_PID=$BG_PID
    for ((i = 0; i < 200; i++)); do
        grep -q '"listening"' "$dir/smsc.out" 2>/dev/null && break
        alive "$SIM_PID" || break
        sleep 0.1
    done
    grep -q '"listening"' "$dir/smsc.out" 2>/dev/null ||
        die "the SMSC simulator did not start: $(tail -n 5 "$dir/smsc.err" 2>/dev/null)"
    read -r SIM_SMPP SIM_HTTP < <(python3 -c \
        'import json,sys; d=json.loads(open(sys.argv[1]).readline()); print(d["smpp_port"], d["http_port"])' \
        "$dir/smsc.out")
    SIM_HTTP="http://127.0.0.1:$SIM_HTTP"
}

# --- The measurements ----------------------------------------------------------------------

measure_raw_sqlite() {
    say "Run $RUN/$RUNS: raw SQLite, one UPDATE per transaction (WAL, synchronous=FULL), ${DURATION} s"
    mkdir -p "$WORK/r$RUN-raw"
    hshow rawsqlite --dir "$WORK/r$RUN-raw" --seconds "$DURATION" --record "$RAW" --run "$RUN"
    rm -rf "$WORK/r$RUN-raw"
}

measure_pgbench() {
    say "Run $RUN/$RUNS: pgbench -b simple-update, $CONNECTIONS clients, ${DURATION} s"
    new_database postgres "" "r${RUN}_pgbench"
    pgbench -i -q "$DB_URL" >"$WORK/r$RUN-pgbench-init.log" 2>&1 ||
        die "pgbench -i failed: $(tail -n 5 "$WORK/r$RUN-pgbench-init.log")"
    hshow pgbench --dburl "$DB_URL" --clients "$CONNECTIONS" --threads 2 --seconds "$DURATION" \
        --record "$RAW" --run "$RUN"
    drop_database postgres "r${RUN}_pgbench"
}

# One closed-loop step load with wrk, with the API key in KEY_FILE.
#   step_load NAME PATHS THREADS CONNECTIONS [extra helper arguments...]
step_load() {
    local name=$1 paths=$2 threads=$3 connections=$4
    shift 4
    info "$name: $connections connection(s), $(wc -l <"$paths") process(es), ${DURATION} s"
    hshow wrk --url "$D_URL" --paths "$paths" --method POST --body "$STEP_BODY" \
        --token-file "$KEY_FILE" --threads "$threads" --connections "$connections" \
        --seconds "$DURATION" --expect 201 --name "$name" --out "$D_DIR/$name.json" \
        --record "$RAW" --run "$RUN" --db "$DB" "$@"
}

measure_steps() { # DB
    DB=$1
    local label="r${RUN}_${DB}_steps" dir rate half c delivered_before delivered_after
    say "Run $RUN/$RUNS: steps on $DB (delivery on, then off)"
    dir="$WORK/r$RUN-$DB-steps"
    mkdir -p "$dir"
    new_database "$DB" "$dir" "$label"
    start_daemon "r$RUN-$DB-steps" --figures
    if [ -z "$(h value "$RAW" "$RUN" - healthz_rps)" ]; then
        info "/healthz: $CONNECTIONS connections, ${DURATION} s"
        echo /healthz >"$D_DIR/healthz.paths"
        hshow wrk --url "$D_URL" --paths "$D_DIR/healthz.paths" --threads 2 \
            --connections "$CONNECTIONS" --seconds "$DURATION" --expect 200 --name healthz_rps \
            --out "$D_DIR/healthz.json" --record "$RAW" --run "$RUN" --db -
    fi
    info "setup: a retailer, $((CONNECTIONS + 1)) customers with credit, one confirmed process each"
    KEY_FILE="$dir/key"
    h setup --url "$D_URL" --admin "$ADMIN_TOKEN" --console "$D_CONSOLE" \
        --processes $((CONNECTIONS + 1)) --release 9000.00 --deposit 10000.00 \
        --out-key "$KEY_FILE" --out-paths "$dir/all.paths"
    for c in 1 4 16 "$CONNECTIONS"; do head -n "$c" "$dir/all.paths" >"$dir/c$c.paths"; done
    tail -n 1 "$dir/all.paths" >"$dir/one.paths" # a process of its own for the 1-process loads
    drain

    # The maximum: 64 connections, each on its own process; then the backlog's drain.
    step_load steps_c$CONNECTIONS "$dir/c$CONNECTIONS.paths" "$CONNECTIONS" "$CONNECTIONS" \
        --pid "$D_PID" --admin "$ADMIN_TOKEN" --drain-timeout "$DRAIN_TIMEOUT"
    rate=$(h value "$RAW" "$RUN" "$DB" steps_c$CONNECTIONS)
    step_load steps_1p "$dir/one.paths" 2 "$CONNECTIONS"
    drain
    for c in 1 4 16; do
        step_load "steps_c$c" "$dir/c$c.paths" "$c" "$c"
        drain
    done
    if [ -n "$rate" ] && python3 -c "import sys; sys.exit(0 if float('$rate') >= 2 else 1)"; then
        half=$(python3 -c "print(round(float('$rate') / 2, 1))")
        info "latency: open loop at $half steps/s (half of $rate), $CONNECTIONS connections, ${DURATION} s"
        hshow openloop --url "$D_URL" --paths "$dir/c$CONNECTIONS.paths" \
            --token-file "$KEY_FILE" --rate "$half" --seconds "$DURATION" \
            --connections "$CONNECTIONS" --name lat --record "$RAW" --run "$RUN" --db "$DB"
        drain
    else
        note "run $RUN, $DB: no step rate, so no latency run"
    fi
    stop_daemon

    # Delivery off: the same database (its processes), a daemon that delivers nothing.
    start_daemon "r$RUN-$DB-nodelivery" "${NO_DELIVERY_ENV[@]}"
    delivered_before=$(h outbox --url "$D_URL" --admin "$ADMIN_TOKEN" --status delivered)
    step_load steps_c${CONNECTIONS}_off "$dir/c$CONNECTIONS.paths" "$CONNECTIONS" "$CONNECTIONS" \
        --pid "$D_PID"
    step_load steps_1p_off "$dir/one.paths" 2 "$CONNECTIONS"
    delivered_after=$(h outbox --url "$D_URL" --admin "$ADMIN_TOKEN" --status delivered)
    h record --record "$RAW" --run "$RUN" --db "$DB" --figure off_delivered \
        --value $((delivered_after - delivered_before))
    if [ "$delivered_after" != "$delivered_before" ]; then
        note "run $RUN, $DB: $((delivered_after - delivered_before)) messages were delivered during the delivery-off loads, so they were not without delivery ($NO_DELIVERY_HOW)"
    fi
    stop_daemon
    drop_database "$DB" "$label"
    rm -f "$dir"/paystep.db*
}

measure_open() { # DB
    DB=$1
    local label="r${RUN}_${DB}_open"
    say "Run $RUN/$RUNS: RSS with $OPEN_PROCESSES open processes on $DB"
    mkdir -p "$WORK/r$RUN-$DB-open"
    new_database "$DB" "$WORK/r$RUN-$DB-open" "$label"
    start_daemon "r$RUN-$DB-open"
    KEY_FILE="$D_DIR/key"
    h setup --url "$D_URL" --admin "$ADMIN_TOKEN" --console "$D_CONSOLE" --processes 1 \
        --out-key "$KEY_FILE" --out-paths "$D_DIR/all.paths"
    info "opening processes with wrk ($CONNECTIONS connections) until $OPEN_PROCESSES are open (at most ${OPEN_TIMEOUT} s)"
    hshow open-many --url "$D_URL" --admin "$ADMIN_TOKEN" --token-file "$KEY_FILE" \
        --msisdn "+491700000001" --count "$OPEN_PROCESSES" --timeout "$OPEN_TIMEOUT" \
        --pid "$D_PID" --out "$D_DIR/open.json" --record "$RAW" --run "$RUN" --db "$DB"
    stop_daemon
    drop_database "$DB" "$label"
    rm -rf "$WORK/r$RUN-$DB-open"
}

measure_sms() { # DB DELAY_MS
    DB=$1
    local delay=$2 label="r${RUN}_${DB}_sms$2" dir
    say "Run $RUN/$RUNS: $SMS_COUNT SMS confirmation requests on $DB, SMSC answering after $delay ms"
    dir="$WORK/r$RUN-$DB-sms$delay"
    mkdir -p "$dir"
    start_simulator "$dir" "$delay"
    cat >"$dir/sms.toml" <<EOF
[channels.sms]
source_addr = "12345"

[[channels.sms.smsc]]
name = "simulator"
host = "127.0.0.1"
port = $SIM_SMPP
system_id = "paystep"
password = "secret"
window = $SMS_WINDOW
throughput_per_s = 10000
EOF
    new_database "$DB" "$dir" "$label"
    D_CONFIG="$dir/sms.toml" start_daemon "r$RUN-$DB-sms$delay-daemon"
    info "waiting for paystep's SMPP bind"
    h wait-http --url "$SIM_HTTP/binds" --contains '"system_id":"paystep"' --timeout 30
    h sms-customers --url "$D_URL" --admin "$ADMIN_TOKEN" --count $((SMS_COUNT + 1)) \
        --out-key "$D_DIR/key" --out-msisdns "$D_DIR/msisdns"
    h sms-warmup --kind paystep --url "$D_URL" --smsc "$SIM_HTTP" --token-file "$D_DIR/key" \
        --msisdns "$D_DIR/msisdns" --out "$D_DIR/warmup.json" --timeout 60
    [ -f "$WORK/sms_text.json" ] || cp "$D_DIR/warmup.json" "$WORK/sms_text.json"
    info "$SMS_COUNT processes from $SMS_CLIENTS clients; timing until the SMSC has every submit"
    hshow sms-burst --kind paystep --url "$D_URL" --smsc "$SIM_HTTP" --token-file "$D_DIR/key" \
        --msisdns "$D_DIR/msisdns" --warmup "$D_DIR/warmup.json" --count "$SMS_COUNT" \
        --concurrency "$SMS_CLIENTS" --timeout 600 --name "sms_d$delay" \
        --record "$RAW" --run "$RUN" --db "$DB"
    stop_daemon
    stop_pid "$SIM_PID" 5
    drop_database "$DB" "$label"
    rm -f "$dir"/paystep.db*
}

measure_kannel() { # DELAY_MS
    local delay=$1 dir admin_port smsbox_port sendsms_port text=() i
    say "Run $RUN/$RUNS: $SMS_COUNT SMS through Kannel's sendsms, SMSC answering after $delay ms"
    dir="$WORK/r$RUN-kannel$delay"
    mkdir -p "$dir"
    start_simulator "$dir" "$delay"
    read -r admin_port smsbox_port sendsms_port < <(h free-port --count 3)
    cat >"$dir/kannel.conf" <<EOF
group = core
admin-port = $admin_port
admin-interface = 127.0.0.1
admin-password = bench
status-password = bench
admin-allow-ip = "127.0.0.1"
smsbox-port = $smsbox_port
smsbox-interface = 127.0.0.1
box-allow-ip = "127.0.0.1"
log-file = "$dir/bearerbox.log"
log-level = 2
dlr-storage = internal

group = smsc
smsc = smpp
smsc-id = simulator
host = 127.0.0.1
port = $SIM_SMPP
transceiver-mode = true
smsc-username = paystep
smsc-password = secret
system-type = ""
max-pending-submits = $SMS_WINDOW
enquire-link-interval = 30
reconnect-delay = 1
source-addr-ton = 3
source-addr-npi = 0
dest-addr-ton = 1
dest-addr-npi = 1

group = smsbox
bearerbox-host = 127.0.0.1
bearerbox-port = $smsbox_port
sendsms-port = $sendsms_port
sendsms-interface = 127.0.0.1
log-file = "$dir/smsbox.log"
log-level = 2

group = sendsms-user
username = bench
password = bench
max-messages = 10
concatenation = true
EOF
    start_bg "$dir/bearerbox" /usr/sbin/bearerbox "$dir/kannel.conf"
    local bearerbox=$BG_PID
    h wait-http --url "http://127.0.0.1:$admin_port/status.txt?password=bench" \
        --contains "(online" --timeout 30
    start_bg "$dir/smsbox" /usr/sbin/smsbox "$dir/kannel.conf"
    local smsbox=$BG_PID
    # Without credentials sendsms answers 403: it listens.
    h wait-http --url "http://127.0.0.1:$sendsms_port/cgi-bin/sendsms" --status 403 --timeout 30
    for ((i = 1; i <= SMS_COUNT + 1; i++)); do printf '+49172%07d\n' "$i"; done >"$dir/msisdns"
    if [ -f "$WORK/sms_text.json" ]; then
        text=(--text-file "$WORK/sms_text.json")
    else
        note "run $RUN: Kannel sent a fixed 104-character text (paystep's SMS text was not measured)"
    fi
    h sms-warmup --kind kannel --url "http://127.0.0.1:$sendsms_port" --smsc "$SIM_HTTP" \
        --msisdns "$dir/msisdns" "${text[@]}" --out "$dir/warmup.json" --timeout 60
    info "$SMS_COUNT sendsms calls from $SMS_CLIENTS clients; timing until the SMSC has every submit"
    hshow sms-burst --kind kannel --url "http://127.0.0.1:$sendsms_port" --smsc "$SIM_HTTP" \
        --msisdns "$dir/msisdns" "${text[@]}" --warmup "$dir/warmup.json" --count "$SMS_COUNT" \
        --concurrency "$SMS_CLIENTS" --timeout 600 --name "kannel_d$delay" \
        --record "$RAW" --run "$RUN" --db -
    # bearerbox may ignore SIGTERM for seconds (see shared/reference/peers.md).
    stop_pid "$smsbox" 5
    stop_pid "$bearerbox" 5
    stop_pid "$SIM_PID" 5
}

# --- Preparation -------------------------------------------------------------------------

say "Tools"
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v gnuplot >/dev/null || missing+=(gnuplot-nox)
command -v sqlite3 >/dev/null || missing+=(sqlite3)
if want kannel && { [ ! -x /usr/sbin/bearerbox ] || [ ! -x /usr/sbin/smsbox ]; }; then
    missing+=(kannel)
fi
if { want sms || want kannel; } && ! command -v node >/dev/null; then missing+=(nodejs npm); fi
if has_db postgres && { ! command -v psql >/dev/null || ! command -v pgbench >/dev/null; }; then
    missing+=(postgresql-client)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    info "installing ${missing[*]}"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO=sudo
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if { want sms || want kannel; } && [ ! -d tests/peers/smsc/node_modules/smpp ]; then
    info "installing the SMSC simulator's npm packages (npm ci)"
    (cd tests/peers/smsc && npm ci --no-audit --no-fund --silent)
fi
info "$(wrk -v 2>&1 | head -n 1)"
info "$(gnuplot --version)"
info "SQLite $(python3 -c 'import sqlite3; print(sqlite3.sqlite_version)') (Python's sqlite3 module)"

if has_db postgres; then
    say "PostgreSQL"
    if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null && command -v pg_ctlcluster >/dev/null; then
        # shellcheck disable=SC2012
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
    fi
    for _ in $(seq 1 60); do
        psql "$POSTGRES_URL/postgres" -qAtc 'SELECT 1' >/dev/null 2>&1 && break
        sleep 0.5
    done
    psql "$POSTGRES_URL/postgres" -qAtc 'SELECT 1' >/dev/null ||
        die "PostgreSQL at $POSTGRES_URL does not answer (set BENCH_POSTGRES_URL, or DATABASES=sqlite)"
    # Databases of earlier runs that did not get to clean up (their script is gone).
    psql "$POSTGRES_URL/postgres" -qAt -c \
        "SELECT datname FROM pg_database WHERE datname LIKE 'paystep\_bench\_%'" |
        while read -r name; do
            owner=${name#paystep_bench_}
            owner=${owner%%_*}
            if ! kill -0 "$owner" 2>/dev/null; then drop_pg_database "$name"; fi
        done
    info "$(psql "$POSTGRES_URL/postgres" -qAtc 'SELECT version()' | cut -d, -f1) at $POSTGRES_URL"
fi

need_binary=0
if want steps || want open || want sms; then need_binary=1; fi
if [ "$need_binary" = 1 ]; then
    say "Release build"
    if [ "$BUILD" = 1 ]; then
        CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/paystep/target}" cargo build --release --locked
    fi
    [ -x "$BIN" ] || die "no paystep binary at $BIN (build it, or run with BUILD=1)"
    info "$BIN ($("$BIN" --version 2>/dev/null || echo 'version unknown'))"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/paystep-bench.XXXXXX")
RAW="$WORK/raw.csv"
NOTES="$WORK/notes.md"
echo "run,database,figure,value,note" >"$RAW"
: >"$NOTES"
info "work directory: $WORK ($(stat -f -c %T "$WORK") file system)"

NO_DELIVERY_ENV=()
NO_DELIVERY_HOW=""
if want steps; then
    if [ -n "${BENCH_NO_DELIVERY_ENV:-}" ]; then
        read -r -a NO_DELIVERY_ENV <<<"$BENCH_NO_DELIVERY_ENV"
        NO_DELIVERY_HOW="as given: $BENCH_NO_DELIVERY_ENV"
    else
        # outbox.deliver = false starts no dispatcher: messages are written, nothing sends them.
        NO_DELIVERY_ENV=(PAYSTEP__OUTBOX__DELIVER=false)
        NO_DELIVERY_HOW="outbox.deliver = false (no dispatcher runs)"
    fi
    info "delivery off: $NO_DELIVERY_HOW"
fi

load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)
if python3 -c "import sys; sys.exit(0 if float('${load_at_start%% *}') > 0.5 else 1)"; then
    note "the machine was not idle at the start (load average $load_at_start): other work competes with the figures"
fi

# --- The runs ------------------------------------------------------------------------------

started_at=$(date -u '+%Y-%m-%d %H:%M UTC')
for ((RUN = 1; RUN <= RUNS; RUN++)); do
    if want raw; then run_part "raw SQLite" measure_raw_sqlite; fi
    if want pgbench && has_db postgres; then run_part pgbench measure_pgbench; fi
    for db in $DATABASES; do
        if want steps; then run_part "steps on $db" measure_steps "$db"; fi
        if want open; then run_part "open processes on $db" measure_open "$db"; fi
        if want sms; then
            for delay in 0 20; do run_part "SMS on $db ($delay ms)" measure_sms "$db" "$delay"; done
        fi
    done
    if want kannel; then
        for delay in 0 20; do run_part "Kannel ($delay ms)" measure_kannel "$delay"; done
    fi
done

# --- The report ----------------------------------------------------------------------------

say "Results"
mkdir -p "$RESULTS_DIR"
stamp=$(date -u +%Y%m%d-%H%M%S)
day=$(date -u +%Y-%m-%d)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    commit="$commit with uncommitted changes"
fi
cp "$RAW" "$RESULTS_DIR/RUN-$stamp.csv"
{
    echo "- Command: \`$INVOCATION\` with RUNS=$RUNS QUICK=$QUICK DURATION=$DURATION" \
        "OPEN_PROCESSES=$OPEN_PROCESSES SMS_COUNT=$SMS_COUNT SMS_CLIENTS=$SMS_CLIENTS" \
        "SMS_WINDOW=$SMS_WINDOW DATABASES=\"$DATABASES\"${SKIP:+ SKIP=$SKIP}${ONLY:+ ONLY=$ONLY}"
    echo "- Started $started_at, finished $(date -u '+%H:%M UTC'); load average at the start: $load_at_start"
    echo "- Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)," \
        "$(uname -sr); everything on this host, over loopback"
    echo "- Tools: $(wrk -v 2>&1 | head -n 1 | cut -d' ' -f1-2), SQLite $(python3 -c 'import sqlite3; print(sqlite3.sqlite_version)')$(has_db postgres && echo ", $(psql "$POSTGRES_URL/postgres" -qAtc 'SHOW server_version' 2>/dev/null | sed 's/^/PostgreSQL /')")$(want kannel && echo ", Kannel $(dpkg-query -W -f '${Version}' kannel 2>/dev/null)"), node $(node --version 2>/dev/null)"
    [ -n "$NO_DELIVERY_HOW" ] && echo "- Delivery off: $NO_DELIVERY_HOW"
    echo "- Raw values: [RUN-$stamp.csv](RUN-$stamp.csv)"
} >"$WORK/header.md"
h report --csv "$RAW" --out "$RESULTS_DIR/RUN-$day.md" --plot "$RESULTS_DIR/RUN-$stamp-steps.png" \
    --title "$started_at, commit $commit" --date "$day" --header "$WORK/header.md" --notes "$NOTES"
say "Written: $RESULTS_DIR/RUN-$day.md (section appended), RUN-$stamp.csv, RUN-$stamp-steps.png"
