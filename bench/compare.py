"""Sluice beside the seed's Spark job, in one run, on one Debezium topic.

Called by bench/compare.sh (which builds Sluice and installs PySpark). It
1. makes the workload: a PostgreSQL table `orders` (database `benchsrc`)
   captured by its own Debezium connector (`benchpg`, schemas on, as the dev
   stack's connectors emit), then inserts, updates and deletes until the
   topic holds at least EVENTS change events;
2. times, taking turns on that topic, each system into a fresh sink:
   Sluice + mirror into PostgreSQL, MariaDB and SQLite; Sluice +
   orders_events_5m and + orders_by_customer into PostgreSQL; the seed's
   Spark job (bench/spark/seed_job.py: ETL upsert, and the 5-minute window
   per customer); and PostgreSQL itself taking the same changes through COPY
   into a staging table and one merge;
3. checks every output against an independent truth (the source table; the
   seed's window counts computed here from the topic; the GROUP BYs of
   orders_by_customer's daily table computed from the source table) and
   refuses to print a rate for a wrong result;
4. prints records/s, peak RSS (the whole process tree) and the ratios.

While the systems take turns, the Kafka Connect connectors are stopped
(and resumed at the end, whatever happens): the dev stack captures the sink
server itself, and its WAL senders decoded every sink's writes beside the
run (1.6 s of CPU in a 4 s mirror run on two cores), a load a serving
database apart from the CDC source does not carry. COMPARE_CAPTURE=on
keeps them running (figures comparable with runs before this harness did).

Usage: compare.py EVENTS ROUNDS SLUICE_BINARY PLUGIN_DIR SPARK_PYTHON
"""

import base64
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

EVENTS, ROUNDS = int(sys.argv[1]), int(sys.argv[2])
SLUICE, PLUGINS, SPARK_PY = sys.argv[3], Path(sys.argv[4]), sys.argv[5]
REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "target" / "bench-compare"
WORK.mkdir(parents=True, exist_ok=True)
TOPIC = ""  # benchpg<stamp>.public.orders, set by the workload
KAFKA = "localhost:9092"
PG = dict(PGPASSWORD="sluice", PGHOST="127.0.0.1", PGUSER="sluice")
# COMPARE_CAPTURE=on: the connectors keep running during the runs (see above)
KEEP_CAPTURE = os.environ.get("COMPARE_CAPTURE") == "on"
SPARK_PACKAGES = "org.apache.spark:spark-sql-kafka-0-10_2.13:{v},org.postgresql:postgresql:42.7.4"


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw).stdout


def psql(db, sql, **kw):
    env = {**os.environ, **PG}
    return sh(["psql", "-q", "-d", db, "-v", "ON_ERROR_STOP=1", "-At", "-F", "\t", "-c", sql], env=env, **kw)


def maria(sql, db=None):
    cmd = ["mariadb", "--protocol=socket", "-uroot", "-N", "-B", "-e", sql]
    if db:
        cmd.insert(3, db)
    return sh(cmd)


