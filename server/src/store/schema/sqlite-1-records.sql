CREATE TABLE IF NOT EXISTS modules (
    name TEXT NOT NULL, version TEXT NOT NULL, digest TEXT NOT NULL, json TEXT NOT NULL,
    PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS builds (
    id TEXT PRIMARY KEY, state TEXT NOT NULL, created_at TEXT NOT NULL, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS artifacts (
    key TEXT PRIMARY KEY, name TEXT NOT NULL, version TEXT NOT NULL, kernel TEXT NOT NULL,
    arch TEXT NOT NULL, seq INTEGER NOT NULL, json TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS artifacts_by_module ON artifacts (name, version, kernel, arch, seq);
CREATE TABLE IF NOT EXISTS artifact_blobs (key TEXT NOT NULL, sha256 TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS artifact_blobs_sha ON artifact_blobs (sha256);
CREATE TABLE IF NOT EXISTS evals (key TEXT PRIMARY KEY, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS module_settings (name TEXT PRIMARY KEY, json TEXT NOT NULL);
