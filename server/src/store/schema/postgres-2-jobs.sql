-- The shared job queue: one row per build in flight fleet-wide, keyed by the
-- request's identity (single-flight across replicas). A builder owns a row while
-- its lease lasts; an expired lease is claimed by another builder.
CREATE TABLE jobs (
    request_key TEXT PRIMARY KEY,
    build_id TEXT NOT NULL UNIQUE,
    payload TEXT NOT NULL,
    owner TEXT,
    lease_until TIMESTAMPTZ,
    attempts INTEGER NOT NULL DEFAULT 0,
    background BOOLEAN NOT NULL DEFAULT false,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now());
CREATE INDEX jobs_claimable ON jobs (background, created_at);
