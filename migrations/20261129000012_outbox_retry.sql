-- An outbox row that the broker refused (returned as unroutable, or nacked) waits before
-- the relay tries it again, longer after each refusal, instead of being retried (and
-- logged) at every poll. Rows that failed because the connection broke are not delayed.
ALTER TABLE outbox ADD COLUMN next_attempt_at timestamptz;
