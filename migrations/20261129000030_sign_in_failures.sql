-- Failed sign-ins, kept for a sliding window so that password guessing is throttled per
-- account (the email tried, known or not) and per client address. Old rows are pruned
-- as new failures arrive; a successful sign-in clears its account's rows.
CREATE TABLE sign_in_failures (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email   text NOT NULL,
    address text NOT NULL,
    at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sign_in_failures_email_idx ON sign_in_failures (email, at);
CREATE INDEX sign_in_failures_address_idx ON sign_in_failures (address, at);
CREATE INDEX sign_in_failures_at_idx ON sign_in_failures (at);
