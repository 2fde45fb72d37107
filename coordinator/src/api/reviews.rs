//! `ListManualReviews` and `ResolveManualReview`: what the coordinator could not decide, and the
//! operators' decisions on it. An item is a payment attempt whose outcome is unknown, or a refund
//! whose outcome is unknown.
//!
//! A payment decision is checked against the gateway whenever the gateway can be asked (lookup
//! capability): "charged" must name a succeeded charge of this order (amount, currency, order
//! id), and "not charged" must find every intent the attempt met final without a charge (an
//! intent that could still charge is voided first when the gateway can cancel, else the decision
//! is refused). The gateway's word beats a reviewer's typo; when the gateway cannot be asked, the
//! reviewer's word is recorded as such. A refund decision is the reviewer's word (the gateway
//! subset has no refund lookup), recorded with who made it.

use std::time::{Duration, UNIX_EPOCH};

use gateway_client::{IdempotencyKey, IntentStatus, Outcome, PaymentIntent};
use payments_proto::v1 as pb;
use tonic::{Request, Response};

use super::{Coordinator, convert, payments::caller};
use crate::domain::operations::{ResolveRequest, page_size};
use crate::domain::{AttemptOutcome, RefundOutcome, Resolution, Violations};
use crate::error::Error;
use crate::store::{
    AttemptRecord, Decision, ErrorEntry, OrderRecord, Resolve, ReviewCursor, ReviewRecord,
};

