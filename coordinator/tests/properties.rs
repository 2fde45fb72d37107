//! Property tests of what the coordinator reads from outside: requests (CONTRACT §3) and its own
//! journal's records. Bounded (a few hundred cases each, seconds in all); proptest shrinks a
//! failure to a small input and prints it.
//!
//! The checks are those of the cargo-fuzz targets (fuzz/src/requests.rs, fuzz/src/journal.rs,
//! included here file for file), and the last tests replay every committed fuzz corpus file
//! through the same entry points: the bounded run of the fuzzers in the test suite.

#[allow(dead_code)] // shared with fuzz/: not every helper is used on this side
#[path = "../../fuzz/src/requests.rs"]
mod requests;

#[allow(dead_code)]
#[path = "../../fuzz/src/journal.rs"]
mod journal_record;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use coordinator::domain::operations::free_text;
use coordinator::domain::resolution::ReviewCause;
use coordinator::journal::{CorruptEntry, Entry, Journal, decode_record, encode_record};
use coordinator::store::{Fence, Finish};
use payments_proto::v1 as pb;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

// ---------------------------------------------------------------------------------------------
// Generators.

/// Arbitrary text: any Unicode, and text near the rules' edges.
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => any::<String>(),
        2 => "[A-Za-z0-9._:-]{1,64}",
        1 => "[A-Za-z0-9._:-]{63,66}",
        1 => "[ -~]{0,40}",
        1 => "[0-9 -]{10,26}",
        1 => "\\PC{0,20}",
        1 => Just(String::new()),
        1 => card().prop_map(|c| c.shape),
    ]
    .boxed()
}

fn id() -> BoxedStrategy<String> {
    prop_oneof![4 => "[A-Za-z0-9._:-]{1,64}", 1 => text()].boxed()
}

fn key() -> BoxedStrategy<String> {
    prop_oneof![
        4 => "\\PC{1,40}",
        1 => "\\PC{254,256}",
        1 => text(),
    ]
    .boxed()
}

fn amount_minor() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => 1..=99_999_999i64,
        1 => any::<i64>(),
        1 => select(vec![0, -1, 1, 99_999_999, 100_000_000, i64::MIN, i64::MAX]),
    ]
}

fn currency() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(vec!["EUR", "USD", "JPY", "KWD", "GBP"]).prop_map(str::to_owned),
        1 => "[A-Z]{3}",
        1 => select(vec!["eur", "Usd", "XXX", "XTS", "XAU", "", "EURO", "E U"]).prop_map(str::to_owned),
        1 => text(),
    ]
}

fn money() -> BoxedStrategy<pb::Money> {
    (amount_minor(), currency())
        .prop_map(|(amount_minor, currency)| pb::Money {
            amount_minor,
            currency,
        })
        .boxed()
}

fn payment_method() -> BoxedStrategy<String> {
    prop_oneof![
        3 => select(vec!["pm_card_visa", "pm_card_chargeDeclined"]).prop_map(str::to_owned),
        2 => card().prop_map(|c| c.shape),
        1 => "[0-9]{11,20}",
        1 => "\\PC{250,260}",
        1 => text(),
    ]
    .boxed()
}

fn item() -> BoxedStrategy<pb::LineItem> {
    let quantity = prop_oneof![4 => 1..=10_000i32, 1 => any::<i32>()];
    let unit = prop_oneof![4 => 0..=99_999_999i64, 1 => any::<i64>()];
    (id(), quantity, unit)
        .prop_map(|(product_id, quantity, unit_amount_minor)| pb::LineItem {
            product_id,
            quantity,
            unit_amount_minor,
        })
        .boxed()
}

fn items() -> BoxedStrategy<Vec<pb::LineItem>> {
    prop_oneof![
        8 => vec(item(), 0..4),
        1 => (99..=102usize).prop_map(|n| vec![pb::LineItem {
            product_id: "sku".into(),
            quantity: 1,
            unit_amount_minor: 1,
        }; n]),
    ]
    .boxed()
}

