//! What travels inside a sealed packet ([`super::crypto`]) and how tcp frames are delimited.
//!
//! # Plaintext (postcard)
//! ```text
//! Envelope { from: node id, body: Body }
//! Body = Swim(bytes)            udp: a foca packet (header, updates, no custom broadcasts)
//!      | Push([Record])         udp: records pushed by their owner to the members of a scope
//!      | SyncRequest(SyncState) tcp: "here is my state for the scopes we share"
//!      | SyncReply(SyncState)   tcp: the other side's state, for the scopes the request named
//! SyncState { scopes: [scope], records: [Record] }
//! ```
//! A body that arrives on the wrong transport (a sync body in a datagram, say) is ignored.
//!
//! # TCP frame
//! `u32` big-endian length, then that many bytes of one sealed packet. One request frame, one
//! reply frame, then the connection closes.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::records::Record;

/// Largest tcp frame accepted (a full-state sync of a big scope fits well under it).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// The plaintext of every packet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Envelope {
    pub(crate) from: Arc<str>,
    pub(crate) body: Body,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Body {
    Swim(Vec<u8>),
    Push(Vec<Record>),
    SyncRequest(SyncState),
    SyncReply(SyncState),
}

/// One side's state in an anti-entropy exchange.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct SyncState {
    /// The scopes the sender has joined.
    pub(crate) scopes: Vec<String>,
    /// The membership table and the records of the scopes shared with the other side,
    /// tombstones included.
    pub(crate) records: Vec<Record>,
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(frame.len())
        .ok()
        .filter(|l| (*l as usize) <= MAX_FRAME)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame too large"))?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(frame).await?;
    w.flush().await
}

/// Memory a frame is given before its bytes arrive; it grows as they do.
const FRAME_CHUNK: usize = 64 * 1024;

/// Reads one frame. The buffer grows with the bytes that arrive, not with the length the
/// prefix claims: a 4-byte header alone cannot make a node set aside [`MAX_FRAME`].
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {MAX_FRAME}"),
        ));
    }
    let mut buf = Vec::with_capacity(len.min(FRAME_CHUNK));
    let read = r.take(len as u64).read_to_end(&mut buf).await?;
    if read < len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("frame cut short: {read} of {len} bytes"),
        ));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gossip_wire_frames_roundtrip_and_refuse_oversize() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_frame(&mut a, b"hello").await.unwrap();
        assert_eq!(read_frame(&mut b).await.unwrap(), b"hello");
        let huge = u32::try_from(MAX_FRAME + 1).unwrap().to_be_bytes();
        a.write_all(&huge).await.unwrap();
        let err = read_frame(&mut b).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        // A frame cut short is an error, not a short read.
        a.write_all(&10u32.to_be_bytes()).await.unwrap();
        a.write_all(b"abc").await.unwrap();
        drop(a);
        assert!(read_frame(&mut b).await.is_err());
    }
}
