"""Live latency of Sluice: Kafka append → sink commit (issue 12, item 5).

Called by bench/latency.sh. For each rate (events/s) it makes a fresh topic
whose records carry the broker's append time (message.timestamp.type =
LogAppendTime, 3 partitions), starts Sluice following it with `mirror` into
a fresh PostgreSQL database with the default settings, produces Debezium
change events (an `orders` insert each, schemas on, as the dev stack's
connector writes them) at that rate for DURATION seconds, waits until every
row is in the sink and stops Sluice with SIGINT. Each row's latency is the
commit time of the transaction that wrote it (PostgreSQL's
track_commit_timestamp, read as pg_xact_commit_timestamp(xmin)) minus its
record's append time in Kafka: neither clock is Sluice's, and both are this
machine's. The first second of each run is left out (the consumer joining).
A row missing from the sink stops the probe before any figure is printed.

Usage: latency.py SLUICE_BINARY PLUGIN_DIR RATES DURATION
"""

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

SLUICE, PLUGINS = sys.argv[1], Path(sys.argv[2])
RATES = [int(r) for r in sys.argv[3].split(",")]
DURATION = float(sys.argv[4])
REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "target" / "bench-latency"
WORK.mkdir(parents=True, exist_ok=True)
KAFKA = "localhost:9092"
PG = dict(PGPASSWORD="sluice", PGHOST="127.0.0.1", PGUSER="sluice")
WARMUP_S = 1.0
PARTITIONS = 3


def say(*a):
    print("[latency]", *a, file=sys.stderr, flush=True)


def psql(db, sql):
    env = {**os.environ, **PG}
    return subprocess.run(["psql", "-q", "-d", db, "-v", "ON_ERROR_STOP=1", "-At", "-F", "\t", "-c", sql],
                          check=True, text=True, capture_output=True, env=env).stdout


def commit_timestamps_on():
    """PostgreSQL keeps each transaction's commit time (a restart if not yet)."""
    if psql("postgres", "SHOW track_commit_timestamp").strip() == "on":
        return
    say("turning on track_commit_timestamp (restarts PostgreSQL)")
    psql("postgres", "ALTER SYSTEM SET track_commit_timestamp = on")
    version = subprocess.run(["pg_lsclusters", "-h"], check=True, text=True,
                             capture_output=True).stdout.split()[0]
    subprocess.run(["pg_ctlcluster", version, "main", "restart"], check=True)
    for _ in range(60):
        if subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"]).returncode == 0:
            break
        time.sleep(0.5)
    assert psql("postgres", "SHOW track_commit_timestamp").strip() == "on"


# Debezium's envelope of an `orders` insert, from the fixture stream.
FIXTURE = REPO / "tests/fixtures/debezium-pg/pg_events.schemas.jsonl"
TEMPLATE = next(json.loads(l) for l in open(FIXTURE)
                if '"pgserver1.public.orders"' in l and '\\"op\\":\\"c\\"' in l)
ENVELOPE = json.loads(TEMPLATE["payload"])
KEY = json.loads(TEMPLATE["key"])


def record(order_id):
    env = json.loads(json.dumps(ENVELOPE))
    p = env["payload"]
    p["op"], p["before"] = "c", None
    p["after"] = {"order_id": order_id, "customer_id": order_id % 2000 + 1, "amount": "AZA=",
                  "status": "NEW", "placed_at": 1_735_689_600_000_000, "note": None}
    now = int(time.time() * 1000)
    p["source"]["lsn"], p["source"]["ts_ms"], p["source"]["snapshot"] = order_id * 64, now, "false"
    p["source"]["sequence"] = json.dumps([None, str(order_id * 64)])
    p["ts_ms"] = now
    k = json.loads(json.dumps(KEY))
    k["payload"]["order_id"] = order_id
    return json.dumps(k), json.dumps(env)


