//! A build's log: capped, shared with live followers, and persisted at the end.
//!
//! The first `cap` bytes are kept; past that, the middle is dropped and only the
//! last `TAIL` bytes are kept, so both the start (commands, first errors) and
//! the end (the final failure) survive. The stored log marks the cut.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::sandbox::OutputSink;

/// Bytes kept from the end of a log that outgrew its cap.
const TAIL: usize = 64 * 1024;

#[derive(Default)]
struct Inner {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    dropped: u64,
    done: bool,
}

/// A capped, followable log.
pub struct LogBuffer {
    cap: usize,
    inner: Mutex<Inner>,
    /// Bumped on every append; followers wait on it.
    version: watch::Sender<u64>,
}

/// What a follower gets from [`LogBuffer::read_from`].
pub struct Chunk {
    pub bytes: Vec<u8>,
    /// Offset to ask for next.
    pub next: usize,
    /// The log is finished and `bytes` holds the rest of it.
    pub done: bool,
}

impl LogBuffer {
    pub fn new(cap: usize) -> Self {
        LogBuffer {
            cap: cap.max(1024),
            inner: Mutex::new(Inner::default()),
            version: watch::channel(0).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere mid-append; the bytes are still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a service line (prefixed so it is told apart from build output).
    pub fn note(&self, line: &str) {
        self.append(format!("[kmodforge] {line}\n").as_bytes());
    }

    /// Marks the log complete; followers end.
    pub fn finish(&self) {
        self.lock().done = true;
        self.version.send_modify(|v| *v += 1);
    }

    /// Everything kept, with the truncation marker if bytes were dropped.
    pub fn contents(&self) -> Vec<u8> {
        let inner = self.lock();
        let mut out = inner.head.clone();
        if inner.dropped > 0 || !inner.tail.is_empty() {
            out.extend_from_slice(&truncation_marker(inner.dropped));
            out.extend(inner.tail.iter());
        }
        out
    }

    /// The last `lines` lines (at most 8 KiB), for failure reports.
    pub fn tail_lines(&self, lines: usize) -> String {
        tail_of(&self.contents(), lines)
    }

    /// Bytes from `offset` of the live (head) part; once done, the remainder.
    pub fn read_from(&self, offset: usize) -> Chunk {
        let inner = self.lock();
        if !inner.done {
            let bytes = inner.head.get(offset..).unwrap_or_default().to_vec();
            return Chunk {
                next: offset + bytes.len(),
                bytes,
                done: false,
            };
        }
        drop(inner);
        let all = self.contents();
        Chunk {
            bytes: all.get(offset..).unwrap_or_default().to_vec(),
            next: all.len(),
            done: true,
        }
    }

    /// Waits until something changes after `seen`; returns the new version.
    pub async fn changed(&self, seen: u64) -> u64 {
        let mut rx = self.version.subscribe();
        let _ = rx.wait_for(|v| *v != seen).await;
        let v = *rx.borrow();
        v
    }

    pub fn version(&self) -> u64 {
        *self.version.borrow()
    }
}

impl OutputSink for LogBuffer {
    fn append(&self, bytes: &[u8]) {
        {
            let mut inner = self.lock();
            let room = self.cap.saturating_sub(inner.head.len());
            let (keep, rest) = bytes.split_at(room.min(bytes.len()));
            inner.head.extend_from_slice(keep);
            // Only the last TAIL bytes of what went past the head are kept.
            let skipped = rest.len().saturating_sub(TAIL);
            let rest = &rest[skipped..];
            let over = (inner.tail.len() + rest.len()).saturating_sub(TAIL);
            inner.tail.drain(..over);
            inner.dropped += (skipped + over) as u64;
            inner.tail.extend(rest);
        }
        self.version.send_modify(|v| *v += 1);
    }
}

fn truncation_marker(dropped: u64) -> Vec<u8> {
    format!("\n[kmodforge] log truncated: {dropped} bytes dropped here\n").into_bytes()
}

/// The last `lines` lines of `log`, at most 8 KiB, lossily decoded.
pub fn tail_of(log: &[u8], lines: usize) -> String {
    let start = log.len().saturating_sub(8192);
    let text = String::from_utf8_lossy(&log[start..]);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_head_and_tail_and_marks_the_cut() {
        let log = LogBuffer::new(1024);
        log.append(&vec![b'a'; 1024]);
        log.append(&vec![b'b'; TAIL + 10]);
        log.append(b"\nlast line\n");
        let all = log.contents();
        assert!(all.starts_with(&[b'a'; 1024]));
        let text = String::from_utf8_lossy(&all);
        assert!(
            text.contains("log truncated: 21 bytes dropped"),
            "{text:.200}"
        );
        assert!(text.ends_with("last line\n"));
        assert_eq!(log.tail_lines(1), "last line");
    }

    /// One append far past the tail drops all but its last TAIL bytes, and counts them.
    #[test]
    fn a_huge_append_keeps_only_the_tail() {
        let log = LogBuffer::new(1024);
        log.append(&vec![b'a'; 1024 + 10]);
        log.append(&vec![b'b'; 3 * TAIL]);
        let all = log.contents();
        let text = String::from_utf8_lossy(&all);
        let dropped = 10 + 2 * TAIL;
        assert!(
            text.contains(&format!("log truncated: {dropped} bytes dropped")),
            "{text:.1100}"
        );
        assert!(all.ends_with(&vec![b'b'; TAIL]));
        assert_eq!(
            all.len(),
            1024 + truncation_marker(dropped as u64).len() + TAIL
        );
    }

    #[test]
    fn followers_see_live_bytes_then_the_rest() {
        let log = LogBuffer::new(4096);
        log.append(b"one\n");
        let c = log.read_from(0);
        assert_eq!((c.bytes.as_slice(), c.done), (&b"one\n"[..], false));
        log.append(b"two\n");
        log.finish();
        let c = log.read_from(c.next);
        assert_eq!((c.bytes.as_slice(), c.done), (&b"two\n"[..], true));
    }
}