def say(*a):
    print("[compare]", *a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- workload

CONNECTOR = {
    "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
    "plugin.name": "pgoutput",
    "database.hostname": "127.0.0.1",
    "database.port": "5432",
    "database.user": "sluice",
    "database.password": "sluice",
    "database.dbname": "benchsrc",
    # topic.prefix, slot.name, publication.name: per workload
    "publication.autocreate.mode": "filtered",
    "table.include.list": "public.orders",
    "tombstones.on.delete": "true",
    "topic.creation.default.partitions": "3",
    "topic.creation.default.replication.factor": "1",
    "key.converter": "org.apache.kafka.connect.json.JsonConverter",
    "value.converter": "org.apache.kafka.connect.json.JsonConverter",
    "key.converter.schemas.enable": "true",
    "value.converter.schemas.enable": "true",
}


def topic_records():
    """Records in the topic (sum of the partitions' end offsets)."""
    out = sh(["kcat", "-b", KAFKA, "-Q", "-t", f"{TOPIC}:0:-1", "-t", f"{TOPIC}:1:-1", "-t", f"{TOPIC}:2:-1"])
    total = 0
    for line in out.splitlines():
        # "benchpg.public.orders [0] offset 1234"
        if " offset " in line:
            total += max(int(line.rsplit(" ", 1)[1]), 0)
    return total


def make_workload():
    global TOPIC
    marker = WORK / f"workload-{EVENTS}.json"
    if marker.exists():
        facts = json.loads(marker.read_text())
        TOPIC = facts["topic"]
        try:
            if topic_records() == facts["records"]:
                say(f"reusing the workload: {facts['records']} records in {TOPIC}")
                return facts
        except subprocess.CalledProcessError:
            pass
    say("making the workload (database benchsrc, connector benchpg)")
    listed = subprocess.run(["curl", "-s", "localhost:8083/connectors"], capture_output=True, text=True).stdout
    for old in json.loads(listed or "[]"):
        if old.startswith("benchpg"):
            subprocess.run(["curl", "-s", "-X", "DELETE", f"localhost:8083/connectors/{old}"], capture_output=True)
    # a topic, slot and connector of its own per workload (a connector
    # re-registered under an old name resumes from its stored offsets)
    name = f"benchpg{int(time.time())}"
    TOPIC = f"{name}.public.orders"
    time.sleep(3)
    env = {**os.environ, **PG}
    subprocess.run(
        ["psql", "-q", "-d", "postgres", "-c",
         "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
         "WHERE slot_name LIKE 'sluice_benchpg%' AND NOT active"],
        env=env, capture_output=True)
    psql("postgres", "DROP DATABASE IF EXISTS benchsrc")
    psql("postgres", "CREATE DATABASE benchsrc")
    psql("benchsrc", "CREATE TABLE orders (order_id BIGINT PRIMARY KEY, customer_id BIGINT NOT NULL, "
         "amount NUMERIC(12,2) NOT NULL, status TEXT NOT NULL, placed_at TIMESTAMP NOT NULL, note TEXT)")
    body = json.dumps({**CONNECTOR, "topic.prefix": name, "slot.name": f"sluice_{name}",
                       "publication.name": f"sluice_{name}"})
    sh(["curl", "-sf", "-X", "PUT", "-H", "Content-Type: application/json", "--data", body,
        f"localhost:8083/connectors/{name}/config"])
    deadline = time.time() + 120
    while True:
        st = subprocess.run(["curl", "-s", f"localhost:8083/connectors/{name}/status"], capture_output=True, text=True).stdout
        try:
            status = json.loads(st)
            tasks = status["tasks"]
            if status["connector"]["state"] == "RUNNING" and tasks and all(t["state"] == "RUNNING" for t in tasks):
                break
        except (ValueError, KeyError):
            pass
        if time.time() > deadline:
            raise SystemExit(f"connector {name} did not start: {st}")
        time.sleep(1)
    time.sleep(3)
    # inserts: 45% of the events, updates 40%, deletes 15% (each delete
    # also writes a tombstone record)
    inserts = int(EVENTS * 0.45)
    updates = int(EVENTS * 0.40)
    deletes = EVENTS - inserts - updates
    chunk = 2000
    for start in range(0, inserts, chunk):
        n = min(chunk, inserts - start)
        psql("benchsrc", f"""INSERT INTO orders SELECT g, 1 + (g * 7919) % 5000,
            ((g * 104729) % 100000) / 100.0, 'NEW',
            TIMESTAMP '2025-01-01' + (g * 37) * INTERVAL '1 second',
            CASE WHEN g % 10 = 0 THEN 'note ' || g END
            FROM generate_series({start + 1}::bigint, {start + n}::bigint) g""")
    done = 0
    statuses = ["PAID", "SHIPPED", "RETURNED"]
    i = 0
    while done < updates:
        n = min(chunk, updates - done)
        lo = (done % inserts) + 1
        psql("benchsrc", f"""UPDATE orders SET status = '{statuses[i % 3]}',
            amount = amount + 1, customer_id = 1 + (customer_id + {i}) % 5000
            WHERE order_id BETWEEN {lo} AND {lo + n - 1}""")
        done += n
        i += 1
    psql("benchsrc", f"DELETE FROM orders WHERE order_id % {max(inserts // deletes, 2)} = 0 "
         f"AND order_id <= {deletes * max(inserts // deletes, 2)}")
    deleted = inserts - int(psql("benchsrc", "SELECT count(*) FROM orders"))
    expected = inserts + updates + 2 * deleted  # deletes and their tombstones
    say(f"waiting for Debezium: {expected} records expected")
    deadline = time.time() + 900
    while topic_records() < expected:
        if time.time() > deadline:
            raise SystemExit(f"Debezium wrote {topic_records()} of {expected} records")
        time.sleep(2)
    records = topic_records()
    facts = {"records": records, "changes": inserts + updates + deleted, "topic": TOPIC}
    marker.write_text(json.dumps(facts))
    say(f"workload ready: {records} records, {facts['changes']} change events")
    return facts


def connector_states():
    listed = subprocess.run(["curl", "-s", "localhost:8083/connectors?expand=status"],
                            capture_output=True, text=True).stdout
    return {name: c["status"]["connector"]["state"] for name, c in json.loads(listed or "{}").items()}


def set_connectors(names, action, want):
    """PUT /connectors/<name>/<action> for each, then wait until all read `want`."""
    for name in names:
        sh(["curl", "-sf", "-X", "PUT", f"localhost:8083/connectors/{name}/{action}"])
    deadline = time.time() + 120
    while any(connector_states().get(n) != want for n in names):
        if time.time() > deadline:
            raise SystemExit(f"connectors did not reach {want}: {connector_states()}")
        time.sleep(1)


class CaptureStopped:
    """The running connectors stopped for the timed runs, resumed after."""

    def __enter__(self):
        self.stopped = [] if KEEP_CAPTURE else [n for n, st in connector_states().items() if st == "RUNNING"]
        if self.stopped:
            say(f"stopping the connectors while the systems run: {', '.join(self.stopped)}")
            set_connectors(self.stopped, "stop", "STOPPED")
        return self

    def __exit__(self, *exc):
        if self.stopped:
            say(f"resuming the connectors: {', '.join(self.stopped)}")
            set_connectors(self.stopped, "resume", "RUNNING")


# ------------------------------------------------------------ the truths


def dump_topic():
    path = WORK / f"topic-{EVENTS}.jsonl"
    if not path.exists() or path.stat().st_mtime < (WORK / f"workload-{EVENTS}.json").stat().st_mtime:
        with open(path, "w") as f:
            subprocess.run(["kcat", "-b", KAFKA, "-C", "-t", TOPIC, "-J", "-e", "-q", "-o", "beginning"],
                           stdout=f, check=True)
    return path


def decimal_of(b64, scale=2):
    raw = base64.b64decode(b64)
    return Decimal(int.from_bytes(raw, "big", signed=True)).scaleb(-scale)


def changes_of(dump):
    """Every change event in the topic, in partition order: (partition,
    offset, op, before, after, ts_ms)."""
    out = []
    for line in open(dump):
        rec = json.loads(line)
        if rec.get("payload") is None:
            continue
        p = json.loads(rec["payload"])["payload"]
        out.append((rec["partition"], rec["offset"], p["op"], p["before"], p["after"], p["source"]["ts_ms"]))
    return out


def window_truth(changes):
    """The seed's job B computed here: per 5-minute window of the commit
    time and after.customer_id, events with an `after` and their amounts."""
    groups = defaultdict(lambda: [0, Decimal(0)])
    for _, _, _, _, after, ts in changes:
        if after is None:
            continue
        start_ms = ts - ts % 300_000
        g = groups[(start_ms * 1000, after["customer_id"])]
        g[0] += 1
        g[1] += decimal_of(after["amount"])
    return {k: (n, a) for k, (n, a) in groups.items()}


def source_rows():
    out = psql("benchsrc", "SELECT order_id, customer_id, amount::text, status, "
               "(extract(epoch FROM placed_at) * 1000000)::bigint, coalesce(note, '<null>') FROM orders")
    return normalise(line.split("\t") for line in out.splitlines())


def normalise(rows):
    return {int(r[0]): (int(r[1]), Decimal(r[2]), r[3], int(r[4]), r[5]) for r in rows}


def daily_truth(rows):
    """orders_by_customer_daily from the source table: per UTC day of
    placed_at and customer, count and sum of amounts."""
    g = defaultdict(lambda: [0, Decimal(0)])
    for _, (customer, amount, _, placed_us, _) in rows.items():
        day = placed_us // 86_400_000_000
        g[(day, customer)][0] += 1
        g[(day, customer)][1] += amount
    return {k: (n, a) for k, (n, a) in g.items()}


def weekly_truth(rows):
    """orders_by_customer_7d from the source table: per 7-day window sliding
    by a UTC day (keyed by its first day) and customer, count and sum."""
    g = defaultdict(lambda: [0, Decimal(0)])
    for _, (customer, amount, _, placed_us, _) in rows.items():
        day = placed_us // 86_400_000_000
        for start in range(day - 6, day + 1):
            g[(start, customer)][0] += 1
            g[(start, customer)][1] += amount
    return {k: (n, a) for k, (n, a) in g.items()}


def by_table(tables):
    """One dict of several tables' rows: {(table, *key): row}."""
    return {(name,) + k: v for name, rows in tables.items() for k, v in rows.items()}


# ----------------------------------------------------------- the sinks


def pg_orders(db):
    out = psql(db, "SELECT order_id, customer_id, amount::text, status, "
               "(extract(epoch FROM placed_at) * 1000000)::bigint, coalesce(note, '<null>') FROM orders")
    return normalise(line.split("\t") for line in out.splitlines())


def maria_orders(db):
    out = maria("SELECT order_id, customer_id, CAST(amount AS CHAR), status, "
                "TIMESTAMPDIFF(MICROSECOND, '1970-01-01', placed_at), coalesce(note, '<null>') FROM orders", db)
    return normalise(line.split("\t") for line in out.splitlines())


def sqlite_orders(path):
    import sqlite3
    from contextlib import closing
    from datetime import datetime, timezone

    rows = []
    # closed here: an open reader would keep the WAL files the next run's
    # fresh database must not inherit
    with closing(sqlite3.connect(path)) as con:
        for oid, cust, amount, status, placed, note in con.execute(
                "SELECT order_id, customer_id, amount, status, placed_at, note FROM orders"):
            dt = datetime.fromisoformat(placed.rstrip("Z")).replace(tzinfo=timezone.utc)
            us = int(dt.timestamp()) * 1_000_000 + dt.microsecond
            rows.append((oid, cust, str(amount), status, us, "<null>" if note is None else note))
    return normalise(rows)


def pg_windows(db):
    out = psql(db, "SELECT (extract(epoch FROM window_start) * 1000000)::bigint, customer_id, events, "
               "amount::text FROM orders_events_5m")
    return {(int(a), int(b)): (int(c), Decimal(d)) for a, b, c, d in (l.split("\t") for l in out.splitlines())}


def pg_daily(db, table="orders_by_customer_daily"):
    out = psql(db, "SELECT (extract(epoch FROM window_start) * 1000000)::bigint / 86400000000, customer_id, "
               f"orders, amount_sum::text FROM {table}")
    return {(int(a), int(b)): (int(c), Decimal(d)) for a, b, c, d in (l.split("\t") for l in out.splitlines())}


def differ(name, got, want):
    if got == want:
        return None
    missing = [k for k in want if k not in got][:3]
    extra = [k for k in got if k not in want][:3]
    wrong = [(k, got[k], want[k]) for k in want if k in got and got[k] != want[k]][:3]
    return (f"{name}: {len(got)} rows, {len(want)} expected; missing {missing}, extra {extra}, "
            f"wrong {wrong}")


# ------------------------------------------------------------- running


class Peak:
    """Peak RSS of a process tree, sampled every 100 ms."""

    def __init__(self, pid):
        self.pid, self.peak, self.done = pid, 0, False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def tree(self):
        children = defaultdict(list)
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
                    children[ppid].append(int(d))
                except (OSError, IndexError, ValueError):
                    pass
        out, todo = [], [self.pid]
        while todo:
            p = todo.pop()
            out.append(p)
            todo.extend(children.get(p, []))
        return out

    def run(self):
        while not self.done:
            total = 0
            for p in self.tree():
                try:
                    for line in open(f"/proc/{p}/status"):
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
                except OSError:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.1)

    def stop(self):
        self.done = True
        self.thread.join()
        return self.peak / 1024


