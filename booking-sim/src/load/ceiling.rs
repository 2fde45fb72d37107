//! The PostgreSQL ceiling of `booking-sim load`: how many payments a second the database alone
//! takes when nothing but the coordinator's own SQL runs. `pgbench` runs a script holding exactly
//! the statements the coordinator issues for one successful payment on a new order (every
//! transaction, in order, with its BEGIN/COMMIT, every parameter bound as a parameter) at the
//! load's concurrency against the same server; one pgbench transaction is one payment. The load
//! then prints its own rate against it ([`ratio_line`]).
//!
//! The statements are written out here ([`transactions`]), not shared with the coordinator:
//! booking-sim does not depend on the `coordinator` crate (docs/ARCHITECTURE.md). They cannot
//! drift apart unnoticed: `tests/tests/ceiling.rs` makes a real payment of each flow with
//! PostgreSQL logging every statement and requires its transactions, statement texts and
//! parameter values to be exactly these, and a pgbench payment to leave the same rows.
//!
//! What pgbench cannot do like the coordinator, and how the script makes up for it:
//! - pgbench variables are numbers or `-D` constants, never strings built per transaction, so the
//!   fresh values (order id, the caller's idempotency key, the gateway's intent id: each unique in
//!   its table) are one 18-digit number per payment, `RRRRRRCCCNNNNNNNNN` (run, client, counter):
//!   never the same across clients, nor across runs (the run is drawn until no order of the
//!   database starts with it). Values derived from them in the coordinator (gateway keys, event
//!   details) are per-run constants of the same size.
//! - Values the coordinator reads back (attempt number, fence, event sequences) are the constants
//!   they always are for the first attempt of a new order.
//! - pgbench cannot bind a NULL or an empty string: those are written in the SQL as `NULL` and
//!   `''` where the coordinator binds them.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail, ensure};
use gateway_client::{Flow, IdempotencyKey, PaymentStep};
use rand::Rng;

/// An order's columns as the coordinator reads them (`store/orders.rs`, `ORDER_COLUMNS`).
const ORDER_COLUMNS: &str = "o.order_id, o.amount_minor, o.currency, o.customer_id, \
     o.items, o.state, o.fence, o.last_sequence, o.refunded_minor, o.refund_count, o.created_at, \
     o.updated_at";

/// An attempt's columns as the coordinator reads them (`store/orders.rs`, `ATTEMPT_COLUMNS`).
const ATTEMPT_COLUMNS: &str = "a.number, a.fence AS attempt_fence, a.operator_id, a.replica_id, \
     a.request_key, a.fingerprint, a.payment_method, a.flow, a.outcome, a.gateway_create_key, \
     a.gateway_confirm_key, a.gateway_payment_id, a.decline_code, a.failure_message, \
     (SELECT coalesce(jsonb_agg(jsonb_build_object( \
          'at_us', (extract(epoch FROM (e.entry->>'at')::timestamptz) * 1000000)::bigint, \
          'step', e.entry->>'step', 'message', e.entry->>'message') ORDER BY e.ord), '[]'::jsonb) \
      FROM jsonb_array_elements(a.errors) WITH ORDINALITY AS e(entry, ord)) AS errors_view, \
     a.started_at, a.finished_at, a.resolution, a.resolved_by, a.resolved_at, a.resolution_note";

/// How the coordinator opens a transaction (tokio-postgres' `Client::transaction`)...
pub const BEGIN: &str = "START TRANSACTION";
/// ... and commits it.
pub const COMMIT: &str = "COMMIT";

/// Highest number of clients: the client id has three digits of the order id.
pub const MAX_CONCURRENCY: u32 = 999;

/// What one parameter of a statement holds, in one payment (`$1` is `args[0]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arg {
    /// Fresh per payment: the order id.
    OrderId,
    /// Fresh per payment: the caller's idempotency key (unique per caller).
    RequestKey,
    /// Fresh per payment: the gateway's PaymentIntent id (unique among charged attempts).
    IntentId,
    AmountMinor,
    Currency,
    CustomerId,
    /// The order's lines, JSON (`[{"product_id", "quantity", "unit_amount_minor"}]`).
    Items,
    PaymentMethod,
    /// The caller's key id: the attempt's operator and every event's actor.
    OperatorId,
    ReplicaId,
    /// The digest of the request (hex SHA-256).
    Fingerprint,
    Flow,
    /// The gateway keys' text before the attempt number: `pay:{order}:`.
    KeyBeforeAttempt,
    /// The create key's text after the attempt number: `:create`.
    CreateAfterAttempt,
    /// The confirm key's text after the attempt number: `:confirm`.
    ConfirmAfterAttempt,
    /// The ATTEMPT_STARTED event's detail: `replica {replica}, flow {flow}`.
    StartedDetail,
    /// The ATTEMPT_SUCCEEDED event's detail: `charged: {intent id}`.
    ChargedDetail,
    /// The attempt's number: 1 (a new order's first attempt).
    Attempt,
    /// The order's fencing token after the attempt took it: 1.
    Fence,
    /// An event's per-order sequence (1 created, 2 started, 3 succeeded).
    Sequence(i64),
    /// A state, outcome or event kind, bound by name (`PENDING`, `IN_FLIGHT`, ...).
    Name(&'static str),
    /// SQL NULL.
    Null,
    /// The empty string.
    Empty,
}

