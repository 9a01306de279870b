//! Sealing of every gossip packet (udp datagrams and tcp sync frames) under the cluster keyring.
//!
//! # Wire format
//! ```text
//! +---------+-------------+-------------+------------------------------+
//! | version | key id      | nonce       | ciphertext | tag (16 bytes)  |
//! | 1 byte  | u32, BE     | 12 bytes    | ChaCha20-Poly1305            |
//! +---------+-------------+-------------+------------------------------+
//! ```
//! The 17-byte header (version, key id, nonce) is the AEAD's associated data, so none of it can
//! be changed without the tag failing. The nonce is random (from the system source): with
//! 96 bits, collisions stay negligible for far more packets than a key lives for.
//!
//! The keyring is ordered newest first: the newest key seals, every key opens. A rotation adds
//! the new key behind the current one on every node, then moves it to the front, then drops the
//! old one: no node ever receives a packet it cannot open.

use std::fmt;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use super::error::GossipError;

/// Version byte of the sealed format.
pub const WIRE_VERSION: u8 = 1;
const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
const TAG_LEN: usize = 16;
/// Bytes sealing adds to a plaintext.
pub const SEAL_OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// Why a packet was not opened. Every case counts as an authentication failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Shorter than a header and a tag.
    #[error("packet of {len} bytes is too short to be sealed")]
    Truncated {
        /// Its length.
        len: usize,
    },
    /// A version byte this build does not know.
    #[error("unknown wire version {version}")]
    Version {
        /// The version byte.
        version: u8,
    },
    /// Sealed under a key id not in the keyring.
    #[error("unknown key id {key_id}")]
    UnknownKey {
        /// The key id.
        key_id: u32,
    },
    /// The tag did not verify: wrong key, or the packet was changed.
    #[error("authentication failed under key id {key_id}")]
    Auth {
        /// The key id it claimed.
        key_id: u32,
    },
}

/// The cluster gossip keys, newest first.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<(u32, std::sync::Arc<LessSafeKey>)>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("key_ids", &self.key_ids())
            .finish()
    }
}

impl Keyring {
    /// Builds a keyring from `(key id, key)` pairs, newest first. At least one key; ids unique.
    pub fn new(keys: Vec<(u32, [u8; 32])>) -> Result<Self, GossipError> {
        if keys.is_empty() {
            return Err(GossipError::Keyring {
                reason: "no key".into(),
            });
        }
        let mut out = Vec::with_capacity(keys.len());
        for (id, key) in keys {
            if out.iter().any(|(known, _)| *known == id) {
                return Err(GossipError::Keyring {
                    reason: format!("key id {id} appears twice"),
                });
            }
            let unbound =
                UnboundKey::new(&CHACHA20_POLY1305, &key).map_err(|e| GossipError::Keyring {
                    reason: format!("key id {id}: {e}"),
                })?;
            out.push((id, std::sync::Arc::new(LessSafeKey::new(unbound))));
        }
        Ok(Self { keys: out })
    }

    /// The ids of the keys, newest first.
    pub fn key_ids(&self) -> Vec<u32> {
        self.keys.iter().map(|(id, _)| *id).collect()
    }

    /// Seals `plaintext` under the newest key.
    pub fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, GossipError> {
        let (key_id, key) = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_unspecified| GossipError::Seal { key_id: *key_id })?;
        let mut out = Vec::with_capacity(SEAL_OVERHEAD + plaintext.len());
        out.push(WIRE_VERSION);
        out.extend_from_slice(&key_id.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let (header, body) = out.split_at_mut(HEADER_LEN);
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&header[..]),
                body,
            )
            .map_err(|_unspecified| GossipError::Seal { key_id: *key_id })?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Opens a sealed packet with whichever key its header names.
    pub fn open(&self, packet: &[u8]) -> Result<Vec<u8>, OpenError> {
        if packet.len() < SEAL_OVERHEAD {
            return Err(OpenError::Truncated { len: packet.len() });
        }
        let (header, sealed) = packet.split_at(HEADER_LEN);
        if header[0] != WIRE_VERSION {
            return Err(OpenError::Version { version: header[0] });
        }
        let key_id = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        let key = self
            .keys
            .iter()
            .find(|(id, _)| *id == key_id)
            .map(|(_, key)| key)
            .ok_or(OpenError::UnknownKey { key_id })?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&header[5..]);
        let mut buf = sealed.to_vec();
        let plain_len = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(header),
                &mut buf,
            )
            .map_err(|_unspecified| OpenError::Auth { key_id })?
            .len();
        buf.truncate(plain_len);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(keys: &[(u32, u8)]) -> Keyring {
        Keyring::new(keys.iter().map(|(id, b)| (*id, [*b; 32])).collect()).unwrap()
    }

    #[test]
    fn gossip_crypto_roundtrip_and_rotation() {
        let old = ring(&[(1, 1)]);
        let rotating = ring(&[(2, 2), (1, 1)]);
        let new = ring(&[(2, 2)]);
        let sealed = old.seal(b"hello").unwrap();
        assert_eq!(sealed.len(), 5 + SEAL_OVERHEAD);
        assert_eq!(rotating.open(&sealed).unwrap(), b"hello");
        assert_eq!(new.open(&sealed), Err(OpenError::UnknownKey { key_id: 1 }));
        let sealed = rotating.seal(b"world").unwrap();
        assert_eq!(new.open(&sealed).unwrap(), b"world");
    }

    #[test]
    fn gossip_crypto_rejects_tampered_truncated_and_wrong_key() {
        let k = ring(&[(7, 7)]);
        let sealed = k.seal(b"payload").unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(k.open(&bad).is_err(), "flipping byte {i} went unnoticed");
        }
        assert!(matches!(
            k.open(&sealed[..sealed.len() - 1]),
            Err(OpenError::Auth { .. })
        ));
        assert!(matches!(
            k.open(&sealed[..10]),
            Err(OpenError::Truncated { .. })
        ));
        let other = ring(&[(7, 8)]);
        assert_eq!(other.open(&sealed), Err(OpenError::Auth { key_id: 7 }));
        assert!(Keyring::new(vec![]).is_err());
        assert!(Keyring::new(vec![(1, [0; 32]), (1, [1; 32])]).is_err());
    }
}
