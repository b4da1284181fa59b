//! `kmodforge-api`: the pure types shared by the kmodforge server and agent.
//!
//! Nothing here does IO or needs an async runtime: validated names (`names`), the
//! DKMS directive model and its rules (`dkms`), `.ko` modinfo parsing (`modinfo`),
//! untrusted source-archive validation and digests (`archive`), token scopes and
//! audit records (`auth`), the cache-key
//! function (`cachekey`), per-module settings (`settings`), the HTTP wire types
//! (`wire`) and the error kinds of their answers (`errors`).

pub mod archive;
pub mod attest;
pub mod auth;
pub mod cachekey;
pub mod canonical;
pub mod dkms;
pub mod errors;
pub mod modinfo;
pub mod names;
pub mod settings;
pub mod wire;