fn payment() -> impl Strategy<Value = pb::ProcessPaymentRequest> {
    (
        id(),
        prop::option::weighted(0.9, money()),
        id(),
        payment_method(),
        items(),
        key(),
        any::<bool>(),
    )
        .prop_map(
            |(order_id, amount, customer_id, payment_method, items, idempotency_key, wait)| {
                pb::ProcessPaymentRequest {
                    order_id,
                    amount,
                    customer_id,
                    payment_method,
                    items,
                    idempotency_key,
                    wait_for_outcome: wait,
                }
            },
        )
}

/// A valid payment, to change one field of.
fn valid_payment() -> pb::ProcessPaymentRequest {
    pb::ProcessPaymentRequest {
        order_id: "ord-1".into(),
        amount: Some(pb::Money {
            amount_minor: 1250,
            currency: "EUR".into(),
        }),
        customer_id: "cus-1".into(),
        payment_method: "pm_card_visa".into(),
        items: vec![pb::LineItem {
            product_id: "sku-1".into(),
            quantity: 1,
            unit_amount_minor: 1250,
        }],
        idempotency_key: "req-1".into(),
        wait_for_outcome: false,
    }
}

/// Free text as operators write it, with or without a card number in it.
fn free() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[A-Za-z0-9 ,.:#()\n-]{0,80}",
        2 => text(),
        2 => in_text(),
        1 => "\\PC{495,505}",
    ]
    .boxed()
}

// Card numbers in every shape.

/// A card number: its digits, and how it is written.
#[derive(Clone, Debug)]
struct Card {
    digits: String,
    shape: String,
}

/// 12–19 digits passing Luhn: random digits and the check digit that makes them pass.
fn card_digits() -> impl Strategy<Value = Vec<u8>> {
    (11..=18usize)
        .prop_flat_map(|n| vec(0..10u8, n))
        .prop_map(|mut digits| {
            let check = (0..10u8)
                .find(|&d| {
                    let mut all = digits.clone();
                    all.push(d);
                    requests::luhn(&all)
                })
                .expect("one check digit passes");
            digits.push(check);
            digits
        })
}

/// Separators a card number is written with: ASCII, Unicode spaces and dashes, invisible ones.
const SEPARATORS: &[&str] = &[
    " ", "-", " - ", "  ", "\t", "\u{a0}", "\u{2009}", "\u{202f}", "\u{3000}", "\u{2002}",
    "\u{2010}", "\u{2011}", "\u{2012}", "\u{2013}", "\u{2014}", "\u{2212}", "\u{fe63}", "\u{ff0d}",
    "\u{fe58}", "\u{2e3a}", "\u{301c}", "\u{30a0}", "\u{ad}", "\u{200b}", "\u{200d}", "\u{2060}",
    "\u{feff}", "\n",
];

fn card() -> BoxedStrategy<Card> {
    let groups = prop_oneof![
        Just(vec![4usize]),     // 4-4-4-4…
        Just(vec![4, 6, 5]),    // Amex
        Just(vec![100]),        // no separator at all
        Just(vec![1]),          // every digit apart
        vec(1..=5usize, 1..=6), // anything
    ];
    (
        card_digits(),
        groups,
        select(SEPARATORS),
        any::<bool>(), // one separator for all, or a new one each time
        vec(select(SEPARATORS), 20),
        prop_oneof![4 => Just(false), 1 => Just(true)], // full-width digits
        select(vec!["", " ", "  ", "\u{a0}"]),
    )
        .prop_map(|(digits, groups, sep, same, seps, wide, pad)| {
            let ascii: String = digits.iter().map(|d| char::from(b'0' + d)).collect();
            let mut shape = String::from(pad);
            let mut sizes = groups.iter().cycle();
            let mut left = 0;
            for (i, d) in digits.iter().enumerate() {
                if left == 0 {
                    if i > 0 {
                        shape.push_str(if same { sep } else { seps[i % seps.len()] });
                    }
                    left = *sizes.next().expect("cycle");
                }
                left -= 1;
                let base = if wide { 0xff10 } else { u32::from(b'0') };
                shape.push(char::from_u32(base + u32::from(*d)).expect("a digit"));
            }
            shape.push_str(pad);
            Card {
                digits: ascii,
                shape,
            }
        })
        .boxed()
}

