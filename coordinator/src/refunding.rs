//! Driving one committed refund through the gateway, in a server-owned task.
//!
//! As for payments: the refund is `IN_FLIGHT` in PostgreSQL before the gateway is called, the
//! call carries a deterministic idempotency key (`refund:{order}:{n}`), and every write is fenced
//! by the refund's token (a recovery takeover bumps it). An answer that does not establish the
//! outcome is never guessed: the same request is replayed with the same key (the gateway answers
//! the original result) while the gateway's idempotency window allows it, spaced, and handed to
//! the recovery worker between runs. A gateway without idempotency keys cannot be asked safely a
//! second time (a replay could refund twice), and a window that has passed or runs that ran out
//! end the same way: the refund becomes `UNKNOWN`, a manual review item (with its history and
//! what to check) that keeps the order's refund slot until a reviewer resolves it. It is never
//! retried blindly. A gateway refund `pending` counts as done: the gateway accepted it (the
//! subset has no refund lookup to follow it further; see docs/ARCHITECTURE.md).

use std::time::{Duration, SystemTime};

use gateway_client::{IdempotencyKey, Outcome, Refund, RefundStatus, Reply};
use tracing::Instrument;

use crate::attempt::{Runner, Running};
use crate::domain::RefundOutcome;
use crate::domain::resolution::spacing;
use crate::store::{Fenced, RefundFence, RefundFinish, StrandedRefund};

/// Everything the task needs about its refund.
#[derive(Debug, Clone)]
pub struct RefundJob {
    pub fence: RefundFence,
    pub amount_minor: i64,
    pub gateway_payment_id: String,
    /// When the refund was committed (the first gateway call follows at once): the idempotency
    /// window runs from here.
    pub requested_at: SystemTime,
    /// Earlier resolution runs (0: the first call has not been made).
    pub prior_runs: u32,
}

/// What one refund call's reply establishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Learnt {
    Final(RefundFinish),
    /// Not established: why.
    InDoubt(String),
}

/// Reads a refund call's reply. `first`: this was the first call for the refund, so a reply that
/// proves the request did nothing proves nothing was refunded.
pub fn interpret(reply: &Reply<Refund>, first: bool) -> Learnt {
    let replayed = if reply.replayed { " (replayed)" } else { "" };
    match &reply.outcome {
        Outcome::Succeeded(refund) => match refund.status {
            RefundStatus::Succeeded | RefundStatus::Pending => {
                Learnt::Final(RefundFinish::Succeeded {
                    refund_id: refund.id.clone(),
                })
            }
            RefundStatus::Failed | RefundStatus::Canceled => Learnt::Final(RefundFinish::Failed {
                refund_id: Some(refund.id.clone()),
                message: format!(
                    "the gateway's refund {} is {}{replayed}",
                    refund.id, refund.status
                ),
            }),
            _ => Learnt::InDoubt(format!(
                "refund {} is {}{replayed}: not final",
                refund.id, refund.status
            )),
        },
        Outcome::Declined {
            decline_code,
            message,
            ..
        } => Learnt::Final(RefundFinish::Failed {
            refund_id: None,
            message: format!("the gateway refused the refund ({decline_code}): {message}"),
        }),
        Outcome::Rejected {
            status,
            code,
            message,
            ..
        } => Learnt::Final(RefundFinish::Failed {
            refund_id: None,
            message: format!(
                "the gateway refused the refund ({status} {}): {message}",
                code.as_deref().unwrap_or("error")
            ),
        }),
        Outcome::Unknown { reason, detail } => {
            Learnt::InDoubt(format!("outcome unknown ({}): {detail}", reason.as_str()))
        }
        Outcome::RetryLater { after } if first => Learnt::Final(RefundFinish::Failed {
            refund_id: None,
            message: format!(
                "not refunded: the gateway throttled the call beyond our retries (retry after \
                 {after:?}); nothing was refunded, ask again with a new idempotency key"
            ),
        }),
        Outcome::NotSent { detail } if first => Learnt::Final(RefundFinish::Failed {
            refund_id: None,
            message: format!(
                "not refunded: the gateway could not be reached ({detail}); nothing was \
                 refunded, ask again with a new idempotency key"
            ),
        }),
        // A replay that did nothing says nothing about the first call.
        Outcome::RetryLater { after } => {
            Learnt::InDoubt(format!("replay throttled (retry after {after:?})"))
        }
        Outcome::NotSent { detail } => Learnt::InDoubt(format!("replay not sent: {detail}")),
    }
}

