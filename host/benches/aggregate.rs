//! The aggregation operator alone (no database, no plugin): one commit's
//! worth of order changes applied to a fresh state, in the shapes the
//! `bench/compare.sh` workload takes (inserts, then updates that move an
//! order to another customer and amount, then deletes), for the windows
//! `orders_events_5m` (append, 5-minute tumbling by commit time) and
//! `orders_by_customer` (state-correct daily, 7-day hopping kept by panes,
//! sessions) declare. `cargo bench -p sluice --bench aggregate`; Criterion
//! prints changes/s ("thrpt").

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sluice::model::{Column, ColumnType, DecimalParams, SourceOrder, TableDesc, Value};
use sluice::operators::aggregate::{
    output_table, AggregateState, AggregationOp, InputChange, OperatorInput,
};
use sluice::operators::spec::{
    AggregateFn, AggregationSpec, EmitMode, EventTimeSpec, LatePolicy, MeasureSpec, Semantics,
    WindowSpec,
};
use sluice::operators::{NoCustom, Projection};

/// The host's allocator (`main.rs`): allocation is much of the cost.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CHANGES: usize = 10_000;
const MINUTE: i64 = 60_000_000;
const DAY: i64 = 1_440 * MINUTE;
/// 2025-01-01T00:00:00Z, µs.
const EPOCH: i64 = 1_735_689_600_000_000;

fn measure(name: &str, function: AggregateFn, column: Option<&str>) -> MeasureSpec {
    MeasureSpec {
        name: name.into(),
        function,
        column: column.map(Into::into),
        output_type: None,
    }
}

fn spec(output: &str, window: WindowSpec, semantics: Semantics) -> AggregationSpec {
    let mut measures = vec![
        measure("orders", AggregateFn::CountRows, None),
        measure("amount_sum", AggregateFn::Sum, Some("amount")),
    ];
    if matches!(window, WindowSpec::Tumbling { size: DAY, .. }) {
        measures.push(measure("amount_min", AggregateFn::Min, Some("amount")));
        measures.push(measure("amount_max", AggregateFn::Max, Some("amount")));
    }
    AggregationSpec {
        source: "orders".into(),
        output: output.into(),
        group_by: vec!["customer_id".into()],
        window,
        window_columns: ("window_start".into(), "window_end".into()),
        event_time: match semantics {
            Semantics::Append => EventTimeSpec::CommitTime,
            Semantics::Changelog => EventTimeSpec::Column("placed_at".into()),
        },
        measures,
        out_of_orderness: 10 * MINUTE,
        allowed_lateness: 0,
        emit: EmitMode::Update,
        late: LatePolicy::Apply,
        semantics,
    }
}

fn orders() -> TableDesc {
    let column = |name: &str, ty, decimal| Column {
        name: name.into(),
        ty,
        nullable: false,
        decimal,
    };
    TableDesc {
        topic: "bench.public.orders".into(),
        name: "orders".into(),
        namespace: "public".into(),
        columns: vec![
            column("order_id", ColumnType::Int, None),
            column("customer_id", ColumnType::Int, None),
            column(
                "amount",
                ColumnType::Decimal,
                Some(DecimalParams {
                    precision: Some(10),
                    scale: Some(2),
                }),
            ),
            column("placed_at", ColumnType::Timestamp, None),
        ],
        key: vec![0],
    }
}

/// Order `id` as the workload changes it: customer, amount (cents) and
/// time, shifted by the update round `round`.
fn projection(spec: &AggregationSpec, id: u64, round: u64) -> Projection {
    let customer = 1 + (id * 7919 + round) % 5000;
    let cents = (id * 104_729) % 100_000 + round * 100;
    let amount = Value::Decimal(format!("{}.{:02}", cents / 100, cents % 100));
    Projection {
        group: vec![Value::Int(customer as i64)],
        event_time: match spec.semantics {
            Semantics::Append => None,
            Semantics::Changelog => Some(Value::Timestamp(EPOCH + id as i64 * 37_000_000)),
        },
        args: spec
            .measures
            .iter()
            .map(|m| match m.function {
                AggregateFn::CountRows => Value::Null,
                _ => amount.clone(),
            })
            .collect(),
    }
}

/// One commit of the workload: 45 % inserts, 40 % updates of them, 15 %
/// deletes, keyed like Debezium's rows (topic and primary key).
fn inputs(spec: &AggregationSpec) -> Vec<OperatorInput> {
    let op = Arc::new(AggregationOp {
        id: format!("bench/{}", spec.output),
        plugin: "bench".into(),
        index: 0,
        spec: spec.clone(),
        code: None,
    });
    let output = Arc::new(output_table(spec, &orders(), Some(&projection(spec, 1, 0))));
    let inserts = CHANGES * 45 / 100;
    let updates = CHANGES * 40 / 100;
    (0..CHANGES)
        .map(|i| {
            let (id, round, delete) = if i < inserts {
                (i as u64 + 1, 0, false)
            } else if i < inserts + updates {
                ((i - inserts) as u64 + 1, 1, false)
            } else {
                ((i - inserts - updates) as u64 * 3 + 1, 0, true)
            };
            let mut row_key = b"bench.public.orders\0".to_vec();
            row_key.extend_from_slice(format!("{{\"order_id\":{id}}}").as_bytes());
            OperatorInput {
                op: op.clone(),
                output: output.clone(),
                row_key,
                order: Some(SourceOrder([i as u64 + 1, 0, 0])),
                change: if delete {
                    InputChange::Delete
                } else {
                    InputChange::Row(Some(projection(spec, id, round)))
                },
                commit_time_ms: Some((EPOCH / 1000) + i as i64 * 20),
                partition: vec![0],
            }
        })
        .collect()
}

fn aggregate(c: &mut Criterion) {
    let mut g = c.benchmark_group("aggregate");
    g.throughput(Throughput::Elements(CHANGES as u64));
    let cases = [
        (
            "events_5m_append",
            spec(
                "orders_events_5m",
                WindowSpec::Tumbling {
                    size: 5 * MINUTE,
                    offset: 0,
                },
                Semantics::Append,
            ),
        ),
        (
            "daily",
            spec(
                "orders_by_customer_daily",
                WindowSpec::Tumbling {
                    size: DAY,
                    offset: 0,
                },
                Semantics::Changelog,
            ),
        ),
        (
            "7d_by_panes",
            spec(
                "orders_by_customer_7d",
                WindowSpec::Hopping {
                    size: 7 * DAY,
                    slide: DAY,
                    offset: 0,
                },
                Semantics::Changelog,
            ),
        ),
        (
            "sessions",
            spec(
                "orders_sessions",
                WindowSpec::Session { gap: 2 * DAY },
                Semantics::Changelog,
            ),
        ),
    ];
    for (name, spec) in cases {
        let inputs = inputs(&spec);
        let refs: Vec<&OperatorInput> = inputs.iter().collect();
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let mut state = AggregateState::new(spec.clone());
                    state.mark_complete();
                    state
                        .set_layout(true, None)
                        .expect("a fresh state takes any layout");
                    state
                        .load_watermarks(Vec::new(), None)
                        .expect("no watermark rows");
                    state
                },
                |mut state| {
                    let applied = state.apply(&refs, &[], &mut NoCustom);
                    assert!(
                        applied.rejected.is_empty(),
                        "{:?}",
                        applied.rejected.first()
                    );
                    assert!(
                        applied.failures.is_empty(),
                        "{:?}",
                        applied.failures.first()
                    );
                    (state, applied)
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, aggregate);
criterion_main!(benches);
