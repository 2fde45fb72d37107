//! The racing operators: through the public gRPC API only, each order is paid by several
//! operators at once across the replicas, with mixed payment methods; a caller whose call fails
//! in a way that says nothing about the payment (UNAVAILABLE, a transport error, its own
//! deadline, RESOURCE_EXHAUSTED) sends it again with the SAME idempotency key, on the next
//! replica, and gives up after a while; some callers submit twice at once (same key, two
//! replicas); a reviewer refunds some paid orders (full, partial, partial then the rest, two
//! reviewers at once, a same-key replay). Every order's plan comes from the seed.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use payments_client::Client;
use payments_proto::v1 as pb;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::{
    sync::{Semaphore, watch},
    task::JoinSet,
};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

use super::world::{InFlight, World};

/// The gateway's test payment methods, and how often each is used.
const VISA: &str = "pm_card_visa";
const DECLINED: &str = "pm_card_chargeDeclined";
const INSUFFICIENT: &str = "pm_card_chargeDeclinedInsufficientFunds";

/// Salt of the workload's random streams (one per order).
const WORKLOAD_SALT: u64 = 0x0b0e_a7e5_0a1d_0000;

#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    pub seed: u64,
    pub payments: usize,
    /// Orders being paid at once.
    pub concurrency: usize,
    pub callers_per_order: usize,
    /// Share of paid orders a reviewer refunds (0–100).
    pub refund_percent: u32,
    /// Share of orders whose first caller submits twice at once, same key, on two replicas.
    pub duplicate_percent: u32,
    /// One call's deadline (the server answers a waiting call just before it).
    pub call_timeout: Duration,
    /// Sends of one idempotency key before the caller gives up on it.
    pub max_tries: u32,
    /// New idempotency keys one caller may use on an order (after a voided attempt).
    pub max_presses: u32,
    /// Order ids are `{prefix}-{n}`.
    pub order_prefix: String,
}

impl WorkloadConfig {
    pub fn order_id(&self, n: usize) -> String {
        format!("{}-{n}", self.order_prefix)
    }
}

/// What the callers did and were told.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadStats {
    pub orders_started: u64,
    pub orders_done: u64,
    /// Orders per payment method.
    pub methods: BTreeMap<String, u64>,
    /// Every ProcessPayment call sent.
    pub pay_calls: u64,
    /// Distinct idempotency keys used for ProcessPayment.
    pub presses: u64,
    /// ProcessPayment calls sent again with the same key (after an error, a timeout, or an
    /// answer still in flight at the deadline).
    pub same_key_retries: u64,
    /// Deliberate double submits (same key at once on two replicas) and their answers that
    /// joined the existing attempt.
    pub duplicate_submits: u64,
    pub joined_existing: u64,
    /// Keys given up after `max_tries` sends.
    pub gave_up: u64,
    /// Attempt outcomes as the callers' answers showed them.
    pub outcomes_seen: BTreeMap<String, u64>,
    /// Orders some caller was told were paid (an answer whose attempt SUCCEEDED): each must be
    /// PAID (or refunded) in the database and charged once in the ledger.
    pub succeeded_orders: BTreeSet<String>,
    /// ProcessPayment refusals and errors by reason (retried ones included).
    pub refusals: BTreeMap<String, u64>,
    pub refund_calls: u64,
    /// Distinct refund idempotency keys.
    pub refunds_requested: u64,
    pub refunds_answered: u64,
    /// RefundPayment calls re-sent with their key after they were answered (replays).
    pub refund_replays: u64,
    pub refund_refusals: BTreeMap<String, u64>,
    pub refund_gave_up: u64,
}

impl WorkloadStats {
    pub fn refusal_total(&self) -> u64 {
        self.refusals.values().sum()
    }
}

/// Shared by the order tasks.
pub(crate) struct Workload {
    pub config: WorkloadConfig,
    world: Arc<World>,
    stats: Mutex<WorkloadStats>,
}

