-- Blueprints, training jobs, their outbox and events, and the model registry.
--
-- Postgres is the truth about a job; RabbitMQ only wakes workers (DESIGN.md §3). A job
-- row and its outbox row are written in one transaction; the relay marks the outbox row
-- published once the broker confirmed it. A worker claims a job by bumping
-- `fencing_token` and setting a lease; every later write of that worker carries the token
-- it got, so a worker whose lease was taken over can no longer change anything.

-- An assembled model as the user saved it (DESIGN.md §3 blueprint JSON), tied to the
-- dataset it was assembled for. Editing replaces `spec`; a job keeps its own copy.
CREATE TABLE blueprints (
    id          uuid PRIMARY KEY,
    org_id      uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    name        text NOT NULL,
    dataset_id  uuid REFERENCES datasets (id) ON DELETE SET NULL,
    spec        jsonb NOT NULL,
    created_by  uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, name)
);

-- A model: the line of versions that jobs of one name publish into. `published_version`
-- is the version the gateway serves by default; rolling back points it at an older one.
CREATE TABLE models (
    id                uuid PRIMARY KEY,
    org_id            uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    name              text NOT NULL,
    published_version integer,
    created_by        uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, name)
);

CREATE TABLE jobs (
    id                 uuid PRIMARY KEY,
    org_id             uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    model_id           uuid NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    blueprint_id       uuid REFERENCES blueprints (id) ON DELETE SET NULL,
    -- The blueprint as it was when the job started (jobs never change under a user).
    blueprint          jsonb NOT NULL,
    dataset_version_id uuid NOT NULL REFERENCES dataset_versions (id) ON DELETE RESTRICT,
    state              text NOT NULL DEFAULT 'queued'
                       CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    -- A client-chosen key: the same key in the same organization is the same job.
    idempotency_key    text,
    -- Deliveries that led to a claim; at max_attempts the job fails (and goes to the DLQ).
    attempts           integer NOT NULL DEFAULT 0,
    max_attempts       integer NOT NULL DEFAULT 3 CHECK (max_attempts > 0),
    fencing_token      bigint NOT NULL DEFAULT 0,
    lease_owner        text,
    lease_expires_at   timestamptz,
    cancel_requested   boolean NOT NULL DEFAULT false,
    -- The latest progress (phase, epoch, step, total steps, loss, metric) for lists.
    progress           jsonb,
    -- The estimate shown before the start (seconds, bytes) and what the run measured.
    estimate           jsonb,
    -- The newest checkpoint in the object store, to resume from.
    checkpoint_key     text,
    checkpoint_step    integer,
    error              text,
    created_by         uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    started_at         timestamptz,
    finished_at        timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX jobs_idempotency_key ON jobs (org_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_org_idx ON jobs (org_id, created_at DESC);
CREATE INDEX jobs_lease_idx ON jobs (lease_expires_at) WHERE state = 'running';

-- Messages to publish. The relay takes unpublished rows (FOR UPDATE SKIP LOCKED),
-- publishes each with publisher confirms, and sets published_at only after the ack.
CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    job_id       uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    routing_key  text NOT NULL,
    payload      jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    attempts     integer NOT NULL DEFAULT 0,
    last_error   text
);
CREATE INDEX outbox_pending_idx ON outbox (id) WHERE published_at IS NULL;

-- What happened to a job, in order: state changes, steps, epochs, checkpoints, logs.
-- The job page replays these and then follows new ones.
CREATE TABLE job_events (
    id       bigserial PRIMARY KEY,
    job_id   uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    org_id   uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    at       timestamptz NOT NULL DEFAULT now(),
    kind     text NOT NULL CHECK (kind IN ('state', 'step', 'epoch', 'checkpoint', 'log')),
    data     jsonb NOT NULL
);
CREATE INDEX job_events_job_idx ON job_events (job_id, id);

-- A published model version: its files are under object_prefix, manifest.json last.
-- One job makes at most one version (UNIQUE job_id), however often it was retried.
CREATE TABLE model_versions (
    id                 uuid PRIMARY KEY,
    org_id             uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    model_id           uuid NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    version            integer NOT NULL CHECK (version > 0),
    job_id             uuid NOT NULL UNIQUE REFERENCES jobs (id) ON DELETE RESTRICT,
    status             text NOT NULL DEFAULT 'ready' CHECK (status IN ('ready', 'archived')),
    object_prefix      text NOT NULL,
    manifest_sha256    text NOT NULL,
    -- modules::evaluate::EvaluationReport as JSON.
    metrics            jsonb NOT NULL,
    blueprint          jsonb NOT NULL,
    dataset_version_id uuid NOT NULL REFERENCES dataset_versions (id) ON DELETE RESTRICT,
    dataset_sha256     text NOT NULL,
    -- The base checkpoints the adapters were trained on (module id → SHA-256).
    base_checkpoints   jsonb NOT NULL,
    created_by         uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (model_id, version)
);
CREATE INDEX model_versions_org_idx ON model_versions (org_id, model_id);