impl Arg {
    /// How the script writes this parameter: a pgbench variable, or a literal pgbench cannot bind.
    fn in_script(self) -> String {
        match self {
            Arg::Null => "NULL".to_owned(),
            Arg::Empty => "''".to_owned(),
            other => format!(":{}", other.variable()),
        }
    }

    /// The pgbench variable holding it (`Null` and `Empty` have none: they are literals).
    fn variable(self) -> String {
        match self {
            Arg::OrderId => "order_id".into(),
            Arg::RequestKey => "request_key".into(),
            Arg::IntentId => "intent_id".into(),
            Arg::AmountMinor => "amount_minor".into(),
            Arg::Currency => "currency".into(),
            Arg::CustomerId => "customer_id".into(),
            Arg::Items => "items".into(),
            Arg::PaymentMethod => "payment_method".into(),
            Arg::OperatorId => "operator_id".into(),
            Arg::ReplicaId => "replica_id".into(),
            Arg::Fingerprint => "fingerprint".into(),
            Arg::Flow => "flow".into(),
            Arg::KeyBeforeAttempt => "key_before_attempt".into(),
            Arg::CreateAfterAttempt => "create_after_attempt".into(),
            Arg::ConfirmAfterAttempt => "confirm_after_attempt".into(),
            Arg::StartedDetail => "started_detail".into(),
            Arg::ChargedDetail => "charged_detail".into(),
            Arg::Attempt => "attempt".into(),
            Arg::Fence => "fence".into(),
            Arg::Sequence(n) => format!("seq_{n}"),
            Arg::Name(name) => format!("k_{}", name.to_ascii_lowercase()),
            Arg::Null | Arg::Empty => String::new(),
        }
    }

    /// Set per payment by the script itself (`\set`), not passed with `-D`.
    fn is_per_payment(self) -> bool {
        matches!(
            self,
            Arg::OrderId
                | Arg::RequestKey
                | Arg::IntentId
                | Arg::Attempt
                | Arg::Fence
                | Arg::Sequence(_)
        )
    }
}

/// One statement: its text exactly as the coordinator sends it (parameters `$1`, `$2`, ...) and
/// what each parameter holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sql: String,
    pub args: Vec<Arg>,
}

impl Statement {
    fn new(sql: impl Into<String>, args: &[Arg]) -> Self {
        Self {
            sql: sql.into(),
            args: args.to_vec(),
        }
    }

    /// The parameter numbers in the order they appear in the text (`$3 ... $1` gives `[3, 1]`).
    pub fn placeholders(&self) -> Vec<usize> {
        placeholders(&self.sql)
            .into_iter()
            .map(|(_, n)| n)
            .collect()
    }

    /// The statement as a pgbench script line: every `$n` replaced by its variable or literal.
    fn in_script(&self) -> anyhow::Result<String> {
        let mut out = String::with_capacity(self.sql.len());
        let mut last = 0;
        for (span, n) in placeholders(&self.sql) {
            out.push_str(&self.sql[last..span.start]);
            let arg = self
                .args
                .get(n.wrapping_sub(1))
                .with_context(|| format!("${n} has no argument in {}", self.sql))?;
            out.push_str(&arg.in_script());
            last = span.end;
        }
        out.push_str(&self.sql[last..]);
        Ok(out)
    }
}

/// Where each `$n` of `sql` is, and its number.
fn placeholders(sql: &str) -> Vec<(std::ops::Range<usize>, usize)> {
    let bytes = sql.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' {
            let digits = bytes[i + 1..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            let end = i + 1 + digits;
            if digits > 0
                && let Ok(n) = sql[i + 1..end].parse()
            {
                found.push((i..end, n));
            }
            i = end;
        } else {
            i += 1;
        }
    }
    found
}

/// One SQL transaction of a payment: `explicit` ones are wrapped in [`BEGIN`] ... [`COMMIT`]; the
/// others are a single statement committed on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// What the coordinator does in it (`store` function).
    pub what: &'static str,
    pub explicit: bool,
    pub statements: Vec<Statement>,
}

