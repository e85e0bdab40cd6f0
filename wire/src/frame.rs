//! The frame codec: `[u32 payload length, little-endian][u8 version][payload]`.
//!
//! Owns: the framing every Tessera TCP link speaks (store protocol now, DC protocol later),
//! its version byte, its size bound [`FRAME_BYTES_MAX`], a cancel-safe incremental reader,
//! and the typed errors of a bad frame.
//!
//! Must never: know what a payload means, allocate for a length it has not checked against
//! the bound, or turn a short read into a frame (a connection closed mid-frame is
//! [`FrameError::Truncated`]).

use std::io;

use cells::store::limits::TRANSACTION_BYTES_MAX;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The only frame version this build speaks.
pub const FRAME_VERSION: u8 = 1;
/// Bytes before the payload: the length prefix and the version byte.
pub const FRAME_HEADER_BYTES: usize = 5;
/// Largest payload of one frame. A maximal transaction (10 MB of keys and values, plus
/// the per-mutation framing of at most [`MUTATION_OVERHEAD_BYTES_MAX`] bytes) fits.
pub const FRAME_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Framing bytes of all mutations of one maximal transaction: at most two million
/// mutations (a million writes plus a million preconditions, see
/// `store_protocol::TRANSACTION_MUTATIONS_MAX`) of at most 9 framing bytes each.
pub const MUTATION_OVERHEAD_BYTES_MAX: usize = 2_000_000 * 9;
/// Bytes a [`FrameReader`] asks the socket for at once (and its initial buffer).
pub const READ_CHUNK_BYTES: usize = 256 * 1024;

const _: () = assert!(
    FRAME_BYTES_MAX >= TRANSACTION_BYTES_MAX + MUTATION_OVERHEAD_BYTES_MAX + 64 * 1024,
    "a maximal transaction must fit in one frame"
);
const _: () = assert!(FRAME_BYTES_MAX <= u32::MAX as usize);

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection in the middle of a frame.
    #[error("truncated frame: connection closed after {received} of {expected} bytes")]
    Truncated { received: usize, expected: usize },
    /// The length prefix exceeds [`FRAME_BYTES_MAX`].
    #[error("oversized frame: {len} bytes exceeds the limit of {max}")]
    Oversized { len: usize, max: usize },
    /// The version byte is not [`FRAME_VERSION`].
    #[error("unknown frame version {version} (this build speaks {FRAME_VERSION})")]
    UnknownVersion { version: u8 },
    /// The payload does not decode as a message of the protocol.
    #[error("malformed payload: {detail}")]
    Malformed { detail: String },
    /// The socket failed.
    #[error("connection I/O failed: {0}")]
    Io(#[from] io::Error),
}

impl FrameError {
    /// A short stable name for logs and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::Truncated { .. } => "truncated",
            FrameError::Oversized { .. } => "oversized",
            FrameError::UnknownVersion { .. } => "unknown_version",
            FrameError::Malformed { .. } => "malformed",
            FrameError::Io(_) => "io",
        }
    }

    /// A malformed-payload error from a decoder's message.
    pub fn malformed(detail: impl std::fmt::Display) -> Self {
        FrameError::Malformed {
            detail: detail.to_string(),
        }
    }
}

/// Starts a frame at the end of `out`: reserves the header. Finish with [`finish_frame`].
pub fn start_frame(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, FRAME_VERSION]);
    start
}

