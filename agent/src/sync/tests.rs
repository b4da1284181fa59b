//! `sync` against a fake server (plain HTTP on a local port) and a temp root with
//! the real depmod: the boot-check decisions end to end on the agent's side.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kmodforge_agent::host::{Host, StatusEntry};
use kmodforge_api::wire::{BootCheck, BuildResponse, BuildState, FailureKind, Manifest};

use super::*;
use crate::boot::tests::{check, response};
use crate::test_support::{add_kernel, manifest, tree, Ko, K1};

const DEST: &str = "updates/dkms/kmf_hello.ko";

/// A manifest (of other bytes than a real module) for tests that do not install.
pub(crate) fn manifest_for_tests() -> Manifest {
    manifest("kmf_hello", "1.0", K1, &[("kmf_hello.ko", b"not a module")])
}

/// What the fake server answers, and what it was asked.
struct Fake {
    /// `GET /v1/artifacts/...` (None: 404 not_found).
    manifest: Option<Manifest>,
    /// `POST /v1/builds`; its artifact becomes the stored manifest, as the
    /// server records a check it ran.
    build: Option<BuildResponse>,
    ko: Vec<u8>,
    /// The bodies of the `POST /v1/builds` received.
    posts: Vec<serde_json::Value>,
}

type Shared = Arc<Mutex<Fake>>;

fn serve(fake: Shared) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            handle(&fake, stream);
        }
    });
    format!("http://{addr}")
}

fn handle(fake: &Shared, stream: TcpStream) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or_default().to_owned(),
        parts.next().unwrap_or_default().to_owned(),
    );
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let (status, out) = route(fake, &method, &path, &body);
    let mut stream = stream;
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        out.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&out);
}

fn route(fake: &Shared, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut f = fake.lock().expect("fake state");
    let not_found = (
        404,
        br#"{"error":{"kind":"not_found","message":"no such thing"}}"#.to_vec(),
    );
    match method {
        "GET" if path.contains("/files/") => (200, f.ko.clone()),
        "GET" if path.starts_with("/v1/artifacts/") => match &f.manifest {
            Some(m) => (200, json(m)),
            None => not_found,
        },
        "POST" if path == "/v1/builds" => {
            f.posts
                .push(serde_json::from_slice(body).expect("a JSON build request"));
            match f.build.clone() {
                Some(resp) => {
                    if let Some(m) = &resp.artifact {
                        f.manifest = Some(m.clone());
                    }
                    (200, json(&resp))
                }
                None => not_found,
            }
        }
        _ => not_found,
    }
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("serialise")
}

/// A temp root with kernel K1, the fake server, and the config.
struct World {
    root: tempfile::TempDir,
    fake: Shared,
    url: String,
    ko: Vec<u8>,
}

impl World {
    fn new() -> World {
        let root = tempfile::tempdir().expect("temp dir");
        add_kernel(root.path(), K1);
        let ko = Ko::new("kmf_hello", "1.0", "ABC", K1).build();
        let fake = Arc::new(Mutex::new(Fake {
            manifest: None,
            build: None,
            ko: ko.clone(),
            posts: Vec::new(),
        }));
        let url = serve(fake.clone());
        World {
            root,
            fake,
            url,
            ko,
        }
    }

    /// The real module's manifest, with `boot`.
    fn manifest(&self, boot: Option<BootCheck>) -> Manifest {
        let mut m = manifest("kmf_hello", "1.0", K1, &[("kmf_hello.ko", &self.ko)]);
        m.boot_check = boot;
        m
    }

    fn set(&self, stored: Option<Manifest>, build: Option<BuildResponse>) {
        let mut f = self.fake.lock().expect("fake state");
        f.manifest = stored;
        f.build = build;
    }

    fn posts(&self) -> Vec<serde_json::Value> {
        std::mem::take(&mut self.fake.lock().expect("fake state").posts)
    }

    fn sync(&self, require: bool) -> Exit {
        let text = format!(
            "server = \"{}\"\nroot = \"{}\"\nrunning_kernel = \"{K1}\"\nretries = 0\n\
             require_boot_check = {require}\n[[module]]\nname = \"kmf_hello\"\nversion = \"1.0\"\n",
            self.url,
            self.root.path().display()
        );
        let cfg = Config::parse(Path::new("agent.toml"), &text).expect("config");
        run_inner(&cfg, &SyncArgs::default())
    }

    fn status(&self) -> Vec<StatusEntry> {
        Host::new(kmodforge_agent::host::HostPaths::under(self.root.path()))
            .status(None)
            .expect("status")
    }

    fn ko_path(&self) -> PathBuf {
        tree(self.root.path(), K1).join(DEST)
    }
}

fn succeeded(m: Manifest) -> BuildResponse {
    response(BuildState::Succeeded, None, Some(m))
}

