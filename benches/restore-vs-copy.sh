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
# and tidemark's peak RSS. Build first: cargo build --release.
set -euo pipefail
ROWS=${1:-200000}
STATEMENTS=${2:-500000}
ROUNDS=${3:-3}
TM=${TIDEMARK:-$(cd "$(dirname "$0")/.." && pwd)/target/release/tidemark}
BIN=$(ls -d /usr/lib/postgresql/15/bin)
WORK=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_pg() { if [ "$(id -u)" -eq 0 ]; then su postgres -c "$*"; else bash -c "$*"; fi; }
cleanup() {
  as_pg "$BIN/pg_ctl -D $WORK/pg stop -m immediate" >/dev/null 2>&1 || true
  [ -n "${CAPTURE:-}" ] && kill "$CAPTURE" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
chmod 755 "$WORK"
mkdir "$WORK/pg"
[ "$(id -u)" -eq 0 ] && chown postgres "$WORK/pg"
as_pg "$BIN/initdb -D $WORK/pg -A trust -U postgres" >/dev/null
cat >> "$WORK/pg/postgresql.conf" <<CONF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK/pg'
wal_level = logical
max_wal_size = 4GB
CONF
as_pg "$BIN/pg_ctl -D $WORK/pg -l $WORK/pg/log -w start" >/dev/null
P="psql -qAtX -h 127.0.0.1 -p $PORT -U postgres"
URL="postgresql://postgres@127.0.0.1:$PORT"
$P -c "CREATE DATABASE src"
$P -d src -c "CREATE TABLE t (id bigint PRIMARY KEY, a numeric(12,2), b text, c timestamptz);
  INSERT INTO t SELECT g, g / 100.0, md5(g::text) || md5((g + 1)::text), now() FROM generate_series(1, $ROWS) g"
cat > "$WORK/tidemark.toml" <<TOML
[source]
url = "$URL/src"
tables = ["public.t"]
[log]
dir = "$WORK/log"
[metrics]
listen = "127.0.0.1:0"
[archive]
url = "file://$WORK/archive"
upload_interval = "200ms"
TOML
window_past() { # is the archive's window at or past LSN $1?
  "$TM" list --config "$WORK/tidemark.toml" --json 2>/dev/null | python3 -c '
import json, sys
def lsn(s):
    hi, lo = s.split("/"); return (int(hi, 16) << 32) + int(lo, 16)
w = json.load(sys.stdin)["window"]
sys.exit(0 if w and lsn(w["latest"]["lsn"]) >= lsn(sys.argv[1]) else 1)' "$1"
}
"$TM" capture --config "$WORK/tidemark.toml" 2>"$WORK/capture.log" &
CAPTURE=$!
until window_past 0/0; do sleep 0.2; done
$P -d src <<SQL
CREATE PROCEDURE churn(n int, s bigint) LANGUAGE plpgsql AS \$\$
DECLARE i int; r float; k bigint; next_id bigint := s + 1;
BEGIN
  FOR i IN 1..n LOOP
    r := random();
    k := 1 + floor(random() * s)::bigint;
    IF r < 0.6 THEN
      UPDATE t SET a = a + 1, c = now() WHERE id = k;
    ELSIF r < 0.8 THEN
      INSERT INTO t VALUES (next_id, 1, md5(next_id::text), now()); next_id := next_id + 1;
    ELSE
      DELETE FROM t WHERE id = k;
    END IF;
    IF i % 100 = 0 THEN COMMIT; END IF;
  END LOOP;
END \$\$;
CALL churn($STATEMENTS, $ROWS);
SQL
END_LSN=$($P -d src -c "SELECT pg_current_wal_lsn()")
until window_past "$END_LSN"; do sleep 0.2; done
kill "$CAPTURE"; wait "$CAPTURE" || true; CAPTURE=
SOURCE_MD5=$($P -d src -c "SELECT md5(string_agg(t::text, '|' ORDER BY id)) FROM t")
FINAL_ROWS=$($P -d src -c "SELECT count(*) FROM t")
now() { date +%s.%N; }
for round in $(seq "$ROUNDS"); do
  $P -c "DROP DATABASE IF EXISTS dst" -c "CREATE DATABASE dst" >/dev/null
  start=$(now)
  /usr/bin/time -f "%M" -o "$WORK/rss" "$TM" restore --config "$WORK/tidemark.toml" --to latest \
    --target "$URL/dst" --json >"$WORK/restore.json" 2>"$WORK/restore.log"
  restore_s=$(echo "$(now) - $start" | bc)
  read -r snapshot_rows changes < <(python3 -c '
import json, sys; r = json.load(open(sys.argv[1])); print(r["rows_loaded"], r["changes"])' "$WORK/restore.json")
  exact=$([ "$($P -d dst -c "SELECT md5(string_agg(t::text, '|' ORDER BY id)) FROM t")" = "$SOURCE_MD5" ] && echo exact || echo DIFFERENT)
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
