-- Manual review decisions and refunds (issue 6).
--
-- A manual review item is an attempt whose outcome is UNKNOWN and that nobody resolved yet; its
-- order is MANUAL_REVIEW. The decision is recorded on that attempt (who, when, what, why); the
-- attempt's outcome stays UNKNOWN, because that is what the coordinator knew.

ALTER TABLE attempts
    ADD COLUMN resolution      text CHECK (resolution IN ('CHARGED', 'NOT_CHARGED')),
    ADD COLUMN resolved_by     text,
    ADD COLUMN resolved_at     timestamptz,
    ADD COLUMN resolution_note text,
    ADD CONSTRAINT attempts_resolution_of_unknown CHECK (resolution IS NULL OR outcome = 'UNKNOWN'),
    ADD CONSTRAINT attempts_resolution_complete CHECK (
        (resolution IS NULL) = (resolved_by IS NULL) AND (resolution IS NULL) = (resolved_at IS NULL));

-- The review queue, oldest first, paged by (finished_at, order_id).
CREATE INDEX attempts_open_reviews ON attempts (finished_at, order_id)
    WHERE outcome = 'UNKNOWN' AND resolution IS NULL;

-- Refunds: committed IN_FLIGHT before the gateway call (intent before effect, as for payments),
-- fenced by `token` (bumped by a recovery takeover), at most one in flight per order so that what
-- remains refundable is never promised twice.
ALTER TABLE orders ADD COLUMN refund_count integer NOT NULL DEFAULT 0 CHECK (refund_count >= 0);

CREATE TABLE refunds (
    order_id           text        NOT NULL REFERENCES orders (order_id),
    number             integer     NOT NULL CHECK (number > 0),
    requested_by       text        NOT NULL,
    -- The caller's idempotency_key, scoped per caller as for attempts.
    request_key        text        NOT NULL,
    fingerprint        text        NOT NULL,
    amount_minor       bigint      NOT NULL CHECK (amount_minor > 0),
    currency           text        NOT NULL,
    reason             text        NOT NULL,
    -- The charge being refunded.
    gateway_payment_id text        NOT NULL,
    gateway_refund_key text        NOT NULL,
    gateway_refund_id  text,
    outcome            text        NOT NULL CHECK (outcome IN ('IN_FLIGHT', 'SUCCEEDED', 'FAILED')),
    failure_message    text,
    -- [{"at": "<RFC 3339, UTC>", "step": "...", "message": "..."}], oldest first.
    errors             jsonb       NOT NULL DEFAULT '[]'::jsonb,
    token              bigint      NOT NULL DEFAULT 1,
    replica_id         text        NOT NULL,
    heartbeat_at       timestamptz NOT NULL DEFAULT now(),
    next_check_at      timestamptz,
    resolution_tries   integer     NOT NULL DEFAULT 0 CHECK (resolution_tries >= 0),
    requested_at       timestamptz NOT NULL DEFAULT now(),
    finished_at        timestamptz,
    PRIMARY KEY (order_id, number),
    CONSTRAINT refunds_requester_key UNIQUE (requested_by, request_key),
    CONSTRAINT refunds_finished_iff_outcome CHECK ((outcome = 'IN_FLIGHT') = (finished_at IS NULL))
);

CREATE UNIQUE INDEX refunds_one_in_flight_per_order ON refunds (order_id) WHERE outcome = 'IN_FLIGHT';
CREATE INDEX refunds_recovery_sweep ON refunds (heartbeat_at) WHERE outcome = 'IN_FLIGHT';