fn check_failed(m: Manifest) -> BuildResponse {
    response(
        BuildState::Failed,
        Some((
            FailureKind::BootCheckFailed,
            "kmf_hello/1.0 on 6.1.0-47-amd64: boot check failed: kmf_hello.ko did not load",
        )),
        Some(m),
    )
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .expect("mtime")
}

#[test]
fn required_without_a_check_asks_for_one_then_installs_and_records_it() {
    let w = World::new();
    w.set(
        Some(w.manifest(None)),
        Some(succeeded(w.manifest(Some(check(true, None))))),
    );
    assert_eq!(w.sync(true), Exit::Ok);
    let posts = w.posts();
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert_eq!(posts[0]["boot_check"], true);
    assert!(w.ko_path().is_file());
    let st = w.status();
    assert!(st[0].boot_verified, "{st:?}");
    assert_eq!(
        st[0].boot_check.as_ref().map(|c| c.checked_at.as_str()),
        Some("2026-01-02T03:04:05Z")
    );
    // Verified now: the next sync asks for nothing.
    assert_eq!(w.sync(true), Exit::Ok);
    assert!(w.posts().is_empty());
}

#[test]
fn a_missing_artifact_is_built_with_the_check_when_required_and_the_default_otherwise() {
    let w = World::new();
    w.set(None, Some(succeeded(w.manifest(None))));
    assert_eq!(w.sync(false), Exit::Ok);
    let posts = w.posts();
    assert_eq!(posts.len(), 1);
    assert!(posts[0].get("boot_check").is_none(), "{posts:?}");
    let st = w.status();
    assert!(!st[0].boot_verified && st[0].boot_check.is_none());

    let w = World::new();
    w.set(None, Some(succeeded(w.manifest(Some(check(true, None))))));
    assert_eq!(w.sync(true), Exit::Ok);
    let posts = w.posts();
    assert_eq!(posts.len(), 1, "one request builds and checks: {posts:?}");
    assert_eq!(posts[0]["boot_check"], true);
    assert!(w.status()[0].boot_verified);
}

#[test]
fn a_failed_check_is_refused_whatever_the_config_and_installs_nothing() {
    for require in [false, true] {
        let w = World::new();
        w.set(Some(w.manifest(Some(check(false, Some("panic"))))), None);
        assert_eq!(w.sync(require), Exit::Verification);
        assert!(w.posts().is_empty(), "a failed check is not asked again");
        assert!(!w.ko_path().exists());
        assert!(w.status().is_empty());
    }
    // A build that fails its check: exit 5, not 4.
    for require in [false, true] {
        let w = World::new();
        w.set(
            None,
            Some(check_failed(w.manifest(Some(check(false, Some("x")))))),
        );
        assert_eq!(w.sync(require), Exit::Verification);
        assert!(!w.ko_path().exists());
        assert!(w.status().is_empty());
    }
}

#[test]
fn required_but_the_server_gives_no_check_is_refused() {
    let w = World::new();
    w.set(Some(w.manifest(None)), Some(succeeded(w.manifest(None))));
    assert_eq!(w.sync(true), Exit::Verification);
    assert_eq!(w.posts().len(), 1, "asked once, not in a loop");
    assert!(!w.ko_path().exists());
    // Not required: installed as is.
    assert_eq!(w.sync(false), Exit::Ok);
    assert!(w.posts().is_empty());
    assert!(w.ko_path().is_file());
}

#[test]
fn an_installed_module_gets_verified_without_being_rewritten() {
    let w = World::new();
    w.set(Some(w.manifest(None)), None);
    assert_eq!(w.sync(false), Exit::Ok);
    assert!(!w.status()[0].boot_verified);
    let dep = tree(w.root.path(), K1).join("modules.dep");
    let before = (mtime(&w.ko_path()), mtime(&dep));

    w.set(
        Some(w.manifest(None)),
        Some(succeeded(w.manifest(Some(check(true, None))))),
    );
    assert_eq!(w.sync(true), Exit::Ok);
    assert_eq!(w.posts().len(), 1);
    assert!(w.status()[0].boot_verified);
    assert_eq!((mtime(&w.ko_path()), mtime(&dep)), before);
    assert_eq!(w.sync(true), Exit::Ok);
    assert!(w.posts().is_empty());
}

#[test]
fn an_installed_module_whose_check_fails_stays_installed_with_exit_5() {
    let w = World::new();
    w.set(Some(w.manifest(None)), None);
    assert_eq!(w.sync(false), Exit::Ok);
    w.set(
        Some(w.manifest(None)),
        Some(check_failed(w.manifest(Some(check(false, Some("oops")))))),
    );
    assert_eq!(w.sync(true), Exit::Verification);
    assert!(w.ko_path().is_file(), "a sync never uninstalls");
    let st = w.status();
    assert!(!st[0].boot_verified);
    assert_eq!(
        st[0].boot_check.as_ref().and_then(|c| c.reason.as_deref()),
        Some("oops")
    );
    // The failure is now on the manifest: refused without require too.
    assert_eq!(w.sync(false), Exit::Verification);
    assert!(w.ko_path().is_file());
}
