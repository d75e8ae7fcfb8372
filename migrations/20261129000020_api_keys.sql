-- API keys of organizations, what the gateway meters per key, and the audit log of
-- gateway calls (services/core/src/api_keys.rs).

-- A key is `tlr_` + 160 random bits + a checksum, shown once. Only `hash`, the SHA-256 hex
-- of the whole key, is kept: a key carries 160 bits of randomness, so it cannot be guessed
-- or brute-forced from its hash, and a fast hash is enough (a slow password hash such as
-- argon2 only helps low-entropy secrets and would cost every gateway call milliseconds).
-- `prefix` (`tlr_` + the first 8 characters of the random part) is what lists show; it
-- does not authenticate anything.
CREATE TABLE api_keys (
    id                    uuid PRIMARY KEY,
    org_id                uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    name                  text NOT NULL,
    prefix                text NOT NULL,
    hash                  text NOT NULL UNIQUE CHECK (hash ~ '^[0-9a-f]{64}$'),
    -- The models (models.id, any of their versions) the key may call; NULL means every
    -- model of the organization, including models created later.
    model_ids             uuid[],
    actions               text[] NOT NULL
                          CHECK (cardinality(actions) > 0
                                 AND actions <@ ARRAY['predict', 'embed', 'generate']::text[]),
    rate_limit_per_minute integer CHECK (rate_limit_per_minute > 0),
    expires_at            timestamptz,
    revoked_at            timestamptz,
    created_by            uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at            timestamptz NOT NULL DEFAULT now(),
    last_used_at          timestamptz
);
CREATE INDEX api_keys_org_idx ON api_keys (org_id, created_at DESC);

-- Usage per key, per model version and per minute; the gateway adds to a row with an
-- upsert. `model_version_id` is NULL for calls that failed before a version was chosen
-- (unknown model, scope refused); NULLS NOT DISTINCT keeps those in one row per minute.
CREATE TABLE api_key_usage (
    key_id           uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    org_id           uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    model_version_id uuid REFERENCES model_versions (id) ON DELETE CASCADE,
    minute           timestamptz NOT NULL CHECK (minute = date_trunc('minute', minute)),
    requests         bigint NOT NULL DEFAULT 0,
    items            bigint NOT NULL DEFAULT 0,
    tokens           bigint NOT NULL DEFAULT 0,
    errors           bigint NOT NULL DEFAULT 0,
    latency_ms_sum   bigint NOT NULL DEFAULT 0,
    latency_ms_max   integer NOT NULL DEFAULT 0,
    UNIQUE NULLS NOT DISTINCT (key_id, model_version_id, minute)
);
CREATE INDEX api_key_usage_key_idx ON api_key_usage (key_id, minute);

-- Every gateway call made with a valid key: which key, which model version, when, the
-- route and the status. The request body only when the organization turned
-- `orgs.audit_request_bodies` on (checked in the INSERT itself, see api_keys::audit).
ALTER TABLE orgs ADD COLUMN audit_request_bodies boolean NOT NULL DEFAULT false;

CREATE TABLE audit_log (
    id               bigserial PRIMARY KEY,
    org_id           uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    key_id           uuid REFERENCES api_keys (id) ON DELETE SET NULL,
    model_version_id uuid REFERENCES model_versions (id) ON DELETE SET NULL,
    route            text NOT NULL,
    status           integer NOT NULL CHECK (status BETWEEN 100 AND 599),
    at               timestamptz NOT NULL DEFAULT now(),
    request_body     jsonb
);
CREATE INDEX audit_log_org_idx ON audit_log (org_id, at DESC, id DESC);