/// The transactions the coordinator commits for one successful payment of `flow` on a new order,
/// called with `wait_for_outcome`, in order: the attempt committed (`begin_attempt`, which also
/// finds the caller's key if it is taken), for `two_phase` the intent id recorded
/// (`record_intent`), the outcome committed (`finish_attempt`), the answer read (`get_order`).
/// Each is one statement, committed on its own. Nothing else touches
/// PostgreSQL on that path while the payment is shorter than a third of LEASE_TTL (then
/// `heartbeat` beats); the feed's sequencer stamps the events afterwards, in batches shared by
/// many payments, on a connection of its own.
pub fn transactions(flow: Flow) -> Vec<Transaction> {
    use Arg::*;
    let mut all = vec![Transaction {
        what: "begin_attempt",
        explicit: false,
        statements: vec![Statement::new(
            format!(
                "WITH taken AS ( \
                   INSERT INTO orders AS o \
                     (order_id, amount_minor, currency, customer_id, items, state, fence, attempt_count, \
                      last_sequence) \
                   VALUES ($1, $2, $3, $4, $5, $6, 1, 1, 2) \
                   ON CONFLICT (order_id) DO UPDATE SET fence = o.fence + 1, \
                     attempt_count = o.attempt_count + 1, state = EXCLUDED.state, \
                     last_sequence = o.last_sequence + 1, updated_at = now() \
                   WHERE o.state = $7 AND o.amount_minor = EXCLUDED.amount_minor \
                     AND o.currency = EXCLUDED.currency AND o.customer_id = EXCLUDED.customer_id \
                   RETURNING o.attempt_count, {ORDER_COLUMNS}), \
                 started AS ( \
                   INSERT INTO attempts AS a \
                     (order_id, number, fence, operator_id, replica_id, request_key, fingerprint, \
                      payment_method, flow, outcome, gateway_create_key, gateway_confirm_key) \
                   SELECT order_id, attempt_count, fence, $8, $9, $10, $11, $12, $13, $14, \
                     $15::text || attempt_count::text || $16::text, \
                     $15::text || attempt_count::text || $17::text \
                   FROM taken \
                   RETURNING {ATTEMPT_COLUMNS}), \
                 logged AS ( \
                   INSERT INTO events \
                     (order_id, sequence, kind, state, attempt_number, actor, detail, amount_minor, \
                      currency) \
                   SELECT order_id, 1, $18::text, $7::text, NULL::integer, $8::text, ''::text, \
                     amount_minor, currency FROM taken WHERE attempt_count = 1 \
                   UNION ALL \
                   SELECT order_id, last_sequence, $19::text, $6::text, attempt_count, $8::text, \
                     $20::text, amount_minor, currency FROM taken) \
                 SELECT taken.*, started.* FROM taken, started"
            ),
            &[
                OrderId,
                AmountMinor,
                Currency,
                CustomerId,
                Items,
                Name("AWAITING_CONFIRMATION"),
                Name("PENDING"),
                OperatorId,
                ReplicaId,
                RequestKey,
                Fingerprint,
                PaymentMethod,
                Arg::Flow,
                Name("IN_FLIGHT"),
                KeyBeforeAttempt,
                CreateAfterAttempt,
                ConfirmAfterAttempt,
                Name("ORDER_CREATED"),
                Name("ATTEMPT_STARTED"),
                StartedDetail,
            ],
        )],
    }];
    if flow == gateway_client::Flow::TwoPhase {
        all.push(Transaction {
            what: "record_intent",
            explicit: false,
            statements: vec![Statement::new(
                "WITH o AS (SELECT order_id FROM orders WHERE order_id = $1 AND fence = $3 FOR SHARE) \
                 UPDATE attempts a SET gateway_payment_id = $4 FROM o \
                 WHERE a.order_id = o.order_id AND a.number = $2 AND a.outcome = 'IN_FLIGHT'",
                &[OrderId, Attempt, Fence, IntentId],
            )],
        });
    }
    all.push(Transaction {
        what: "finish_attempt",
        explicit: false,
        statements: vec![Statement::new(
            "WITH locked AS ( \
               SELECT order_id FROM orders \
               WHERE order_id = $1 AND fence = $2 AND state = $3 FOR UPDATE), \
             finished AS ( \
               UPDATE attempts a SET outcome = $5, \
                 gateway_payment_id = coalesce($6, a.gateway_payment_id), \
                 decline_code = $7, failure_message = $8, finished_at = now() \
               FROM locked \
               WHERE a.order_id = locked.order_id AND a.number = $4 \
                 AND a.outcome = 'IN_FLIGHT' \
               RETURNING a.order_id), \
             moved AS ( \
               UPDATE orders o SET state = $9, last_sequence = o.last_sequence + 1, \
                 updated_at = now() \
               FROM finished WHERE o.order_id = finished.order_id \
               RETURNING o.order_id, o.last_sequence, o.amount_minor, o.currency) \
             INSERT INTO events \
               (order_id, sequence, kind, state, attempt_number, actor, detail, amount_minor, \
                currency) \
             SELECT order_id, last_sequence, $10, $9, $4, $11, $12, amount_minor, currency \
             FROM moved",
            &[
                OrderId,
                Fence,
                Name("AWAITING_CONFIRMATION"),
                Attempt,
                Name("SUCCEEDED"),
                IntentId,
                Null,
                Null,
                Name("PAID"),
                Name("ATTEMPT_SUCCEEDED"),
                OperatorId,
                ChargedDetail,
            ],
        )],
    });
    all.push(Transaction {
        what: "get_order",
        explicit: false,
        statements: vec![Statement::new(
            format!(
                "SELECT {ORDER_COLUMNS}, {ATTEMPT_COLUMNS} \
                 FROM orders o LEFT JOIN attempts a ON a.order_id = o.order_id \
                 WHERE o.order_id = $1 ORDER BY a.number"
            ),
            &[OrderId],
        )],
    });
    all
}

