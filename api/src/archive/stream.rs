//! The byte stream under the tar reader: optional gzip, counted and capped.
//!
//! Every byte the tar parser sees passes through [`LimitedStream::read`], so the
//! stream limit and the gzip ratio are enforced before anything is buffered, whatever
//! the headers claim. A tripped limit is remembered in the stream (the tar crate
//! turns it into an opaque `io::Error`) and read back with [`LimitedStream::into_fault`].

use std::io::{self, Read};

use flate2::read::MultiGzDecoder;

use super::error::reason;
use super::{ArchiveError, ArchiveLimits};

/// Decompressed bytes a gzip stream may produce before its ratio is checked:
/// small archives of very repetitive sources legitimately compress well.
const GZIP_RATIO_GRACE_BYTES: u64 = 16 * 1024 * 1024;

/// Tar stream bytes allowed per entry beyond its file data: its header, the
/// padding to 512 bytes, and a pax or GNU long-name record for long paths.
const STREAM_BYTES_PER_ENTRY: u64 = 4096;

/// Room for the two zero blocks ending an archive, and a little slack.
const STREAM_BYTES_FIXED: u64 = 64 * 1024;

/// Largest chunk handed to the decoder per read, so limits trip within a chunk.
const MAX_READ_CHUNK: usize = 64 * 1024;

enum Source<'a> {
    Plain(&'a [u8]),
    Gzip(MultiGzDecoder<&'a [u8]>),
}

/// A tar stream that counts its bytes and fails once a limit is passed.
pub(super) struct LimitedStream<'a> {
    source: Source<'a>,
    input_len: u64,
    produced: u64,
    max_stream: u64,
    max_ratio: u64,
    fault: Option<ArchiveError>,
}

impl<'a> LimitedStream<'a> {
    /// Wraps `input`, decompressing it if it starts with the gzip magic `1f 8b`.
    pub(super) fn new(input: &'a [u8], limits: &ArchiveLimits) -> Result<Self, ArchiveError> {
        reject_other_compression(input)?;
        let source = if input.starts_with(&[0x1f, 0x8b]) {
            Source::Gzip(MultiGzDecoder::new(input))
        } else {
            Source::Plain(input)
        };
        Ok(LimitedStream {
            source,
            input_len: input.len() as u64,
            produced: 0,
            max_stream: max_stream_bytes(limits),
            max_ratio: limits.max_gzip_ratio,
            fault: None,
        })
    }

    /// The limit this stream tripped, if any; it explains any tar read error.
    pub(super) fn into_fault(self) -> Option<ArchiveError> {
        self.fault
    }

    /// Compressed bytes consumed so far (the decoder's buffer read-ahead included).
    fn consumed(&self) -> u64 {
        match &self.source {
            Source::Plain(rest) => self.input_len - rest.len() as u64,
            Source::Gzip(decoder) => self.input_len - decoder.get_ref().len() as u64,
        }
    }

    fn check(&self) -> Option<ArchiveError> {
        if self.produced > self.max_stream {
            return Some(ArchiveError::StreamTooLarge {
                limit: self.max_stream,
            });
        }
        let compressed = self.consumed();
        let gzip = matches!(self.source, Source::Gzip(_));
        let over_ratio = self.produced > self.max_ratio.saturating_mul(compressed);
        (gzip && self.produced > GZIP_RATIO_GRACE_BYTES && over_ratio).then_some(
            ArchiveError::GzipBomb {
                unpacked: self.produced,
                compressed,
                limit: self.max_ratio,
            },
        )
    }

    fn fail(&mut self, fault: ArchiveError) -> io::Error {
        let error = io::Error::new(io::ErrorKind::InvalidData, fault.to_string());
        self.fault = Some(fault);
        error
    }
}

impl Read for LimitedStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(fault) = &self.fault {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                fault.to_string(),
            ));
        }
        let len = buf.len().min(MAX_READ_CHUNK);
        let read = match &mut self.source {
            Source::Plain(rest) => rest.read(&mut buf[..len]),
            Source::Gzip(decoder) => decoder.read(&mut buf[..len]),
        };
        let n = match read {
            Ok(n) => n,
            Err(e) => return Err(self.fail(ArchiveError::BadGzip { reason: reason(&e) })),
        };
        self.produced += n as u64;
        match self.check() {
            Some(fault) => Err(self.fail(fault)),
            None => Ok(n),
        }
    }
}

/// The whole tar stream budget: file data plus per-entry overhead.
///
/// It also bounds what the tar crate buffers on its own (GNU long names and pax
/// records are read into memory whole).
fn max_stream_bytes(limits: &ArchiveLimits) -> u64 {
    limits
        .max_unpacked_bytes
        .saturating_add(limits.max_entries.saturating_mul(STREAM_BYTES_PER_ENTRY))
        .saturating_add(STREAM_BYTES_FIXED)
}

/// Names the compression of a body we do not decompress, so the error says more
/// than "checksum mismatch".
fn reject_other_compression(input: &[u8]) -> Result<(), ArchiveError> {
    const OTHERS: [(&[u8], &str); 2] = [(b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd")];
    // bzip2: "BZh", the block size digit, then the first block's magic (pi in BCD),
    // so a plain tar whose first file is named "BZh..." is not mistaken for it.
    let bzip2 = input.len() >= 10 && input.starts_with(b"BZh") && &input[4..10] == b"1AY&SY";
    let found = OTHERS
        .iter()
        .find(|(magic, _)| input.starts_with(magic))
        .map(|(_, name)| *name);
    match found.or(bzip2.then_some("bzip2")) {
        Some(name) => Err(ArchiveError::NotATar {
            reason: format!("{name}-compressed archives are not supported, send tar or tar.gz"),
        }),
        None => Ok(()),
    }
}
