//! `kmodforge-agent` as a library: the host side (`host`), shared by the binary and
//! the integration tests.

pub mod host;
