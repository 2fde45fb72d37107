//! The PostgreSQL ceiling's pgbench script (`booking_sim::load::ceiling`) is exactly what the
//! coordinator runs for one payment, and cannot drift from it.
//!
//! On a throwaway PostgreSQL logging every statement with its parameters, per flow:
//! 1. a real payment through a real replica: its transactions (found in the log by the order id
//!    and the caller's key among their parameters), their BEGIN/COMMIT, statement texts and
//!    parameter values must be `ceiling::transactions(flow)` with the payment's values. A new,
//!    removed, reordered or changed statement in the coordinator fails here until the ceiling
//!    follows;
//! 2. pgbench runs the script (2 clients × 3 payments, twice: fresh order ids across clients and
//!    runs) on the same database: every payment completes, and leaves exactly the rows of the real
//!    payment (orders, attempts, events), fresh ids and times aside;
//! 3. the statements one pgbench payment sent, as the server logged them, are the same
//!    transactions and statements with the same values.

use std::collections::HashMap;

use booking_sim::{
    load::ceiling::{self, Arg, Limit, Options, Payment, Statement, Transaction},
    psp::SimConfig,
    stack::pg::ThrowawayPg,
};
use gateway_client::Flow;
use integration_tests::coordinator::{OPERATOR, TestEnv};
use payments_proto::v1 as pb;
use serde_json::Value;

/// Every server log line starts with this and the backend's pid.
const LOG_PREFIX: &str = "@@@ ";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_two_phase_script_is_a_real_payment() {
    check(Flow::TwoPhase).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_one_shot_script_is_a_real_payment() {
    check(Flow::OneShot).await;
}

async fn check(flow: Flow) {
    let pg = tokio::task::spawn_blocking(ThrowawayPg::start)
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("throwaway PostgreSQL: {e:#}"));
    log_every_statement(&pg).await;
    let env = TestEnv::with(SimConfig::default(), pg.url_base()).await;
    // A long lease: no heartbeat can beat during the payment, whatever the machine's load.
    let replica = env
        .replica(
            "r0",
            &["--gateway-flow", flow.as_str(), "--lease-ttl-ms", "60000"],
        )
        .await;
    let order_id = format!("ceiling-{flow}-1");
    let request_key = format!("key-{flow}-1");

    // 1. A real payment, and what the coordinator ran for it.
    let mut op = replica.client(OPERATOR).await;
    let answer = op
        .process_payment(pay(&order_id, &request_key))
        .await
        .expect("pay")
        .into_inner();
    assert_eq!(answer.order.expect("order").state(), pb::OrderState::Paid);
    // Read before the test's own queries about the order, which the server logs too.
    let log = read_log(&pg);
    let real = real_payment(&env, flow, &order_id, &request_key).await;
    let ran = payment_transactions(&log, &[&real.order_id, &real.request_key]);
    assert_runs(
        "the coordinator",
        &ran,
        &ceiling::transactions(flow),
        &real,
        Sends::Coordinator,
    );

    // 2. pgbench with the same values, twice.
    let options = Options {
        flow,
        concurrency: 2,
        limit: Limit::PerClient(3),
        payment: real.clone(),
    };
    let mut runs = Vec::new();
    for _ in 0..2 {
        let ceiling = ceiling::run(&env.database_url, &options)
            .await
            .unwrap_or_else(|e| panic!("ceiling run: {e:#}"));
        assert_eq!(ceiling.transactions, 6, "{ceiling:?}");
        assert_eq!(ceiling.failed, 0);
        assert!(ceiling.payments_per_sec > 0.0, "{ceiling:?}");
        assert!(ceiling.latency_ms_avg > 0.0, "{ceiling:?}");
        assert!(
            ceiling.script.contains("WITH taken AS"),
            "{}",
            ceiling.script
        );
        runs.push(ceiling.run_id);
    }
    assert_ne!(runs[0], runs[1], "each run draws its own order ids");
    let bench_orders = same_rows_as_the_real_payment(&env, &real).await;
    let mut expected: Vec<String> = runs
        .iter()
        .flat_map(|run| {
            (0..2).flat_map(move |client| (1..=3).map(move |n| format!("{run}{client:03}{n:09}")))
        })
        .collect();
    expected.sort();
    assert_eq!(bench_orders, expected);

    // 3. What pgbench sent for one of its payments.
    let log = read_log(&pg);
    let bench_id = &expected[4];
    let bench = Payment {
        order_id: bench_id.clone(),
        request_key: bench_id.clone(),
        intent_id: bench_id.clone(),
        ..real.clone()
    };
    let bench_ran = payment_transactions(&log, &[bench_id]);
    // The constants the coordinator derives from the fresh ids (gateway keys, the charge's
    // detail) stay the real payment's.
    assert_runs(
        "pgbench",
        &bench_ran,
        &ceiling::transactions(flow),
        &real,
        Sends::Pgbench { fresh: &bench },
    );

    replica.stop().await;
    env.cleanup().await;
    drop(pg);
}