/// A card number inside other text, kept apart from it by something that is not a digit (glued
/// to another digit it would be another number).
fn in_text() -> BoxedStrategy<String> {
    let around = prop_oneof![
        "[A-Za-z ,.:#()]{0,30}",
        "\\PC{0,20}",
        Just("order 12".to_owned()),
        Just("ref 2024 05 17".to_owned()),
    ];
    let boundary = select(vec![" ", ": ", "(", " #", "\n", "-", "card ", " x "]);
    (around.clone(), boundary.clone(), card(), boundary, around)
        .prop_map(|(before, b1, card, b2, after)| format!("{before}{b1}{}{b2}{after}", card.shape))
        .boxed()
}

// ---------------------------------------------------------------------------------------------
// Requests.

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Nothing is written to disk: a failure is printed, shrunk, with its seed.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(1000))]

    /// Any `ProcessPaymentRequest`: no panic; accepted exactly when every §3 rule holds.
    #[test]
    fn payment_requests_follow_the_contract(request in payment()) {
        requests::check_payment(&request);
    }

    /// Any `RefundPaymentRequest`.
    #[test]
    fn refund_requests_follow_the_contract(
        order_id in id(),
        amount in prop::option::of(money()),
        reason in free(),
        idempotency_key in key(),
    ) {
        requests::check_refund(&pb::RefundPaymentRequest { order_id, amount, reason, idempotency_key });
    }

    /// Any `ResolveManualReviewRequest`.
    #[test]
    fn resolve_requests_follow_the_contract(
        order_id in id(),
        resolution in prop_oneof![4 => 0..=4i32, 1 => any::<i32>()],
        refund_number in prop_oneof![2 => Just(0), 2 => 1..5i32, 1 => any::<i32>()],
        gateway_payment_id in prop_oneof![Just(String::new()), "pi_[A-Za-z0-9]{1,20}", " pi_1 ", text()],
        gateway_refund_id in prop_oneof![Just(String::new()), "re_[A-Za-z0-9]{1,20}", text()],
        note in free(),
    ) {
        requests::check_resolve(&pb::ResolveManualReviewRequest {
            order_id, resolution, gateway_payment_id, note, refund_number, gateway_refund_id,
        });
    }

    /// Operators' free text (refund reasons, review notes, pause reasons) and payment methods.
    #[test]
    fn free_text_follows_the_rules(text in free()) {
        requests::check_text(&text);
    }
}

proptest! {
    #![proptest_config(config(1000))]

    /// A card number in any shape as the payment method: refused, for that field alone, and
    /// never quoted.
    #[test]
    fn a_card_number_is_never_a_payment_method(card in card()) {
        let mut request = valid_payment();
        request.payment_method = card.shape.clone();
        let violations = coordinator::domain::PaymentRequest::parse(request)
            .expect_err("a card number was accepted as the payment method");
        prop_assert_eq!(violations.fields(), vec!["payment_method"]);
        let shown = format!("{violations} {violations:?}");
        prop_assert!(!shown.contains(&card.digits), "{}", shown);
        prop_assert!(!shown.contains(card.shape.trim()), "{}", shown);
        requests::assert_quotes_no_card(&violations, &[&card.shape]);
    }

    /// A card number anywhere in free text (a refund reason, a review note, a pause reason):
    /// refused, and never quoted.
    #[test]
    fn a_card_number_in_free_text_is_refused(text in in_text()) {
        let description = free_text(&text, true).expect_err("a card number in free text was accepted");
        let controls = text.trim().chars().any(|c| c.is_control() && c != '\n');
        prop_assert!(
            description.contains("card number") || (controls && description.contains("control")),
            "{}", description
        );
        let refund = pb::RefundPaymentRequest {
            order_id: "ord-1".into(),
            amount: None,
            reason: text.clone(),
            idempotency_key: "k-1".into(),
        };
        let violations = coordinator::domain::operations::RefundRequest::parse(refund)
            .expect_err("a refund reason with a card number was accepted");
        prop_assert_eq!(violations.fields(), vec!["reason"]);
        requests::assert_quotes_no_card(&violations, &[&text]);
        let resolve = pb::ResolveManualReviewRequest {
            order_id: "ord-1".into(),
            resolution: pb::Resolution::NotCharged.into(),
            note: text.clone(),
            ..Default::default()
        };
        let violations = coordinator::domain::operations::ResolveRequest::parse(resolve)
            .expect_err("a review note with a card number was accepted");
        prop_assert_eq!(violations.fields(), vec!["note"]);
        requests::assert_quotes_no_card(&violations, &[&text]);
    }
}