impl Runner {
    /// Runs the refund to an outcome (or hands it to the recovery worker), heartbeating. Counted
    /// in the shutdown's drain: when the grace period is over it stops where it is (never while
    /// writing an outcome) and hands the refund over, saying so in its history.
    pub async fn run_refund(self, job: RefundJob) -> Option<RefundOutcome> {
        let span = tracing::info_span!(
            "payment.refund",
            order_id = %job.fence.order_id,
            refund = job.fence.number,
            token = job.fence.token,
            replica = %self.replica,
        );
        async {
            let _running = Running::enter(&self.drain);
            let period = (self.recovery.stale_after / 3).max(Duration::from_millis(50));
            let beat = async {
                loop {
                    tokio::time::sleep(period).await;
                    match self.store.refund_heartbeat(&job.fence).await {
                        Ok(Fenced::Applied) => {}
                        Ok(Fenced::Superseded) => return,
                        Err(error) => {
                            tracing::warn!(%error, "could not refresh the refund's heartbeat")
                        }
                    }
                }
            };
            let drive = self.drive_refund(&job);
            tokio::pin!(drive);
            let beating = async {
                tokio::select! {
                    finish = &mut drive => finish,
                    () = beat => (&mut drive).await,
                }
            };
            let finish = tokio::select! {
                finish = beating => finish,
                () = self.drain.given_up() => {
                    self.hand_over_refund(&job, "the shutdown's grace period ended").await;
                    return None;
                }
            };
            match finish {
                Some(finish) => self.settle_refund(&job, &finish).await,
                None => None,
            }
        }
        .instrument(span)
        .await
    }

    /// Leaves the refund to another replica's recovery worker at once (same key, so the same
    /// refund), saying so in its history.
    async fn hand_over_refund(&self, job: &RefundJob, why: &str) {
        let note = format!(
            "replica {} shut down before the outcome was known ({why}); left to the recovery worker",
            self.replica
        );
        tracing::warn!(%note, "refund handed over");
        if self.refund_history(job, "shutdown", &note).await {
            let _ = self
                .store
                .refund_schedule_next_check(&job.fence, Duration::ZERO)
                .await;
        }
    }

    /// The gateway calls: the refund's outcome as learnt (or `Unknown` when nothing can establish
    /// it any more), or `None` when it is handed to the recovery worker (or superseded).
    async fn drive_refund(&self, job: &RefundJob) -> Option<RefundFinish> {
        let order_id = job.fence.order_id.as_str();
        let key = IdempotencyKey::refund(order_id, u32::try_from(job.fence.number).unwrap_or(0));
        let config = self.recovery;
        let capabilities = *self.gateway.capabilities();
        let mut first = job.prior_runs == 0;
        let mut actions = 0_u32;
        loop {
            if !first {
                if self.stopping.is_cancelled() {
                    // Shutting down: no more waiting between replays here.
                    self.hand_over_refund(job, "between replays").await;
                    return None;
                }
                if !capabilities.may_replay(job.requested_at, SystemTime::now()) {
                    let why = if capabilities.idempotency() {
                        "the gateway's idempotency window has passed: asking again could refund twice"
                    } else {
                        "the gateway has no idempotency keys: asking again could refund twice"
                    };
                    let reason = format!(
                        "refund outcome unknown and {why}; check the gateway for charge {} and \
                         refund key {key}, then resolve this refund",
                        job.gateway_payment_id
                    );
                    tracing::error!(%reason, "refund in doubt: manual review");
                    return Some(RefundFinish::Unknown { reason });
                }
                if actions >= config.actions_per_run {
                    if job.prior_runs + 1 >= config.max_runs {
                        let reason = format!(
                            "refund outcome not established after {} resolution runs; check the \
                             gateway for charge {} and refund key {key}, then resolve this refund",
                            job.prior_runs + 1,
                            job.gateway_payment_id
                        );
                        return Some(RefundFinish::Unknown { reason });
                    }
                    let after = spacing(job.prior_runs * config.actions_per_run + actions);
                    let note = format!(
                        "outcome not established after {actions} replays; handed to the recovery \
                         worker, next check in {after:?}"
                    );
                    if self.refund_history(job, "recovery", &note).await {
                        let _ = self
                            .store
                            .refund_schedule_next_check(&job.fence, after)
                            .await;
                    }
                    return None;
                }
                if actions > 0 {
                    tokio::select! {
                        () = tokio::time::sleep(spacing(actions)) => {}
                        () = self.stopping.cancelled() => continue,
                    }
                }
                if !self
                    .refund_history(
                        job,
                        "replay",
                        &format!("replaying the refund with the same key {key}"),
                    )
                    .await
                {
                    return None;
                }
                actions += 1;
            }
            let reply = self
                .gateway
                .create_refund(&job.gateway_payment_id, Some(job.amount_minor), &key)
                .await;
            match interpret(&reply, first) {
                Learnt::Final(finish) => return Some(finish),
                Learnt::InDoubt(said) => {
                    tracing::warn!(%said, "refund outcome not established");
                    let step = if first { "refund" } else { "replay" };
                    if !self.refund_history(job, step, &said).await {
                        return None;
                    }
                }
            }
            first = false;
        }
    }

