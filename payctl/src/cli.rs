//! The command line (clap derive): global flags and one subcommand per operator task.
//!
//! There is deliberately no flag for the API key: a flag lands in shell history and in `ps`.
//! The key comes from `PAYCTL_API_KEY` or from a file (`--key-file`, `PAYCTL_KEY_FILE`).

use std::{path::PathBuf, time::Duration};

use clap::{ArgGroup, Args, Parser, Subcommand};

const AFTER_HELP: &str = "\
The API key is read from the environment variable PAYCTL_API_KEY, or from the file named by
--key-file / PAYCTL_KEY_FILE (surrounding whitespace trimmed; the file must not be readable by
other users). There is no flag for the key itself, so it never lands in shell history.

Exit codes:
  0  success
  2  usage or local configuration error (bad flags, unreadable key file, bad amount)
  3  refused by the coordinator: invalid request, order busy / already paid / in review / not
     found, unauthenticated or forbidden, rate limited, payments paused
  4  failed: coordinator unreachable, its store unavailable, internal error, deadline exceeded
  5  `pay --wait`: the attempt ended without a charge (declined, cancelled) or in manual review";

#[derive(Debug, Parser)]
#[command(
    name = "payctl",
    version,
    about = "Operator CLI for the payment coordinator (public gRPC API only).",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// The coordinator's gRPC URL.
    #[arg(
        long,
        env = "PAYCTL_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true,
        help_heading = "Global options"
    )]
    pub server: String,

    /// A file holding the API key (instead of PAYCTL_API_KEY).
    #[arg(
        long,
        env = "PAYCTL_KEY_FILE",
        value_name = "PATH",
        global = true,
        help_heading = "Global options"
    )]
    pub key_file: Option<PathBuf>,

    /// TLS towards an https:// --server: CA bundle and client certificate (mTLS).
    #[command(flatten, next_help_heading = "TLS (an https:// --server)")]
    pub tls: payments_client::TlsFiles,

    /// Machine-readable output: one JSON document per command (one object per line for
    /// `watch`); errors as one JSON object on stderr.
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,

    /// Deadline of each unary call (e.g. 30s, 500ms, 2m). `pay --wait` returns the current state
    /// shortly before it, then keeps following the attempt.
    #[arg(
        long,
        default_value = "30s",
        value_parser = parse_duration,
        global = true,
        help_heading = "Global options"
    )]
    pub timeout: Duration,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Charge an order (ProcessPayment).
    Pay(PayArgs),
    /// Show an order with every attempt, its errors and refunds (GetOrder).
    Get { order_id: String },
    /// Follow one order (WatchOrder) or every order (WatchEvents, --all), live; resumes by
    /// itself after a dropped stream, and prints its cursor for `--after`.
    Watch(WatchArgs),
    /// List open manual reviews, every page (ListManualReviews).
    Reviews(ReviewsArgs),
    /// Record a decision on a manual review item: a payment in doubt, or a refund in doubt
    /// with --refund N (ResolveManualReview).
    Resolve(ResolveArgs),
    /// Refund a paid order, all of what is left or a part (RefundPayment). Running the same
    /// command again is safe: the default idempotency key is derived from what is asked.
    Refund(RefundArgs),
    /// Stop new payments; in-flight ones finish (PausePayments, admin).
    Pause {
        /// Why, shown to every refused caller.
        #[arg(long)]
        reason: String,
    },
    /// Accept new payments again: lifts an admin pause (ResumePayments, admin). An open
    /// circuit breaker closes by itself after a successful probe payment.
    Resume {
        /// Also close the gateway circuit breaker by hand (for a gateway known to be healthy).
        #[arg(long)]
        reset_breaker: bool,
    },
    /// Whether new payments are accepted, and if not why (GetPaymentsStatus).
    Status,
}

