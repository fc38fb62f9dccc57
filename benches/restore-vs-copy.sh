#!/usr/bin/env bash
# Restore against COPY, side by side, with the binary users run.
#
#   benches/restore-vs-copy.sh [ROWS] [STATEMENTS] [ROUNDS]
#
# A throwaway PostgreSQL 15 gets a table of ROWS rows (200,000); `tidemark
# capture` takes its base snapshot, then STATEMENTS statements (500,000) run
# in 100-statement transactions: 60% updates, 20% inserts, 20% deletes of
# random keys (a delete or update of a gone key changes nothing). Once the
# archive holds them, each round times `tidemark restore --to latest` into an
# empty database, then COPY (binary) of as many rows as the restore handled
# (snapshot rows plus archived changes) into a table without a key, plus the
# primary key. It checks the restored table equals the source, and prints
# each round's ratio (COPY's time over restore's: 1.0 is as fast as COPY)
# and tidemark's peak RSS. Then it times `tidemark compact` of the same
# archive (a new base snapshot at the same point), with tidemark's own peak
# RSS, the scratch server's largest process and the bytes tidemark read and
# wrote. Build first: cargo build --release.
set -euo pipefail
ROWS=${1:-200000}
STATEMENTS=${2:-500000}
ROUNDS=${3:-3}
source "$(dirname "$0")/lib.sh"
make_source "$ROWS"
CONFIG=$(write_config "$WORK/log" tidemark "file://$WORK/archive" </dev/null)
"$TM" capture --config "$CONFIG" 2>"$WORK/capture.log" &
CAPTURE=$!
BACKGROUND+=("$CAPTURE")
until window_past "$CONFIG" 0/0; do still_running "$CAPTURE"; sleep 0.2; done
$P -d src -c "CALL churn($STATEMENTS, $ROWS)"
END_LSN=$($P -d src -c "SELECT pg_current_wal_lsn()")
until window_past "$CONFIG" "$END_LSN"; do still_running "$CAPTURE"; sleep 0.2; done
kill "$CAPTURE"; wait "$CAPTURE" || true
SOURCE_MD5=$(table_md5 src)
FINAL_ROWS=$($P -d src -c "SELECT count(*) FROM t")
for round in $(seq "$ROUNDS"); do
  $P -c "DROP DATABASE IF EXISTS dst" -c "CREATE DATABASE dst" >/dev/null
  start=$(now)
  /usr/bin/time -f "%M" -o "$WORK/rss" "$TM" restore --config "$CONFIG" --to latest \
    --target "$URL/dst" --json >"$WORK/restore.json" 2>"$WORK/restore.log"
  restore_s=$(echo "$(now) - $start" | bc)
  read -r snapshot_rows changes < <(python3 -c '
import json, sys; r = json.load(open(sys.argv[1])); print(r["rows_loaded"], r["changes"])' "$WORK/restore.json")
  exact=$([ "$(table_md5 dst)" = "$SOURCE_MD5" ] && echo exact || echo DIFFERENT)
  # The same number of rows as COPY loads them: the source's rows, topped up.
  $P -d src -c "COPY (SELECT * FROM t UNION ALL SELECT g + 1000000000, 1, md5(g::text), now()
    FROM generate_series(1, $((snapshot_rows + changes - FINAL_ROWS))) g) TO '$WORK/pg/copy.bin' (FORMAT binary)"
  $P -c "DROP DATABASE IF EXISTS cp" -c "CREATE DATABASE cp" >/dev/null
  start=$(now)
  $P -d cp -c "CREATE TABLE t (id bigint, a numeric(12,2), b text, c timestamptz)" \
    -c "COPY t FROM '$WORK/pg/copy.bin' (FORMAT binary)" -c "ALTER TABLE t ADD PRIMARY KEY (id)"
  copy_s=$(echo "$(now) - $start" | bc)
  printf 'round %s: %s snapshot rows + %s changes; restore %.2f s, COPY + key %.2f s, ratio %.2f, %s, tidemark peak RSS %d MiB\n' \
    "$round" "$snapshot_rows" "$changes" "$restore_s" "$copy_s" "$(echo "$copy_s / $restore_s" | bc -l)" \
    "$exact" "$(( $(cat "$WORK/rss") / 1024 ))"
done

# Compaction of the same archive. tidemark's own peak RSS is sampled from
# /proc while it runs: /usr/bin/time would also count the scratch server it
# starts and waits for.
descendants() { ps -eo pid=,ppid= | awk -v root="$1" '
  { parent[$1] = $2 } END { for (p in parent) { q = p; while (q in parent && q != root) q = parent[q]; if (q == root && p != root) print p } }'; }
start=$(now)
"$TM" compact --config "$CONFIG" 2>"$WORK/compact.log" &
COMPACT=$!
own=0; scratch=0; rchar=0; wchar=0
while kill -0 "$COMPACT" 2>/dev/null; do
  hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$COMPACT/status" 2>/dev/null || true)
  [ -n "$hwm" ] && [ "$hwm" -gt "$own" ] && own=$hwm
  for pid in $(descendants "$COMPACT"); do
    hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    [ -n "$hwm" ] && [ "$hwm" -gt "$scratch" ] && scratch=$hwm
  done
  io=$(awk '/^rchar/ {r = $2} /^wchar/ {w = $2} END {printf "%.0f %.0f\n", r, w}' "/proc/$COMPACT/io" 2>/dev/null || true)
  [ -n "$io" ] && read -r rchar wchar <<<"$io"
  sleep 0.1
done
wait "$COMPACT"
compact_s=$(echo "$(now) - $start" | bc)
printf 'compaction: %.2f s (the last restore of the same point: %.2f s); tidemark peak RSS %d MiB, scratch server largest process %d MiB; tidemark read %d MiB, wrote %d MiB\n' \
  "$compact_s" "$restore_s" "$(( own / 1024 ))" "$(( scratch / 1024 ))" "$(( rchar / 1048576 ))" "$(( wchar / 1048576 ))"
