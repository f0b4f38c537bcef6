"""The seed's Spark Structured Streaming job, as the harness runs it beside
Sluice (bench/compare.py): Debezium JSON (schemas on) from Kafka, parsed
with from_json, then either

- etl:    every change upserted into PostgreSQL by key (foreachBatch: the
          batch's last change per key; JDBC into a staging table, then one
          INSERT ... ON CONFLICT DO UPDATE and one DELETE), or
- window: the seed's job B: per after.customer_id, events (count) and amount
          (sum of after.amount) in tumbling 5-minute windows of the source
          commit time, 10-minute watermark, outputMode("update") with an
          upserting foreachBatch.

It reads the topic from the earliest offset and stops once caught up
(trigger availableNow). Usage:
  seed_job.py etl|window BOOTSTRAP TOPIC JDBC_URL USER PASSWORD CHECKPOINT_DIR
"""

import sys
import time

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType, StructField, StructType
from pyspark.sql.window import Window

mode, bootstrap, topic, jdbc_url, user, password, checkpoint = sys.argv[1:8]

spark = (
    SparkSession.builder.master("local[2]")
    .appName(f"seed-{mode}")
    .config("spark.sql.shuffle.partitions", "2")
    .config("spark.ui.enabled", "false")
    .config("spark.sql.session.timeZone", "UTC")
    .getOrCreate()
)
spark.sparkContext.setLogLevel("WARN")
jvm = spark.sparkContext._jvm

row = StructType(
    [
        StructField("order_id", LongType()),
        StructField("customer_id", LongType()),
        # NUMERIC(12,2) as Connect's Decimal: base64 of the unscaled
        # big-endian two's-complement integer
        StructField("amount", StringType()),
        StructField("status", StringType()),
        StructField("placed_at", LongType()),  # MicroTimestamp
        StructField("note", StringType()),
    ]
)
envelope = StructType(
    [
        StructField(
            "payload",
            StructType(
                [
                    StructField("before", row),
                    StructField("after", row),
                    StructField("op", StringType()),
                    StructField("ts_ms", LongType()),
                    StructField("source", StructType([StructField("ts_ms", LongType())])),
                ]
            ),
        )
    ]
)


def decimal2(b64):
    """A base64 Connect Decimal of scale 2 as a decimal column."""
    unscaled = F.conv(F.hex(F.unbase64(b64)), 16, 10).cast("decimal(38,0)")
    return (unscaled / F.lit(100)).cast("decimal(12,2)")


raw = (
    spark.readStream.format("kafka")
    .option("kafka.bootstrap.servers", bootstrap)
    .option("subscribe", topic)
    .option("startingOffsets", "earliest")
    .option("maxOffsetsPerTrigger", 50000)
    .load()
)
changes = raw.select(
    F.col("partition"),
    F.col("offset"),
    F.from_json(F.col("value").cast("string"), envelope).alias("e"),
).where(F.col("e.payload").isNotNull())

props = {"user": user, "password": password, "driver": "org.postgresql.Driver"}


def execute(statements):
    """Run SQL statements in one transaction through the JVM's JDBC driver."""
    # the driver came with --packages: Spark's class loader has it, the
    # DriverManager that py4j sees does not
    loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
    driver = loader.loadClass("org.postgresql.Driver").newInstance()
    info = jvm.java.util.Properties()
    info.setProperty("user", user)
    info.setProperty("password", password)
    conn = driver.connect(jdbc_url, info)
    try:
        conn.setAutoCommit(False)
        st = conn.createStatement()
        for s in statements:
            st.execute(s)
        conn.commit()
    finally:
        conn.close()


execute(
    [
        "CREATE TABLE IF NOT EXISTS orders (order_id BIGINT PRIMARY KEY, customer_id BIGINT, "
        "amount NUMERIC(12,2), status TEXT, placed_at TIMESTAMP, note TEXT)",
        "CREATE TABLE IF NOT EXISTS orders_events_5m (window_start TIMESTAMP, window_end TIMESTAMP, "
        "customer_id BIGINT, events BIGINT, amount NUMERIC(38,2), PRIMARY KEY (window_start, customer_id))",
    ]
)


def upsert_orders(batch, batch_id):
    p = F.col("e.payload")
    last = (
        batch.withColumn("key", F.coalesce(p["after"]["order_id"], p["before"]["order_id"]))
        .withColumn(
            "n",
            F.row_number().over(
                Window.partitionBy("key").orderBy(F.col("partition").desc(), F.col("offset").desc())
            ),
        )
        .where("n = 1")
    )
    rows = last.where(p["op"] != "d").select(
        p["after"]["order_id"].alias("order_id"),
        p["after"]["customer_id"].alias("customer_id"),
        decimal2(p["after"]["amount"]).alias("amount"),
        p["after"]["status"].alias("status"),
        F.timestamp_micros(p["after"]["placed_at"]).alias("placed_at"),
        p["after"]["note"].alias("note"),
    )
    gone = last.where(p["op"] == "d").select(F.col("key").alias("order_id"))
    rows.write.option("truncate", "true").jdbc(jdbc_url, "orders_stage", "overwrite", props)
    gone.write.option("truncate", "true").jdbc(jdbc_url, "orders_gone", "overwrite", props)
    execute(
        [
            "INSERT INTO orders SELECT order_id, customer_id, amount, status, placed_at, note "
            "FROM orders_stage ON CONFLICT (order_id) DO UPDATE SET customer_id = EXCLUDED.customer_id, "
            "amount = EXCLUDED.amount, status = EXCLUDED.status, placed_at = EXCLUDED.placed_at, "
            "note = EXCLUDED.note",
            "DELETE FROM orders WHERE order_id IN (SELECT order_id FROM orders_gone)",
        ]
    )


def upsert_windows(batch, batch_id):
    batch.write.option("truncate", "true").jdbc(jdbc_url, "orders_events_5m_stage", "overwrite", props)
    execute(
        [
            "INSERT INTO orders_events_5m SELECT window_start, window_end, customer_id, events, amount "
            "FROM orders_events_5m_stage ON CONFLICT (window_start, customer_id) DO UPDATE SET "
            "window_end = EXCLUDED.window_end, events = EXCLUDED.events, amount = EXCLUDED.amount"
        ]
    )


if mode == "etl":
    query = changes.writeStream.foreachBatch(upsert_orders)
else:
    p = F.col("e.payload")
    events = changes.where(p["after"].isNotNull()).select(
        p["after"]["customer_id"].alias("customer_id"),
        decimal2(p["after"]["amount"]).alias("amount"),
        F.timestamp_millis(p["source"]["ts_ms"]).alias("ts"),
    )
    windows = (
        events.withWatermark("ts", "10 minutes")
        .groupBy(F.window("ts", "5 minutes"), "customer_id")
        .agg(F.count(F.lit(1)).alias("events"), F.sum("amount").alias("amount"))
        .select(
            F.col("window.start").alias("window_start"),
            F.col("window.end").alias("window_end"),
            "customer_id",
            "events",
            "amount",
        )
    )
    query = windows.writeStream.outputMode("update").foreachBatch(upsert_windows)

started = time.monotonic()
query.option("checkpointLocation", checkpoint).trigger(availableNow=True).start().awaitTermination()
# the harness reads this line: the query's own time, without JVM start-up
print(f"query seconds: {time.monotonic() - started:.3f}", flush=True)
spark.stop()