#[derive(Debug, Args)]
pub struct PayArgs {
    /// The order to charge.
    #[arg(long = "order", value_name = "ORDER_ID")]
    pub order_id: String,
    /// Integer minor units (1250 = 12.50 EUR), or a decimal with a point in major units
    /// (12.50), exact to the currency's exponent.
    #[arg(long)]
    pub amount: String,
    /// ISO 4217 code, e.g. EUR.
    #[arg(long)]
    pub currency: String,
    /// The paying customer.
    #[arg(long = "customer", value_name = "CUSTOMER_ID")]
    pub customer_id: String,
    /// A gateway payment method token such as pm_card_visa (never a card number).
    #[arg(long = "method", value_name = "TOKEN")]
    pub payment_method: String,
    /// A line item, repeatable: PRODUCT:QTY:UNIT_MINOR (e.g. sku-9:2:625).
    #[arg(long = "item", value_name = "PRODUCT:QTY:UNIT_MINOR")]
    pub items: Vec<String>,
    /// The payment's idempotency key (not the API key). Default: a new random UUID, printed
    /// on stderr so that the same payment can be retried with it (a retry with the same key
    /// joins the first request). A random default is safe here: an order is paid at most once,
    /// so a second run with a new key is refused while the first attempt is in flight, paid or
    /// in review, and never charges again.
    #[arg(long = "idempotency-key", value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Wait for the attempt's outcome and show it (exit 5 if it did not charge).
    #[arg(long)]
    pub wait: bool,
    /// When another attempt holds the order, follow it to its outcome without asking.
    #[arg(long)]
    pub watch_if_busy: bool,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("what").required(true).args(["order_id", "all"])))]
pub struct WatchArgs {
    /// The order to follow.
    pub order_id: Option<String>,
    /// Every order's events (WatchEvents; roles service and admin).
    #[arg(long)]
    pub all: bool,
    /// Resume after this cursor: the order's sequence, or with --all the global sequence.
    #[arg(long, default_value_t = 0, value_name = "SEQ")]
    pub after: i64,
    /// Stop once the order is paid, refunded or in manual review.
    #[arg(long, conflicts_with = "all")]
    pub until_terminal: bool,
}

#[derive(Debug, Args)]
pub struct ReviewsArgs {
    /// Items asked for per page (every page is read).
    #[arg(long, default_value_t = 50)]
    pub page_size: i32,
    /// Every detail as CSV, one row per item, for offline handling.
    #[arg(long, conflicts_with = "json")]
    pub csv: bool,
}

#[derive(Debug, Args)]
#[command(
    group(
        ArgGroup::new("decision")
            .required(true)
            .args(["charged", "not_charged", "refunded", "not_refunded"])
    ),
    after_help = RESOLVE_HELP
)]
pub struct ResolveArgs {
    pub order_id: String,
    /// The payment's money was taken: the order becomes PAID (needs --payment-id).
    #[arg(
        long,
        requires = "payment_id",
        conflicts_with = "refund",
        help_heading = "Decision"
    )]
    pub charged: bool,
    /// Nothing was taken by the payment: the order becomes payable again.
    #[arg(long, conflicts_with = "refund", help_heading = "Decision")]
    pub not_charged: bool,
    /// The refund (--refund N) was made by the gateway (needs --refund-id): it counts as
    /// refunded.
    #[arg(long, requires_all = ["refund", "refund_id"], help_heading = "Decision")]
    pub refunded: bool,
    /// Nothing was refunded by the refund (--refund N): the order may be refunded again.
    #[arg(long, requires = "refund", help_heading = "Decision")]
    pub not_refunded: bool,
    /// Resolve the order's refund number N (its outcome unknown) rather than its payment;
    /// `payctl reviews` shows it as "refund N".
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..))]
    pub refund: Option<i32>,
    /// The gateway's payment id (pi_…) of the charge found, with --charged.
    // (A `requires` pointing at a member of the decision group is satisfied by any other
    // member, which conflicts with it: clap's rule. So the other decisions are named.)
    #[arg(
        long,
        value_name = "PI",
        requires = "charged",
        conflicts_with_all = ["not_charged", "refunded", "not_refunded"]
    )]
    pub payment_id: Option<String>,
    /// The gateway's refund id (re_…) of the refund found, with --refunded.
    #[arg(
        long,
        value_name = "RE",
        requires = "refunded",
        conflicts_with_all = ["charged", "not_charged", "not_refunded"],
        value_parser = parse_refund_id
    )]
    pub refund_id: Option<String>,
    /// What was checked and why this decision (recorded with your key id).
    #[arg(long)]
    pub note: String,
}

const RESOLVE_HELP: &str = "\
Exactly one decision:
  payment in doubt:  --charged --payment-id pi_…   or   --not-charged
  refund N in doubt: --refund N --refunded --refund-id re_…   or   --refund N --not-refunded";