    /// Persists the refund's outcome. PostgreSQL unreachable: retried with backoff while this
    /// replica runs (the outcome is known here); if it stops first, the recovery worker replays
    /// the same key and learns it again from the gateway.
    async fn settle_refund(&self, job: &RefundJob, finish: &RefundFinish) -> Option<RefundOutcome> {
        let outcome = match finish {
            RefundFinish::Succeeded { .. } => RefundOutcome::Succeeded,
            RefundFinish::Failed { .. } => RefundOutcome::Failed,
            RefundFinish::Unknown { .. } => RefundOutcome::Unknown,
        };
        let mut delay = Duration::from_millis(100);
        loop {
            match self.store.finish_refund(&job.fence, finish).await {
                Ok(Fenced::Applied) => {
                    if let Some(feed) = &self.feed {
                        feed.nudge();
                    }
                    return Some(outcome);
                }
                Ok(Fenced::Superseded) => return None,
                Err(error) => {
                    tracing::warn!(%error, ?finish, retry_in_ms = delay.as_millis() as u64, "could not record the refund's outcome");
                    if self.stopping.is_cancelled() {
                        return None;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.stopping.cancelled() => return None,
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Appends to the refund's history; false if a newer holder exists or it could not be written
    /// (then the recovery worker takes the refund over once this heartbeat is stale).
    async fn refund_history(&self, job: &RefundJob, step: &str, message: &str) -> bool {
        match self.store.refund_note(&job.fence, step, message).await {
            Ok(Fenced::Applied) => true,
            Ok(Fenced::Superseded) => {
                tracing::warn!(step, "refund superseded: stopping");
                false
            }
            Err(error) => {
                tracing::error!(%error, step, "could not record a refund step; stopping");
                false
            }
        }
    }

    /// Resumes a refund the recovery worker took over.
    pub async fn recover_refund(self, stranded: StrandedRefund) {
        let StrandedRefund { fence, refund } = stranded;
        let job = RefundJob {
            fence,
            amount_minor: refund.amount_minor,
            gateway_payment_id: refund.gateway_payment_id.clone(),
            requested_at: refund.requested_at,
            prior_runs: u32::try_from(refund.resolution_tries).unwrap_or(1).max(1),
        };
        let note = format!(
            "taken over by the recovery worker of {} (holder's heartbeat stale; token now {})",
            self.replica, job.fence.token
        );
        if !self.refund_history(&job, "recovery", &note).await {
            return;
        }
        let outcome = self.run_refund(job).await;
        tracing::info!(?outcome, "refund recovery run ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_client::UnknownReason;

    fn reply(outcome: Outcome<Refund>) -> Reply<Refund> {
        Reply {
            outcome,
            replayed: false,
            request_id: None,
            tries: 1,
            retried: Vec::new(),
        }
    }

    fn refund(status: RefundStatus) -> Refund {
        Refund {
            id: "re_1".into(),
            amount: 500,
            currency: "eur".into(),
            status,
            payment_intent: Some("pi_1".into()),
            metadata: Default::default(),
            created: None,
        }
    }

    #[test]
    fn a_refund_is_final_only_when_the_gateway_says_so() {
        assert_eq!(
            interpret(
                &reply(Outcome::Succeeded(refund(RefundStatus::Succeeded))),
                true
            ),
            Learnt::Final(RefundFinish::Succeeded {
                refund_id: "re_1".into()
            })
        );
        assert!(matches!(
            interpret(
                &reply(Outcome::Succeeded(refund(RefundStatus::Failed))),
                false
            ),
            Learnt::Final(RefundFinish::Failed { .. })
        ));
        assert!(matches!(
            interpret(
                &reply(Outcome::Succeeded(refund(RefundStatus::RequiresAction))),
                true
            ),
            Learnt::InDoubt(_)
        ));
        let unknown = Outcome::Unknown {
            reason: UnknownReason::Timeout,
            detail: "no answer".into(),
        };
        assert!(matches!(
            interpret(&reply(unknown), true),
            Learnt::InDoubt(_)
        ));
    }

    #[test]
    fn nothing_sent_proves_nothing_only_for_the_first_call() {
        let not_sent = || Outcome::NotSent {
            detail: "refused".into(),
        };
        assert!(matches!(
            interpret(&reply(not_sent()), true),
            Learnt::Final(RefundFinish::Failed { .. })
        ));
        assert!(matches!(
            interpret(&reply(not_sent()), false),
            Learnt::InDoubt(_)
        ));
        let throttled = || Outcome::RetryLater {
            after: Duration::from_secs(1),
        };
        assert!(matches!(
            interpret(&reply(throttled()), true),
            Learnt::Final(RefundFinish::Failed { .. })
        ));
        assert!(matches!(
            interpret(&reply(throttled()), false),
            Learnt::InDoubt(_)
        ));
    }
}
