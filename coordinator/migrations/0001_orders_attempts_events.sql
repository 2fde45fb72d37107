-- Orders, their payment attempts, and the per-order event log.
--
-- State columns are text holding the names of `domain::states` (`as_str()`), constrained here so that
-- the database refuses any value the code would not understand.

CREATE TABLE orders (
    order_id        text        PRIMARY KEY,
    amount_minor    bigint      NOT NULL CHECK (amount_minor > 0),
    currency        text        NOT NULL,
    customer_id     text        NOT NULL,
    items           jsonb       NOT NULL DEFAULT '[]'::jsonb,
    state           text        NOT NULL CHECK (state IN
                        ('PENDING', 'AWAITING_CONFIRMATION', 'PAID', 'MANUAL_REVIEW', 'REFUNDED')),
    -- The lock of record (CONTRACT §1.5): bumped by every new attempt and by any takeover; every
    -- write about an attempt is conditional on it.
    fence           bigint      NOT NULL DEFAULT 0,
    attempt_count   integer     NOT NULL DEFAULT 0 CHECK (attempt_count >= 0),
    -- The sequence of the order's latest event; the next event takes last_sequence + 1.
    last_sequence   bigint      NOT NULL DEFAULT 0 CHECK (last_sequence >= 0),
    refunded_minor  bigint      NOT NULL DEFAULT 0
                        CHECK (refunded_minor >= 0 AND refunded_minor <= amount_minor),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE attempts (
    order_id            text        NOT NULL REFERENCES orders (order_id),
    number              integer     NOT NULL CHECK (number > 0),
    -- The order's fence when this attempt started.
    fence               bigint      NOT NULL,
    operator_id         text        NOT NULL,
    replica_id          text        NOT NULL,
    -- The caller's idempotency_key: scoped per caller, across orders.
    request_key         text        NOT NULL,
    -- A digest of the caller's request, to tell a retry from a reused key.
    fingerprint         text        NOT NULL,
    -- A gateway token such as pm_card_visa, never a card number (validated before it gets here).
    payment_method      text        NOT NULL,
    flow                text        NOT NULL CHECK (flow IN ('two_phase', 'one_shot')),
    outcome             text        NOT NULL CHECK (outcome IN
                            ('IN_FLIGHT', 'SUCCEEDED', 'DECLINED', 'CANCELLED', 'UNKNOWN')),
    gateway_create_key  text        NOT NULL,
    gateway_confirm_key text        NOT NULL,
    gateway_payment_id  text,
    decline_code        text,
    failure_message     text,
    -- [{"at": "<RFC 3339, UTC>", "step": "...", "message": "..."}], oldest first.
    errors              jsonb       NOT NULL DEFAULT '[]'::jsonb,
    started_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz,
    PRIMARY KEY (order_id, number),
    CONSTRAINT attempts_operator_request_key UNIQUE (operator_id, request_key),
    CONSTRAINT attempts_finished_iff_outcome CHECK ((outcome = 'IN_FLIGHT') = (finished_at IS NULL))
);

-- For the recovery worker: attempts still in flight, oldest first.
CREATE INDEX attempts_in_flight ON attempts (started_at) WHERE outcome = 'IN_FLIGHT';

-- Belt and braces for CONTRACT §1.2: whatever the code does, an order never has two attempts in flight.
CREATE UNIQUE INDEX attempts_one_in_flight_per_order ON attempts (order_id) WHERE outcome = 'IN_FLIGHT';

CREATE TABLE events (
    global_sequence bigserial   PRIMARY KEY,
    order_id        text        NOT NULL REFERENCES orders (order_id),
    sequence        bigint      NOT NULL CHECK (sequence > 0),
    kind            text        NOT NULL CHECK (kind IN
                        ('ORDER_CREATED', 'ATTEMPT_STARTED', 'ATTEMPT_SUCCEEDED', 'ATTEMPT_DECLINED',
                         'ATTEMPT_CANCELLED', 'MANUAL_REVIEW_OPENED', 'MANUAL_REVIEW_RESOLVED',
                         'REFUNDED')),
    -- The order's state after this event.
    state           text        NOT NULL CHECK (state IN
                        ('PENDING', 'AWAITING_CONFIRMATION', 'PAID', 'MANUAL_REVIEW', 'REFUNDED')),
    attempt_number  integer,
    actor           text        NOT NULL,
    detail          text        NOT NULL DEFAULT '',
    amount_minor    bigint,
    currency        text,
    occurred_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_order_sequence UNIQUE (order_id, sequence)
);
