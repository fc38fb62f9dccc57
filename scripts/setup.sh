#!/usr/bin/env bash
# Installs what tidemark needs on a fresh Debian machine. Idempotent, and quick
# when everything is already there. Run as root (or via sudo).
#
#   scripts/setup.sh        what the tool needs to build and run: PostgreSQL 15
#                           (quickstart, compaction's scratch server, bench) and
#                           the C libraries the release build links.
#   scripts/setup.sh --dev  also what only the tests need: moto (S3), tansu
#                           (a Kafka-protocol broker, a long build), kafka-python
#                           and aiosmtpd (an SMTP server for the alert tests).
set -euo pipefail

dev=false
case "${1:-}" in
  "") ;;
  --dev) dev=true ;;
  *) echo "setup: unknown argument '$1'; use no argument, or --dev for the test tools" >&2; exit 2 ;;
esac

packages=(
  postgresql-15          # server binaries: quickstart, compaction's scratch server, bench
  postgresql-client-15   # pg_recvlogical and pgbench for `tidemark bench`
  postgresql-15-wal2json # the wal2json comparison in `tidemark bench`
  libssl-dev             # librdkafka (built by the rdkafka crate) with TLS for the Kafka feed
  zlib1g-dev
  pkg-config
)

# Only the tests: strace holds fsyncs back in the ack test; prometheus brings
# promtool, which checks docs/prometheus-alerts.yml.
$dev && packages+=(strace prometheus)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  # tidemark starts its own clusters; never create (or start) Debian's default one.
  $sudo mkdir -p /etc/postgresql-common
  echo "create_main_cluster = false" | $sudo tee /etc/postgresql-common/createcluster.conf >/dev/null
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null || { echo "setup: cargo is missing; install a Rust toolchain (rustup)" >&2; exit 1; }
test -x /usr/lib/postgresql/15/bin/initdb || { echo "setup: PostgreSQL 15 server binaries are missing after install" >&2; exit 1; }
id postgres >/dev/null 2>&1 || { echo "setup: the postgres user is missing (the server refuses to run as root)" >&2; exit 1; }

if $dev; then
  # A real S3-compatible HTTP server for the S3 tests.
  MOTO_VERSION=5.2.5
  python3 -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"

  # A real Kafka-protocol broker for the feed's tests (tansu, persisting to S3 via
  # moto so it survives restarts), and an independent client to read what reached it.
  TANSU_VERSION=0.6.0
  command -v tansu >/dev/null && tansu --version 2>/dev/null | grep -q "$TANSU_VERSION" \
    || cargo install --quiet --locked --version "$TANSU_VERSION" --features dynostore,postgres tansu
  KAFKA_PYTHON_VERSION=3.0.12
  python3 -c "import kafka, sys; sys.exit(kafka.__version__ != '$KAFKA_PYTHON_VERSION')" 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check "kafka-python==$KAFKA_PYTHON_VERSION"
  command -v tansu >/dev/null || { echo "setup: tansu is missing after install; is ~/.cargo/bin on PATH?" >&2; exit 1; }

  # A real SMTP server for the alert tests.
  AIOSMTPD_VERSION=1.4.6
  python3 -c "import aiosmtpd, sys; sys.exit(aiosmtpd.__version__ != '$AIOSMTPD_VERSION')" 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check "aiosmtpd==$AIOSMTPD_VERSION"
fi
echo "setup: ready$($dev && echo ' (with the test tools)')"