// ---------------------------------------------------------------------------------------------
// Journal records.

fn fence() -> impl Strategy<Value = Fence> {
    (id(), any::<i32>(), any::<i64>()).prop_map(|(order_id, attempt, token)| Fence {
        order_id,
        attempt,
        token,
    })
}

fn finish() -> BoxedStrategy<Finish> {
    let maybe = || prop::option::of(text());
    prop_oneof![
        text().prop_map(|intent_id| Finish::Succeeded { intent_id }),
        (maybe(), text(), text()).prop_map(|(intent_id, decline_code, message)| {
            Finish::Declined {
                intent_id,
                decline_code,
                message,
            }
        }),
        (maybe(), text()).prop_map(|(intent_id, reason)| Finish::Cancelled { intent_id, reason }),
        (select(ReviewCause::ALL.to_vec()), text())
            .prop_map(|(cause, reason)| Finish::Unknown { cause, reason }),
    ]
    .boxed()
}

/// Records as the journal writes them.
fn record() -> impl Strategy<Value = (Fence, Finish, String, String, Vec<u8>)> {
    (fence(), finish(), text(), text()).prop_map(|(fence, finish, actor, replica)| {
        let bytes = encode_record(&fence, &finish, &actor, &replica).expect("encodes");
        (fence, finish, actor, replica, bytes)
    })
}

/// Damage done to a stored value: a byte changed, bytes cut, inserted or removed.
#[derive(Clone, Debug)]
enum Damage {
    Set(usize, u8),
    Cut(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Damage::Set(at, b)),
        any::<usize>().prop_map(Damage::Cut),
        (any::<usize>(), vec(any::<u8>(), 1..8)).prop_map(|(at, b)| Damage::Insert(at, b)),
        (any::<usize>(), 1..16usize).prop_map(|(at, n)| Damage::Remove(at, n)),
    ]
}

fn apply(bytes: &[u8], damages: &[Damage]) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    for d in damages {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
        match d {
            Damage::Set(i, b) if !bytes.is_empty() => {
                let i = at(*i, bytes.len());
                bytes[i] = *b;
            }
            Damage::Set(..) => {}
            Damage::Cut(i) => bytes.truncate(at(*i, bytes.len() + 1)),
            Damage::Insert(i, b) => {
                let i = at(*i, bytes.len() + 1);
                bytes.splice(i..i, b.iter().copied());
            }
            Damage::Remove(i, n) => {
                let i = at(*i, bytes.len() + 1);
                let end = (i + n).min(bytes.len());
                bytes.drain(i..end);
            }
        }
    }
    bytes
}

proptest! {
    #![proptest_config(config(256))]

    /// Any bytes: an entry or a reported corruption, never a panic.
    #[test]
    fn any_bytes_decode_or_are_reported(bytes in prop_oneof![
        vec(any::<u8>(), 0..400),
        "\\PC{0,200}".prop_map(String::into_bytes),
    ]) {
        journal_record::run(&bytes);
    }

    /// Whatever is written reads back as written (any text, any numbers).
    #[test]
    fn records_round_trip((fence, finish, actor, replica, bytes) in record()) {
        let before = SystemTime::now() - Duration::from_secs(1);
        let entry = journal_record::check(&fence.order_id, fence.attempt, &bytes)
            .expect("a record as written decodes");
        prop_assert_eq!(&entry.fence, &fence);
        prop_assert_eq!(&entry.finish, &finish);
        prop_assert_eq!(&entry.actor, &actor);
        prop_assert_eq!(&entry.replica, &replica);
        prop_assert!(entry.journaled_at >= before && entry.journaled_at <= SystemTime::now());
    }

    /// Any single flipped bit of a record is detected.
    #[test]
    fn a_flipped_bit_is_detected((fence, _, _, _, bytes) in record(), bit in any::<usize>()) {
        let bit = bit % (bytes.len() * 8);
        journal_record::assert_flip_detected(&fence.order_id, fence.attempt, &bytes, bit);
    }

    /// A damaged record decodes to what was written or is reported: never to something else.
    #[test]
    fn damage_is_never_read_as_another_record(
        (fence, finish, actor, replica, bytes) in record(),
        damages in vec(damage(), 1..4),
    ) {
        let damaged = apply(&bytes, &damages);
        if let Ok(entry) = journal_record::check(&fence.order_id, fence.attempt, &damaged) {
            // Only a harmless change can pass (white space between JSON tokens, say).
            prop_assert_eq!(&entry.fence, &fence);
            prop_assert_eq!(&entry.finish, &finish);
            prop_assert_eq!(&entry.actor, &actor);
            prop_assert_eq!(&entry.replica, &replica);
        }
    }

    /// A record is read only under its own key.
    #[test]
    fn a_record_under_another_key_is_reported(
        (fence, _, _, _, bytes) in record(),
        other in id(),
        attempt in any::<i32>(),
    ) {
        prop_assume!(other != fence.order_id || attempt != fence.attempt);
        let corrupt = decode_record(&other, attempt, &bytes).expect_err("read under another key");
        prop_assert!(corrupt.reason.contains("wrong key"), "{}", corrupt.reason);
    }
}