/// A gateway refund id: `re_…` (a payment id `pi_…` here is a mix-up, refused before any call).
fn parse_refund_id(text: &str) -> Result<String, String> {
    let id = text.trim();
    if id.len() > 3 && id.starts_with("re_") && !id.contains(char::is_whitespace) {
        Ok(id.to_owned())
    } else {
        Err(format!("`{text}` is not a gateway refund id (re_…)"))
    }
}

#[derive(Debug, Args)]
#[command(after_help = REFUND_HELP)]
pub struct RefundArgs {
    pub order_id: String,
    /// Part of the amount (same forms as `pay --amount`); default: everything not yet
    /// refunded.
    #[arg(long, requires = "currency")]
    pub amount: Option<String>,
    /// The order's currency, with --amount.
    #[arg(long, requires = "amount")]
    pub currency: Option<String>,
    /// Why (recorded with the refund, and part of the default idempotency key).
    #[arg(long)]
    pub reason: String,
    /// The refund's idempotency key (not the API key). Default: derived from what is asked
    /// (payctl-refund:ORDER:AMOUNT_MINOR|rest:CURRENCY:SHA256(REASON)[..16]) and printed, so
    /// running the very same command again (after a timeout, say) is safe: it replays the
    /// first refund and never refunds twice. To make a second refund identical to an earlier
    /// one on purpose, pass a new --idempotency-key.
    #[arg(long = "idempotency-key", value_name = "KEY")]
    pub idempotency_key: Option<String>,
}

const REFUND_HELP: &str = "\
Re-running the same command is safe: without --idempotency-key the key is derived from the
order, amount (in minor units, or \"rest\"), currency and reason, and printed on stderr, so a
second run (after a timeout, say) replays the first refund instead of refunding twice. An
operator who really wants a second, identical refund passes a new --idempotency-key.";

/// `30s`, `500ms`, `2m`, or plain seconds (`30`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 30s, 500ms or 2m"))?;
    let duration = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(format!("unknown unit `{unit}` (use ms, s or m)")),
    };
    if duration.is_zero() {
        return Err("the timeout must be above zero".to_owned());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn there_is_no_flag_for_the_api_key() {
        // Nor a `--key` alias of the idempotency key, which would be taken for the API key.
        let cli = Cli::command();
        let commands = std::iter::once(&cli).chain(cli.get_subcommands());
        for arg in commands.flat_map(|c| c.get_arguments()) {
            let longs = arg
                .get_long_and_visible_aliases()
                .into_iter()
                .flatten()
                .chain(arg.get_all_aliases().into_iter().flatten());
            for long in longs {
                assert!(
                    !["key", "api-key", "token"].contains(&long),
                    "--{long} would be taken for the API key"
                );
            }
        }
    }

    #[test]
    fn resolve_takes_exactly_one_decision() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied());
        assert!(parse(&["payctl", "resolve", "o-1", "--note", "n"]).is_err());
        assert!(
            parse(&[
                "payctl",
                "resolve",
                "o-1",
                "--charged",
                "--not-charged",
                "--note",
                "n"
            ])
            .is_err()
        );
        assert!(parse(&["payctl", "resolve", "o-1", "--charged", "--note", "n"]).is_err());
        assert!(
            parse(&[
                "payctl",
                "resolve",
                "o-1",
                "--charged",
                "--payment-id",
                "pi_1",
                "--note",
                "n"
            ])
            .is_ok()
        );
        assert!(parse(&["payctl", "resolve", "o-1", "--not-charged"]).is_err());
        assert!(parse(&["payctl", "resolve", "o-1", "--not-charged", "--note", "n"]).is_ok());
    }

    #[test]
    fn watch_needs_an_order_or_all() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied());
        assert!(parse(&["payctl", "watch"]).is_err());
        assert!(parse(&["payctl", "watch", "o-1", "--all"]).is_err());
        assert!(parse(&["payctl", "watch", "--all", "--until-terminal"]).is_err());
        assert!(parse(&["payctl", "watch", "--all", "--after", "7"]).is_ok());
        assert!(parse(&["payctl", "watch", "o-1", "--until-terminal"]).is_ok());
    }
}