/// Transactions PostgreSQL commits per payment of `flow` (each counts in `pg_stat_database`'s
/// `xact_commit`, the read-only ones too): 4 for `two_phase`, 3 for `one_shot`.
pub fn commits_per_payment(flow: Flow) -> usize {
    transactions(flow).len()
}

/// Statements per payment of `flow`, BEGIN and COMMIT not counted: 4 for `two_phase`, 3 for
/// `one_shot`.
pub fn statements_per_payment(flow: Flow) -> usize {
    transactions(flow).iter().map(|t| t.statements.len()).sum()
}

/// The values of one payment, as the coordinator binds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub order_id: String,
    pub request_key: String,
    pub intent_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub customer_id: String,
    /// JSON, as the coordinator stores `orders.items`.
    pub items: String,
    pub payment_method: String,
    pub operator_id: String,
    pub replica_id: String,
    pub fingerprint: String,
    pub flow: Flow,
}

impl Payment {
    /// A payment of realistic size: two lines, ids and keys as long as real ones (the fresh ids
    /// are replaced per payment by the script).
    pub fn bench(flow: Flow) -> Self {
        let fresh = "0".repeat(18);
        Self {
            order_id: fresh.clone(),
            request_key: fresh.clone(),
            intent_id: fresh,
            amount_minor: 4_250,
            currency: "EUR".to_owned(),
            customer_id: "cust-5c1e9a27".to_owned(),
            items: r#"[{"product_id":"sku-espresso-250g","quantity":2,"unit_amount_minor":1500},{"product_id":"sku-filter-100","quantity":1,"unit_amount_minor":1250}]"#.to_owned(),
            payment_method: "pm_card_visa".to_owned(),
            operator_id: "op-load".to_owned(),
            replica_id: "replica-0".to_owned(),
            fingerprint: "9f2b6c1d4e8a7b3c5d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e".to_owned(),
            flow,
        }
    }

    /// The value the coordinator binds for `arg` in this payment, as text; `None` for NULL.
    pub fn value(&self, arg: Arg) -> Option<String> {
        Some(match arg {
            Arg::OrderId => self.order_id.clone(),
            Arg::RequestKey => self.request_key.clone(),
            Arg::IntentId => self.intent_id.clone(),
            Arg::AmountMinor => self.amount_minor.to_string(),
            Arg::Currency => self.currency.clone(),
            Arg::CustomerId => self.customer_id.clone(),
            Arg::Items => self.items.clone(),
            Arg::PaymentMethod => self.payment_method.clone(),
            Arg::OperatorId => self.operator_id.clone(),
            Arg::ReplicaId => self.replica_id.clone(),
            Arg::Fingerprint => self.fingerprint.clone(),
            Arg::Flow => self.flow.as_str().to_owned(),
            Arg::KeyBeforeAttempt => {
                IdempotencyKey::payment_around_attempt(&self.order_id, PaymentStep::Create).0
            }
            Arg::CreateAfterAttempt => {
                IdempotencyKey::payment_around_attempt(&self.order_id, PaymentStep::Create).1
            }
            Arg::ConfirmAfterAttempt => {
                IdempotencyKey::payment_around_attempt(&self.order_id, PaymentStep::Confirm).1
            }
            Arg::StartedDetail => format!("replica {}, flow {}", self.replica_id, self.flow),
            Arg::ChargedDetail => format!("charged: {}", self.intent_id),
            Arg::Attempt | Arg::Fence => "1".to_owned(),
            Arg::Sequence(n) => n.to_string(),
            Arg::Name(name) => name.to_owned(),
            Arg::Null => return None,
            Arg::Empty => String::new(),
        })
    }
}

