-- Refunds whose outcome cannot be established become manual review items, like payments; and a
-- charge can be recorded for one order only.
--
-- A refund in doubt is UNKNOWN (finished: no automation works on it any more) until a reviewer
-- resolves it REFUNDED or NOT_REFUNDED. Until then it keeps the order's refund slot: no other
-- refund of the order may start, so what remains refundable is never promised twice.

ALTER TABLE refunds DROP CONSTRAINT refunds_outcome_check;
ALTER TABLE refunds ADD CONSTRAINT refunds_outcome_check
    CHECK (outcome IN ('IN_FLIGHT', 'SUCCEEDED', 'FAILED', 'UNKNOWN'));

ALTER TABLE refunds
    ADD COLUMN resolution      text CHECK (resolution IN ('REFUNDED', 'NOT_REFUNDED')),
    ADD COLUMN resolved_by     text,
    ADD COLUMN resolved_at     timestamptz,
    ADD COLUMN resolution_note text,
    ADD CONSTRAINT refunds_resolution_of_unknown CHECK (resolution IS NULL OR outcome = 'UNKNOWN'),
    ADD CONSTRAINT refunds_resolution_complete CHECK (
        (resolution IS NULL) = (resolved_by IS NULL) AND (resolution IS NULL) = (resolved_at IS NULL));

DROP INDEX refunds_one_in_flight_per_order;
CREATE UNIQUE INDEX refunds_one_unsettled_per_order ON refunds (order_id)
    WHERE outcome = 'IN_FLIGHT' OR (outcome = 'UNKNOWN' AND resolution IS NULL);

-- The refund half of the review queue, paged like the attempts' half.
CREATE INDEX refunds_open_reviews ON refunds (finished_at, order_id, number)
    WHERE outcome = 'UNKNOWN' AND resolution IS NULL;

-- One gateway charge is the charge of one attempt only: a reviewer cannot record a payment that
-- is already another order's (or another attempt's) charge.
CREATE UNIQUE INDEX attempts_one_attempt_per_charge ON attempts (gateway_payment_id)
    WHERE outcome = 'SUCCEEDED' OR resolution = 'CHARGED';
