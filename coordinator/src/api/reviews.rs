//! `ListManualReviews` and `ResolveManualReview`: what the coordinator could not decide, and the
//! operators' decisions on it.
//!
//! A decision is checked against the gateway whenever the gateway can be asked (lookup
//! capability): "charged" must name a succeeded charge of this order's amount, and "not charged"
//! must not contradict a charge the attempt is known to have made. The gateway's word beats a
//! reviewer's typo; when the gateway cannot be asked, the reviewer's word is recorded as such.

use std::time::{Duration, UNIX_EPOCH};

use gateway_client::{IntentStatus, Outcome};
use payments_proto::v1 as pb;
use tonic::{Request, Response};

use super::{Coordinator, convert, payments::caller};
use crate::domain::operations::{ResolveRequest, page_size};
use crate::domain::{Resolution, Violations};
use crate::error::Error;
use crate::store::{AttemptRecord, Decision, OrderRecord, Resolve, ReviewCursor, ReviewRecord};

/// History steps that are the coordinator's own resolution actions.
const ACTION_STEPS: [&str; 4] = ["lookup", "replay", "cancel", "recovery"];

impl Coordinator {
    pub(super) async fn list_manual_reviews_impl(
        &self,
        request: Request<pb::ListManualReviewsRequest>,
    ) -> Result<Response<pb::ListManualReviewsResponse>, Error> {
        let _caller = caller(&request)?;
        let pb::ListManualReviewsRequest {
            page_size: size,
            page_token,
        } = request.into_inner();
        let mut v = Violations::new();
        let size = v.check("page_size", page_size(size).map_err(|e| describe(&e)));
        let after = v.check("page_token", parse_token(&page_token));
        let (Some(size), Some(after)) = (size, after) else {
            return Err(Error::InvalidRequest(v));
        };
        // One more than asked: whether there is a next page, without a count query.
        let mut items = self.store.open_reviews(after.as_ref(), size + 1).await?;
        let more = items.len() as i64 > size;
        items.truncate(usize::try_from(size).unwrap_or(0));
        let next_page_token = match (more, items.last()) {
            (true, Some(last)) => token(&ReviewCursor {
                opened_at: last.opened_at,
                order_id: last.order.order_id.clone(),
            }),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListManualReviewsResponse {
            items: items.iter().map(review_item).collect(),
            next_page_token,
        }))
    }

    pub(super) async fn resolve_manual_review_impl(
        &self,
        request: Request<pb::ResolveManualReviewRequest>,
    ) -> Result<Response<pb::Order>, Error> {
        let caller = caller(&request)?;
        let req = ResolveRequest::parse(request.into_inner())?;
        self.resolve(&caller.id, req).await
    }

    #[tracing::instrument(
        name = "ResolveManualReview",
        skip_all,
        fields(order_id = %req.order_id, reviewer = %by, replica = %self.replica, resolution = %req.resolution)
    )]
    async fn resolve(&self, by: &str, req: ResolveRequest) -> Result<Response<pb::Order>, Error> {
        let order_id = req.order_id.as_str();
        let order = self
            .store
            .get_order(order_id)
            .await?
            .ok_or_else(|| Error::OrderNotFound {
                order_id: order_id.to_owned(),
            })?;
        let Some(open) = order.attempts.iter().rev().find(|a| {
            a.outcome == crate::domain::AttemptOutcome::Unknown && a.resolution.is_none()
        }) else {
            let resolved_by = order
                .attempts
                .iter()
                .rev()
                .find_map(|a| a.resolution.as_ref().map(|d| d.by.clone()));
            return Err(Error::NotInManualReview {
                order_id: order_id.to_owned(),
                state: order.state,
                resolved_by,
            });
        };
        let verified = self.verify(&order, open, &req).await?;
        let detail = format!(
            "resolved {} by {by}{}{}: {}",
            match req.resolution {
                Resolution::Charged => "as charged",
                Resolution::NotCharged => "as not charged",
            },
            req.gateway_payment_id
                .as_deref()
                .map(|id| format!(" ({id})"))
                .unwrap_or_default(),
            verified,
            req.note
        );
        let decision = Decision {
            resolution: req.resolution,
            gateway_payment_id: req.gateway_payment_id.as_deref(),
            note: &req.note,
            by,
            detail: &detail,
            attempt: Some(open.number),
        };
        match self.store.resolve_review(order_id, &decision).await? {
            Resolve::Resolved { .. } => {
                self.feed.nudge();
            }
            Resolve::NotInReview { state, resolved_by } => {
                return Err(Error::NotInManualReview {
                    order_id: order_id.to_owned(),
                    state,
                    resolved_by,
                });
            }
            Resolve::NotFound => {
                return Err(Error::OrderNotFound {
                    order_id: order_id.to_owned(),
                });
            }
        }
        let order =
            self.store.get_order(order_id).await?.ok_or_else(|| {
                Error::Internal(format!("order {order_id} vanished after resolving"))
            })?;
        Ok(Response::new(convert::order(&order)))
    }

    /// Checks the decision against the gateway when it can be asked; returns what was verified,
    /// for the event's detail.
    async fn verify(
        &self,
        order: &OrderRecord,
        open: &AttemptRecord,
        req: &ResolveRequest,
    ) -> Result<&'static str, Error> {
        if !self.runner.gateway.capabilities().may_lookup() {
            return Ok(", not verified (the gateway has no lookup)");
        }
        let contradicted = |detail: String| Error::ResolutionContradicted {
            order_id: order.order_id.clone(),
            detail,
        };
        let id = match (
            req.resolution,
            &req.gateway_payment_id,
            &open.gateway_payment_id,
        ) {
            (Resolution::Charged, Some(id), _) => id.clone(),
            // Not charged, and the attempt knows its intent: that intent must not have charged.
            (Resolution::NotCharged, _, Some(known)) => known.clone(),
            (Resolution::NotCharged, _, None) => {
                return Ok(", not verified (the attempt's intent id is unknown)");
            }
            (Resolution::Charged, None, _) => {
                return Err(Error::InvalidRequest(Violations::single(
                    "gateway_payment_id",
                    "is required with RESOLUTION_CHARGED",
                )));
            }
        };
        let reply = self.runner.gateway.get_intent(&id).await;
        let intent = match reply.outcome {
            Outcome::Succeeded(intent) => intent,
            Outcome::Rejected { status: 404, .. } => {
                return match req.resolution {
                    Resolution::Charged => {
                        Err(contradicted(format!("the gateway knows no payment {id}")))
                    }
                    Resolution::NotCharged => Ok(", verified: the gateway knows no such intent"),
                };
            }
            Outcome::Rejected {
                status, message, ..
            } => {
                return Err(contradicted(format!(
                    "the gateway refused to show {id} ({status}: {message})"
                )));
            }
            other => {
                return Err(Error::GatewayUnavailable {
                    detail: format!("looking up {id}: {}", other.kind()),
                });
            }
        };
        match req.resolution {
            Resolution::Charged => {
                if intent.status != IntentStatus::Succeeded {
                    return Err(contradicted(format!(
                        "payment {id} is {} at the gateway, not succeeded",
                        intent.status
                    )));
                }
                if intent.amount != order.amount_minor
                    || !intent.currency.eq_ignore_ascii_case(&order.currency)
                {
                    return Err(contradicted(format!(
                        "payment {id} is {} {}, the order is {} {}",
                        intent.amount,
                        intent.currency.to_uppercase(),
                        order.amount_minor,
                        order.currency
                    )));
                }
                if let Some(other) = intent.metadata.get("order_id")
                    && other != &order.order_id
                {
                    return Err(contradicted(format!(
                        "payment {id} belongs to order {other}"
                    )));
                }
                Ok(", verified with the gateway")
            }
            Resolution::NotCharged => {
                if intent.status == IntentStatus::Succeeded {
                    return Err(contradicted(format!(
                        "the attempt's intent {id} succeeded at the gateway: the money was taken; \
                         resolve as charged with {id}, or refund it"
                    )));
                }
                Ok(", verified with the gateway")
            }
        }
    }
}

