-- Whether new payments are accepted: admin pause and the gateway circuit breaker (issue 6).
-- (Filled in by the breaker work.)
SELECT 1;
