-- Datasets: a name per organization; every upload (or schema change) is a new, immutable
-- version whose file lives at orgs/{org}/datasets/{dataset}/v{n}/. A version row is only
-- inserted once its object is fully written and validated, in the same transaction as
-- the dataset row, so a rejected or failed upload leaves no row behind.

CREATE TABLE datasets (
    id         uuid PRIMARY KEY,
    org_id     uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    name       text NOT NULL,
    created_by uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, name)
);

CREATE TABLE dataset_versions (
    id           uuid PRIMARY KEY,
    org_id       uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    dataset_id   uuid NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
    version      integer NOT NULL CHECK (version > 0),
    -- Only validated versions are ever stored; later states (in use by a job) go here.
    status       text NOT NULL DEFAULT 'validated' CHECK (status IN ('validated')),
    object_key   text NOT NULL,
    file_name    text,
    format       text NOT NULL,
    sha256       text NOT NULL,
    bytes        bigint NOT NULL,
    row_count    bigint NOT NULL,
    -- Column types as validated (tailor_datasets::Schema).
    schema       jsonb NOT NULL,
    -- tailor_datasets::Profile and the warnings of the validation.
    profile      jsonb NOT NULL,
    warnings     jsonb NOT NULL,
    -- The version whose file a schema change re-validated; NULL for an upload.
    derived_from integer,
    uploaded_by  uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (dataset_id, version)
);
CREATE INDEX dataset_versions_org_idx ON dataset_versions (org_id, dataset_id);