/// Every argument `transactions(flow)` binds, each once, in first use.
fn args_of(flow: Flow) -> Vec<Arg> {
    let mut seen = Vec::new();
    for t in transactions(flow) {
        for s in t.statements {
            for a in s.args {
                if !seen.contains(&a) {
                    seen.push(a);
                }
            }
        }
    }
    seen
}

/// The `-D name=value` constants of a run of `flow` with `payment`'s values, `run` the run's
/// 6-digit prefix of the order ids.
fn defines(flow: Flow, payment: &Payment, run: u32) -> Vec<(String, String)> {
    let mut defines = vec![
        ("run".to_owned(), run.to_string()),
        ("n".into(), "0".into()),
    ];
    for arg in args_of(flow) {
        if arg.is_per_payment() || matches!(arg, Arg::Null | Arg::Empty) {
            continue;
        }
        if let Some(value) = payment.value(arg) {
            defines.push((arg.variable(), value));
        }
    }
    defines
}

/// The pgbench script of one `flow` payment, with a header saying how to run it (the `-D`
/// constants with `payment`'s values). One pgbench transaction is one payment.
pub fn script(flow: Flow, payment: &Payment) -> anyhow::Result<String> {
    let transactions = transactions(flow);
    let mut out = String::new();
    out.push_str(&format!(
        "-- The SQL the coordinator issues for one successful {flow} payment on a new order:\n\
         -- {} transactions, {} statements (booking_sim::load::ceiling::transactions, checked against a\n\
         -- real payment by tests/tests/ceiling.rs). One pgbench transaction is one payment.\n\
         -- Run with: pgbench -n -M prepared -c CLIENTS -j THREADS -T SECONDS -f FILE \\\n",
        transactions.len(),
        statements_per_payment(flow),
    ));
    for (name, value) in defines(flow, payment, 100_000) {
        let value = if name == "run" {
            "<6 digits, no order id of the database starting with them>".to_owned()
        } else {
            value
        };
        out.push_str(&format!(
            "--   -D {} \\\n",
            shell_quote(&format!("{name}={value}"))
        ));
    }
    out.push_str("--   DATABASE_URL\n");
    out.push_str(
        "-- Fresh per payment: the order id RRRRRRCCCNNNNNNNNN (run, client, counter), also the\n\
         -- caller's idempotency key and the gateway's intent id (each unique in its table).\n",
    );
    out.push_str("\\set n :n + 1\n");
    out.push_str(&format!(
        "\\set {} :run * 1000000000000 + :client_id * 1000000000 + :n\n",
        Arg::OrderId.variable()
    ));
    out.push_str(&format!(
        "\\set {} :{}\n",
        Arg::RequestKey.variable(),
        Arg::OrderId.variable()
    ));
    out.push_str(&format!(
        "\\set {} :{}\n",
        Arg::IntentId.variable(),
        Arg::OrderId.variable()
    ));
    for arg in args_of(flow) {
        if matches!(arg, Arg::Attempt | Arg::Fence | Arg::Sequence(_))
            && let Some(value) = payment.value(arg)
        {
            out.push_str(&format!("\\set {} {value}\n", arg.variable()));
        }
    }
    for (i, transaction) in transactions.iter().enumerate() {
        out.push_str(&format!(
            "-- {}/{}: {}\n",
            i + 1,
            transactions.len(),
            transaction.what
        ));
        if transaction.explicit {
            out.push_str(&format!("{BEGIN};\n"));
        }
        for statement in &transaction.statements {
            out.push_str(&statement.in_script()?);
            out.push_str(";\n");
        }
        if transaction.explicit {
            out.push_str(&format!("{COMMIT};\n"));
        }
    }
    Ok(out)
}

/// `'text'` with embedded quotes escaped for a POSIX shell (for the script's header only).
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// How long pgbench runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `-T`: whole seconds, rounded up (at least 1).
    Duration(Duration),
    /// `-t`: payments per client.
    PerClient(u64),
}

/// One ceiling run.
#[derive(Debug, Clone)]
pub struct Options {
    pub flow: Flow,
    /// pgbench clients (connections), 1 to [`MAX_CONCURRENCY`]; threads: `min(concurrency, 2)`.
    pub concurrency: u32,
    pub limit: Limit,
    /// The values every payment binds (fresh ids aside).
    pub payment: Payment,
}

