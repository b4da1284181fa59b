//! `kmodforge-agent`: the host side of kmodforge (fetch, verify and install
//! modules on every kernel install). It is built under its own issue; until
//! then this binary only reports its version.

fn main() {
    println!("kmodforge-agent {}", env!("CARGO_PKG_VERSION"));
}
