#!/usr/bin/env python3
"""A long Debezium stream of one `orders` table (schemas on, as the dev
stack's PostgreSQL connector writes them), as kcat -J lines: inserts, then
updates (amounts, customers, times: rows move between groups and windows)
and deletes, each with a new, increasing source position; spread over
partitions by key. With --customers, a `customers` table too (its own
topic): the 2,000 customers the orders name are inserted first, and one
change event in ten is a customer moving to another segment (what a join
with customers must follow). Usage:
gen_orders.py EVENTS OUT [PARTITIONS=3] [--customers]."""
import base64, json, random, sys

with_customers = "--customers" in sys.argv
args = [a for a in sys.argv[1:] if a != "--customers"]
events, out_path = int(args[0]), args[1]
partitions = int(args[2]) if len(args) > 2 else 3
fixture = "tests/fixtures/debezium-pg/pg_events.schemas.jsonl"
template = next(json.loads(l) for l in open(fixture)
                if '"pgserver1.public.orders"' in l and '\\"op\\":\\"c\\"' in l)
envelope = json.loads(template["payload"])
key_env = json.loads(template["key"])
c_template = next(json.loads(l) for l in open(fixture)
                  if '"pgserver1.public.customers"' in l)
c_envelope = json.loads(c_template["payload"])
c_key_env = json.loads(c_template["key"])
SEGMENTS = ["smb", "mid", "enterprise"]
CUSTOMERS = 2000
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
offsets = {}
with open(out_path, "w") as out:
    def emit(op, key, before, after, table=(template, envelope, key_env, "order_id")):
        global lsn, ts
        lsn += 64
        ts += 7
        tmpl, env_tmpl, key_tmpl, key_field = table
        topic = tmpl["topic"]
        p = key % partitions
        env = json.loads(json.dumps(env_tmpl))
        pl = env["payload"]
        pl["op"], pl["before"], pl["after"] = op, before, after
        pl["source"]["lsn"], pl["source"]["ts_ms"], pl["source"]["snapshot"] = lsn, ts, "false"
        pl["source"]["sequence"] = json.dumps([None, str(lsn)])
        pl["ts_ms"] = ts
        k = json.loads(json.dumps(key_tmpl))
        k["payload"][key_field] = key
        def line(payload):
            o = offsets.get((topic, p), 0)
            offsets[(topic, p)] = o + 1
            out.write(json.dumps({"topic": topic, "partition": p, "offset": o,
                                  "key": json.dumps(k), "payload": payload}) + "\n")
        line(json.dumps(env))
        if op == "d":  # the tombstone after a delete
            line(None)

    customers = {}
    def customer(cid):
        return {"id": cid, "name": f"Customer {cid}", "email": f"user{cid}@example.com",
                "segment": customers[cid], "vip": False,
                "created_at": "2024-02-11T01:30:00.000000Z"}
    c_table = (c_template, c_envelope, c_key_env, "id")
    if with_customers:
        for cid in range(1, CUSTOMERS + 1):
            customers[cid] = rng.choice(SEGMENTS)
            emit("c", cid, None, customer(cid), c_table)
    def take():
        """A random live order, removed from the live set."""
        i = rng.randrange(len(ids))
        ids[i], ids[-1] = ids[-1], ids[i]
        return live.pop(ids.pop())

    for _ in range(events):
        if with_customers and rng.random() < 0.1:
            cid = rng.randrange(1, CUSTOMERS + 1)
            before = customer(cid)
            customers[cid] = rng.choice([s for s in SEGMENTS if s != customers[cid]])
            emit("u", cid, before, customer(cid), c_table)
            continue
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