def run(rate):
    stamp = int(time.time())
    topic, db = f"latency{stamp}.public.orders", f"latency_{rate}"
    admin = AdminClient({"bootstrap.servers": KAFKA})
    admin.create_topics([NewTopic(topic, PARTITIONS, 1, config={"message.timestamp.type": "LogAppendTime"})])[
        topic].result()
    psql("postgres", f"DROP DATABASE IF EXISTS {db}")
    psql("postgres", f"CREATE DATABASE {db}")
    plugins = WORK / "plugins"
    plugins.mkdir(exist_ok=True)
    (plugins / "mirror.wasm").write_bytes((PLUGINS / "mirror.wasm").read_bytes())
    log = open(WORK / f"sluice-{rate}.log", "w")
    cmd = [SLUICE, "run", "--source", f"kafka://{KAFKA}", "--topics", f"^latency{stamp}\\.",
           "--name", f"latency{stamp}", "--dlq-topic", "", "--sink",
           f"postgres://sluice:sluice@127.0.0.1:5432/{db}", "--plugins", str(plugins)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, env={**os.environ, "RUST_LOG": "info"})
    try:
        producer = Producer({"bootstrap.servers": KAFKA, "linger.ms": 0})
        # One record first: Sluice has joined once it is in the sink.
        k, v = record(0)
        producer.produce(topic, v, k, partition=0)
        producer.flush()
        deadline = time.monotonic() + 60
        while psql(db, "SELECT count(*) FROM pg_tables WHERE tablename = 'orders'").strip() != "1" \
                or psql(db, "SELECT count(*) FROM orders").strip() != "1":
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"Sluice did not start; see {log.name}")
            time.sleep(0.2)
        total = int(rate * DURATION)
        say(f"{rate} events/s: producing {total} events over {DURATION:.0f} s")
        records = [record(i) for i in range(1, total + 1)]  # made before the clock starts
        start = time.monotonic()
        for i in range(1, total + 1):
            due = start + i / rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            k, v = records[i - 1]
            producer.produce(topic, v, k, partition=i % PARTITIONS)
            producer.poll(0)
        producer.flush()
        deadline = time.monotonic() + 60
        while int(psql(db, "SELECT count(*) FROM orders").strip()) < total + 1:
            if time.monotonic() > deadline:
                raise SystemExit(f"rows missing from the sink after 60 s; see {log.name}")
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    appended = append_times(topic)
    committed = {int(r.split("\t")[0]): float(r.split("\t")[1]) for r in psql(
        db, "SELECT order_id, extract(epoch FROM pg_xact_commit_timestamp(xmin)) FROM orders").splitlines()}
    if set(committed) != set(appended):
        raise SystemExit(f"{rate}/s: the sink holds {len(committed)} orders, the topic {len(appended)}")
    first = min(appended.values())
    lat = sorted((committed[i] - t) * 1000 for i, t in appended.items() if i > 0 and t >= first + WARMUP_S)
    q = statistics.quantiles(lat, n=100)
    return {"rate": rate, "events": len(lat), "p50": q[49], "p99": q[98], "max": lat[-1]}


def append_times(topic):
    """order id → the broker's append time (seconds) of its record."""
    c = Consumer({"bootstrap.servers": KAFKA, "group.id": f"probe-{time.time()}", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    ends = {p: c.get_watermark_offsets(TopicPartition(topic, p))[1] for p in range(PARTITIONS)}
    seen, out = {p: 0 for p in range(PARTITIONS)}, {}
    while any(seen[p] < ends[p] for p in ends):
        m = c.poll(5)
        if m is None or m.error():
            continue
        seen[m.partition()] = m.offset() + 1
        kind, ts = m.timestamp()
        assert kind == 2, "the topic must carry log append times"  # TIMESTAMP_LOG_APPEND_TIME
        out[json.loads(m.key())["payload"]["order_id"]] = ts / 1000
    c.close()
    return out


def main():
    commit_timestamps_on()
    rows = [run(r) for r in RATES]
    print("| events/s | events measured | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rate']:,} | {r['events']:,} | {r['p50']:.1f} | {r['p99']:.1f} | {r['max']:.1f} |")


if __name__ == "__main__":
    main()