def timed(cmd, env=None, log=None):
    """(wall seconds, peak RSS MB, stdout) of a command."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log or subprocess.DEVNULL, text=True,
                            env={**os.environ, **(env or {})})
    peak = Peak(proc.pid)
    out, _ = proc.communicate()
    secs = time.monotonic() - start
    mb = peak.stop()
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}); see {log.name if log else 'its output'}")
    return secs, mb, out


def fresh_pg(db):
    psql("postgres", f"DROP DATABASE IF EXISTS {db}")
    psql("postgres", f"CREATE DATABASE {db}")


def fresh_sqlite(path):
    # the database and its WAL files: a WAL left beside a new file breaks it
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        p.unlink(missing_ok=True)


def fresh_maria(db):
    maria(f"DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db}")


def sluice(plugin, sink, name, binary=None):
    plugins = WORK / f"plugins-{plugin}"
    plugins.mkdir(exist_ok=True)
    (plugins / f"{plugin}.wasm").write_bytes((PLUGINS / f"{plugin}.wasm").read_bytes())
    cmd = [binary or SLUICE, "run", "--source", f"kafka://{KAFKA}", "--topics", f"^{TOPIC.replace('.', chr(92) + '.')}$",
           "--name", name, "--dlq-topic", "", "--sink", sink, "--plugins", str(plugins), "--until-caught-up"]
    with open(WORK / f"{name}.log", "w") as log:
        secs, mb, out = timed(cmd, env={"RUST_LOG": "warn"}, log=log)
    # the run's summary (records, rates, state held per operator)
    (WORK / f"{name}.summary").write_text(out)
    return secs, mb, out


def spark(mode, db, name, packages):
    checkpoint = Path(tempfile.mkdtemp(prefix=f"spark-{mode}-", dir=WORK))
    cmd = [SPARK_PY, str(REPO / "bench/spark/seed_job.py"), mode, KAFKA, TOPIC,
           f"jdbc:postgresql://127.0.0.1:5432/{db}", "sluice", "sluice", str(checkpoint)]
    with open(WORK / f"{name}.log", "w") as log:
        args = f"--packages {packages} --driver-java-options -Duser.timezone=UTC pyspark-shell"
        secs, mb, out = timed(cmd, env={"PYSPARK_SUBMIT_ARGS": args,
                                        "SPARK_LOCAL_IP": "127.0.0.1"}, log=log)
    query = float(out.split("query seconds:")[1].split()[0])
    shutil.rmtree(checkpoint, ignore_errors=True)
    return secs, mb, query


def pg_copy_merge(changes, db):
    """PostgreSQL itself: the same changes COPYed into a staging table, then
    one merge (the last change per key: upserted or deleted)."""
    path = WORK / "changes.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        for seq, (part, off, op, before, after, _) in enumerate(changes):
            row = after or before
            placed = row.get("placed_at")
            w.writerow([seq, op, row["order_id"], row.get("customer_id"),
                        decimal_of(row["amount"]) if row.get("amount") else None, row.get("status"),
                        placed, row.get("note")])
    fresh_pg(db)
    psql(db, "CREATE TABLE orders (order_id BIGINT PRIMARY KEY, customer_id BIGINT, amount NUMERIC(12,2), "
         "status TEXT, placed_at TIMESTAMP, note TEXT)")
    script = f"""BEGIN;
