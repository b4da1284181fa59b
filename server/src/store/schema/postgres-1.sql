CREATE TABLE modules (
    name TEXT NOT NULL, version TEXT NOT NULL, digest TEXT NOT NULL, json TEXT NOT NULL,
    PRIMARY KEY (name, version));
CREATE INDEX modules_by_digest ON modules (digest);
CREATE TABLE builds (
    id TEXT PRIMARY KEY, state TEXT NOT NULL, created_at TEXT NOT NULL,
    seq BIGSERIAL NOT NULL, json TEXT NOT NULL);
CREATE INDEX builds_by_state ON builds (state);
CREATE INDEX builds_by_created ON builds (created_at, seq);
CREATE SEQUENCE artifacts_seq;
CREATE TABLE artifacts (
    key TEXT PRIMARY KEY, name TEXT NOT NULL, version TEXT NOT NULL, kernel TEXT NOT NULL,
    arch TEXT NOT NULL, seq BIGINT NOT NULL, json TEXT NOT NULL);
CREATE INDEX artifacts_by_module ON artifacts (name, version, kernel, arch, seq);
CREATE TABLE artifact_blobs (key TEXT NOT NULL, sha256 TEXT NOT NULL);
CREATE INDEX artifact_blobs_sha ON artifact_blobs (sha256);
CREATE INDEX artifact_blobs_key ON artifact_blobs (key);
CREATE TABLE evals (key TEXT PRIMARY KEY, json TEXT NOT NULL);
CREATE TABLE module_settings (name TEXT PRIMARY KEY, json TEXT NOT NULL);
CREATE TABLE tokens (
    name TEXT PRIMARY KEY, id TEXT NOT NULL UNIQUE, hash TEXT NOT NULL,
    revoked BOOLEAN NOT NULL, json TEXT NOT NULL);
CREATE TABLE audit (seq BIGSERIAL PRIMARY KEY, module TEXT, json TEXT NOT NULL);
CREATE INDEX audit_by_module ON audit (module, seq);
CREATE SEQUENCE public_keys_seq;
CREATE TABLE public_keys (
    purpose TEXT NOT NULL, id TEXT NOT NULL, seq BIGINT NOT NULL, json TEXT NOT NULL,
    PRIMARY KEY (purpose, id));
CREATE TABLE version_pins (
    name TEXT NOT NULL, version TEXT NOT NULL, digest TEXT NOT NULL, pinned_at TEXT NOT NULL,
    PRIMARY KEY (name, version));
CREATE TABLE kernels (kernel TEXT PRIMARY KEY, json TEXT NOT NULL);
