#!/usr/bin/env bash
# The whole test suite, from a fresh machine: starts what the tests need, then runs the
# checks and `cargo test`. Idempotent: run it as often as you like. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# Build outside the clone, so that a fresh clone reuses earlier builds.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/paystep/target}"
export PAYSTEP_TEST_POSTGRES_URL="${PAYSTEP_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}"

say() { printf '\n== %s\n' "$*"; }

say "PostgreSQL"
# The machine runs PostgreSQL on 127.0.0.1:5432 with trust auth; start it if it stopped.
if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    if command -v pg_ctlcluster >/dev/null; then
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
    fi
fi
for _ in $(seq 1 60); do
    pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null && break
    sleep 0.5
done
if ! psql "$PAYSTEP_TEST_POSTGRES_URL/postgres" -Atqc 'SELECT 1' >/dev/null; then
    echo "PostgreSQL at $PAYSTEP_TEST_POSTGRES_URL does not answer; the PostgreSQL tests need it." >&2
    exit 1
fi
# Each test makes its own database; drop what earlier runs left behind, in one session.
psql "$PAYSTEP_TEST_POSTGRES_URL/postgres" -q >/dev/null <<'SQL'
SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE)', datname)
FROM pg_database WHERE datname LIKE 'paystep\_test\_%' \gexec
SQL
echo "PostgreSQL is ready at $PAYSTEP_TEST_POSTGRES_URL"

say "Chromium and ChromeDriver (browser tests)"
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium chromium-driver >/dev/null
fi
chromium --version
chromedriver --version

say "Python peers (webhook receiver, SMTP server, voice platform, schemathesis)"
# The receiver verifies signatures with an independent Standard Webhooks implementation.
python3 -c 'import standardwebhooks' 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check 'standardwebhooks==1.1.0'
# The SMTP server for the email tests (STARTTLS and AUTH required).
python3 -c 'import aiosmtpd' 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check 'aiosmtpd==1.4.6'
# The OpenAPI document is checked against the API by an independent tester.
python3 -c 'import schemathesis' 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check 'schemathesis==4.32.5'
# The voice platform stand-in signs its requests with the official twilio package.
python3 -c 'import twilio' 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check 'twilio==9.13.0'
python3 -c 'import twilio; print("twilio", twilio.__version__)'
python3 -c 'import aiosmtpd; print("aiosmtpd", aiosmtpd.__version__)'
python3 -c 'import standardwebhooks; print("standardwebhooks", standardwebhooks.__name__, "ready")'
python3 -c 'import schemathesis; print("schemathesis", schemathesis.__version__)'

say "Test SMSC (npm smpp@0.5.1, from tests/peers/smsc/package-lock.json)"
if [ ! -d tests/peers/smsc/node_modules/smpp ]; then
    (cd tests/peers/smsc && npm ci --no-audit --no-fund --silent)
fi
node --version
node -e 'require("./tests/peers/smsc/node_modules/smpp"); console.log("smpp ready")'

say "Kannel's PPG and wbxml2xml (WAP push tests)"
# Kannel (bearerbox + wapbox) is the real Push Proxy Gateway the WAP push channel talks to;
# libwbxml2-utils' wbxml2xml decodes what it sends, independently of our code.
if ! [ -x /usr/sbin/bearerbox ] || ! [ -x /usr/sbin/wapbox ] || ! command -v wbxml2xml >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq kannel libwbxml2-utils >/dev/null
fi
# Debian starts a system Kannel from the package; the tests run their own on free ports.
if command -v systemctl >/dev/null && systemctl is-active --quiet kannel 2>/dev/null; then
    systemctl stop kannel || true
fi
/usr/sbin/bearerbox --version 2>&1 | grep -m 1 -i 'kannel' || true
command -v wbxml2xml

say "PostgreSQL server binaries, runuser and tmpfs (database fault tests)"
# The fault tests start a PostgreSQL cluster of their own (initdb and pg_ctl as the postgres
# user) and put a SQLite file on a small tmpfs that they fill; they fail without these.
if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
fi
ls /usr/lib/postgresql/*/bin/pg_ctl
command -v runuser
id postgres
probe=$(mktemp -d)
mount -t tmpfs -o size=1m tmpfs "$probe" && umount "$probe" && echo "tmpfs mounts here"
rmdir "$probe"

say "Formatting and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

say "Tests"
# The reliability tests append their figures here (cargo test hides a passing test's output).
mkdir -p test-artifacts
: >test-artifacts/figures.txt
cargo test --workspace --locked

say "The simulation's fault test (test-only fault-injection feature)"
# A deliberately broken invariant must be caught with its seed, and the seed must replay.
# The feature only compiles the switches; nothing but this test's own code arms them.
cargo test --locked --features fault-injection --test api simulation::fault::

say "Figures of this run (test-artifacts/figures.txt; RELIABILITY.md quotes them)"
cat test-artifacts/figures.txt
