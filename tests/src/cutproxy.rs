//! A TCP proxy in front of a real server that cuts downloads mid-body: for the
//! first N answers to a `.ko` or blob download (`GET .../files/...`,
//! `GET /v1/blobs/...`) it forwards the head and half the body (by its
//! `Content-Length`), then closes the connection. Everything else passes through
//! untouched, byte for byte.
//!
//! HTTP/1.1 without pipelining (what reqwest and curl send): a client sends its
//! next request on a connection only after the whole previous answer, so the
//! answer bytes that follow a download request belong to that download.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// The proxy; it runs until the test's runtime ends.
pub struct CutProxy {
    addr: SocketAddr,
    left: Arc<AtomicUsize>,
    cut: Arc<AtomicUsize>,
}

impl CutProxy {
    /// A proxy to `upstream` that cuts the first `cuts` downloads (`usize::MAX`: all).
    pub async fn start(upstream: SocketAddr, cuts: usize) -> Result<CutProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the proxy")?;
        let addr = listener.local_addr()?;
        let left = Arc::new(AtomicUsize::new(cuts));
        let cut = Arc::new(AtomicUsize::new(0));
        let (l, c) = (left.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (l, c) = (l.clone(), c.clone());
                tokio::spawn(async move {
                    if let Err(e) = connection(client, upstream, l, c).await {
                        eprintln!("cut proxy: {e:#}");
                    }
                });
            }
        });
        Ok(CutProxy { addr, left, cut })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Downloads cut so far.
    pub fn cuts(&self) -> usize {
        self.cut.load(Ordering::SeqCst)
    }

    /// Cuts still to make.
    pub fn left(&self) -> usize {
        self.left.load(Ordering::SeqCst)
    }
}

/// One client connection: requests upstream as they come, answers back, the
/// answer to a download cut while cuts are left.
async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    left: Arc<AtomicUsize>,
    cut: Arc<AtomicUsize>,
) -> Result<()> {
    let server = TcpStream::connect(upstream)
        .await
        .context("connecting upstream")?;
    let (client_r, client_w) = client.into_split();
    let (server_r, server_w) = server.into_split();
    let cut_next = Arc::new(AtomicBool::new(false));
    let requests = requests(client_r, server_w, cut_next.clone(), left);
    let answers = answers(server_r, client_w, cut_next, cut);
    // Whichever side ends first ends the connection (both halves drop).
    tokio::select! {
        r = requests => r,
        r = answers => r,
    }
}

/// Client to server: forwards every byte; marks a download request (while cuts
/// are left) before forwarding it, so its answer is cut.
async fn requests(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    cut_next: Arc<AtomicBool>,
    left: Arc<AtomicUsize>,
) -> Result<()> {
    let mut head = Vec::new();
    // Bytes of the current request's body still to pass.
    let mut body_left = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            if body_left > 0 {
                let skip = body_left.min(chunk.len());
                body_left -= skip;
                chunk = &chunk[skip..];
                continue;
            }
            head.push(chunk[0]);
            chunk = &chunk[1..];
            if head.ends_with(b"\r\n\r\n") {
                let text = String::from_utf8_lossy(&head).into_owned();
                body_left = content_length(&text).unwrap_or(0);
                if is_download(&text) && take_one(&left) {
                    cut_next.store(true, Ordering::SeqCst);
                }
                head.clear();
            }
        }
        to.write_all(&buf[..n]).await?;
    }
}

/// Server to client: forwards every byte, except that an answer to a marked
/// request stops after its head and half its body, and the connection closes.
async fn answers(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    cut_next: Arc<AtomicBool>,
    cut: Arc<AtomicUsize>,
) -> Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    // The marked answer so far (head and the body's start).
    let mut held: Option<Vec<u8>> = None;
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        if held.is_none() && cut_next.swap(false, Ordering::SeqCst) {
            held = Some(Vec::new());
        }
        let Some(h) = held.as_mut() else {
            to.write_all(&buf[..n]).await?;
            continue;
        };
        h.extend_from_slice(&buf[..n]);
        let Some(end) = find(h, b"\r\n\r\n").map(|i| i + 4) else {
            continue;
        };
        let text = String::from_utf8_lossy(&h[..end]).into_owned();
        let half = content_length(&text).unwrap_or(2) / 2;
        if h.len() < end + half {
            continue;
        }
        to.write_all(&h[..end + half]).await?;
        to.flush().await?;
        cut.fetch_add(1, Ordering::SeqCst);
        // Dropping both halves (on return) closes the connection mid-body.
        return Ok(());
    }
}

fn take_one(left: &AtomicUsize) -> bool {
    left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

fn is_download(head: &str) -> bool {
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (method, target) = (parts.next(), parts.next().unwrap_or_default());
    method == Some("GET") && (target.contains("/files/") || target.starts_with("/v1/blobs/"))
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downloads_are_told_from_other_requests() {
        let req = |line: &str| format!("{line}\r\nhost: x\r\n\r\n");
        assert!(is_download(&req(
            "GET /v1/artifacts/m/1.0/6.1.0-47-amd64/files/m.ko HTTP/1.1"
        )));
        assert!(is_download(&req("GET /v1/blobs/abcd HTTP/1.1")));
        assert!(!is_download(&req(
            "GET /v1/artifacts/m/1.0/6.1.0-47-amd64 HTTP/1.1"
        )));
        assert!(!is_download(&req("POST /v1/builds HTTP/1.1")));
        assert_eq!(
            content_length("HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n"),
            Some(4096)
        );
        assert_eq!(content_length("HTTP/1.1 200 OK\r\n\r\n"), None);
    }
}