/// One review item with every detail an operator needs.
fn review_item(r: &ReviewRecord) -> pb::ManualReviewItem {
    let attempt = r.order.attempts.iter().find(|a| a.number == r.attempt);
    let (operator_id, keys, ids, history, actions, reason) = match attempt {
        Some(a) => {
            let mut ids: Vec<String> = a.gateway_payment_id.iter().cloned().collect();
            // Every intent named in the history (a superseded create's intent, a lookup's).
            for e in &a.errors {
                for word in e
                    .message
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                {
                    if word.starts_with("pi_") && !ids.iter().any(|i| i == word) {
                        ids.push(word.to_owned());
                    }
                }
            }
            let actions = a
                .errors
                .iter()
                .filter(|e| ACTION_STEPS.contains(&e.step.as_str()))
                .map(|e| format!("{} {}: {}", crate::error::rfc3339(e.at), e.step, e.message))
                .collect();
            // The short reason the coordinator gave when it opened the review.
            let reason = a
                .errors
                .iter()
                .rev()
                .find_map(|e| e.message.strip_prefix("manual review: ").map(str::to_owned))
                .or_else(|| a.failure_message.clone())
                .unwrap_or_default();
            (
                a.operator_id.clone(),
                vec![a.gateway_create_key.clone(), a.gateway_confirm_key.clone()],
                ids,
                a.errors.iter().map(convert::error).collect(),
                actions,
                reason,
            )
        }
        None => Default::default(),
    };
    pb::ManualReviewItem {
        order: Some(convert::order(&r.order)),
        attempt_number: r.attempt,
        operator_id,
        opened_at: Some(convert::timestamp(r.opened_at)),
        reason,
        gateway_idempotency_keys: keys,
        gateway_payment_ids: ids,
        error_history: history,
        actions_tried: actions,
    }
}

