//! The gateway's books: PaymentIntents, charges, refunds and per-operation call counts. Pure
//! logic: no I/O, no clock (times are passed in), so every rule is unit-tested here.
//!
//! Everything a request does happens in one call under the caller's lock, so "charged" and
//! "answer saved under the idempotency key" are never observed apart.

use std::collections::{BTreeMap, HashMap};

use rand::SeedableRng;
use rand::distr::{Alphanumeric, SampleString};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::errors::ApiError;
use super::idempotency::KeyStats;
use super::reply::Reply;

/// The five gateway operations; also the names used by `/_sim/faults` `operations` and by the
/// ledger's `calls`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Create,
    Confirm,
    Get,
    Cancel,
    Refund,
}

impl Op {
    pub const ALL: [Op; 5] = [Op::Create, Op::Confirm, Op::Get, Op::Cancel, Op::Refund];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Confirm => "confirm",
            Op::Get => "get",
            Op::Cancel => "cancel",
            Op::Refund => "refund",
        }
    }
}

/// Every `/v1` request received, per operation, whatever became of it (401, faults, 400s).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Calls {
    pub create: u64,
    pub confirm: u64,
    pub get: u64,
    pub cancel: u64,
    pub refund: u64,
}

impl Calls {
    fn record(&mut self, op: Op) {
        let counter = match op {
            Op::Create => &mut self.create,
            Op::Confirm => &mut self.confirm,
            Op::Get => &mut self.get,
            Op::Cancel => &mut self.cancel,
            Op::Refund => &mut self.refund,
        };
        *counter += 1;
    }
}

/// What charging a test payment method does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CardOutcome {
    Succeeds,
    Declines {
        decline_code: &'static str,
        message: &'static str,
    },
}

/// Stripe's test payment methods that this gateway knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestCard {
    pub id: &'static str,
    pub outcome: CardOutcome,
}

const fn declines(id: &'static str, decline_code: &'static str, message: &'static str) -> TestCard {
    TestCard {
        id,
        outcome: CardOutcome::Declines {
            decline_code,
            message,
        },
    }
}

const fn succeeds(id: &'static str) -> TestCard {
    TestCard {
        id,
        outcome: CardOutcome::Succeeds,
    }
}

const TEST_CARDS: &[TestCard] = &[
    succeeds("pm_card_visa"),
    succeeds("pm_card_visa_debit"),
    succeeds("pm_card_mastercard"),
    succeeds("pm_card_amex"),
    succeeds("pm_card_discover"),
    declines(
        "pm_card_chargeDeclined",
        "generic_decline",
        "Your card was declined.",
    ),
    declines(
        "pm_card_chargeDeclinedInsufficientFunds",
        "insufficient_funds",
        "Your card has insufficient funds.",
    ),
    declines(
        "pm_card_chargeDeclinedFraudulent",
        "fraudulent",
        "Your card was declined.",
    ),
    declines(
        "pm_card_chargeDeclinedLostCard",
        "lost_card",
        "Your card was declined.",
    ),
    declines(
        "pm_card_chargeDeclinedStolenCard",
        "stolen_card",
        "Your card was declined.",
    ),
];