CREATE TEMP TABLE stage (seq BIGINT, op TEXT, order_id BIGINT, customer_id BIGINT, amount NUMERIC(12,2),
  status TEXT, placed_at BIGINT, note TEXT) ON COMMIT DROP;
\\copy stage FROM '{path}' WITH (FORMAT csv)
CREATE TEMP TABLE last ON COMMIT DROP AS SELECT DISTINCT ON (order_id) * FROM stage ORDER BY order_id, seq DESC;
INSERT INTO orders SELECT order_id, customer_id, amount, status,
  TIMESTAMP 'epoch' + placed_at * INTERVAL '1 microsecond', note FROM last WHERE op <> 'd'
  ON CONFLICT (order_id) DO UPDATE SET customer_id = EXCLUDED.customer_id, amount = EXCLUDED.amount,
  status = EXCLUDED.status, placed_at = EXCLUDED.placed_at, note = EXCLUDED.note;
DELETE FROM orders o USING last l WHERE l.op = 'd' AND o.order_id = l.order_id;
COMMIT;
"""
    env = {**os.environ, **PG}
    start = time.monotonic()
    subprocess.run(["psql", "-q", "-d", db, "-v", "ON_ERROR_STOP=1"], input=script, text=True, env=env,
                   check=True, capture_output=True)
    return time.monotonic() - start


def main():
    pyspark = sh([SPARK_PY, "-c", "import pyspark; print(pyspark.__version__)"]).strip()
    packages = SPARK_PACKAGES.format(v=pyspark)
    facts = make_workload()
    records, nchanges = facts["records"], facts["changes"]
    changes = changes_of(dump_topic())
    assert len(changes) == nchanges, f"{len(changes)} change events in the dump, {nchanges} made"
    truth_rows = source_rows()
    truth_windows = window_truth(changes)
    truth_daily = daily_truth(truth_rows)
    truth_weekly = weekly_truth(truth_rows)
    truth_obc = by_table({"daily": truth_daily, "7d": truth_weekly})
    say(f"truths: {len(truth_rows)} source rows, {len(truth_windows)} windows, {len(truth_daily)} days, "
        f"{len(truth_weekly)} 7-day windows")

    # COMPARE_ONLY=mirror-pg,spark-etl,... runs a subset (while debugging);
    # COMPARE_BASE=<binary> also runs that Sluice build on each Sluice system
    # (before/after figures from one run).
    only = set(filter(None, os.environ.get("COMPARE_ONLY", "").split(",")))
    base = os.environ.get("COMPARE_BASE")

    def want(system):
        return not only or system in only

    runs = defaultdict(list)  # system -> [(seconds, peak MB)]
    wrong = []
    pgurl = "postgres://sluice:sluice@127.0.0.1:5432/"
    myurl = "mysql://sluice:sluice@127.0.0.1:3306/"
    sqlite_db = WORK / "mirror.db"
    # (key, label, plugin, prepare the sink, sink, read the output, the truth)
    sluice_runs = [
        ("mirror-pg", "sluice mirror → PostgreSQL", "mirror", lambda: fresh_pg("cmp_mirror_pg"),
         pgurl + "cmp_mirror_pg", lambda: pg_orders("cmp_mirror_pg"), truth_rows),
        ("mirror-maria", "sluice mirror → MariaDB", "mirror", lambda: fresh_maria("cmp_mirror_maria"),
         myurl + "cmp_mirror_maria", lambda: maria_orders("cmp_mirror_maria"), truth_rows),
        ("mirror-sqlite", "sluice mirror → SQLite", "mirror", lambda: fresh_sqlite(sqlite_db),
         f"sqlite:{sqlite_db}", lambda: sqlite_orders(sqlite_db), truth_rows),
        ("win", "sluice orders_events_5m → PostgreSQL", "orders_events_5m", lambda: fresh_pg("cmp_win_pg"),
         pgurl + "cmp_win_pg", lambda: pg_windows("cmp_win_pg"), truth_windows),
        ("obc", "sluice orders_by_customer → PostgreSQL", "orders_by_customer",
         lambda: fresh_pg("cmp_obc_pg"), pgurl + "cmp_obc_pg",
         lambda: by_table({"daily": pg_daily("cmp_obc_pg"),
                           "7d": pg_daily("cmp_obc_pg", "orders_by_customer_7d")}), truth_obc),
    ]
    # (key, seed_job.py mode, label, read the output from a database, the truth)
    spark_runs = [
        ("spark-etl", "etl", "spark ETL → PostgreSQL", pg_orders, truth_rows),
        ("spark-win", "window", "spark window → PostgreSQL", pg_windows, truth_windows),
    ]
    with CaptureStopped():
        take_turns(want, sluice_runs, spark_runs, packages, base, changes, truth_rows, runs, wrong)
    report(records, nchanges, runs, wrong)


def take_turns(want, sluice_runs, spark_runs, packages, base, changes, truth_rows, runs, wrong):
    """Every wanted system, ROUNDS times, each output checked (into `wrong`)."""
    for r in range(1, ROUNDS + 1):
        say(f"round {r} of {ROUNDS}")
        for key, label, plugin, prepare, sink, read, truth in sluice_runs:
            if want(key):
                prepare()
                secs, mb, _ = sluice(plugin, sink, f"cmp-{key}-{r}")
                wrong.append(differ(label, read(), truth))
                runs[label].append((secs, mb))

        for key, mode, label, read, truth in spark_runs:
            if want(key):
                db = "cmp_" + key.replace("-", "_")
                fresh_pg(db)
                secs, mb, query = spark(mode, db, f"cmp-{key}-{r}", packages)
                wrong.append(differ(label, read(db), truth))
                runs[label].append((query, mb))
                runs[f"{label} (with JVM start)"].append((secs, mb))

        if want("copy"):
            secs = pg_copy_merge(changes, "cmp_copy")
            wrong.append(differ("PostgreSQL COPY + merge", pg_orders("cmp_copy"), truth_rows))
            runs["PostgreSQL COPY + merge"].append((secs, 0))

        for key, label, plugin, prepare, sink, read, truth in sluice_runs:
            if base and want(key):
                prepare()
                secs, mb, _ = sluice(plugin, sink, f"cmp-base-{key}-{r}", base)
                base_label = label.replace("sluice", "sluice (base build)")
                wrong.append(differ(base_label, read(), truth))
                runs[base_label].append((secs, mb))


def report(records, nchanges, runs, wrong):
    """The table and the ratios; nothing but the wrong results if any."""
    wrong = [w for w in wrong if w]
    if wrong:
        print("WRONG RESULTS: no rates printed", *wrong, sep="\n")
        raise SystemExit(1)
    med = {k: statistics.median(s for s, _ in v) for k, v in runs.items()}
    peak = {k: max(m for _, m in v) for k, v in runs.items()}
    print(f"{TOPIC}: {records:,} records ({nchanges:,} change events), median of {ROUNDS} rounds, "
          f"systems taking turns; every output checked against the source; Kafka Connect "
          f"{'running' if KEEP_CAPTURE else 'stopped'} during the runs")
    print(f"{'system':<46}{'events/s':>10}{'seconds':>9}{'peak RSS MB':>13}")
    for k in runs:
        print(f"{k:<46}{nchanges / med[k]:>10,.0f}{med[k]:>9.2f}{peak[k]:>13.0f}")

    def ratio(a, b):
        return med[b] / med[a]

    wanted = [
        ("mirror → PostgreSQL vs Spark ETL (target ≥ 12x)",
         "sluice mirror → PostgreSQL", "spark ETL → PostgreSQL", "{:.1f}x"),
        ("mirror → PostgreSQL vs PostgreSQL COPY + merge (target ≥ 0.8)",
         "sluice mirror → PostgreSQL", "PostgreSQL COPY + merge", "{:.2f}"),
        ("orders_events_5m vs Spark window (target ≥ 10x)",
         "sluice orders_events_5m → PostgreSQL", "spark window → PostgreSQL", "{:.1f}x"),
        ("orders_events_5m time / orders_by_customer time (target ≥ 0.67: within 1.5x)",
         "sluice orders_by_customer → PostgreSQL", "sluice orders_events_5m → PostgreSQL", "{:.2f}"),
        ("mirror → PostgreSQL vs the base build",
         "sluice mirror → PostgreSQL", "sluice (base build) mirror → PostgreSQL", "{:.2f}x"),
        ("mirror → MariaDB vs the base build",
         "sluice mirror → MariaDB", "sluice (base build) mirror → MariaDB", "{:.2f}x"),
        ("mirror → SQLite vs the base build",
         "sluice mirror → SQLite", "sluice (base build) mirror → SQLite", "{:.2f}x"),
        ("orders_events_5m vs the base build",
         "sluice orders_events_5m → PostgreSQL", "sluice (base build) orders_events_5m → PostgreSQL", "{:.2f}x"),
        ("orders_by_customer vs the base build",
         "sluice orders_by_customer → PostgreSQL", "sluice (base build) orders_by_customer → PostgreSQL", "{:.2f}x"),
    ]
    print("ratios (same run; > 1: the first is faster):")
    for label, a, b, fmt in wanted:
        if a in med and b in med:
            print(f"  {label}: " + fmt.format(ratio(a, b)))
    a, b = "sluice orders_events_5m → PostgreSQL", "spark window → PostgreSQL"
    if a in peak and b in peak:
        print(f"  orders_events_5m peak RSS / Spark window's (target ≤ 0.2): {peak[a] / peak[b]:.2f}")


main()
