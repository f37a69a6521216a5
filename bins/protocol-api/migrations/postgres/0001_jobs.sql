-- The job store: the same tables as the SQLite file, so both backends keep
-- one row per job (its fields as JSON text, its secrets sealed with the
-- server key) and answer alike. `revision` counts a job's writes, so the
-- status event stream can tell when a job changed.
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    record TEXT NOT NULL,
    secrets BYTEA NOT NULL,
    -- Fixed-width UTC text (as on SQLite), so text order is time order.
    updated_at TEXT NOT NULL,
    revision BIGINT NOT NULL DEFAULT 1
);
CREATE INDEX jobs_status ON jobs (status, updated_at);

CREATE TABLE coordinator_orgs (
    coordinator_did TEXT PRIMARY KEY,
    org_name TEXT NOT NULL,
    api_key BYTEA NOT NULL
);

CREATE TABLE local_deployments (
    cvm_id TEXT PRIMARY KEY,
    record BYTEA NOT NULL
);

CREATE TABLE meta (
    name TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);

CREATE TABLE idempotency_keys (
    key_sha256 BYTEA PRIMARY KEY,
    job_id TEXT NOT NULL,
    request_sha256 BYTEA NOT NULL
);
CREATE INDEX idempotency_keys_job ON idempotency_keys (job_id);
