//! The sans-IO frame codec.
//!
//! A frame is a 4-byte big-endian length `N` followed by `N` bytes of one protobuf
//! [`Frame`]. `1 <= N <= max_frame`. A zero or oversized length is an error decided from the
//! header alone: the decoder never waits for, buffers or allocates the body of a frame it will
//! refuse, and it never reserves memory for bytes that have not arrived.
//!
//! [`FrameDecoder`] takes bytes in any chunking ([`FrameDecoder::push`]) and yields whole
//! frames ([`FrameDecoder::next_frame`]); [`FrameDecoder::finish`] tells a clean end of stream
//! (on a frame boundary) from a truncated one. After the first error the decoder is poisoned:
//! it never resynchronises inside a stream. [`encode`] appends one frame to a caller's
//! buffer, so that many frames coalesce into one write.

use bytes::BufMut;
use prost::Message;

use crate::pb::bus::Frame;

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 4;
/// Default maximum frame body length: 1 MiB.
pub const DEFAULT_MAX_FRAME: u32 = 1 << 20;
/// The most the decoder's buffer capacity may exceed the bytes it holds. Growth is geometric
/// below this and linear above it, so memory stays within "what arrived plus a constant"
/// while a dribbling peer still costs only O(n^2 / GROWTH_SLACK) copying.
const GROWTH_SLACK: usize = 16 * 1024;

/// Why a byte stream is not a valid sequence of frames. Every variant ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A header announced a zero-length frame.
    #[error("frame header announces length 0; frames are at least 1 byte")]
    EmptyFrame,
    /// A header announced a frame longer than the maximum.
    #[error("frame header announces {len} bytes, above the maximum of {max}")]
    TooLarge {
        /// The announced length.
        len: u32,
        /// The configured maximum.
        max: u32,
    },
    /// The stream ended inside a frame header.
    #[error("stream ended inside a frame header ({got} of 4 bytes)")]
    TruncatedHeader {
        /// Header bytes received.
        got: usize,
    },
    /// The stream ended inside a frame body.
    #[error("stream ended inside a frame body ({got} of {len} bytes)")]
    TruncatedBody {
        /// Body bytes received.
        got: usize,
        /// The announced body length.
        len: u32,
    },
    /// The body is not a valid protobuf `Frame`.
    #[error("frame body is not a valid protobuf Frame: {0}")]
    Protobuf(String),
    /// The body decoded but sets none of the frame kinds.
    #[error("frame sets no body")]
    MissingBody,
}

/// Why a frame could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The frame sets no body (it would encode to zero bytes).
    #[error("frame sets no body")]
    MissingBody,
    /// The encoded frame exceeds the peer's maximum.
    #[error("encoded frame is {len} bytes, above the maximum of {max}")]
    TooLarge {
        /// The encoded body length.
        len: usize,
        /// The maximum it was checked against.
        max: u32,
    },
}

/// Appends `frame` (header and body) to `out`; returns the bytes written.
///
/// Fails without writing anything if the frame has no body or is longer than `max_frame`.
pub fn encode(frame: &Frame, max_frame: u32, out: &mut impl BufMut) -> Result<usize, EncodeError> {
    if frame.body.is_none() {
        return Err(EncodeError::MissingBody);
    }
    let len = frame.encoded_len();
    if len > max_frame as usize {
        return Err(EncodeError::TooLarge {
            len,
            max: max_frame,
        });
    }
    // `len <= max_frame <= u32::MAX`, so the cast is exact.
    out.put_u32(len as u32);
    frame.encode_raw(out);
    Ok(HEADER_LEN + len)
}

/// Decodes one frame body (the bytes after the header) exactly as prost does, taking a
/// hand-written fast path for plain Publish frames.
pub fn decode_body(body: &[u8]) -> Result<Frame, prost::DecodeError> {
    match crate::fast::publish_frame(body) {
        Some(frame) => Ok(frame),
        None => Frame::decode(body),
    }
}

/// Checks a frame header against the maximum.
fn check_len(len: u32, max_frame: u32) -> Result<(), FrameError> {
    if len == 0 {
        Err(FrameError::EmptyFrame)
    } else if len > max_frame {
        Err(FrameError::TooLarge {
            len,
            max: max_frame,
        })
    } else {
        Ok(())
    }
}

