-- Whether new payments are accepted: the admin pause and the gateway circuit breaker (issue 6).
--
-- One row, shared by every replica. Each replica caches it (LISTEN payments_control, plus a re-read
-- every second) and refuses new payments from the cache; every change is a compare-and-set on
-- `version` that bumps it and sends NOTIFY payments_control in the same statement, and is logged
-- in payments_control_history. See coordinator/src/domain/breaker.rs for the transitions.

CREATE TABLE payments_control (
    id               boolean     PRIMARY KEY DEFAULT true CHECK (id),
    admin_paused     boolean     NOT NULL DEFAULT false,
    admin_reason     text,
    -- The admin's key id.
    admin_by         text,
    admin_since      timestamptz,
    breaker          text        NOT NULL DEFAULT 'CLOSED'
                                 CHECK (breaker IN ('CLOSED', 'OPEN', 'HALF_OPEN')),
    breaker_reason   text,
    -- When it opened (kept while it re-opens after failed probes).
    breaker_since    timestamptz,
    -- OPEN: when probes may start; HALF_OPEN: when a new round of probes may start if none reported.
    breaker_probe_at timestamptz,
    -- HALF_OPEN: probe payments still to let through in this round, across all replicas.
    probes_left      integer     NOT NULL DEFAULT 0 CHECK (probes_left >= 0),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    version          bigint      NOT NULL DEFAULT 1,
    CONSTRAINT payments_control_admin_complete CHECK (
        admin_paused = (admin_reason IS NOT NULL)
        AND admin_paused = (admin_by IS NOT NULL)
        AND admin_paused = (admin_since IS NOT NULL)),
    CONSTRAINT payments_control_breaker_complete CHECK (
        (breaker = 'CLOSED') = (breaker_reason IS NULL)
        AND (breaker = 'CLOSED') = (breaker_since IS NULL)
        AND (breaker = 'CLOSED') = (breaker_probe_at IS NULL))
);

INSERT INTO payments_control (id) VALUES (true);

-- Every change of the row: who (an admin's key id, or `breaker:{replica}`), what, why.
CREATE TABLE payments_control_history (
    version     bigint      PRIMARY KEY,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    actor       text        NOT NULL,
    action      text        NOT NULL,
    detail      text        NOT NULL
);