/// History steps that are the coordinator's own resolution actions.
const ACTION_STEPS: [&str; 5] = ["lookup", "replay", "cancel", "recovery", "shutdown"];

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
                refund: last.refund,
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
        match req.refund {
            Some(number) => self.resolve_refund(&caller.id, number, req).await,
            None => self.resolve_payment(&caller.id, req).await,
        }
    }

    #[tracing::instrument(
        name = "ResolveManualReview",
        skip_all,
        fields(order_id = %req.order_id, reviewer = %by, replica = %self.replica, resolution = %req.resolution)
    )]
    async fn resolve_payment(
        &self,
        by: &str,
        req: ResolveRequest,
    ) -> Result<Response<pb::Order>, Error> {
        let order_id = req.order_id.as_str();
        let order = self.order_or_not_found(order_id).await?;
        let Some(open) = order
            .attempts
            .iter()
            .rev()
            .find(|a| a.outcome == AttemptOutcome::Unknown && a.resolution.is_none())
        else {
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
        let verified = self.verify_payment(&order, open, &req).await?;
        let detail = format!(
            "payment attempt {} resolved {} by {by}{}{}: {}",
            open.number,
            match req.resolution {
                Resolution::Charged => "as charged",
                _ => "as not charged",
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
        let outcome = self.store.resolve_review(order_id, &decision).await?;
        self.after_resolve(order_id, outcome, req.gateway_payment_id.as_deref())
            .await
    }

    #[tracing::instrument(
        name = "ResolveManualReview",
        skip_all,
        fields(order_id = %req.order_id, refund = number, reviewer = %by, replica = %self.replica, resolution = %req.resolution)
    )]
    async fn resolve_refund(
        &self,
        by: &str,
        number: i32,
        req: ResolveRequest,
    ) -> Result<Response<pb::Order>, Error> {
        let order_id = req.order_id.as_str();
        let order = self.order_or_not_found(order_id).await?;
        let Some(refund) = order.refunds.iter().find(|r| r.number == number) else {
            return Err(Error::InvalidRequest(Violations::single(
                "refund_number",
                format!("order {order_id} has no refund {number}"),
            )));
        };
        if refund.outcome != RefundOutcome::Unknown || refund.resolution.is_some() {
            return Err(Error::NotInManualReview {
                order_id: order_id.to_owned(),
                state: order.state,
                resolved_by: refund.resolution.as_ref().map(|d| d.by.clone()),
            });
        }
        let detail = format!(
            "refund {number} of {} {} resolved {} by {by}{}, on the reviewer's word (the gateway \
             offers no refund lookup): {}",
            refund.amount_minor,
            refund.currency,
            match req.resolution {
                Resolution::Refunded => "as refunded",
                _ => "as not refunded",
            },
            req.gateway_refund_id
                .as_deref()
                .map(|id| format!(" ({id})"))
                .unwrap_or_default(),
            req.note
        );
        let decision = Decision {
            resolution: req.resolution,
            gateway_payment_id: None,
            note: &req.note,
            by,
            detail: &detail,
            attempt: None,
        };
        let outcome = self
            .store
            .resolve_refund(
                order_id,
                number,
                &decision,
                req.gateway_refund_id.as_deref(),
            )
            .await?;
        self.after_resolve(order_id, outcome, None).await
    }

    async fn order_or_not_found(&self, order_id: &str) -> Result<OrderRecord, Error> {
        self.store
            .get_order(order_id)
            .await?
            .ok_or_else(|| Error::OrderNotFound {
                order_id: order_id.to_owned(),
            })
    }

    /// Maps what the store did to the answer: the order as it is now, or the refusal.
    async fn after_resolve(
        &self,
        order_id: &str,
        outcome: Resolve,
        charge: Option<&str>,
    ) -> Result<Response<pb::Order>, Error> {
        let contradicted = |detail: String| Error::ResolutionContradicted {
            order_id: order_id.to_owned(),
            detail,
        };
        match outcome {
            Resolve::Resolved { .. } => self.feed.nudge(),
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
            Resolve::Changed => {
                return Err(contradicted(
                    "the review item changed while this decision was made (another attempt is \
                     in review now); list the reviews again"
                        .to_owned(),
                ));
            }
            Resolve::ChargeTaken => {
                return Err(contradicted(format!(
                    "payment {} is already recorded as the charge of another attempt",
                    charge.unwrap_or("?")
                )));
            }
        }
        let order =
            self.store.get_order(order_id).await?.ok_or_else(|| {
                Error::Internal(format!("order {order_id} vanished after resolving"))
            })?;
        Ok(Response::new(convert::order(&order)))
    }

    /// Checks a payment decision against the gateway when it can be asked; returns what was
    /// verified, for the event's detail.
    async fn verify_payment(
        &self,
        order: &OrderRecord,
        open: &AttemptRecord,
        req: &ResolveRequest,
    ) -> Result<String, Error> {
        let capabilities = *self.runner.gateway.capabilities();
        if !capabilities.may_lookup() {
            return Ok(", not verified (the gateway has no lookup)".to_owned());
        }
        let contradicted = |detail: String| Error::ResolutionContradicted {
            order_id: order.order_id.clone(),
            detail,
        };
        let known = intents_met(open);
        match req.resolution {
            Resolution::Charged => {
                let Some(id) = req.gateway_payment_id.as_deref() else {
                    return Err(Error::InvalidRequest(Violations::single(
                        "gateway_payment_id",
                        "is required with RESOLUTION_CHARGED",
                    )));
                };
                let intent = self
                    .look_up(id)
                    .await?
                    .ok_or_else(|| contradicted(format!("the gateway knows no payment {id}")))?;
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
                match intent.metadata.get("order_id") {
                    Some(other) if other == &order.order_id => {}
                    Some(other) => {
                        return Err(contradicted(format!(
                            "payment {id} belongs to order {other}"
                        )));
                    }
                    None => {
                        return Err(contradicted(format!(
                            "payment {id} carries no order id: it was not made by this \
                             coordinator for order {}",
                            order.order_id
                        )));
                    }
                }
                // Another intent of the same attempt that also charged is a second charge: the
                // decision stands (this one is the order's charge), and the other must be
                // refunded at the gateway; say so loudly.
                let mut warnings = String::new();
                for other in known.iter().filter(|k| k.as_str() != id) {
                    if let Some(intent) = self.look_up(other).await?
                        && intent.status == IntentStatus::Succeeded
                    {
                        tracing::error!(order_id = %order.order_id, charge = id, other = %other, "a second succeeded intent for one attempt: refund it at the gateway");
                        warnings.push_str(&format!(
                            "; WARNING: intent {other} of this attempt also succeeded, a second \
                             charge to refund at the gateway"
                        ));
                    }
                }
                Ok(format!(", verified with the gateway{warnings}"))
            }
            _ => {
                if known.is_empty() {
                    return Ok(", not verified (no intent id of the attempt is known)".to_owned());
                }
                let (order_id, attempt) = (
                    order.order_id.as_str(),
                    u32::try_from(open.number).unwrap_or(0),
                );
                let mut voided = Vec::new();
                for id in &known {
                    let intent = self.look_up(id).await?.ok_or_else(|| {
                        contradicted(format!(
                            "the gateway does not know intent {id}, which the attempt met: \
                             nothing can verify that it did not charge"
                        ))
                    })?;
                    match intent.status {
                        IntentStatus::Succeeded => {
                            return Err(contradicted(format!(
                                "the attempt's intent {id} succeeded at the gateway: the money \
                                 was taken; resolve as charged with {id}"
                            )));
                        }
                        IntentStatus::Canceled | IntentStatus::RequiresPaymentMethod => {}
                        other if capabilities.may_cancel() => {
                            // It could still charge (a paused holder's confirm, a capture):
                            // void it first, then believe only what the gateway says.
                            let key = IdempotencyKey::cancel(order_id, attempt);
                            let _ = self.runner.gateway.cancel_intent(id, &key).await;
                            match self.look_up(id).await?.map(|i| i.status) {
                                Some(IntentStatus::Canceled) => {
                                    voided.push(format!("{id} (was {other})"));
                                }
                                Some(IntentStatus::Succeeded) => {
                                    return Err(contradicted(format!(
                                        "the attempt's intent {id} succeeded at the gateway: \
                                         the money was taken; resolve as charged with {id}"
                                    )));
                                }
                                now => {
                                    return Err(contradicted(format!(
                                        "the attempt's intent {id} is {} and could still \
                                         charge; it could not be voided",
                                        now.map(|s| s.to_string())
                                            .unwrap_or_else(|| "unknown".to_owned())
                                    )));
                                }
                            }
                        }
                        other => {
                            return Err(contradicted(format!(
                                "the attempt's intent {id} is {other} and could still charge, \
                                 and the gateway cannot void it (no cancel): void it at the \
                                 gateway first"
                            )));
                        }
                    }
                }
                Ok(if voided.is_empty() {
                    ", verified with the gateway".to_owned()
                } else {
                    format!(
                        ", verified with the gateway after voiding {}",
                        voided.join(", ")
                    )
                })
            }
        }
    }

    /// The intent as the gateway holds it; `None` if it does not know it (404).
    async fn look_up(&self, id: &str) -> Result<Option<PaymentIntent>, Error> {
        match self.runner.gateway.get_intent(id).await.outcome {
            Outcome::Succeeded(intent) => Ok(Some(intent)),
            Outcome::Rejected { status: 404, .. } => Ok(None),
            Outcome::Rejected {
                status, message, ..
            } => Err(Error::GatewayUnavailable {
                detail: format!("looking up {id}: {status} {message}"),
            }),
            other => Err(Error::GatewayUnavailable {
                detail: format!("looking up {id}: {}", other.kind()),
            }),
        }
    }
}