/// The page token: `r1.<microseconds since the epoch>.<order id>` (order ids hold no spaces and
/// are at most 64 characters). Opaque to callers; checked on the way back in.
fn token(cursor: &ReviewCursor) -> String {
    let micros = cursor
        .opened_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    format!("r1.{micros}.{}", cursor.order_id)
}

fn parse_token(token: &str) -> Result<Option<ReviewCursor>, String> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || "is not a page token this server gave (pass next_page_token as is)".to_owned();
    let rest = token.strip_prefix("r1.").ok_or_else(bad)?;
    let (micros, order_id) = rest.split_once('.').ok_or_else(bad)?;
    let micros: u64 = micros.parse().map_err(|_| bad())?;
    crate::domain::OrderId::parse(order_id).map_err(|_| bad())?;
    Ok(Some(ReviewCursor {
        opened_at: UNIX_EPOCH + Duration::from_micros(micros),
        order_id: order_id.to_owned(),
    }))
}

fn describe(v: &Violations) -> String {
    v.iter()
        .map(|f| f.description.clone())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_refuse_forgeries() {
        let cursor = ReviewCursor {
            opened_at: UNIX_EPOCH + Duration::from_micros(1_764_000_000_123_456),
            order_id: "ord.1:a-b".into(),
        };
        assert_eq!(parse_token(&token(&cursor)), Ok(Some(cursor)));
        assert_eq!(parse_token(""), Ok(None));
        for bad in [
            "x",
            "r1.",
            "r1.12",
            "r1.abc.ord",
            "r1.12.bad id",
            "r2.1.ord",
        ] {
            assert!(parse_token(bad).is_err(), "{bad}");
        }
    }
}