impl TestCard {
    pub fn from_id(id: &str) -> Option<TestCard> {
        TEST_CARDS.iter().copied().find(|card| card.id == id)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentStatus {
    RequiresPaymentMethod,
    RequiresConfirmation,
    Succeeded,
    Canceled,
}

impl IntentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            IntentStatus::RequiresPaymentMethod => "requires_payment_method",
            IntentStatus::RequiresConfirmation => "requires_confirmation",
            IntentStatus::Succeeded => "succeeded",
            IntentStatus::Canceled => "canceled",
        }
    }

    /// Confirm and cancel are allowed only before an outcome.
    fn is_open(self) -> bool {
        matches!(
            self,
            IntentStatus::RequiresPaymentMethod | IntentStatus::RequiresConfirmation
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PaymentError {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub code: &'static str,
    pub decline_code: &'static str,
    pub message: &'static str,
    pub payment_method: Option<String>,
}

// ---- validated requests (built by `params`) ----

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateIntent {
    pub amount: u64,
    pub currency: String,
    pub payment_method: Option<TestCard>,
    pub confirm: bool,
    pub metadata: BTreeMap<String, String>,
    pub description: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfirmIntent {
    pub id: String,
    pub payment_method: Option<TestCard>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CancelIntent {
    pub id: String,
    pub cancellation_reason: Option<&'static str>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateRefund {
    pub payment_intent: String,
    pub amount: Option<u64>,
    pub reason: Option<&'static str>,
    pub metadata: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Create(CreateIntent),
    Confirm(ConfirmIntent),
    Get { id: String },
    Cancel(CancelIntent),
    Refund(CreateRefund),
}

// ---- the books ----

#[derive(Clone, Debug)]
struct Intent {
    id: String,
    amount: u64,
    currency: String,
    status: IntentStatus,
    payment_method: Option<String>,
    metadata: BTreeMap<String, String>,
    description: Option<String>,
    created: u64,
    canceled_at: Option<u64>,
    cancellation_reason: Option<&'static str>,
    latest_charge: Option<String>,
    amount_received: u64,
    last_payment_error: Option<PaymentError>,
    times_charged: u32,
    declines: u32,
    amount_refunded: u64,
    refunds: Vec<Refund>,
    idempotency_keys: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Refund {
    pub id: String,
    pub object: &'static str,
    pub amount: u64,
    pub currency: String,
    pub charge: Option<String>,
    pub payment_intent: String,
    pub status: &'static str,
    pub created: u64,
    pub reason: Option<&'static str>,
    pub metadata: BTreeMap<String, String>,
}

/// The PaymentIntent as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PaymentIntentObject {
    pub id: String,
    pub object: &'static str,
    pub amount: u64,
    pub amount_received: u64,
    pub currency: String,
    pub status: IntentStatus,
    pub payment_method: Option<String>,
    pub capture_method: &'static str,
    pub confirmation_method: &'static str,
    pub created: u64,
    pub canceled_at: Option<u64>,
    pub cancellation_reason: Option<&'static str>,
    pub description: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub latest_charge: Option<String>,
    pub last_payment_error: Option<PaymentError>,
    pub livemode: bool,
}

impl Intent {
    fn object(&self) -> PaymentIntentObject {
        PaymentIntentObject {
            id: self.id.clone(),
            object: "payment_intent",
            amount: self.amount,
            amount_received: self.amount_received,
            currency: self.currency.clone(),
            status: self.status,
            payment_method: self.payment_method.clone(),
            capture_method: "automatic",
            confirmation_method: "automatic",
            created: self.created,
            canceled_at: self.canceled_at,
            cancellation_reason: self.cancellation_reason,
            description: self.description.clone(),
            metadata: self.metadata.clone(),
            latest_charge: self.latest_charge.clone(),
            last_payment_error: self.last_payment_error.clone(),
            livemode: false,
        }
    }

    fn remember_key(&mut self, key: Option<&str>) {
        if let Some(key) = key
            && !self.idempotency_keys.iter().any(|k| k == key)
        {
            self.idempotency_keys.push(key.to_owned());
        }
    }

    /// Charges the intent with `card`. Succeeds (one more charge in the books) or declines
    /// (the intent goes back to `requires_payment_method` with `last_payment_error`, and the
    /// answer is 402 carrying the intent).
    fn charge(&mut self, card: TestCard, charge_id: String) -> Result<(), ApiError> {
        match card.outcome {
            CardOutcome::Succeeds => {
                self.payment_method = Some(card.id.to_owned());
                self.status = IntentStatus::Succeeded;
                self.amount_received = self.amount;
                self.latest_charge = Some(charge_id);
                self.last_payment_error = None;
                self.times_charged += 1;
                Ok(())
            }
            CardOutcome::Declines {
                decline_code,
                message,
            } => {
                // As Stripe does, a declined payment method is detached from the intent.
                self.payment_method = None;
                self.status = IntentStatus::RequiresPaymentMethod;
                self.declines += 1;
                self.last_payment_error = Some(PaymentError {
                    kind: "card_error",
                    code: "card_declined",
                    decline_code,
                    message,
                    payment_method: Some(card.id.to_owned()),
                });
                Err(ApiError::card_declined(
                    decline_code,
                    message,
                    &self.object(),
                ))
            }
        }
    }
}

/// The ledger as `GET /_sim/ledger` shows it (and as clients of the simulator read it back).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    pub intents: Vec<LedgerIntent>,
    pub totals: Totals,
    pub calls: Calls,
    /// Filled in by the server from the idempotency store.
    #[serde(default)]
    pub idempotency: KeyStats,
    /// How many faults of each kind were injected, filled in by the server.
    #[serde(default)]
    pub faults_injected: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerIntent {
    pub id: String,
    pub status: IntentStatus,
    pub amount: u64,
    pub currency: String,
    pub payment_method: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub description: Option<String>,
    pub times_charged: u32,
    pub declines: u32,
    pub latest_charge: Option<String>,
    pub amount_refunded: u64,
    pub refunds: Vec<LedgerRefund>,
    pub created: u64,
    pub canceled_at: Option<u64>,
    pub idempotency_keys: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerRefund {
    pub id: String,
    pub amount: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub intents: u64,
    pub charges: u64,
    pub amount_charged: u64,
    pub declines: u64,
    pub refunds: u64,
    pub amount_refunded: u64,
}

pub struct Gateway {
    /// In creation order, so the ledger lists them sorted by creation.
    intents: Vec<Intent>,
    by_id: HashMap<String, usize>,
    calls: Calls,
    /// Object ids come from OS entropy, not the fault seed: a restarted simulator must never
    /// hand out an id a coordinator has already stored for another intent.
    ids: StdRng,
}

impl Default for Gateway {
    fn default() -> Self {
        Self::new()
    }
}

fn new_id(rng: &mut StdRng, prefix: &str) -> String {
    format!("{prefix}_{}", Alphanumeric.sample_string(rng, 24))
}

impl Gateway {
    pub fn new() -> Self {
        Self {
            intents: Vec::new(),
            by_id: HashMap::new(),
            calls: Calls::default(),
            ids: StdRng::from_os_rng(),
        }
    }

    pub fn record_call(&mut self, op: Op) {
        self.calls.record(op);
    }

    /// Executes a validated command at `now` (Unix seconds). Every outcome, error or not, is
    /// a finished answer that the idempotency store may save.
    pub fn execute(&mut self, command: Command, now: u64, key: Option<&str>) -> Reply {
        let result = match command {
            Command::Create(req) => self.create(req, now, key).map(|pi| Reply::ok(&pi)),
            Command::Confirm(req) => self.confirm(req, key).map(|pi| Reply::ok(&pi)),
            Command::Get { id } => self.get(&id).map(|pi| Reply::ok(&pi)),
            Command::Cancel(req) => self.cancel(req, now, key).map(|pi| Reply::ok(&pi)),
            Command::Refund(req) => self.refund(req, now, key).map(|re| Reply::ok(&re)),
        };
        result.unwrap_or_else(|error| error.reply())
    }

    fn intent_mut(&mut self, id: &str) -> Option<&mut Intent> {
        let index = *self.by_id.get(id)?;
        self.intents.get_mut(index)
    }

    pub fn create(
        &mut self,
        req: CreateIntent,
        now: u64,
        key: Option<&str>,
    ) -> Result<PaymentIntentObject, ApiError> {
        let id = new_id(&mut self.ids, "pi");
        let mut intent = Intent {
            id: id.clone(),
            amount: req.amount,
            currency: req.currency,
            status: if req.payment_method.is_some() {
                IntentStatus::RequiresConfirmation
            } else {
                IntentStatus::RequiresPaymentMethod
            },
            payment_method: req.payment_method.map(|card| card.id.to_owned()),
            metadata: req.metadata,
            description: req.description,
            created: now,
            canceled_at: None,
            cancellation_reason: None,
            latest_charge: None,
            amount_received: 0,
            last_payment_error: None,
            times_charged: 0,
            declines: 0,
            amount_refunded: 0,
            refunds: Vec::new(),
            idempotency_keys: Vec::new(),
        };
        intent.remember_key(key);
        // `params` refuses confirm=true without a payment method, so `card` is always there
        // when confirming; the intent exists (and is listed) even when the charge declines.
        let outcome = match (req.confirm, req.payment_method) {
            (true, Some(card)) => intent.charge(card, new_id(&mut self.ids, "ch")),
            _ => Ok(()),
        };
        let object = intent.object();
        self.by_id.insert(id, self.intents.len());
        self.intents.push(intent);
        outcome.map(|()| object)
    }

    pub fn confirm(
        &mut self,
        req: ConfirmIntent,
        key: Option<&str>,
    ) -> Result<PaymentIntentObject, ApiError> {
        let charge_id = new_id(&mut self.ids, "ch");
        let intent = self
            .intent_mut(&req.id)
            .ok_or_else(|| ApiError::no_such_payment_intent(&req.id))?;
        intent.remember_key(key);
        if !intent.status.is_open() {
            let message = match intent.status {
                IntentStatus::Succeeded => "You cannot confirm this PaymentIntent because it has already succeeded after being previously confirmed.".to_owned(),
                status => format!("You cannot confirm this PaymentIntent because it has a status of {}.", status.as_str()),
            };
            return Err(ApiError::unexpected_state(message, &intent.object()));
        }
        let card = match req.payment_method {
            Some(card) => card,
            None => intent
                .payment_method
                .as_deref()
                .and_then(TestCard::from_id)
                .ok_or_else(|| {
                    ApiError::parameter_missing("payment_method")
                        .with_payment_intent(&intent.object())
                })?,
        };
        intent.charge(card, charge_id)?;
        Ok(intent.object())
    }

    pub fn get(&self, id: &str) -> Result<PaymentIntentObject, ApiError> {
        self.by_id
            .get(id)
            .and_then(|&index| self.intents.get(index))
            .map(Intent::object)
            .ok_or_else(|| ApiError::no_such_payment_intent(id))
    }

    pub fn cancel(
        &mut self,
        req: CancelIntent,
        now: u64,
        key: Option<&str>,
    ) -> Result<PaymentIntentObject, ApiError> {
        let intent = self
            .intent_mut(&req.id)
            .ok_or_else(|| ApiError::no_such_payment_intent(&req.id))?;
        intent.remember_key(key);
        if !intent.status.is_open() {
            let message = format!(
                "You cannot cancel this PaymentIntent because it has a status of {}. Only a PaymentIntent with one of the following statuses may be canceled: requires_payment_method, requires_confirmation.",
                intent.status.as_str()
            );
            return Err(ApiError::unexpected_state(message, &intent.object()));
        }
        intent.status = IntentStatus::Canceled;
        intent.canceled_at = Some(now);
        intent.cancellation_reason = req.cancellation_reason;
        Ok(intent.object())
    }

    pub fn refund(
        &mut self,
        req: CreateRefund,
        now: u64,
        key: Option<&str>,
    ) -> Result<Refund, ApiError> {
        let refund_id = new_id(&mut self.ids, "re");
        let intent = self.intent_mut(&req.payment_intent).ok_or_else(|| {
            ApiError::no_such_param_object(
                "payment_intent",
                format!("No such payment_intent: '{}'", req.payment_intent),
            )
        })?;
        intent.remember_key(key);
        if intent.status != IntentStatus::Succeeded {
            return Err(ApiError::unexpected_state(
                format!(
                    "This PaymentIntent does not have a successful charge to refund (its status is {}).",
                    intent.status.as_str()
                ),
                &intent.object(),
            )
            .with_param("payment_intent"));
        }
        let remaining = intent
            .amount_received
            .saturating_sub(intent.amount_refunded);
        if remaining == 0 {
            return Err(ApiError::charge_already_refunded(format!(
                "Charge {} has already been refunded.",
                intent.latest_charge.as_deref().unwrap_or("")
            )));
        }
        let amount = req.amount.unwrap_or(remaining);
        if amount > remaining {
            return Err(ApiError::amount_too_large(
                "amount",
                format!(
                    "Refund amount ({amount}) is greater than unrefunded amount on charge ({remaining})."
                ),
            ));
        }
        let refund = Refund {
            id: refund_id,
            object: "refund",
            amount,
            currency: intent.currency.clone(),
            charge: intent.latest_charge.clone(),
            payment_intent: intent.id.clone(),
            status: "succeeded",
            created: now,
            reason: req.reason,
            metadata: req.metadata,
        };
        intent.amount_refunded += amount;
        intent.refunds.push(refund.clone());
        Ok(refund)
    }

    pub fn ledger(&self) -> Ledger {
        let mut totals = Totals::default();
        let intents = self
            .intents
            .iter()
            .map(|intent| {
                totals.intents += 1;
                totals.charges += u64::from(intent.times_charged);
                totals.amount_charged += intent.amount * u64::from(intent.times_charged);
                totals.declines += u64::from(intent.declines);
                totals.refunds += intent.refunds.len() as u64;
                totals.amount_refunded += intent.amount_refunded;
                LedgerIntent {
                    id: intent.id.clone(),
                    status: intent.status,
                    amount: intent.amount,
                    currency: intent.currency.clone(),
                    payment_method: intent.payment_method.clone(),
                    metadata: intent.metadata.clone(),
                    description: intent.description.clone(),
                    times_charged: intent.times_charged,
                    declines: intent.declines,
                    latest_charge: intent.latest_charge.clone(),
                    amount_refunded: intent.amount_refunded,
                    refunds: intent
                        .refunds
                        .iter()
                        .map(|r| LedgerRefund {
                            id: r.id.clone(),
                            amount: r.amount,
                        })
                        .collect(),
                    created: intent.created,
                    canceled_at: intent.canceled_at,
                    idempotency_keys: intent.idempotency_keys.clone(),
                }
            })
            .collect();
        Ledger {
            intents,
            totals,
            calls: self.calls,
            idempotency: KeyStats::default(),
            faults_injected: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    fn card(id: &str) -> TestCard {
        TestCard::from_id(id).unwrap_or_else(|| panic!("{id} is a test card"))
    }

    fn create_req(pm: Option<&str>, confirm: bool) -> CreateIntent {
        CreateIntent {
            amount: 1500,
            currency: "eur".into(),
            payment_method: pm.map(card),
            confirm,
            metadata: BTreeMap::from([("order_id".to_owned(), "o-1".to_owned())]),
            description: None,
        }
    }

    fn paid(gw: &mut Gateway) -> String {
        let pi = gw
            .create(create_req(Some("pm_card_visa"), true), 100, Some("k1"))
            .unwrap_or_else(|e| panic!("{e:?}"));
        pi.id
    }

    fn refund_req(pi: &str, amount: Option<u64>) -> CreateRefund {
        CreateRefund {
            payment_intent: pi.to_owned(),
            amount,
            reason: None,
            metadata: BTreeMap::new(),
        }
    }

    #[test]
    fn create_without_confirm_waits_for_confirmation() {
        let mut gw = Gateway::new();
        let pi = gw.create(create_req(Some("pm_card_visa"), false), 7, None);
        let pi = pi.unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(pi.status, IntentStatus::RequiresConfirmation);
        assert!(pi.id.starts_with("pi_") && pi.id.len() == 27, "{}", pi.id);
        assert_eq!(pi.created, 7);
        let no_pm = gw.create(create_req(None, false), 7, None);
        assert_eq!(
            no_pm.map(|pi| pi.status),
            Ok(IntentStatus::RequiresPaymentMethod)
        );
        assert_eq!(gw.ledger().totals.charges, 0);
    }

    #[test]
    fn create_with_confirm_charges_once() {
        let mut gw = Gateway::new();
        let id = paid(&mut gw);
        let ledger = gw.ledger();
        let intent = &ledger.intents[0];
        assert_eq!(intent.id, id);
        assert_eq!(intent.status, IntentStatus::Succeeded);
        assert_eq!(intent.times_charged, 1);
        assert!(
            intent
                .latest_charge
                .as_deref()
                .is_some_and(|c| c.starts_with("ch_"))
        );
        assert_eq!(intent.idempotency_keys, vec!["k1".to_owned()]);
        assert_eq!(ledger.totals.amount_charged, 1500);
    }

    #[test]
    fn confirm_charges_an_unconfirmed_intent_and_never_twice() {
        let mut gw = Gateway::new();
        let pi = gw
            .create(create_req(Some("pm_card_visa"), false), 1, None)
            .unwrap_or_else(|e| panic!("{e:?}"));
        let confirmed = gw.confirm(
            ConfirmIntent {
                id: pi.id.clone(),
                payment_method: None,
            },
            Some("c1"),
        );
        assert_eq!(confirmed.map(|pi| pi.status), Ok(IntentStatus::Succeeded));
        let again = gw.confirm(
            ConfirmIntent {
                id: pi.id.clone(),
                payment_method: None,
            },
            Some("c2"),
        );
        let err = again.err().map(|e| (e.status, e.code()));
        assert_eq!(
            err,
            Some((
                StatusCode::BAD_REQUEST,
                Some("payment_intent_unexpected_state")
            ))
        );
        assert_eq!(gw.ledger().intents[0].times_charged, 1);
        assert_eq!(gw.ledger().intents[0].idempotency_keys, vec!["c1", "c2"]);
    }

    #[test]
    fn confirm_unknown_intent_is_404() {
        let mut gw = Gateway::new();
        let err = gw
            .confirm(
                ConfirmIntent {
                    id: "pi_nope".into(),
                    payment_method: None,
                },
                None,
            )
            .err()
            .map(|e| (e.status, e.code()));
        assert_eq!(err, Some((StatusCode::NOT_FOUND, Some("resource_missing"))));
    }

    #[test]
    fn decline_leaves_intent_requiring_a_payment_method() {
        let mut gw = Gateway::new();
        let err = gw
            .create(
                create_req(Some("pm_card_chargeDeclinedInsufficientFunds"), true),
                1,
                None,
            )
            .err()
            .unwrap_or_else(|| panic!("must decline"));
        assert_eq!(err.status, StatusCode::PAYMENT_REQUIRED);
        assert_eq!(err.error.decline_code, Some("insufficient_funds"));
        let intent = err.error.payment_intent.unwrap_or_default();
        assert_eq!(intent["status"], "requires_payment_method");
        assert_eq!(
            intent["last_payment_error"]["decline_code"],
            "insufficient_funds"
        );
        let ledger = gw.ledger();
        assert_eq!(ledger.intents.len(), 1);
        assert_eq!(ledger.totals.charges, 0);
        assert_eq!(ledger.totals.declines, 1);

        // Confirming again needs a new payment method; with one, it succeeds.
        let id = ledger.intents[0].id.clone();
        let missing = gw.confirm(
            ConfirmIntent {
                id: id.clone(),
                payment_method: None,
            },
            None,
        );
        assert_eq!(
            missing.err().and_then(|e| e.code()),
            Some("parameter_missing")
        );
        let ok = gw.confirm(
            ConfirmIntent {
                id,
                payment_method: Some(card("pm_card_mastercard")),
            },
            None,
        );
        let ok = ok.unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(ok.status, IntentStatus::Succeeded);
        assert_eq!(ok.last_payment_error, None);
        assert_eq!(gw.ledger().totals.charges, 1);
    }

    #[test]
    fn cancel_voids_only_open_intents() {
        let mut gw = Gateway::new();
        let open = gw
            .create(create_req(Some("pm_card_visa"), false), 1, None)
            .unwrap_or_else(|e| panic!("{e:?}"));
        let canceled = gw
            .cancel(
                CancelIntent {
                    id: open.id.clone(),
                    cancellation_reason: Some("abandoned"),
                },
                9,
                None,
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(canceled.status, IntentStatus::Canceled);
        assert_eq!(canceled.canceled_at, Some(9));
        for id in [open.id.clone(), paid(&mut gw)] {
            let err = gw.cancel(
                CancelIntent {
                    id,
                    cancellation_reason: None,
                },
                10,
                None,
            );
            assert_eq!(
                err.err().and_then(|e| e.code()),
                Some("payment_intent_unexpected_state")
            );
        }
        // A canceled intent cannot be confirmed either.
        let err = gw.confirm(
            ConfirmIntent {
                id: open.id,
                payment_method: None,
            },
            None,
        );
        assert_eq!(
            err.err().and_then(|e| e.code()),
            Some("payment_intent_unexpected_state")
        );
        assert_eq!(gw.ledger().totals.charges, 1);
    }

    #[test]
    fn refunds_never_exceed_the_charge() {
        let mut gw = Gateway::new();
        let id = paid(&mut gw);
        let part = gw.refund(refund_req(&id, Some(500)), 2, None);
        assert_eq!(part.map(|r| r.amount), Ok(500));
        let over = gw.refund(refund_req(&id, Some(1001)), 2, None);
        let over = over.err().map(|e| (e.code(), e.error.param));
        assert_eq!(
            over,
            Some((Some("amount_too_large"), Some("amount".to_owned())))
        );
        let rest = gw.refund(refund_req(&id, None), 2, None);
        assert_eq!(rest.map(|r| r.amount), Ok(1000));
        let done = gw.refund(refund_req(&id, Some(1)), 2, None);
        assert_eq!(
            done.err().and_then(|e| e.code()),
            Some("charge_already_refunded")
        );
        let ledger = gw.ledger();
        assert_eq!(ledger.intents[0].amount_refunded, 1500);
        assert_eq!(ledger.intents[0].refunds.len(), 2);
        assert_eq!(ledger.totals.refunds, 2);
        assert_eq!(ledger.totals.amount_refunded, 1500);
    }

    #[test]
    fn refunds_need_a_succeeded_intent() {
        let mut gw = Gateway::new();
        let open = gw
            .create(create_req(Some("pm_card_visa"), false), 1, None)
            .unwrap_or_else(|e| panic!("{e:?}"));
        let err = gw.refund(refund_req(&open.id, None), 2, None).err();
        assert_eq!(
            err.and_then(|e| e.code()),
            Some("payment_intent_unexpected_state")
        );
        let err = gw.refund(refund_req("pi_missing", None), 2, None).err();
        let err = err.map(|e| (e.status, e.code(), e.error.param));
        assert_eq!(
            err,
            Some((
                StatusCode::BAD_REQUEST,
                Some("resource_missing"),
                Some("payment_intent".to_owned())
            ))
        );
        assert_eq!(gw.ledger().totals.refunds, 0);
    }

    #[test]
    fn calls_are_counted_per_operation() {
        let mut gw = Gateway::new();
        for op in [Op::Create, Op::Create, Op::Get, Op::Refund] {
            gw.record_call(op);
        }
        let calls = gw.ledger().calls;
        assert_eq!(
            (calls.create, calls.get, calls.refund, calls.confirm),
            (2, 1, 1, 0)
        );
    }

    #[test]
    fn ledger_lists_intents_in_creation_order() {
        let mut gw = Gateway::new();
        let ids: Vec<String> = (0..5)
            .map(|i| {
                gw.create(create_req(None, false), 100 - i, None)
                    .map(|pi| pi.id)
                    .unwrap_or_default()
            })
            .collect();
        let listed: Vec<String> = gw.ledger().intents.into_iter().map(|i| i.id).collect();
        assert_eq!(listed, ids);
    }
}