/// What a ceiling run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Ceiling {
    pub flow: Flow,
    pub concurrency: u32,
    /// pgbench's rate, without its initial connection time: payments a second.
    pub payments_per_sec: f64,
    /// Payments completed (pgbench transactions).
    pub transactions: u64,
    /// Payments that failed (pgbench counts serialization and deadlock failures; any other error
    /// fails the run).
    pub failed: u64,
    /// Mean time of one payment's SQL, ms.
    pub latency_ms_avg: f64,
    /// Every order id of the run starts with these 6 digits.
    pub run_id: u32,
    /// The script run.
    pub script: String,
}

/// The ceiling of `flow` payments at `concurrency` clients for `duration`, on `database_url` (a
/// database with the coordinator's schema: one any replica has started on, which migrated it).
/// Writes real rows there: orders, attempts and events of orders `RRRRRR...` (see [`Ceiling`]).
pub async fn measure(
    database_url: &str,
    flow: Flow,
    concurrency: u32,
    duration: Duration,
) -> anyhow::Result<Ceiling> {
    run(
        database_url,
        &Options {
            flow,
            concurrency,
            limit: Limit::Duration(duration),
            payment: Payment::bench(flow),
        },
    )
    .await
}

/// A ceiling run as `options` say.
pub async fn run(database_url: &str, options: &Options) -> anyhow::Result<Ceiling> {
    ensure!(
        (1..=MAX_CONCURRENCY).contains(&options.concurrency),
        "the ceiling runs 1 to {MAX_CONCURRENCY} pgbench clients, not {}",
        options.concurrency
    );
    let pgbench = pgbench_path()?;
    let run_id = fresh_run(database_url).await?;
    let script = script(options.flow, &options.payment)?;
    let file = ScriptFile::write(&script)?;

    let threads = options.concurrency.min(2);
    let mut command = tokio::process::Command::new(&pgbench);
    command
        .args(["-n", "-M", "prepared"])
        .arg("-c")
        .arg(options.concurrency.to_string())
        .arg("-j")
        .arg(threads.to_string());
    match options.limit {
        Limit::Duration(d) => {
            let seconds = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            command.arg("-T").arg(seconds.max(1).to_string());
        }
        Limit::PerClient(n) => {
            ensure!(n > 0, "a ceiling run of 0 payments per client");
            command.arg("-t").arg(n.to_string());
        }
    }
    command.arg("-f").arg(file.path());
    for (name, value) in defines(options.flow, &options.payment, run_id) {
        command.arg("-D").arg(format!("{name}={value}"));
    }
    command
        .arg(database_url)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = command
        .output()
        .await
        .with_context(|| format!("running {}", pgbench.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!(
            "pgbench failed ({}): {}",
            output.status,
            tail(&format!("{stdout}{stderr}"), 20)
        );
    }
    let report = Report::parse(&stdout)
        .with_context(|| format!("reading pgbench's report:\n{}", tail(&stdout, 20)))?;
    if let Limit::PerClient(n) = options.limit {
        let expected = n * u64::from(options.concurrency);
        ensure!(
            report.processed == expected,
            "pgbench completed {} payments of {expected}: {}",
            report.processed,
            tail(&format!("{stdout}{stderr}"), 20)
        );
    }
    Ok(Ceiling {
        flow: options.flow,
        concurrency: options.concurrency,
        payments_per_sec: report.tps,
        transactions: report.processed,
        failed: report.failed,
        latency_ms_avg: report.latency_ms,
        run_id,
        script,
    })
}

/// `ratio to PostgreSQL ceiling: R (P payments/s vs C/s)`: R with two decimals, both rates
/// rounded to whole payments a second; R is `n/a` when the ceiling is not a positive rate.
pub fn ratio_line(payments_per_sec: f64, ceiling: &Ceiling) -> String {
    let c = ceiling.payments_per_sec;
    let ratio = if c.is_finite() && c > 0.0 && payments_per_sec.is_finite() {
        format!("{:.2}", payments_per_sec / c)
    } else {
        "n/a".to_owned()
    };
    format!("ratio to PostgreSQL ceiling: {ratio} ({payments_per_sec:.0} payments/s vs {c:.0}/s)")
}

/// `pgbench` on `PATH`, else in the newest `/usr/lib/postgresql/*/bin`.
pub fn pgbench_path() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("pgbench");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path().join("bin").join("pgbench"))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    // Newest major version last (numeric: 9.6 < 15 < 16).
    found.sort_by_key(|p| {
        p.parent()
            .and_then(Path::parent)
            .and_then(Path::file_name)
            .and_then(|v| v.to_str())
            .and_then(|v| v.split('.').next())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop().context(
        "pgbench not found on PATH nor in /usr/lib/postgresql/*/bin: it comes with PostgreSQL \
         (Debian: apt-get install -y postgresql-contrib or postgresql-client)",
    )
}

/// Checks the database has the coordinator's tables and draws the run's 6-digit prefix so that
/// no order of the database starts with it.
async fn fresh_run(database_url: &str) -> anyhow::Result<u32> {
    let (client, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls)
        .await
        .context("connecting to the ceiling's database")?;
    let driver = tokio::spawn(connection);
    let drawn = async {
        let row = client
            .query_one(
                "SELECT to_regclass('orders') IS NOT NULL AND to_regclass('attempts') IS NOT NULL \
                 AND to_regclass('events') IS NOT NULL",
                &[],
            )
            .await?;
        ensure!(
            row.get::<_, bool>(0),
            "the ceiling's database has no coordinator schema (orders, attempts, events): start \
             a coordinator replica on it once (it migrates at start)"
        );
        for _ in 0..100 {
            let run: u32 = rand::rng().random_range(100_000..1_000_000);
            // Every id of the run has 18 digits and starts with `run`: they all sort in
            // [run, run + 1), which the primary key's index answers at once.
            let taken: bool = client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM orders WHERE order_id >= $1 AND order_id < $2)",
                    &[&run.to_string(), &(run + 1).to_string()],
                )
                .await?
                .get(0);
            if !taken {
                return Ok(run);
            }
        }
        bail!("no free run prefix for the ceiling's order ids after 100 draws")
    }
    .await;
    drop(client);
    let _ = driver.await;
    drawn
}

