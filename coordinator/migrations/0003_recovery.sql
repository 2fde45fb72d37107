-- Crash recovery: how a recovery worker tells a live holder from a gone one, and spaces its
-- retries per attempt.
--
-- heartbeat_at: refreshed (fenced) by whoever drives the attempt, every LEASE_TTL/3, in
--   PostgreSQL, so that a holder's liveness is known even while Redis is down. An in-flight
--   attempt whose heartbeat is older than LEASE_TTL has no live holder: the recovery worker takes
--   it over by bumping orders.fence first.
-- next_check_at: not before this time may a worker try again (NULL: at once).
-- resolution_tries: how many recovery runs have tried to establish the outcome; bounded.

ALTER TABLE attempts
    ADD COLUMN heartbeat_at     timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN next_check_at    timestamptz,
    ADD COLUMN resolution_tries integer     NOT NULL DEFAULT 0 CHECK (resolution_tries >= 0);

-- The sweep: in-flight attempts, stalest heartbeat first.
CREATE INDEX attempts_recovery_sweep ON attempts (heartbeat_at) WHERE outcome = 'IN_FLIGHT';
