//! Parameter parsing and validation: Stripe's form encoding (with `metadata[key]` brackets) into
//! typed commands. Everything refused here is refused before executing, so it is never saved
//! under an idempotency key and changes nothing.

use std::collections::BTreeMap;

use super::errors::ApiError;
use super::state::{
    CancelIntent, Command, ConfirmIntent, CreateIntent, CreateRefund, Op, TestCard,
};

/// Stripe's maximum amount in minor units (999,999.99 in a two-decimal currency).
pub const MAX_AMOUNT: u64 = 99_999_999;

const MAX_METADATA_KEYS: usize = 50;
const MAX_METADATA_KEY_CHARS: usize = 40;
const MAX_METADATA_VALUE_CHARS: usize = 500;
const MAX_DESCRIPTION_CHARS: usize = 1000;

/// ISO 4217 codes, lower-case as Stripe writes them.
const CURRENCIES: &[&str] = &[
    "aed", "afn", "all", "amd", "ang", "aoa", "ars", "aud", "awg", "azn", "bam", "bbd", "bdt",
    "bgn", "bhd", "bif", "bmd", "bnd", "bob", "brl", "bsd", "btn", "bwp", "byn", "bzd", "cad",
    "cdf", "chf", "clp", "cny", "cop", "crc", "cup", "cve", "czk", "djf", "dkk", "dop", "dzd",
    "egp", "ern", "etb", "eur", "fjd", "fkp", "gbp", "gel", "ghs", "gip", "gmd", "gnf", "gtq",
    "gyd", "hkd", "hnl", "htg", "huf", "idr", "ils", "inr", "iqd", "irr", "isk", "jmd", "jod",
    "jpy", "kes", "kgs", "khr", "kmf", "kpw", "krw", "kwd", "kyd", "kzt", "lak", "lbp", "lkr",
    "lrd", "lsl", "lyd", "mad", "mdl", "mga", "mkd", "mmk", "mnt", "mop", "mru", "mur", "mvr",
    "mwk", "mxn", "myr", "mzn", "nad", "ngn", "nio", "nok", "npr", "nzd", "omr", "pab", "pen",
    "pgk", "php", "pkr", "pln", "pyg", "qar", "ron", "rsd", "rub", "rwf", "sar", "sbd", "scr",
    "sdg", "sek", "sgd", "shp", "sle", "sos", "srd", "ssp", "stn", "syp", "szl", "thb", "tjs",
    "tmt", "tnd", "top", "try", "ttd", "twd", "tzs", "uah", "ugx", "usd", "uyu", "uzs", "ves",
    "vnd", "vuv", "wst", "xaf", "xcd", "xof", "xpf", "yer", "zar", "zmw", "zwl",
];

const CANCELLATION_REASONS: &[&str] = &[
    "duplicate",
    "fraudulent",
    "requested_by_customer",
    "abandoned",
];
const REFUND_REASONS: &[&str] = &["duplicate", "fraudulent", "requested_by_customer"];

/// A request's parameters (query string and form body together), each name at most once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params {
    map: BTreeMap<String, String>,
}