// The reader: what `Journal::pending` makes of values stored by anyone (the drainer's input).

/// The journal's outcomes table, as journal.rs defines it: written here directly, bypassing
/// `Journal::record`, as a damaged disk or an older version would have left it.
const OUTCOMES: redb::TableDefinition<(&str, i32), &[u8]> = redb::TableDefinition::new("outcomes");

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let n: u64 = rand::random();
        let dir = std::env::temp_dir().join(format!("journal-prop-{name}-{n:016x}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn store_raw(dir: &Path, values: &[(String, i32, Vec<u8>)]) {
    let db = redb::Database::create(dir.join(coordinator::journal::FILE_NAME)).expect("redb");
    let tx = db.begin_write().expect("write");
    {
        let mut table = tx.open_table(OUTCOMES).expect("table");
        for (order_id, attempt, bytes) in values {
            table
                .insert((order_id.as_str(), *attempt), bytes.as_slice())
                .expect("insert");
        }
    }
    tx.commit().expect("commit");
}

/// A stored value: a good record, a damaged one, or garbage, under its key.
fn stored() -> impl Strategy<Value = (String, i32, Vec<u8>)> {
    prop_oneof![
        2 => record().prop_map(|(fence, _, _, _, bytes)| (fence.order_id, fence.attempt, bytes)),
        1 => (record(), vec(damage(), 1..3)).prop_map(|((fence, _, _, _, bytes), damages)| {
            (fence.order_id, fence.attempt, apply(&bytes, &damages))
        }),
        1 => (id(), any::<i32>(), vec(any::<u8>(), 0..64)),
    ]
}

proptest! {
    #![proptest_config(config(48))]

    /// Every stored value is reported by `pending`, as an entry or as a corruption, and a
    /// corrupt one is moved to quarantine byte for byte: nothing is skipped silently.
    #[test]
    fn the_reader_reports_every_record(values in vec(stored(), 0..8)) {
        let mut values = values;
        values.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        values.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
        let dir = TempDir::new("reader");
        store_raw(&dir.0, &values);
        let journal = Journal::open(&dir.0).expect("open");
        let pending = journal.pending().expect("pending");
        prop_assert_eq!(pending.len(), values.len(), "every record is reported");
        let key_of = |got: &Result<Entry, CorruptEntry>| match got {
            Ok(entry) => (entry.fence.order_id.clone(), entry.fence.attempt),
            Err(corrupt) => (corrupt.order_id.clone(), corrupt.attempt),
        };
        let mut good = 0;
        let mut bad = Vec::new();
        for (order_id, attempt, bytes) in &values {
            let got = pending
                .iter()
                .find(|got| key_of(got) == (order_id.clone(), *attempt))
                .unwrap_or_else(|| panic!("{order_id} {attempt} not reported"));
            match (decode_record(order_id, *attempt, bytes), got) {
                (Ok(expected), Ok(entry)) => {
                    journal_record::assert_same(&expected, entry);
                    good += 1;
                }
                (Err(_), Err(corrupt)) => {
                    prop_assert_eq!((&corrupt.order_id, corrupt.attempt), (order_id, *attempt));
                    prop_assert_eq!(corrupt.len, bytes.len());
                    bad.push((order_id.clone(), *attempt, bytes.len()));
                }
                (expected, got) => prop_assert!(false, "{expected:?} read as {got:?}"),
            }
        }
        let mut quarantined = journal.quarantined().expect("quarantined");
        quarantined.sort();
        bad.sort();
        prop_assert_eq!(quarantined, bad);
        prop_assert_eq!(journal.len().expect("len"), good);
        // A second pass finds only the good ones; nothing was lost or left behind.
        prop_assert_eq!(journal.pending().expect("pending").len() as u64, good);
    }
}

// ---------------------------------------------------------------------------------------------
// The committed fuzz corpora, replayed: every file through the fuzz target's own entry point.

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            let bytes = std::fs::read(&path).expect("corpus file");
            (path, bytes)
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "{}: only {} files",
        dir.display(),
        files.len()
    );
    files
}