/// Incremental frame decoder: push bytes in any chunking, pop whole frames.
#[derive(Debug)]
pub struct FrameDecoder {
    max_frame: u32,
    /// Bytes received and not yet consumed live in `buf[start..]`.
    buf: Vec<u8>,
    start: usize,
    /// Offset into `buf` of the next header not yet checked; headers are checked as soon as
    /// their 4 bytes arrive, before any of the body is buffered.
    next_header: usize,
    /// An error found while pushing, reported by `next_frame` after the frames before it.
    pending_error: Option<FrameError>,
    /// Set once an error has been returned: the stream is dead.
    failed: Option<FrameError>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl FrameDecoder {
    /// A decoder that refuses frames longer than `max_frame` bytes.
    pub fn new(max_frame: u32) -> Self {
        Self {
            max_frame,
            buf: Vec::new(),
            start: 0,
            next_header: 0,
            pending_error: None,
            failed: None,
        }
    }

    /// The maximum frame body length.
    pub fn max_frame(&self) -> u32 {
        self.max_frame
    }

    /// Bytes received and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Heap bytes the decoder holds (its buffer capacity).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Whether the decoder has failed or found an error it will report.
    pub fn is_failed(&self) -> bool {
        self.failed.is_some() || self.pending_error.is_some()
    }

    /// Appends received bytes.
    ///
    /// Headers are checked as they arrive. At the first invalid header the bytes from that
    /// header on are discarded unbuffered and the error is returned; the complete frames
    /// before it can still be taken with [`next_frame`](Self::next_frame), which then returns
    /// the same error.
    pub fn push(&mut self, data: &[u8]) -> Result<(), FrameError> {
        if let Some(err) = self.failed.as_ref().or(self.pending_error.as_ref()) {
            return Err(err.clone());
        }
        self.compact();
        // Walk the headers that become complete with `data`, before copying anything.
        let old_len = self.buf.len();
        let total = old_len + data.len();
        let mut keep = data.len();
        while self.next_header + HEADER_LEN <= total {
            let mut header = [0u8; HEADER_LEN];
            for (i, byte) in header.iter_mut().enumerate() {
                let at = self.next_header + i;
                *byte = if at < old_len {
                    self.buf[at]
                } else {
                    data[at - old_len]
                };
            }
            let len = u32::from_be_bytes(header);
            if let Err(err) = check_len(len, self.max_frame) {
                // Keep only the frames before the bad header, never its bytes.
                keep = self.next_header.saturating_sub(old_len);
                self.buf.truncate(self.next_header.min(old_len));
                self.pending_error = Some(err.clone());
                self.append(&data[..keep]);
                return Err(err);
            }
            self.next_header += HEADER_LEN + len as usize;
        }
        self.append(&data[..keep]);
        Ok(())
    }

    fn compact(&mut self) {
        if self.start == 0 {
            return;
        }
        if self.start == self.buf.len() || self.start >= self.buf.capacity() / 2 {
            self.buf.drain(..self.start);
            self.next_header -= self.start;
            self.start = 0;
        }
    }

    fn append(&mut self, data: &[u8]) {
        let needed = self.buf.len() + data.len();
        if needed > self.buf.capacity() {
            let live = needed - self.start;
            let target = needed + live.min(GROWTH_SLACK);
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.extend_from_slice(data);
    }

    /// Returns the next whole frame, `Ok(None)` if more bytes are needed, or the stream's
    /// error once the frames before it have been taken.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let avail = &self.buf[self.start..];
        if avail.len() < HEADER_LEN {
            return self.end_of_buffered();
        }
        let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]);
        // Checked in `push`; a header in the buffer is always within bounds.
        debug_assert!(check_len(len, self.max_frame).is_ok());
        let end = HEADER_LEN + len as usize;
        if avail.len() < end {
            return self.end_of_buffered();
        }
        // Decoding from a slice copies `bytes` fields into their own allocations, so a queued
        // payload never pins the whole read buffer it arrived in.
        let decoded = decode_body(&avail[HEADER_LEN..end]);
        self.start += end;
        match decoded {
            Ok(frame) if frame.body.is_none() => Err(self.fail(FrameError::MissingBody)),
            Ok(frame) => Ok(Some(frame)),
            Err(err) => Err(self.fail(FrameError::Protobuf(err.to_string()))),
        }
    }

    fn end_of_buffered(&mut self) -> Result<Option<Frame>, FrameError> {
        match self.pending_error.take() {
            Some(err) if self.start == self.buf.len() => Err(self.fail(err)),
            Some(err) => {
                self.pending_error = Some(err);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    fn fail(&mut self, err: FrameError) -> FrameError {
        self.failed = Some(err.clone());
        self.buf = Vec::new();
        self.start = 0;
        self.next_header = 0;
        err
    }

    /// The peer closed its side: `Ok` on a frame boundary, else the truncation error.
    ///
    /// Call after taking every frame with [`next_frame`](Self::next_frame).
    pub fn finish(&mut self) -> Result<(), FrameError> {
        if let Some(err) = self.failed.as_ref().or(self.pending_error.as_ref()) {
            return Err(err.clone());
        }
        let avail = &self.buf[self.start..];
        if avail.is_empty() {
            return Ok(());
        }
        let err = if avail.len() < HEADER_LEN {
            FrameError::TruncatedHeader { got: avail.len() }
        } else {
            let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]);
            FrameError::TruncatedBody {
                got: avail.len() - HEADER_LEN,
                len,
            }
        };
        Err(self.fail(err))
    }
}