fn pay(order_id: &str, key: &str) -> pb::ProcessPaymentRequest {
    pb::ProcessPaymentRequest {
        order_id: order_id.to_owned(),
        amount: Some(pb::Money {
            amount_minor: 4_250,
            currency: "EUR".to_owned(),
        }),
        customer_id: "cust-5c1e9a27".to_owned(),
        payment_method: "pm_card_visa".to_owned(),
        items: vec![
            pb::LineItem {
                product_id: "sku-espresso-250g".into(),
                quantity: 2,
                unit_amount_minor: 1_500,
            },
            pb::LineItem {
                product_id: "sku-filter-100".into(),
                quantity: 1,
                unit_amount_minor: 1_250,
            },
        ],
        idempotency_key: key.to_owned(),
        wait_for_outcome: true,
    }
}

/// The values the coordinator bound for the real payment: the request's, and what it computed
/// (fingerprint) or learnt (intent id), read back from its attempt.
async fn real_payment(env: &TestEnv, flow: Flow, order_id: &str, request_key: &str) -> Payment {
    let row = env
        .sql()
        .await
        .query_one(
            "SELECT a.fingerprint, a.gateway_payment_id, a.replica_id, o.items::text \
             FROM attempts a JOIN orders o USING (order_id) WHERE a.order_id = $1",
            &[&order_id],
        )
        .await
        .expect("the real attempt");
    Payment {
        order_id: order_id.to_owned(),
        request_key: request_key.to_owned(),
        intent_id: row.get(1),
        amount_minor: 4_250,
        currency: "EUR".to_owned(),
        customer_id: "cust-5c1e9a27".to_owned(),
        items: row.get(3),
        payment_method: "pm_card_visa".to_owned(),
        operator_id: OPERATOR.to_owned(),
        replica_id: row.get(2),
        fingerprint: row.get(0),
        flow,
    }
}