fn replay(target: &str, run: fn(&[u8])) {
    for (path, bytes) in corpus(target) {
        if let Err(panic) = std::panic::catch_unwind(|| run(&bytes)) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            panic!("{} fails: {message}", path.display());
        }
    }
}

#[test]
fn the_request_validation_corpus_replays() {
    replay("request_validation", requests::run);
}

#[test]
fn the_journal_record_corpus_replays() {
    replay("journal_record", journal_record::run);
}

// ---------------------------------------------------------------------------------------------
// The seed corpora of request_validation and journal_record, written by hand here (fuzz/README.md:
// `cargo test -p coordinator --test properties -- --ignored write_seed_corpora`). The committed
// files are what the replay tests read; this only says where they came from.

fn seed_requests() -> Vec<(&'static str, Vec<u8>)> {
    use requests::{Kind, input};
    let pay = |change: fn(&mut pb::ProcessPaymentRequest)| {
        let mut request = valid_payment();
        change(&mut request);
        input(Kind::Payment, &prost::Message::encode_to_vec(&request))
    };
    let refund = |amount: Option<(i64, &str)>, reason: &str| {
        let request = pb::RefundPaymentRequest {
            order_id: "ord-1".into(),
            amount: amount.map(|(amount_minor, currency)| pb::Money {
                amount_minor,
                currency: currency.into(),
            }),
            reason: reason.into(),
            idempotency_key: "refund-1".into(),
        };
        input(Kind::Refund, &prost::Message::encode_to_vec(&request))
    };
    let resolve = |resolution: pb::Resolution, number: i32, pi: &str, re: &str, note: &str| {
        let request = pb::ResolveManualReviewRequest {
            order_id: "ord-1".into(),
            resolution: resolution.into(),
            gateway_payment_id: pi.into(),
            note: note.into(),
            refund_number: number,
            gateway_refund_id: re.into(),
        };
        input(Kind::Resolve, &prost::Message::encode_to_vec(&request))
    };
    let text = |t: &str| input(Kind::Text, t.as_bytes());
    vec![
        ("payment-valid", pay(|_| {})),
        ("payment-valid-wait", pay(|r| r.wait_for_outcome = true)),
        ("payment-no-items", pay(|r| r.items.clear())),
        (
            "payment-100-items",
            pay(|r| r.items = vec![r.items[0].clone(); 100]),
        ),
        (
            "payment-101-items",
            pay(|r| r.items = vec![r.items[0].clone(); 101]),
        ),
        ("payment-empty", input(Kind::Payment, &[])),
        ("payment-no-amount", pay(|r| r.amount = None)),
        (
            "payment-amount-zero",
            pay(|r| r.amount.as_mut().unwrap().amount_minor = 0),
        ),
        (
            "payment-amount-max",
            pay(|r| r.amount.as_mut().unwrap().amount_minor = 99_999_999),
        ),
        (
            "payment-amount-over",
            pay(|r| r.amount.as_mut().unwrap().amount_minor = 100_000_000),
        ),
        (
            "payment-amount-card",
            pay(|r| r.amount.as_mut().unwrap().amount_minor = 4_242_424_242_424_242),
        ),
        (
            "payment-currency-lower",
            pay(|r| r.amount.as_mut().unwrap().currency = "eur".into()),
        ),
        (
            "payment-currency-xxx",
            pay(|r| r.amount.as_mut().unwrap().currency = "XXX".into()),
        ),
        (
            "payment-currency-kwd",
            pay(|r| r.amount.as_mut().unwrap().currency = "KWD".into()),
        ),
        (
            "payment-ids-64",
            pay(|r| {
                r.order_id = "o".repeat(64);
                r.customer_id = "c".repeat(64);
            }),
        ),
        (
            "payment-ids-65",
            pay(|r| {
                r.order_id = "o".repeat(65);
                r.customer_id = "c".repeat(65);
            }),
        ),
        (
            "payment-ids-bad-chars",
            pay(|r| {
                r.order_id = "order 1".into();
                r.customer_id = "a/b".into();
            }),
        ),
        (
            "payment-key-unicode",
            pay(|r| r.idempotency_key = "clé 🔑 de requête".into()),
        ),
        (
            "payment-key-control",
            pay(|r| r.idempotency_key = "k\n1".into()),
        ),
        (
            "payment-key-256",
            pay(|r| r.idempotency_key = "k".repeat(256)),
        ),
        (
            "payment-item-bad",
            pay(|r| {
                r.items[0].quantity = 0;
                r.items[0].unit_amount_minor = -1;
                r.items[0].product_id = String::new();
            }),
        ),
        (
            "payment-method-256",
            pay(|r| r.payment_method = "p".repeat(256)),
        ),
        (
            "payment-method-control",
            pay(|r| r.payment_method = "pm_card\nvisa".into()),
        ),
        (
            "payment-card-plain",
            pay(|r| r.payment_method = "4242424242424242".into()),
        ),
        (
            "payment-card-spaced",
            pay(|r| r.payment_method = "4242 4242 4242 4242".into()),
        ),
        (
            "payment-card-dashed",
            pay(|r| r.payment_method = "4000-0566-5566-5556".into()),
        ),
        (
            "payment-card-amex",
            pay(|r| r.payment_method = "3782 822463 10005".into()),
        ),
        (
            "payment-card-nbsp",
            pay(|r| r.payment_method = "4242\u{a0}4242\u{a0}4242\u{a0}4242".into()),
        ),
        (
            "payment-card-en-dash",
            pay(|r| r.payment_method = "4242–4242–4242–4242".into()),
        ),
        (
            "payment-card-small-em-dash",
            pay(|r| r.payment_method = "4242\u{fe58}4242\u{fe58}4242\u{fe58}4242".into()),
        ),
        (
            "payment-card-zero-width",
            pay(|r| r.payment_method = "4242\u{200b}4242\u{200b}4242\u{200b}4242".into()),
        ),
        (
            "payment-card-full-width",
            pay(|r| r.payment_method = "４２４２４２４２４２４２４２４２".into()),
        ),
        (
            "payment-not-luhn",
            pay(|r| r.payment_method = "4242424242424241".into()),
        ),
        (
            "payment-11-digits",
            pay(|r| r.payment_method = "00000000000".into()),
        ),
        (
            "payment-20-digits",
            pay(|r| r.payment_method = "00000000000000000000".into()),
        ),
        ("refund-full", refund(None, "customer returned it")),
        (
            "refund-partial",
            refund(Some((500, "EUR")), "one night less"),
        ),
        ("refund-bad-amount", refund(Some((0, "XXQ")), " ")),
        (
            "refund-card-in-reason",
            refund(None, "card 4242 4242 4242 4242"),
        ),
        (
            "refund-card-after-number",
            refund(None, "ref 12 4242 4242 4242 4242"),
        ),
        (
            "refund-card-hyphens",
            refund(None, "paid with 4242‐4242‐4242‐4242"),
        ),
        ("refund-reason-501", refund(None, &"é".repeat(501))),
        (
            "refund-reason-lines",
            refund(None, "first line\nsecond line"),
        ),
        (
            "resolve-charged",
            resolve(
                pb::Resolution::Charged,
                0,
                "pi_123",
                "",
                "seen in the dashboard",
            ),
        ),
        (
            "resolve-not-charged",
            resolve(
                pb::Resolution::NotCharged,
                0,
                "",
                "",
                "nothing at the gateway",
            ),
        ),
        (
            "resolve-refunded",
            resolve(pb::Resolution::Refunded, 2, "", "re_9", "refund seen"),
        ),
        (
            "resolve-not-refunded",
            resolve(pb::Resolution::NotRefunded, 2, "", "", "no refund"),
        ),
        (
            "resolve-charged-no-id",
            resolve(pb::Resolution::Charged, 0, "", "", "x"),
        ),
        (
            "resolve-odd-id",
            resolve(pb::Resolution::Charged, 0, "pi_1; drop", "", "x"),
        ),
        (
            "resolve-refund-0",
            resolve(pb::Resolution::Refunded, 0, "", "re_1", "x"),
        ),
        (
            "resolve-negative-refund",
            resolve(pb::Resolution::NotRefunded, -1, "", "", "x"),
        ),
        (
            "resolve-unknown-resolution",
            resolve(pb::Resolution::Unspecified, 0, "", "", ""),
        ),
        (
            "resolve-card-in-note",
            resolve(
                pb::Resolution::NotCharged,
                0,
                "",
                "",
                "customer gave 4000 0566 5566 5556",
            ),
        ),
        ("text-plain", text("gateway incident, see ticket 1234")),
        ("text-card", text("4242424242424242")),
        (
            "text-card-full-width-in-text",
            text("カード ４２４２ ４２４２ ４２４２ ４２４２ です"),
        ),
        ("text-dates", text("2024-05-17 14:30, orders 1001 1002")),
        ("text-controls", text("a\u{7}b")),
        ("text-blank", text("   ")),
        ("text-lines", text("one\ntwo\r\nthree")),
    ]
}

