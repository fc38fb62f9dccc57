#!/usr/bin/env bash
# Restore from S3 against restore from a local-directory archive, side by
# side, with the binary users run.
#
#   benches/restore-s3-vs-local.sh [ROWS] [STATEMENTS] [ROUNDS]
#
# A throwaway PostgreSQL 15 gets a table of ROWS rows (1,000,000, so its
# snapshot object is big enough to come down in ranges) and STATEMENTS
# changes (200,000; see lib.sh). Two captures follow it at once, on two
# slots: one archives to S3 (moto's server, as the tests use), one to a local
# directory. Each round restores `--to latest` from each into an empty
# database, checks the rows equal the source's, and prints both times and
# their ratio. Needs the dev setup (moto). Build first: cargo build --release.
set -euo pipefail
ROWS=${1:-1000000}
STATEMENTS=${2:-200000}
ROUNDS=${3:-3}
source "$(dirname "$0")/lib.sh"
S3_PORT=$(free_port)
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
python3 -m moto.server -H 127.0.0.1 -p "$S3_PORT" >/dev/null 2>&1 &
BACKGROUND+=("$!")
until python3 -c "import socket; socket.create_connection(('127.0.0.1', $S3_PORT))" 2>/dev/null; do sleep 0.2; done
python3 -c "import boto3; boto3.client('s3', endpoint_url='http://127.0.0.1:$S3_PORT', region_name='us-east-1').create_bucket(Bucket='bench')"
make_source "$ROWS"
S3=$(write_config "$WORK/log-s3" s3 "s3://bench/db" <<KEYS
endpoint = "http://127.0.0.1:$S3_PORT"
path_style = true
KEYS
)
LOCAL=$(write_config "$WORK/log-local" local "file://$WORK/archive" </dev/null)
for config in "$S3" "$LOCAL"; do
  "$TM" capture --config "$config" 2>>"$WORK/capture.log" &
  BACKGROUND+=("$!")
  until window_past "$config" 0/0; do still_running "${BACKGROUND[@]}"; sleep 0.2; done
done
$P -d src -c "CALL churn($STATEMENTS, $ROWS)"
END_LSN=$($P -d src -c "SELECT pg_current_wal_lsn()")
until window_past "$S3" "$END_LSN" && window_past "$LOCAL" "$END_LSN"; do still_running "${BACKGROUND[@]}"; sleep 0.2; done
for pid in "${BACKGROUND[@]:1}"; do kill "$pid"; wait "$pid" || true; done
SOURCE_MD5=$(table_md5 src)
restore() { # config, database: prints seconds and whether the rows are the source's
  $P -c "DROP DATABASE IF EXISTS $2" -c "CREATE DATABASE $2" >/dev/null
  local start; start=$(now)
  "$TM" restore --config "$1" --to latest --target "$URL/$2" >/dev/null 2>"$WORK/restore.log"
  echo "$(echo "$(now) - $start" | bc) $([ "$(table_md5 "$2")" = "$SOURCE_MD5" ] && echo exact || echo DIFFERENT)"
}
stored=$(du -sb "$WORK/archive" | cut -f1)
for round in $(seq "$ROUNDS"); do
  read -r s3_s s3_exact < <(restore "$S3" from_s3)
  read -r local_s local_exact < <(restore "$LOCAL" from_local)
  printf 'round %s: %d MiB archived; from S3 %.2f s (%s), from a local directory %.2f s (%s); S3 takes %.2fx as long\n' \
    "$round" "$(( stored / 1048576 ))" "$s3_s" "$s3_exact" "$local_s" "$local_exact" "$(echo "$s3_s / $local_s" | bc -l)"
done