/// Every statement of every session logged with its parameters, each line prefixed so that it
/// can be told from a statement's own continuation lines.
async fn log_every_statement(pg: &ThrowawayPg) {
    let admin = connect(&format!("{}/postgres", pg.url_base())).await;
    // One statement per call: ALTER SYSTEM refuses to run in a (multi-statement) transaction.
    for statement in [
        format!("ALTER SYSTEM SET log_line_prefix = '{LOG_PREFIX}%p '"),
        "ALTER ROLE root SET log_statement = 'all'".to_owned(),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        admin
            .batch_execute(&statement)
            .await
            .expect("configure logging");
    }
    // The reload reaches the postmaster asynchronously: wait until new sessions get the prefix.
    loop {
        let session = connect(&format!("{}/postgres", pg.url_base())).await;
        let prefix: String = session
            .query_one("SHOW log_line_prefix", &[])
            .await
            .expect("show")
            .get(0);
        if prefix.starts_with(LOG_PREFIX) {
            break;
        }
        tokio::task::yield_now().await;
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

/// One logged statement: its session, text and parameters (`None`: NULL).
#[derive(Debug, Clone)]
struct Logged {
    pid: u32,
    sql: String,
    params: Vec<Option<String>>,
}

/// One transaction as a session ran it.
#[derive(Debug, Clone)]
struct LoggedTx {
    /// How it was opened and closed (`BEGIN`, `COMMIT`...); `None` for a statement on its own.
    explicit: Option<(String, String)>,
    statements: Vec<Logged>,
}

fn read_log(pg: &ThrowawayPg) -> Vec<Logged> {
    let text = std::fs::read_to_string(pg.log_path()).expect("the server's log");
    // Whole records: a line without the prefix continues the record before it.
    let mut records: Vec<String> = Vec::new();
    for line in text.lines() {
        match line.strip_prefix(LOG_PREFIX) {
            Some(record) => records.push(record.to_owned()),
            None => {
                if let Some(last) = records.last_mut() {
                    last.push('\n');
                    last.push_str(line);
                }
            }
        }
    }
    let mut logged: Vec<Logged> = Vec::new();
    for record in records {
        let Some((pid, message)) = record.split_once(' ') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if let Some(statement) = message.strip_prefix("LOG:  statement: ") {
            logged.push(Logged {
                pid,
                sql: statement.to_owned(),
                params: Vec::new(),
            });
        } else if let Some(execute) = message.strip_prefix("LOG:  execute ") {
            let (_name, sql) = execute.split_once(": ").expect("execute NAME: SQL");
            logged.push(Logged {
                pid,
                sql: sql.to_owned(),
                params: Vec::new(),
            });
        } else if let Some(params) = message.strip_prefix("DETAIL:  parameters: ") {
            let last = logged
                .iter_mut()
                .rev()
                .find(|l| l.pid == pid)
                .expect("parameters follow their statement");
            last.params = parse_params(params);
        }
    }
    logged
}

/// `$1 = 'a', $2 = NULL, $3 = 'it''s'` → `[Some("a"), None, Some("it's")]`.
fn parse_params(text: &str) -> Vec<Option<String>> {
    let mut params = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (_, after) = rest.split_once(" = ").expect("$n = value");
        if let Some(after) = after.strip_prefix("NULL") {
            params.push(None);
            rest = after;
        } else {
            let mut chars = after.char_indices().skip(1).peekable();
            let mut value = String::new();
            let end = loop {
                let (i, c) = chars.next().expect("a closed quote");
                if c == '\'' {
                    if chars.peek().map(|(_, c)| *c) == Some('\'') {
                        chars.next();
                        value.push('\'');
                    } else {
                        break i + 1;
                    }
                } else {
                    value.push(c);
                }
            };
            params.push(Some(value));
            rest = &after[end..];
        }
        rest = rest.strip_prefix(", ").unwrap_or(rest);
    }
    params
}

/// The transactions of one payment: those of any session with a statement bound to one of
/// `needles`, in the order they began. A session's transaction is BEGIN ... COMMIT, or one
/// statement on its own.
fn payment_transactions(log: &[Logged], needles: &[&str]) -> Vec<LoggedTx> {
    let mut sessions: HashMap<u32, Vec<(usize, Logged)>> = HashMap::new();
    for (i, l) in log.iter().enumerate() {
        sessions.entry(l.pid).or_default().push((i, l.clone()));
    }
    let mut found: Vec<(usize, LoggedTx)> = Vec::new();
    for statements in sessions.into_values() {
        let mut open: Option<(usize, LoggedTx)> = None;
        let mut finished: Vec<(usize, LoggedTx)> = Vec::new();
        for (i, l) in statements {
            let word = normalize(&l.sql);
            let upper = word.to_ascii_uppercase();
            match (upper.as_str(), open.as_mut()) {
                ("BEGIN" | "START TRANSACTION", _) => {
                    open = Some((
                        i,
                        LoggedTx {
                            explicit: Some((word, String::new())),
                            statements: Vec::new(),
                        },
                    ))
                }
                ("COMMIT" | "ROLLBACK" | "END", Some((_, tx))) => {
                    if let Some((_, closed)) = tx.explicit.as_mut() {
                        *closed = word;
                    }
                    finished.extend(open.take());
                }
                (_, Some((_, tx))) => tx.statements.push(l),
                (_, None) => finished.push((
                    i,
                    LoggedTx {
                        explicit: None,
                        statements: vec![l],
                    },
                )),
            }
        }
        found.extend(finished.into_iter().filter(|(_, tx)| {
            tx.statements.iter().any(|s| {
                s.params
                    .iter()
                    .any(|p| p.as_deref().is_some_and(|p| needles.contains(&p)))
            })
        }));
    }
    found.sort_by_key(|(i, _)| *i);
    found.into_iter().map(|(_, tx)| tx).collect()
}

/// Whitespace runs as one space, no trailing semicolon.
fn normalize(sql: &str) -> String {
    let joined = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    joined.trim_end_matches(';').trim_end().to_owned()
}

/// How a statement reaches the server.
#[derive(Clone, Copy)]
enum Sends<'a> {
    /// The coordinator: the text as written, `$n` bound to `args[n - 1]`.
    Coordinator,
    /// pgbench (`-M prepared`): each variable becomes the next `$k` in the order it appears,
    /// NULL and '' are literals; the fresh ids are `fresh`'s.
    Pgbench { fresh: &'a Payment },
}

/// The text and parameter values `statement` reaches the server with.
fn as_sent(
    statement: &Statement,
    payment: &Payment,
    sends: Sends,
) -> (String, Vec<Option<String>>) {
    match sends {
        Sends::Coordinator => (
            statement.sql.clone(),
            statement.args.iter().map(|a| payment.value(*a)).collect(),
        ),
        Sends::Pgbench { fresh } => {
            let mut sql = statement.sql.clone();
            let mut values = Vec::new();
            // Rewritten from the end so that earlier offsets stay valid; numbered afterwards.
            let mut occurrences = Vec::new();
            let mut search = 0;
            for n in statement.placeholders() {
                let token = format!("${n}");
                let at = find_placeholder(&sql, &token, search);
                occurrences.push((at, token.len(), statement.args[n - 1]));
                search = at + token.len();
            }
            let bound: Vec<Arg> = occurrences
                .iter()
                .map(|(_, _, a)| *a)
                .filter(|a| !matches!(a, Arg::Null | Arg::Empty))
                .collect();
            let mut k = bound.len();
            for (at, len, arg) in occurrences.into_iter().rev() {
                let text = match arg {
                    Arg::Null => "NULL".to_owned(),
                    Arg::Empty => "''".to_owned(),
                    _ => {
                        let t = format!("${k}");
                        k -= 1;
                        t
                    }
                };
                sql.replace_range(at..at + len, &text);
            }
            for arg in bound {
                let source = match arg {
                    Arg::OrderId | Arg::RequestKey | Arg::IntentId => fresh,
                    _ => payment,
                };
                values.push(source.value(arg));
            }
            (sql, values)
        }
    }
}

/// Where `token` (`$3`) is in `sql` at or after `from`, not as the start of a longer number.
fn find_placeholder(sql: &str, token: &str, from: usize) -> usize {
    let mut start = from;
    loop {
        let at = start + sql[start..].find(token).expect("placeholder in text");
        let next = sql.as_bytes().get(at + token.len());
        if !next.is_some_and(u8::is_ascii_digit) {
            return at;
        }
        start = at + token.len();
    }
}

/// Fails, saying where, unless `ran` is exactly `expected` bound to `payment`'s values.
fn assert_runs(
    who: &str,
    ran: &[LoggedTx],
    expected: &[Transaction],
    payment: &Payment,
    sends: Sends,
) {
    let shape = |txs: &[LoggedTx]| {
        txs.iter()
            .map(|t| {
                let statements: Vec<String> =
                    t.statements.iter().map(|s| normalize(&s.sql)).collect();
                format!("{:?}: {statements:#?}", t.explicit)
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ran.len(),
        expected.len(),
        "{who} ran {} transactions for one payment, the ceiling has {}: {}; ran: {:#?}",
        ran.len(),
        expected.len(),
        expected
            .iter()
            .map(|t| t.what)
            .collect::<Vec<_>>()
            .join(", "),
        shape(ran)
    );
    for (i, (tx, want)) in ran.iter().zip(expected).enumerate() {
        let at = format!("{who}, transaction {} ({})", i + 1, want.what);
        let wrapped = want
            .explicit
            .then(|| (ceiling::BEGIN.to_owned(), ceiling::COMMIT.to_owned()));
        assert_eq!(
            tx.explicit,
            wrapped,
            "{at}: its opening and closing differ; ran: {:#?}",
            shape(ran)
        );
        assert_eq!(
            tx.statements.len(),
            want.statements.len(),
            "{at}: statement count differs; ran: {:#?}",
            shape(ran)
        );
        for (j, (got, statement)) in tx.statements.iter().zip(&want.statements).enumerate() {
            let (sql, values) = as_sent(statement, payment, sends);
            assert_eq!(
                normalize(&got.sql),
                normalize(&sql),
                "{at}, statement {}: the text differs",
                j + 1
            );
            assert_eq!(
                got.params.len(),
                values.len(),
                "{at}, statement {}: parameter count differs: {:?}",
                j + 1,
                got.params
            );
            for (k, (value, want)) in got.params.iter().zip(&values).enumerate() {
                let same = match (value, want) {
                    (Some(a), Some(b)) => a == b || same_json(a, b),
                    (None, None) => true,
                    _ => false,
                };
                assert!(
                    same,
                    "{at}, statement {}, parameter {}: bound {value:?}, the ceiling binds {want:?}\n{}",
                    j + 1,
                    k + 1,
                    normalize(&got.sql)
                );
            }
        }
    }
}

/// Both are JSON documents (or arrays) and equal as such (jsonb prints its own spacing and key order).
fn same_json(a: &str, b: &str) -> bool {
    let looks = |s: &str| s.starts_with('[') || s.starts_with('{');
    looks(a)
        && looks(b)
        && matches!(
            (serde_json::from_str::<Value>(a), serde_json::from_str::<Value>(b)),
            (Ok(x), Ok(y)) if x == y
        )
}

/// Every order other than the real one left the real order's rows exactly, its fresh ids
/// (order id, caller's key, intent id), times and the feed's numbering aside. Returns those
/// orders' ids, sorted.
async fn same_rows_as_the_real_payment(env: &TestEnv, real: &Payment) -> Vec<String> {
    let sql = env.sql().await;
    let mut rows: HashMap<String, Vec<Value>> = HashMap::new();
    for (table, order) in [
        ("orders", "order_id"),
        ("attempts", "number"),
        ("events", "sequence"),
    ] {
        let query =
            format!("SELECT order_id, to_jsonb(t) FROM {table} t ORDER BY order_id, {order}");
        for row in sql.query(&query, &[]).await.expect(table) {
            let order_id: String = row.get(0);
            let mut value: Value = row.get(1);
            let fresh: Vec<&str> = if order_id == real.order_id {
                vec![&real.order_id, &real.request_key, &real.intent_id]
            } else {
                vec![&order_id]
            };
            mask(&mut value, &fresh);
            rows.entry(order_id)
                .or_default()
                .push(serde_json::json!({ table: value }));
        }
    }
    let want = rows.remove(&real.order_id).expect("the real order's rows");
    assert_eq!(want.len(), 1 + 1 + 3, "{want:#?}");
    let mut others: Vec<String> = rows.keys().cloned().collect();
    others.sort();
    for id in &others {
        assert_eq!(rows[id], want, "order {id} differs from a real payment");
    }
    others
}

/// Blanks what differs between two payments by nature: the fresh ids, times, the events' ids.
fn mask(row: &mut Value, fresh: &[&str]) {
    const TIMES: [&str; 7] = [
        "created_at",
        "updated_at",
        "started_at",
        "finished_at",
        "heartbeat_at",
        "occurred_at",
        "next_check_at",
    ];
    let Value::Object(fields) = row else {
        panic!("a row as an object: {row}");
    };
    fields.remove("id");
    fields.remove("global_sequence");
    for (name, value) in fields.iter_mut() {
        if let Value::String(s) = value {
            if TIMES.contains(&name.as_str()) {
                *value = Value::String("<time>".to_owned());
            } else if fresh.contains(&s.as_str()) {
                *value = Value::String("<fresh>".to_owned());
            }
        }
    }
}
