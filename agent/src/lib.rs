//! `kmodforge-agent` as a library: the host side (`host`) and manifest trust
//! (`trust`), shared by the binary, the integration tests and the benchmarks.

pub mod host;
pub mod trust;