/// The script in a temporary file, removed when dropped.
struct ScriptFile(PathBuf);

impl ScriptFile {
    fn write(script: &str) -> anyhow::Result<Self> {
        let n: u64 = rand::rng().random();
        let path =
            std::env::temp_dir().join(format!("ceiling-{}-{n:016x}.sql", std::process::id()));
        std::fs::write(&path, script)
            .with_context(|| format!("writing the pgbench script {}", path.display()))?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScriptFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The figures of pgbench's report.
#[derive(Debug, Clone, PartialEq)]
struct Report {
    processed: u64,
    failed: u64,
    latency_ms: f64,
    tps: f64,
}

impl Report {
    fn parse(stdout: &str) -> anyhow::Result<Report> {
        let field = |prefix: &str| {
            stdout
                .lines()
                .find_map(|line| line.trim().strip_prefix(prefix))
                .map(str::trim)
                .with_context(|| format!("no `{prefix}` line"))
        };
        // "10/10" with -t, "1234" with -T.
        let processed = field("number of transactions actually processed:")?;
        let processed = processed.split('/').next().unwrap_or(processed).trim();
        let failed = match field("number of failed transactions:") {
            // "0 (0.000%)"
            Ok(failed) => failed.split_whitespace().next().unwrap_or("0").parse()?,
            Err(_) => 0,
        };
        let latency = field("latency average =")?;
        let latency = latency.strip_suffix("ms").unwrap_or(latency).trim();
        // "270.843678 (without initial connection time)"
        let tps = field("tps =")?;
        let tps = tps.split_whitespace().next().unwrap_or(tps);
        Ok(Report {
            processed: processed.parse().context("transactions processed")?,
            failed,
            latency_ms: latency.parse().context("latency average")?,
            tps: tps.parse().context("tps")?,
        })
    }
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ceiling(payments_per_sec: f64) -> Ceiling {
        Ceiling {
            flow: Flow::TwoPhase,
            concurrency: 8,
            payments_per_sec,
            transactions: 1,
            failed: 0,
            latency_ms_avg: 1.0,
            run_id: 123_456,
            script: String::new(),
        }
    }

    #[test]
    fn the_ratio_line_has_the_issues_form() {
        assert_eq!(
            ratio_line(812.4, &ceiling(1532.6)),
            "ratio to PostgreSQL ceiling: 0.53 (812 payments/s vs 1533/s)"
        );
        assert_eq!(
            ratio_line(1000.0, &ceiling(800.0)),
            "ratio to PostgreSQL ceiling: 1.25 (1000 payments/s vs 800/s)"
        );
        assert_eq!(
            ratio_line(10.0, &ceiling(0.0)),
            "ratio to PostgreSQL ceiling: n/a (10 payments/s vs 0/s)"
        );
    }

    #[test]
    fn the_flows_differ_by_the_intent_commit() {
        assert_eq!(commits_per_payment(Flow::TwoPhase), 4);
        assert_eq!(commits_per_payment(Flow::OneShot), 3);
        assert_eq!(statements_per_payment(Flow::TwoPhase), 4);
        assert_eq!(statements_per_payment(Flow::OneShot), 3);
    }

    #[test]
    fn every_parameter_has_its_argument() {
        for flow in [Flow::TwoPhase, Flow::OneShot] {
            for t in transactions(flow) {
                for s in &t.statements {
                    let mut used = s.placeholders();
                    used.sort_unstable();
                    used.dedup();
                    let expected: Vec<usize> = (1..=s.args.len()).collect();
                    assert_eq!(used, expected, "{}", s.sql);
                }
            }
        }
    }

    #[test]
    fn the_script_binds_variables_and_inlines_what_pgbench_cannot() {
        for flow in [Flow::TwoPhase, Flow::OneShot] {
            let script = script(flow, &Payment::bench(flow)).unwrap();
            let body: Vec<&str> = script.lines().filter(|l| !l.starts_with("--")).collect();
            // No `$n` is left for pgbench to misread, and every variable used is defined.
            let mut defined: Vec<String> = defines(flow, &Payment::bench(flow), 1)
                .into_iter()
                .map(|(name, _)| name)
                .collect();
            defined.push("client_id".to_owned());
            for line in &body {
                assert!(!line.contains('$'), "{line}");
                if let Some(set) = line.strip_prefix("\\set ") {
                    defined.push(set.split_whitespace().next().unwrap().to_owned());
                }
                for (i, _) in line.match_indices(':') {
                    let rest = &line[i + 1..];
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    let after_colon = i > 0 && line.as_bytes()[i - 1] == b':';
                    if name.is_empty() || after_colon || rest.starts_with(':') {
                        continue;
                    }
                    assert!(defined.contains(&name), "{name} undefined in {line}");
                }
            }
            let statements = body
                .iter()
                .filter(|l| !l.starts_with('\\') && **l != "START TRANSACTION;" && **l != "COMMIT;")
                .count();
            assert_eq!(statements, statements_per_payment(flow));
            // Every transaction is one statement, committed on its own.
            assert!(!body.contains(&"START TRANSACTION;"), "{flow}");
            assert!(
                script.contains(
                    ":key_before_attempt::text || attempt_count::text || :create_after_attempt::text"
                ),
                "{script}"
            );
            assert!(
                script.contains("SELECT order_id, 1, :k_order_created::text, :k_pending::text, NULL::integer, :operator_id::text, ''::text"),
                "{script}"
            );
            assert!(
                script.contains("decline_code = NULL, failure_message = NULL"),
                "{script}"
            );
            assert_eq!(
                script.contains("gateway_payment_id = :intent_id FROM o"),
                flow == Flow::TwoPhase
            );
        }
    }

    #[test]
    fn placeholders_come_in_text_order() {
        let s = Statement::new("a = $1 AND b = $3 AND c = $12 AND d = $2", &[]);
        assert_eq!(s.placeholders(), [1, 3, 12, 2]);
        assert!(placeholders("no parameters, $ alone").is_empty());
    }

    #[test]
    fn pgbench_reports_are_read() {
        let by_count = "transaction type: x.sql\nscaling factor: 1\nquery mode: prepared\n\
            number of clients: 2\nnumber of threads: 2\nmaximum number of tries: 1\n\
            number of transactions per client: 3\n\
            number of transactions actually processed: 6/6\n\
            number of failed transactions: 0 (0.000%)\nlatency average = 7.384 ms\n\
            initial connection time = 19.957 ms\n\
            tps = 270.843678 (without initial connection time)\n";
        assert_eq!(
            Report::parse(by_count).unwrap(),
            Report {
                processed: 6,
                failed: 0,
                latency_ms: 7.384,
                tps: 270.843678
            }
        );
        let by_time = by_count
            .replace("6/6", "1234")
            .replace("0 (0.000%)", "2 (0.162%)");
        let report = Report::parse(&by_time).unwrap();
        assert_eq!((report.processed, report.failed), (1234, 2));
        assert!(Report::parse("pgbench: error: nothing").is_err());
    }

    #[test]
    fn bench_values_have_real_shapes() {
        let p = Payment::bench(Flow::OneShot);
        let key = |after| {
            format!(
                "{}1{}",
                p.value(Arg::KeyBeforeAttempt).unwrap(),
                p.value(after).unwrap()
            )
        };
        assert_eq!(
            key(Arg::CreateAfterAttempt),
            format!("pay:{}:1:create", "0".repeat(18))
        );
        assert_eq!(
            key(Arg::ConfirmAfterAttempt),
            format!("pay:{}:1:confirm", "0".repeat(18))
        );
        assert_eq!(
            p.value(Arg::StartedDetail).unwrap(),
            "replica replica-0, flow one_shot"
        );
        assert_eq!(p.value(Arg::Null), None);
        assert_eq!(p.value(Arg::Empty).unwrap(), "");
        let items: serde_json::Value = serde_json::from_str(&p.items).unwrap();
        let total: i64 = items
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["quantity"].as_i64().unwrap() * i["unit_amount_minor"].as_i64().unwrap())
            .sum();
        assert_eq!(total, p.amount_minor);
        assert_eq!(p.fingerprint.len(), 64);
    }
}
