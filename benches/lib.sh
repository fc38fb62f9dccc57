# Shared by the bench scripts: a throwaway PostgreSQL 15, the source table,
# the churn workload, and waiting for an archive's window. Source it; it sets
# TM, WORK, P (psql), URL and ROWS, and cleans up on exit.
TM=${TIDEMARK:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/release/tidemark}
BIN=$(ls -d /usr/lib/postgresql/15/bin)
WORK=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
as_pg() { if [ "$(id -u)" -eq 0 ]; then su postgres -c "$*"; else bash -c "$*"; fi; }
BACKGROUND=()
cleanup() {
  as_pg "$BIN/pg_ctl -D $WORK/pg stop -m immediate" >/dev/null 2>&1 || true
  for pid in "${BACKGROUND[@]}"; do kill "$pid" 2>/dev/null || true; done
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
now() { date +%s.%N; }

# The source: table t of $1 rows, and churn(n, s): n statements in
# 100-statement transactions, 60% updates, 20% inserts, 20% deletes of random keys.
make_source() {
  $P -c "CREATE DATABASE src"
  $P -d src -c "CREATE TABLE t (id bigint PRIMARY KEY, a numeric(12,2), b text, c timestamptz);
    INSERT INTO t SELECT g, g / 100.0, md5(g::text) || md5((g + 1)::text), now() FROM generate_series(1, $1) g"
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
SQL
}

# A config watching public.t into log dir $1, slot $2, archive url $3 (more [archive] keys on stdin).
write_config() {
  cat > "$WORK/$2.toml" <<TOML
[source]
url = "$URL/src"
tables = ["public.t"]
slot = "$2"
publication = "bench_$2"
[log]
dir = "$1"
[metrics]
listen = "127.0.0.1:0"
[archive]
url = "$3"
upload_interval = "200ms"
$(cat)
TOML
  echo "$WORK/$2.toml"
}

# Fails the bench if a process it started (a capture, say) has stopped.
still_running() {
  for pid in "$@"; do
    kill -0 "$pid" 2>/dev/null || { echo "process $pid stopped; its log:" >&2; tail -5 "$WORK"/*.log >&2; exit 1; }
  done
}

# Whether the archive of config $1 restores at or past LSN $2.
window_past() {
  "$TM" list --config "$1" --json 2>/dev/null | python3 -c '
import json, sys
def lsn(s):
    hi, lo = s.split("/"); return (int(hi, 16) << 32) + int(lo, 16)
w = json.load(sys.stdin)["window"]
sys.exit(0 if w and lsn(w["latest"]["lsn"]) >= lsn(sys.argv[1]) else 1)' "$2"
}

# A digest of table t in database $1, in chunks of keys (one string of 10 M rows passes 1 GB).
table_md5() {
  $P -d "$1" -c "SELECT md5(string_agg(m, '' ORDER BY k)) FROM (
    SELECT id / 100000 AS k, md5(string_agg(t::text, '|' ORDER BY id)) AS m FROM t GROUP BY 1) chunks"
}