impl Params {
    pub fn parse(query: Option<&str>, body: &[u8]) -> Result<Self, ApiError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        if let Some(query) = query {
            pairs.extend(decode(query.as_bytes())?);
        }
        pairs.extend(decode(body)?);
        let mut map = BTreeMap::new();
        for (name, value) in pairs {
            if map.contains_key(&name) {
                return Err(ApiError::parameter_invalid(
                    &name,
                    format!("Received the parameter {name} more than once."),
                ));
            }
            map.insert(name, value);
        }
        Ok(Self { map })
    }

    /// Method, path and parameters, independent of the order the parameters were sent in: two
    /// requests are "the same request" for idempotency exactly when their fingerprints match.
    pub fn fingerprint(&self, method: &str, path: &str) -> String {
        // Debug of a BTreeMap of strings is sorted and quotes/escapes every string: unambiguous.
        format!("{method} {path} {:?}", self.map)
    }

    /// Validates the parameters for `op`; `id` is the `{id}` path segment where there is one.
    pub fn command(&self, op: Op, id: Option<String>) -> Result<Command, ApiError> {
        let mut reader = Reader {
            rest: self
                .map
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
        };
        let id = id.unwrap_or_default();
        match op {
            Op::Create => {
                let amount = reader.take("amount");
                let currency = reader.take("currency");
                let payment_method = reader.take("payment_method");
                let confirm = reader.take("confirm");
                let description = reader.take("description");
                let metadata = reader.take_metadata();
                reader.finish()?;
                let amount = parse_amount("amount", required("amount", amount)?)?;
                let currency = parse_currency(required("currency", currency)?)?;
                let payment_method = optional(payment_method)
                    .map(parse_payment_method)
                    .transpose()?;
                let confirm = optional(confirm)
                    .map(|v| parse_bool("confirm", v))
                    .transpose()?
                    .unwrap_or(false);
                let description = optional(description).map(parse_description).transpose()?;
                let metadata = parse_metadata(metadata)?;
                if confirm && payment_method.is_none() {
                    return Err(ApiError::parameter_missing("payment_method"));
                }
                Ok(Command::Create(CreateIntent {
                    amount,
                    currency,
                    payment_method,
                    confirm,
                    metadata,
                    description,
                }))
            }
            Op::Confirm => {
                let payment_method = reader.take("payment_method");
                reader.finish()?;
                let payment_method = optional(payment_method)
                    .map(parse_payment_method)
                    .transpose()?;
                Ok(Command::Confirm(ConfirmIntent { id, payment_method }))
            }
            Op::Get => {
                reader.finish()?;
                Ok(Command::Get { id })
            }
            Op::Cancel => {
                let reason = reader.take("cancellation_reason");
                reader.finish()?;
                let cancellation_reason = optional(reason)
                    .map(|v| parse_enum("cancellation_reason", v, CANCELLATION_REASONS))
                    .transpose()?;
                Ok(Command::Cancel(CancelIntent {
                    id,
                    cancellation_reason,
                }))
            }
            Op::Refund => {
                let payment_intent = reader.take("payment_intent");
                let amount = reader.take("amount");
                let reason = reader.take("reason");
                let metadata = reader.take_metadata();
                reader.finish()?;
                let payment_intent = required("payment_intent", payment_intent)?.to_owned();
                let amount = optional(amount)
                    .map(|v| parse_amount("amount", v))
                    .transpose()?;
                let reason = optional(reason)
                    .map(|v| parse_enum("reason", v, REFUND_REASONS))
                    .transpose()?;
                let metadata = parse_metadata(metadata)?;
                Ok(Command::Refund(CreateRefund {
                    payment_intent,
                    amount,
                    reason,
                    metadata,
                }))
            }
        }
    }
}

fn decode(bytes: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_bytes(bytes).map_err(|_| {
        ApiError::bad_request(
            "Invalid request: the body must be application/x-www-form-urlencoded UTF-8.",
        )
    })
}

/// The parameters not yet consumed; whatever is left at `finish` is unknown.
struct Reader<'a> {
    rest: BTreeMap<&'a str, &'a str>,
}

impl<'a> Reader<'a> {
    fn take(&mut self, name: &str) -> Option<&'a str> {
        self.rest.remove(name)
    }

    /// `metadata` and every `metadata[...]`, validated later by `parse_metadata`.
    fn take_metadata(&mut self) -> Vec<(&'a str, &'a str)> {
        let names: Vec<&'a str> = self
            .rest
            .keys()
            .copied()
            .filter(|name| *name == "metadata" || name.starts_with("metadata["))
            .collect();
        names
            .into_iter()
            .filter_map(|name| self.rest.remove(name).map(|value| (name, value)))
            .collect()
    }

    fn finish(self) -> Result<(), ApiError> {
        match self.rest.keys().next() {
            Some(name) => Err(ApiError::parameter_unknown(name)),
            None => Ok(()),
        }
    }
}