/// The refunds planned for one order, if it ends up paid.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RefundPlan {
    /// Amounts in order; `None`: whatever is left.
    steps: Vec<Option<i64>>,
    /// The first step is sent by two reviewers at once (different keys, two replicas).
    racing: bool,
    /// The first step is sent again with its key once answered.
    replay: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct CallerPlan {
    operator: usize,
    replica: usize,
    delay: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct OrderPlan {
    order_id: String,
    amount: i64,
    currency: &'static str,
    customer: String,
    method: &'static str,
    callers: Vec<CallerPlan>,
    duplicate: bool,
    refund: Option<RefundPlan>,
    reviewer: usize,
    reviewer_replica: usize,
}

/// How one idempotency key ended for a caller.
#[derive(Debug)]
enum PressEnd {
    Succeeded,
    Declined,
    Cancelled,
    Unknown,
    Refused(String),
    GaveUp,
}

/// A refusal's reason: the `ErrorInfo` reason, else what kind of failure it was.
pub(crate) fn reason_of(status: &Status) -> String {
    if let Some(info) = status.get_details_error_info() {
        return info.reason;
    }
    if std::error::Error::source(status).is_some() {
        return "transport error".to_owned();
    }
    format!("{:?} without reason", status.code())
}

/// Whether sending the same request again (same key) is the right reaction: the answer says
/// nothing was decided, or nothing came back.
pub(crate) fn worth_retrying(status: &Status) -> bool {
    payments_client::is_retryable(status)
        || matches!(
            status.code(),
            Code::DeadlineExceeded | Code::ResourceExhausted | Code::Internal | Code::Cancelled
        )
}

fn backoff(tries: u32) -> Duration {
    let base = 100u64.saturating_mul(1 << tries.min(5)).min(2000);
    let jitter = rand::rng().random_range(0..=base / 2);
    Duration::from_millis(base / 2 + jitter)
}

fn outcome_name(outcome: pb::AttemptOutcome) -> String {
    outcome
        .as_str_name()
        .trim_start_matches("ATTEMPT_OUTCOME_")
        .to_owned()
}

/// How many replicas and keys a plan draws from.
#[derive(Clone, Copy, Debug)]
struct Staff {
    replicas: usize,
    operators: usize,
    reviewers: usize,
}

/// Order `n`'s plan, from the seed alone (and how many replicas and keys there are).
fn plan(config: &WorkloadConfig, n: usize, staff: Staff) -> OrderPlan {
    let mut rng = StdRng::seed_from_u64(
        (config.seed ^ WORKLOAD_SALT).wrapping_add((n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
    );
    let replicas = staff.replicas.max(1);
    let operators = staff.operators.max(1);
    let amount = rng.random_range(500..=50_000);
    let currency = if rng.random_bool(0.8) { "EUR" } else { "USD" };
    let method = match rng.random_range(0..100) {
        0..80 => VISA,
        80..90 => DECLINED,
        _ => INSUFFICIENT,
    };
    let first_replica = rng.random_range(0..replicas);
    let first_operator = rng.random_range(0..operators);
    let callers = (0..config.callers_per_order.max(1))
        .map(|c| CallerPlan {
            operator: (first_operator + c) % operators,
            replica: (first_replica + c) % replicas,
            delay: Duration::from_millis(rng.random_range(0..=40)),
        })
        .collect();
    let duplicate = rng.random_range(0..100) < config.duplicate_percent;
    let refund = (rng.random_range(0..100) < config.refund_percent).then(|| {
        let partial = rng.random_range(1..amount);
        let steps = match rng.random_range(0..10) {
            0..4 => vec![None],
            4..8 => vec![Some(partial)],
            _ => vec![Some(partial), None],
        };
        RefundPlan {
            steps,
            racing: rng.random_bool(0.2),
            replay: rng.random_bool(0.2),
        }
    });
    OrderPlan {
        order_id: config.order_id(n),
        amount,
        currency,
        customer: format!("cust-{}", n % 97),
        method,
        callers,
        duplicate,
        refund,
        reviewer: rng.random_range(0..staff.reviewers.max(1)),
        reviewer_replica: rng.random_range(0..replicas),
    }
}

impl Workload {
    pub fn new(config: WorkloadConfig, world: Arc<World>) -> Workload {
        Workload {
            config,
            world,
            stats: Mutex::new(WorkloadStats::default()),
        }
    }

    pub fn stats(&self) -> WorkloadStats {
        self.stats
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    fn count(&self, f: impl FnOnce(&mut WorkloadStats)) {
        let mut guard = self
            .stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard);
    }

    /// Starts the payments in order, never payment `n` before `gate` allows it (`n < gate`),
    /// at most `concurrency` at once; `started` says how many have started. Returns when every
    /// order's callers (and refunds) are done.
    pub async fn run(
        self: Arc<Self>,
        mut gate: watch::Receiver<usize>,
        started: watch::Sender<usize>,
    ) -> anyhow::Result<()> {
        let slots = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        for n in 0..self.config.payments {
            // A closed gate (the fault runner is done) is an open one.
            let _ = gate.wait_for(|allowed| n < *allowed).await;
            let slot = slots
                .clone()
                .acquire_owned()
                .await
                .context("the workload's slots closed")?;
            let plan = self.plan(n);
            self.count(|s| {
                s.orders_started += 1;
                *s.methods.entry(plan.method.to_owned()).or_default() += 1;
            });
            started.send_replace(n + 1);
            let workload = self.clone();
            tasks.spawn(async move {
                workload.order(plan).await;
                workload.count(|s| s.orders_done += 1);
                drop(slot);
            });
            while let Some(done) = tasks.try_join_next() {
                done.context("an order task failed")?;
            }
        }
        while let Some(done) = tasks.join_next().await {
            done.context("an order task failed")?;
        }
        Ok(())
    }

    fn plan(&self, n: usize) -> OrderPlan {
        plan(
            &self.config,
            n,
            Staff {
                replicas: self.world.replicas(),
                operators: self.world.operators.len(),
                reviewers: self.world.reviewers.len(),
            },
        )
    }

    fn pay_request(plan: &OrderPlan, key: &str) -> pb::ProcessPaymentRequest {
        pb::ProcessPaymentRequest {
            order_id: plan.order_id.clone(),
            amount: Some(pb::Money {
                amount_minor: plan.amount,
                currency: plan.currency.to_owned(),
            }),
            customer_id: plan.customer.clone(),
            payment_method: plan.method.to_owned(),
            items: vec![pb::LineItem {
                product_id: "sku-chaos".to_owned(),
                quantity: 1,
                unit_amount_minor: plan.amount,
            }],
            idempotency_key: key.to_owned(),
            wait_for_outcome: true,
        }
    }

    fn operator_client(&self, operator: usize, replica: usize) -> Option<Client> {
        let row = self.world.operator_clients.get(operator)?;
        row.get(replica % row.len().max(1)).cloned()
    }

    fn reviewer_client(&self, reviewer: usize, replica: usize) -> Option<Client> {
        let row = self.world.reviewer_clients.get(reviewer)?;
        row.get(replica % row.len().max(1)).cloned()
    }

    /// One order: its callers race, then the planned refunds if it was paid.
    async fn order(self: &Arc<Self>, plan: OrderPlan) {
        let plan = Arc::new(plan);
        let mut callers = JoinSet::new();
        for (c, caller) in plan.callers.iter().enumerate() {
            let workload = self.clone();
            let plan = plan.clone();
            let caller = caller.clone();
            callers.spawn(async move {
                tokio::time::sleep(caller.delay).await;
                workload.caller(&plan, c, &caller).await
            });
        }
        while callers.join_next().await.is_some() {}
        if let Some(refund) = &plan.refund {
            self.refunds(&plan, refund).await;
        }
    }

    /// One operator pressing "pay": a new key per press, pressed again only after a voided
    /// attempt (or when the order is payable again after losing a race to such an attempt).
    async fn caller(&self, plan: &OrderPlan, c: usize, caller: &CallerPlan) {
        for press in 0..self.config.max_presses.max(1) {
            let key = format!("{}:c{c}:p{press}", plan.order_id);
            self.count(|s| s.presses += 1);
            let end = if press == 0 && c == 0 && plan.duplicate {
                self.count(|s| s.duplicate_submits += 1);
                let other = CallerPlan {
                    replica: caller.replica + 1,
                    ..caller.clone()
                };
                let (a, _) = tokio::join!(
                    self.press(plan, caller, &key),
                    self.press(plan, &other, &key)
                );
                a
            } else {
                self.press(plan, caller, &key).await
            };
            match end {
                PressEnd::Cancelled => continue,
                PressEnd::Refused(reason) if reason == "PAYMENT_IN_PROGRESS" => {
                    // Lost the race. Press again only if the winner's attempt was voided and
                    // the order is payable again.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    if !self.payable_after_void(plan, caller).await {
                        return;
                    }
                }
                _ => return,
            }
        }
    }

    async fn payable_after_void(&self, plan: &OrderPlan, caller: &CallerPlan) -> bool {
        let Some(mut client) = self.operator_client(caller.operator, caller.replica) else {
            return false;
        };
        let mut request = Request::new(pb::GetOrderRequest {
            order_id: plan.order_id.clone(),
        });
        request.set_timeout(Duration::from_secs(5));
        match tokio::time::timeout(Duration::from_secs(6), client.get_order(request)).await {
            Ok(Ok(order)) => {
                let order = order.into_inner();
                order.state() == pb::OrderState::Pending
                    && order
                        .attempts
                        .last()
                        .is_some_and(|a| a.outcome() == pb::AttemptOutcome::Cancelled)
            }
            _ => false,
        }
    }

    /// Sends one key until it gets an answer that decides something, or gives up.
    async fn press(&self, plan: &OrderPlan, caller: &CallerPlan, key: &str) -> PressEnd {
        let request = Self::pay_request(plan, key);
        let replicas = self.world.replicas().max(1);
        let mut tries = 0;
        loop {
            let replica = (caller.replica + tries as usize) % replicas;
            let Some(mut client) = self.operator_client(caller.operator, replica) else {
                return PressEnd::GaveUp;
            };
            let mut call = Request::new(request.clone());
            call.set_timeout(self.config.call_timeout);
            self.count(|s| s.pay_calls += 1);
            // A frozen replica never answers: the caller's own clock ends the call.
            let guard = self.config.call_timeout + Duration::from_secs(2);
            let counted = InFlight::enter(&self.world, replica);
            let answer = tokio::time::timeout(guard, client.process_payment(call)).await;
            drop(counted);
            let mut wait = true;
            match answer {
                Ok(Ok(response)) => {
                    let response = response.into_inner();
                    let outcome = response
                        .attempt
                        .as_ref()
                        .map_or(pb::AttemptOutcome::Unspecified, |a| a.outcome());
                    self.count(|s| {
                        if response.joined_existing {
                            s.joined_existing += 1;
                        }
                        *s.outcomes_seen.entry(outcome_name(outcome)).or_default() += 1;
                    });
                    match outcome {
                        pb::AttemptOutcome::Succeeded => {
                            self.count(|s| {
                                s.succeeded_orders.insert(plan.order_id.clone());
                            });
                            return PressEnd::Succeeded;
                        }
                        pb::AttemptOutcome::Declined => return PressEnd::Declined,
                        pb::AttemptOutcome::Cancelled => return PressEnd::Cancelled,
                        pb::AttemptOutcome::Unknown => return PressEnd::Unknown,
                        // Still in flight at the deadline: join it again with the same key.
                        _ => wait = false,
                    }
                }
                Ok(Err(status)) => {
                    let reason = reason_of(&status);
                    self.count(|s| *s.refusals.entry(reason.clone()).or_default() += 1);
                    if !worth_retrying(&status) {
                        return PressEnd::Refused(reason);
                    }
                }
                Err(_) => {
                    self.count(|s| {
                        *s.refusals
                            .entry("no answer by the deadline".to_owned())
                            .or_default() += 1;
                    });
                }
            }
            tries += 1;
            if tries >= self.config.max_tries {
                self.count(|s| s.gave_up += 1);
                return PressEnd::GaveUp;
            }
            self.count(|s| s.same_key_retries += 1);
            if wait {
                tokio::time::sleep(backoff(tries)).await;
            }
        }
    }

    /// The planned refunds of a paid order (the order's state read first: only a paid order
    /// is refunded).
    async fn refunds(&self, plan: &OrderPlan, refund: &RefundPlan) {
        if !self.is_paid(plan).await {
            return;
        }
        for (step, amount) in refund.steps.iter().enumerate() {
            let key = format!("{}:refund:{step}", plan.order_id);
            let money = amount.map(|amount_minor| pb::Money {
                amount_minor,
                currency: plan.currency.to_owned(),
            });
            let reviewers = self.world.reviewers.len().max(1);
            let answered = if step == 0 && refund.racing {
                let rival_key = format!("{}:refund:{step}:rival", plan.order_id);
                let (a, _) = tokio::join!(
                    self.refund(plan, plan.reviewer, plan.reviewer_replica, &key, &money),
                    self.refund(
                        plan,
                        (plan.reviewer + 1) % reviewers,
                        plan.reviewer_replica + 1,
                        &rival_key,
                        &money
                    )
                );
                a
            } else {
                self.refund(plan, plan.reviewer, plan.reviewer_replica, &key, &money)
                    .await
            };
            if !answered {
                return;
            }
            if step == 0 && refund.replay {
                self.count(|s| s.refund_replays += 1);
                self.refund(plan, plan.reviewer, plan.reviewer_replica + 2, &key, &money)
                    .await;
            }
        }
    }

    async fn is_paid(&self, plan: &OrderPlan) -> bool {
        for tries in 0..self.config.max_tries {
            let replica = plan.reviewer_replica + tries as usize;
            let Some(mut client) = self.reviewer_client(plan.reviewer, replica) else {
                return false;
            };
            let mut request = Request::new(pb::GetOrderRequest {
                order_id: plan.order_id.clone(),
            });
            request.set_timeout(Duration::from_secs(5));
            match tokio::time::timeout(Duration::from_secs(6), client.get_order(request)).await {
                Ok(Ok(order)) => return order.into_inner().state() == pb::OrderState::Paid,
                Ok(Err(status)) if !worth_retrying(&status) => return false,
                _ => tokio::time::sleep(backoff(tries + 1)).await,
            }
        }
        false
    }

    /// One refund key sent until answered (same key on every retry); whether it was answered.
    async fn refund(
        &self,
        plan: &OrderPlan,
        reviewer: usize,
        replica: usize,
        key: &str,
        amount: &Option<pb::Money>,
    ) -> bool {
        let request = pb::RefundPaymentRequest {
            order_id: plan.order_id.clone(),
            amount: amount.clone(),
            reason: "chaos: customer asked for a refund".to_owned(),
            idempotency_key: key.to_owned(),
        };
        self.count(|s| s.refunds_requested += 1);
        let replicas = self.world.replicas().max(1);
        let mut tries = 0;
        loop {
            let Some(mut client) =
                self.reviewer_client(reviewer, (replica + tries as usize) % replicas)
            else {
                return false;
            };
            let mut call = Request::new(request.clone());
            call.set_timeout(self.config.call_timeout);
            self.count(|s| s.refund_calls += 1);
            let guard = self.config.call_timeout + Duration::from_secs(2);
            match tokio::time::timeout(guard, client.refund_payment(call)).await {
                Ok(Ok(_)) => {
                    self.count(|s| s.refunds_answered += 1);
                    return true;
                }
                Ok(Err(status)) => {
                    let reason = reason_of(&status);
                    self.count(|s| *s.refund_refusals.entry(reason).or_default() += 1);
                    if !worth_retrying(&status) {
                        return false;
                    }
                }
                Err(_) => self.count(|s| {
                    *s.refund_refusals
                        .entry("no answer by the deadline".to_owned())
                        .or_default() += 1;
                }),
            }
            tries += 1;
            if tries >= self.config.max_tries {
                self.count(|s| s.refund_gave_up += 1);
                return false;
            }
            tokio::time::sleep(backoff(tries)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(seed: u64) -> WorkloadConfig {
        WorkloadConfig {
            seed,
            payments: 200,
            concurrency: 8,
            callers_per_order: 3,
            refund_percent: 15,
            duplicate_percent: 10,
            call_timeout: Duration::from_secs(8),
            max_tries: 12,
            max_presses: 3,
            order_prefix: format!("chaos-{seed}"),
        }
    }

    const STAFF: Staff = Staff {
        replicas: 3,
        operators: 3,
        reviewers: 2,
    };

    fn plans(seed: u64) -> Vec<OrderPlan> {
        let config = config(seed);
        (0..config.payments)
            .map(|n| plan(&config, n, STAFF))
            .collect()
    }

    /// The companion of `schedule`'s `the_same_seed_gives_the_same_schedule`: a seed replays
    /// every order's amount, method, callers, double submit and refunds.
    #[test]
    fn the_same_seed_gives_the_same_workload_plans() {
        let a = plans(7);
        assert_eq!(a, plans(7));
        let b = plans(8);
        let differing = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| (x.amount, x.method, &x.callers) != (y.amount, y.method, &y.callers))
            .count();
        assert!(differing > 150, "only {differing} of 200 plans differ");
        // The plans use what the run promises: every method, double submits and each refund
        // shape, callers on distinct replicas.
        for method in [VISA, DECLINED, INSUFFICIENT] {
            assert!(a.iter().any(|p| p.method == method), "{method}");
        }
        assert!(a.iter().any(|p| p.duplicate));
        let refunds: Vec<&RefundPlan> = a.iter().filter_map(|p| p.refund.as_ref()).collect();
        assert!(refunds.iter().any(|r| r.steps == [None]));
        assert!(refunds.iter().any(|r| r.steps.len() == 2));
        for p in &a {
            let mut replicas: Vec<usize> = p.callers.iter().map(|c| c.replica).collect();
            replicas.dedup();
            assert_eq!(replicas.len(), 3, "{p:?}");
            assert!(p.order_id.starts_with("chaos-7-"));
        }
    }
}
