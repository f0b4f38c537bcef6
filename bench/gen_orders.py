#!/usr/bin/env python3
"""A long Debezium stream of one `orders` table (schemas on, as the dev
stack's PostgreSQL connector writes them), as kcat -J lines: inserts, then
updates (amounts, customers, times: rows move between groups and windows)
and deletes, each with a new, increasing source position; spread over
partitions by key. Usage: gen_orders.py EVENTS OUT [PARTITIONS=3]."""
import base64, json, random, sys

events, out_path = int(sys.argv[1]), sys.argv[2]
partitions = int(sys.argv[3]) if len(sys.argv) > 3 else 3
fixture = "tests/fixtures/debezium-pg/pg_events.schemas.jsonl"
template = next(json.loads(l) for l in open(fixture)
                if '"pgserver1.public.orders"' in l and '\\"op\\":\\"c\\"' in l)
envelope = json.loads(template["payload"])
key_env = json.loads(template["key"])
rng = random.Random(7)
DAY = 86_400_000_000
start = 1_735_689_600_000_000  # 2025-01-01, local time µs

def decimal_b64(cents):
    n = cents.to_bytes((cents.bit_length() + 8) // 8 or 1, "big", signed=True)
    return base64.b64encode(n).decode()

def image(o):
    return {"order_id": o["id"], "customer_id": o["customer"], "amount": decimal_b64(o["cents"]),
            "status": o["status"], "placed_at": o["placed"], "note": None}

live, ids, next_id, lsn, ts = {}, [], 1, 100_000_000, 1_795_000_000_000
offsets = [0] * partitions
with open(out_path, "w") as out:
    def emit(op, key, before, after):
        global lsn, ts
        lsn += 64
        ts += 7
        p = key % partitions
        env = json.loads(json.dumps(envelope))
        pl = env["payload"]
        pl["op"], pl["before"], pl["after"] = op, before, after
        pl["source"]["lsn"], pl["source"]["ts_ms"], pl["source"]["snapshot"] = lsn, ts, "false"
        pl["ts_ms"] = ts
        k = json.loads(json.dumps(key_env))
        k["payload"]["order_id"] = key
        out.write(json.dumps({"topic": template["topic"], "partition": p, "offset": offsets[p],
                              "key": json.dumps(k), "payload": json.dumps(env)}) + "\n")
        offsets[p] += 1
        if op == "d":  # the tombstone after a delete
            out.write(json.dumps({"topic": template["topic"], "partition": p, "offset": offsets[p],
                                  "key": json.dumps(k), "payload": None}) + "\n")
            offsets[p] += 1
    def take():
        """A random live order, removed from the live set."""
        i = rng.randrange(len(ids))
        ids[i], ids[-1] = ids[-1], ids[i]
        return live.pop(ids.pop())

    for _ in range(events):
        r = rng.random()
        if not live or r < 0.5:
            o = {"id": next_id, "customer": rng.randrange(1, 2001), "cents": rng.randrange(100, 500_000),
                 "status": "NEW", "placed": start + rng.randrange(0, 60 * DAY)}
            next_id += 1
            live[o["id"]] = o
            ids.append(o["id"])
            emit("c", o["id"], None, image(o))
        elif r < 0.9:
            o = take()
            live[o["id"]] = o
            ids.append(o["id"])
            before = image(o)
            o["cents"] = max(o["cents"] + rng.randrange(-100, 1000), 1)
            o["status"] = "PAID"
            if rng.random() < 0.2:
                o["customer"] = rng.randrange(1, 2001)
            if rng.random() < 0.2:
                o["placed"] += rng.randrange(-3, 4) * DAY
            emit("u", o["id"], before, image(o))
        else:
            o = take()
            emit("d", o["id"], image(o), None)