fn required<'a>(name: &str, value: Option<&'a str>) -> Result<&'a str, ApiError> {
    match value {
        None => Err(ApiError::parameter_missing(name)),
        Some("") => Err(ApiError::parameter_invalid_empty(name)),
        Some(value) => Ok(value),
    }
}

/// Stripe reads an empty value as "unset": for an optional parameter, the same as absent.
fn optional(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.is_empty())
}

fn parse_amount(name: &str, value: &str) -> Result<u64, ApiError> {
    let is_integer = {
        let digits = value.strip_prefix('-').unwrap_or(value);
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
    };
    if !is_integer {
        return Err(ApiError::parameter_invalid_integer(name));
    }
    if value.starts_with('-') || value.bytes().all(|b| b == b'0') {
        return Err(ApiError::amount_too_small(name));
    }
    match value.parse::<u64>() {
        Ok(amount) if amount <= MAX_AMOUNT => Ok(amount),
        _ => Err(ApiError::amount_too_large(
            name,
            format!("Amount must be no more than {MAX_AMOUNT} (in the currency's minor units)."),
        )),
    }
}

fn parse_currency(value: &str) -> Result<String, ApiError> {
    if CURRENCIES.contains(&value) {
        Ok(value.to_owned())
    } else {
        Err(ApiError::parameter_invalid(
            "currency",
            format!(
                "Invalid currency: {}. Give a lower-case ISO 4217 code such as 'eur' or 'usd'.",
                value.chars().take(16).collect::<String>()
            ),
        ))
    }
}

fn parse_bool(name: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ApiError::parameter_invalid(
            name,
            format!("Invalid boolean for {name}: it must be true or false."),
        )),
    }
}

