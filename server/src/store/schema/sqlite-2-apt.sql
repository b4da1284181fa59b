CREATE TABLE IF NOT EXISTS apt_packages (
    package TEXT NOT NULL, version TEXT NOT NULL, arch TEXT NOT NULL,
    sha256 TEXT NOT NULL, json TEXT NOT NULL,
    PRIMARY KEY (package, version, arch));
CREATE INDEX IF NOT EXISTS apt_packages_sha ON apt_packages (sha256);