fn seed_records() -> Vec<(&'static str, Vec<u8>)> {
    use journal_record::{ATTEMPT, ORDER_ID};
    let fence = Fence {
        order_id: ORDER_ID.into(),
        attempt: ATTEMPT,
        token: 7,
    };
    let encode = |finish: Finish, actor: &str| {
        encode_record(&fence, &finish, actor, "replica-a").expect("encodes")
    };
    let succeeded = encode(
        Finish::Succeeded {
            intent_id: "pi_1".into(),
        },
        "op-alice",
    );
    let text = String::from_utf8(succeeded.clone()).expect("utf-8");
    let other_key = encode_record(
        &Fence {
            order_id: "ord-other".into(),
            attempt: 2,
            token: 7,
        },
        &Finish::Succeeded {
            intent_id: "pi_1".into(),
        },
        "op",
        "replica-a",
    )
    .expect("encodes");
    vec![
        ("succeeded", succeeded.clone()),
        ("declined", encode(Finish::Declined {
            intent_id: Some("pi_2".into()),
            decline_code: "insufficient_funds".into(),
            message: "Your card has insufficient funds.".into(),
        }, "op-bob")),
        ("declined-no-intent", encode(Finish::Declined {
            intent_id: None,
            decline_code: "generic_decline".into(),
            message: String::new(),
        }, "op")),
        ("cancelled", encode(Finish::Cancelled { intent_id: Some("pi_3".into()), reason: "voided after a timeout".into() }, "recovery")),
        ("unknown", encode(Finish::Unknown { cause: ReviewCause::RunsExhausted, reason: "HTTP 500 after charging \"maybe\"\n\\ twice".into() }, "op")),
        ("unicode", encode(Finish::Unknown { cause: ReviewCause::NoCapability, reason: "réponse 🔥 \u{0} \u{1f} \u{feff}".into() }, "opérateur")),
        ("wrong-key", other_key),
        ("truncated", succeeded[..succeeded.len() / 2].to_vec()),
        ("checksum-mismatch", text.replace("pi_1", "pi_9").into_bytes()),
        ("version-2", text.replace("\"version\":1", "\"version\":2").into_bytes()),
        ("other-format", text.replace("payments.journal.outcome", "payments.journal.other").into_bytes()),
        ("spaced", text.replace("\",\"", "\", \"").into_bytes()),
        ("garbage", b"\x00\xff not json at all".to_vec()),
        ("empty", Vec::new()),
        ("json-array", b"[1,2,3]".to_vec()),
        ("envelope-bad-payload", br#"{"format":"payments.journal.outcome","version":1,"sha256":"ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb","payload":"a"}"#.to_vec()),
    ]
}

#[test]
#[ignore = "writes the seed corpora into fuzz/corpus (fuzz/README.md)"]
fn write_seed_corpora() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (target, seeds) in [
        ("request_validation", seed_requests()),
        ("journal_record", seed_records()),
    ] {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        for (name, bytes) in seeds {
            std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("seed");
        }
    }
}