fn parse_enum(name: &str, value: &str, allowed: &[&'static str]) -> Result<&'static str, ApiError> {
    allowed
        .iter()
        .copied()
        .find(|a| *a == value)
        .ok_or_else(|| {
            ApiError::parameter_invalid(
                name,
                format!("Invalid {name}: must be one of {}.", allowed.join(", ")),
            )
        })
}

fn parse_description(value: &str) -> Result<String, ApiError> {
    if value.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(ApiError::parameter_invalid(
            "description",
            format!("Invalid description: must be at most {MAX_DESCRIPTION_CHARS} characters."),
        ));
    }
    Ok(value.to_owned())
}

fn parse_payment_method(value: &str) -> Result<TestCard, ApiError> {
    TestCard::from_id(value).ok_or_else(|| {
        // Echo the value only when it is plainly a token: a caller that sent a card number by
        // mistake must not see it reflected (and logged) anywhere.
        let token_like = value.len() <= 100
            && value.starts_with("pm_")
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        let message = if token_like {
            format!("No such PaymentMethod: '{value}'")
        } else {
            "No such PaymentMethod.".to_owned()
        };
        ApiError::no_such_param_object("payment_method", message)
    })
}

fn parse_metadata(pairs: Vec<(&str, &str)>) -> Result<BTreeMap<String, String>, ApiError> {
    let mut metadata = BTreeMap::new();
    for (name, value) in pairs {
        if name == "metadata" {
            // `metadata=` unsets everything; any other plain value is not an object.
            if value.is_empty() {
                continue;
            }
            return Err(ApiError::parameter_invalid(
                "metadata",
                "Invalid object: metadata must be given as metadata[key]=value.",
            ));
        }
        let key = name
            .strip_prefix("metadata[")
            .and_then(|rest| rest.strip_suffix(']'))
            .filter(|key| !key.is_empty() && !key.contains(['[', ']']))
            .ok_or_else(|| {
                ApiError::parameter_invalid(
                    name,
                    "Invalid metadata key: use metadata[key]=value with a plain key.",
                )
            })?;
        if key.chars().count() > MAX_METADATA_KEY_CHARS {
            return Err(ApiError::parameter_invalid(
                name,
                format!("Metadata keys can be at most {MAX_METADATA_KEY_CHARS} characters long."),
            ));
        }
        if value.chars().count() > MAX_METADATA_VALUE_CHARS {
            return Err(ApiError::parameter_invalid(
                name,
                format!(
                    "Metadata values can be at most {MAX_METADATA_VALUE_CHARS} characters long."
                ),
            ));
        }
        if !value.is_empty() {
            metadata.insert(key.to_owned(), value.to_owned());
        }
    }
    if metadata.len() > MAX_METADATA_KEYS {
        return Err(ApiError::parameter_invalid(
            "metadata",
            format!("Metadata can have at most {MAX_METADATA_KEYS} keys."),
        ));
    }
    Ok(metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Params {
        Params::parse(None, body.as_bytes()).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn create(body: &str) -> Result<CreateIntent, (Option<&'static str>, Option<String>)> {
        match parse(body).command(Op::Create, None) {
            Ok(Command::Create(req)) => Ok(req),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err((e.code(), e.error.param)),
        }
    }

    fn err(
        code: Option<&'static str>,
        param: &str,
    ) -> Result<CreateIntent, (Option<&'static str>, Option<String>)> {
        Err((code, Some(param.to_owned())))
    }

    #[test]
    fn create_with_brackets_and_confirm() {
        let req = create(
            "amount=1500&currency=eur&payment_method=pm_card_visa&confirm=true\
             &metadata%5Border_id%5D=o-1&metadata[attempt]=2&description=Two%20seats",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(req.amount, 1500);
        assert_eq!(req.currency, "eur");
        assert!(req.confirm);
        assert_eq!(req.payment_method.map(|c| c.id), Some("pm_card_visa"));
        assert_eq!(req.description.as_deref(), Some("Two seats"));
        let expected = BTreeMap::from([
            ("attempt".to_owned(), "2".to_owned()),
            ("order_id".to_owned(), "o-1".to_owned()),
        ]);
        assert_eq!(req.metadata, expected);
    }

    #[test]
    fn create_errors_name_the_parameter() {
        assert_eq!(
            create("currency=eur"),
            err(Some("parameter_missing"), "amount")
        );
        assert_eq!(
            create("amount=&currency=eur"),
            err(Some("parameter_invalid_empty"), "amount")
        );
        assert_eq!(
            create("amount=12.5&currency=eur"),
            err(Some("parameter_invalid_integer"), "amount")
        );
        assert_eq!(
            create("amount=abc&currency=eur"),
            err(Some("parameter_invalid_integer"), "amount")
        );
        assert_eq!(
            create("amount=0&currency=eur"),
            err(Some("amount_too_small"), "amount")
        );
        assert_eq!(
            create("amount=-5&currency=eur"),
            err(Some("amount_too_small"), "amount")
        );
        assert_eq!(
            create("amount=100000000&currency=eur"),
            err(Some("amount_too_large"), "amount")
        );
        assert_eq!(
            create("amount=99999999999999999999999&currency=eur"),
            err(Some("amount_too_large"), "amount")
        );
        assert!(create("amount=99999999&currency=eur").is_ok());
        assert_eq!(
            create("amount=1"),
            err(Some("parameter_missing"), "currency")
        );
        assert_eq!(create("amount=1&currency=xyz"), err(None, "currency"));
        assert_eq!(create("amount=1&currency=EUR"), err(None, "currency"));
        assert_eq!(
            create("amount=1&currency=eur&confirm=yes"),
            err(None, "confirm")
        );
        assert_eq!(
            create("amount=1&currency=eur&colour=red"),
            err(Some("parameter_unknown"), "colour")
        );
        assert_eq!(
            create("amount=1&currency=eur&payment_method=pm_card_nope"),
            err(Some("resource_missing"), "payment_method")
        );
        assert_eq!(
            create("amount=1&currency=eur&confirm=true"),
            err(Some("parameter_missing"), "payment_method")
        );
        assert_eq!(
            create("amount=1&currency=eur&metadata[a][b]=c"),
            err(None, "metadata[a][b]")
        );
        assert_eq!(
            create("amount=1&currency=eur&metadata=x"),
            err(None, "metadata")
        );
        assert_eq!(
            create("amount=1&currency=eur&metadata_x=1"),
            err(Some("parameter_unknown"), "metadata_x")
        );
    }

    #[test]
    fn unknown_parameters_are_reported_before_bad_values() {
        assert_eq!(
            create("amount=abc&zzz=1"),
            err(Some("parameter_unknown"), "zzz")
        );
    }

    #[test]
    fn duplicate_parameters_are_refused() {
        let e = Params::parse(None, b"amount=1&amount=2").err();
        assert_eq!(e.and_then(|e| e.error.param), Some("amount".to_owned()));
        let e = Params::parse(Some("amount=1"), b"amount=1").err();
        assert!(e.is_some());
    }

    #[test]
    fn card_numbers_are_never_echoed() {
        let e = create("amount=1&currency=eur&payment_method=4242424242424242");
        assert_eq!(e, err(Some("resource_missing"), "payment_method"));
        let e = parse("amount=1&currency=eur&payment_method=4242424242424242")
            .command(Op::Create, None)
            .err()
            .map(|e| e.error.message)
            .unwrap_or_default();
        assert!(!e.contains("4242"), "{e}");
    }

    #[test]
    fn fingerprint_ignores_order_but_not_values_or_path() {
        let a = parse("amount=1&currency=eur").fingerprint("POST", "/v1/payment_intents");
        let b = parse("currency=eur&amount=1").fingerprint("POST", "/v1/payment_intents");
        let c = parse("currency=eur&amount=2").fingerprint("POST", "/v1/payment_intents");
        let d = parse("amount=1&currency=eur").fingerprint("POST", "/v1/refunds");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        // No ambiguity from separators inside values.
        let e = parse("a=1%26b%3D2").fingerprint("POST", "/x");
        let f = parse("a=1&b=2").fingerprint("POST", "/x");
        assert_ne!(e, f);
    }

    #[test]
    fn other_operations() {
        let p = parse("payment_method=pm_card_amex");
        assert!(matches!(
            p.command(Op::Confirm, Some("pi_1".into())),
            Ok(Command::Confirm(ConfirmIntent {
                payment_method: Some(_),
                ..
            }))
        ));
        let p = parse("cancellation_reason=abandoned");
        assert!(matches!(
            p.command(Op::Cancel, Some("pi_1".into())),
            Ok(Command::Cancel(CancelIntent {
                cancellation_reason: Some("abandoned"),
                ..
            }))
        ));
        let bad = parse("cancellation_reason=bored").command(Op::Cancel, Some("pi_1".into()));
        assert_eq!(
            bad.err().and_then(|e| e.error.param),
            Some("cancellation_reason".into())
        );
        let refund = parse("payment_intent=pi_1&amount=5&reason=duplicate&metadata[x]=y")
            .command(Op::Refund, None);
        assert!(matches!(
            refund,
            Ok(Command::Refund(CreateRefund {
                amount: Some(5),
                reason: Some("duplicate"),
                ..
            }))
        ));
        let missing = parse("amount=5").command(Op::Refund, None);
        assert_eq!(
            missing.err().and_then(|e| e.error.param),
            Some("payment_intent".into())
        );
        let get = parse("expand[]=x").command(Op::Get, Some("pi_1".into()));
        assert_eq!(get.err().and_then(|e| e.code()), Some("parameter_unknown"));
    }
}