/// Every intent an attempt is known to have met: its recorded id, and any named in its history
/// (a superseded holder's, a lookup's).
fn intents_met(attempt: &AttemptRecord) -> Vec<String> {
    let mut ids: Vec<String> = attempt.gateway_payment_id.iter().cloned().collect();
    for e in &attempt.errors {
        for word in e
            .message
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        {
            if word.starts_with("pi_") && !ids.iter().any(|i| i == word) {
                ids.push(word.to_owned());
            }
        }
    }
    ids
}

/// The coordinator's own actions in a history, as `at step: message`.
fn actions(errors: &[ErrorEntry]) -> Vec<String> {
    errors
        .iter()
        .filter(|e| ACTION_STEPS.contains(&e.step.as_str()))
        .map(|e| format!("{} {}: {}", crate::error::rfc3339(e.at), e.step, e.message))
        .collect()
}

/// One review item with every detail an operator needs.
fn review_item(r: &ReviewRecord) -> pb::ManualReviewItem {
    let mut item = pb::ManualReviewItem {
        order: Some(convert::order(&r.order)),
        attempt_number: r.attempt,
        opened_at: Some(convert::timestamp(r.opened_at)),
        refund_number: r.refund,
        ..Default::default()
    };
    if r.refund > 0 {
        let Some(refund) = r.order.refunds.iter().find(|f| f.number == r.refund) else {
            return item;
        };
        // The refunded charge's attempt, for context.
        if let Some(charged) =
            r.order.attempts.iter().find(|a| {
                a.gateway_payment_id.as_deref() == Some(refund.gateway_payment_id.as_str())
            })
        {
            item.attempt_number = charged.number;
        }
        item.operator_id = refund.requested_by.clone();
        item.reason = refund.failure_message.clone().unwrap_or_default();
        item.gateway_idempotency_keys = vec![refund.gateway_refund_key.clone()];
        item.gateway_payment_ids = std::iter::once(refund.gateway_payment_id.clone())
            .chain(refund.gateway_refund_id.clone())
            .collect();
        item.error_history = refund.errors.iter().map(convert::error).collect();
        item.actions_tried = actions(&refund.errors);
        return item;
    }
    let Some(a) = r.order.attempts.iter().find(|a| a.number == r.attempt) else {
        return item;
    };
    item.operator_id = a.operator_id.clone();
    // The short reason the coordinator gave when it opened the review.
    item.reason = a
        .errors
        .iter()
        .rev()
        .find_map(|e| e.message.strip_prefix("manual review: ").map(str::to_owned))
        .or_else(|| a.failure_message.clone())
        .unwrap_or_default();
    item.gateway_idempotency_keys =
        vec![a.gateway_create_key.clone(), a.gateway_confirm_key.clone()];
    item.gateway_payment_ids = intents_met(a);
    item.error_history = a.errors.iter().map(convert::error).collect();
    item.actions_tried = actions(&a.errors);
    item
}