/// Completes the frame started at `start`: writes its length prefix. A payload over the
/// bound is removed again and reported as [`FrameError::Oversized`].
pub fn finish_frame(out: &mut Vec<u8>, start: usize) -> Result<(), FrameError> {
    let len = out.len() - start - FRAME_HEADER_BYTES;
    if len > FRAME_BYTES_MAX {
        out.truncate(start);
        return Err(FrameError::Oversized {
            len,
            max: FRAME_BYTES_MAX,
        });
    }
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

/// Encodes one frame holding `payload`.
pub fn encode_frame(payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    let start = start_frame(&mut out);
    out.extend_from_slice(payload);
    finish_frame(&mut out, start)?;
    Ok(out)
}

/// Checks a frame header; returns the payload length.
pub fn decode_header(header: &[u8; FRAME_HEADER_BYTES]) -> Result<usize, FrameError> {
    let version = header[4];
    if version != FRAME_VERSION {
        return Err(FrameError::UnknownVersion { version });
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(FrameError::Oversized {
            len,
            max: FRAME_BYTES_MAX,
        });
    }
    Ok(len)
}

/// Reads frames from a byte stream. [`FrameReader::next`] is cancel-safe: a cancelled call
/// loses nothing, the next call resumes where it stopped. The buffer grows to the largest
/// frame seen (at most [`FRAME_BYTES_MAX`] plus one read chunk).
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes of the frame last returned, dropped at the next call.
    returned: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: vec![0; READ_CHUNK_BYTES],
            start: 0,
            end: 0,
            returned: 0,
        }
    }

    /// The next frame's payload, `None` at a clean end of stream (between frames).
    pub async fn next(&mut self) -> Result<Option<&[u8]>, FrameError> {
        self.start += std::mem::take(&mut self.returned);
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
        loop {
            let expected = match self.buffered_frame()? {
                Ok(total) => {
                    self.returned = total;
                    let payload = self.start + FRAME_HEADER_BYTES..self.start + total;
                    return Ok(Some(&self.buf[payload]));
                }
                Err(expected) => expected,
            };
            self.make_room(expected);
            let read = self.inner.read(&mut self.buf[self.end..]).await?;
            if read == 0 {
                let received = self.end - self.start;
                if received == 0 {
                    return Ok(None);
                }
                return Err(FrameError::Truncated { received, expected });
            }
            self.end += read;
        }
    }

    /// `Ok(total)` when a whole frame of `total` bytes is buffered, else `Err(bytes)`: how
    /// many bytes the frame under way needs in all (as far as known).
    fn buffered_frame(&self) -> Result<Result<usize, usize>, FrameError> {
        let available = &self.buf[self.start..self.end];
        let Some(header) = available.first_chunk::<FRAME_HEADER_BYTES>() else {
            return Ok(Err(FRAME_HEADER_BYTES));
        };
        let total = FRAME_HEADER_BYTES + decode_header(header)?;
        if available.len() >= total {
            Ok(Ok(total))
        } else {
            Ok(Err(total))
        }
    }

    /// Ensures the buffer can take the frame under way and at least one more read.
    fn make_room(&mut self, expected: usize) {
        let needed = expected.max(READ_CHUNK_BYTES);
        if self.buf.len() - self.start < needed || self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
            if self.buf.len() < needed {
                self.buf.resize(needed, 0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: Vec<u8>) -> Vec<Result<Vec<u8>, String>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let mut reader = FrameReader::new(&bytes[..]);
            let mut out = Vec::new();
            loop {
                match reader.next().await {
                    Ok(Some(payload)) => out.push(Ok(payload.to_vec())),
                    Ok(None) => return out,
                    Err(error) => {
                        out.push(Err(error.reason().to_string()));
                        return out;
                    }
                }
            }
        })
    }

    #[test]
    fn frames_round_trip_back_to_back() {
        let mut bytes = Vec::new();
        let big = vec![7u8; 3 * READ_CHUNK_BYTES + 17];
        for payload in [&b"one"[..], &[], &big, b"four"] {
            bytes.extend(encode_frame(payload).expect("encode"));
        }
        let frames = read_all(bytes);
        let expected: Vec<Result<Vec<u8>, String>> = vec![
            Ok(b"one".to_vec()),
            Ok(Vec::new()),
            Ok(big),
            Ok(b"four".to_vec()),
        ];
        assert_eq!(frames, expected);
    }

    #[test]
    fn bad_frames_are_typed() {
        let mut truncated = encode_frame(b"hello").expect("encode");
        truncated.pop();
        assert_eq!(read_all(truncated), vec![Err("truncated".to_string())]);
        assert_eq!(read_all(vec![1, 0]), vec![Err("truncated".to_string())]);
        let oversized = [u32::MAX.to_le_bytes().as_slice(), &[FRAME_VERSION]].concat();
        assert_eq!(read_all(oversized), vec![Err("oversized".to_string())]);
        let unknown = vec![0, 0, 0, 0, FRAME_VERSION + 1];
        assert_eq!(read_all(unknown), vec![Err("unknown_version".to_string())]);
    }

    #[test]
    fn oversized_payload_is_refused_when_writing() {
        let mut out = b"kept".to_vec();
        let start = start_frame(&mut out);
        out.resize(out.len() + FRAME_BYTES_MAX + 1, 0);
        assert!(matches!(
            finish_frame(&mut out, start),
            Err(FrameError::Oversized { .. })
        ));
        assert_eq!(out, b"kept");
    }
}