/// The page token: `r2.<microseconds since the epoch>.<refund number>.<order id>` (order ids
/// hold no spaces and are at most 64 characters). Opaque to callers; checked on the way back in.
fn token(cursor: &ReviewCursor) -> String {
    let micros = cursor
        .opened_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    format!("r2.{micros}.{}.{}", cursor.refund, cursor.order_id)
}

fn parse_token(token: &str) -> Result<Option<ReviewCursor>, String> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || "is not a page token this server gave (pass next_page_token as is)".to_owned();
    let rest = token.strip_prefix("r2.").ok_or_else(bad)?;
    let mut parts = rest.splitn(3, '.');
    let (Some(micros), Some(refund), Some(order_id)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let micros: u64 = micros.parse().map_err(|_| bad())?;
    let refund: i32 = refund.parse().map_err(|_| bad())?;
    if refund < 0 {
        return Err(bad());
    }
    crate::domain::OrderId::parse(order_id).map_err(|_| bad())?;
    Ok(Some(ReviewCursor {
        opened_at: UNIX_EPOCH + Duration::from_micros(micros),
        order_id: order_id.to_owned(),
        refund,
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
            refund: 2,
        };
        assert_eq!(parse_token(&token(&cursor)), Ok(Some(cursor)));
        assert_eq!(parse_token(""), Ok(None));
        for bad in [
            "x",
            "r2.",
            "r2.12",
            "r2.12.0",
            "r2.abc.0.ord",
            "r2.12.-1.ord",
            "r2.12.0.bad id",
            "r1.1.ord",
        ] {
            assert!(parse_token(bad).is_err(), "{bad}");
        }
    }
}
