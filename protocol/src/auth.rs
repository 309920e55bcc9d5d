//! The cluster secret and the challenge-response that proves it: what lets a
//! replica tell its balancer and fellow replicas from anyone else who can
//! reach its port.
//!
//! The handshake (see [`crate::handshake`]): the connecting side sends a
//! [`SecureHello`] with a fresh nonce; the accepting side answers a
//! [`Challenge`] with its own fresh nonce and a MAC over both; the
//! connecting side checks that MAC and answers a [`Proof`], a MAC over the
//! same transcript under the other side's label; the accepting side checks
//! it and welcomes. Each MAC is HMAC-SHA256 keyed with the secret over the
//! protocol version, the side's label, the declared role and node, and both
//! nonces. So the secret never crosses the wire, neither side's MAC can be
//! replayed as the other's, and a recorded handshake is worthless once
//! either side draws a new nonce.
//!
//! [`SecureHello`]: crate::SecureHello
//! [`Challenge`]: crate::Challenge
//! [`Proof`]: crate::Proof

use std::fmt;
use std::path::Path;

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use crate::{Hello, Mac, Nonce, Role, PROTOCOL_VERSION};

/// The fewest bytes a secret file may hold: 256 bits, as the MAC's key.
pub const MIN_SECRET_LEN: usize = 32;

/// The cluster secret, as read from its file. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(Vec<u8>);

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

/// Why a secret file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("reading the cluster secret file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds too little.
    #[error(
        "the cluster secret file {path} holds {len} bytes (trailing whitespace aside); \
         at least {MIN_SECRET_LEN} are needed (`semikv secret FILE` writes one)"
    )]
    TooShort {
        /// The file.
        path: String,
        /// Its length.
        len: usize,
    },
    /// No randomness for a new secret.
    #[error("drawing a new cluster secret: {0}")]
    Random(String),
}

impl ClusterSecret {
    /// The secret in `path`: its bytes, trailing whitespace (a final
    /// newline) trimmed, at least [`MIN_SECRET_LEN`] of them.
    ///
    /// # Errors
    /// [`SecretError`] when the file cannot be read or is too short.
    pub fn from_file(path: &Path) -> Result<ClusterSecret, SecretError> {
        let bytes = std::fs::read(path).map_err(|source| SecretError::Read {
            path: path.display().to_string(),
            source,
        })?;
        ClusterSecret::from_bytes(&bytes).ok_or_else(|| SecretError::TooShort {
            path: path.display().to_string(),
            len: bytes.trim_ascii_end().len(),
        })
    }

    /// `bytes`, trailing whitespace trimmed; `None` when fewer than
    /// [`MIN_SECRET_LEN`] remain.
    pub fn from_bytes(bytes: &[u8]) -> Option<ClusterSecret> {
        let trimmed = bytes.trim_ascii_end();
        (trimmed.len() >= MIN_SECRET_LEN).then(|| ClusterSecret(trimmed.to_vec()))
    }

    /// A new secret: 32 random bytes, as 64 hex digits and a newline, the
    /// form to write to a secret file.
    ///
    /// # Errors
    /// [`SecretError::Random`] when the system has no randomness to give.
    pub fn generate_file_text() -> Result<String, SecretError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| SecretError::Random(e.to_string()))?;
        let mut text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        text.push('\n');
        Ok(text)
    }

    /// This side's MAC over the handshake `transcript`.
    pub fn prove(&self, side: Side, transcript: &Transcript) -> Mac {
        Mac(self.mac(side, transcript).finalize().into_bytes().into())
    }

    /// Whether `mac` is the MAC `side` would send over `transcript` (in
    /// constant time).
    pub fn verify(&self, side: Side, transcript: &Transcript, mac: &Mac) -> bool {
        self.mac(side, transcript).verify_slice(&mac.0).is_ok()
    }

    fn mac(&self, side: Side, transcript: &Transcript) -> Hmac<Sha256> {
        // A key of any length is accepted: HMAC hashes long ones.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(mac) => mac,
            Err(_) => unreachable_hmac(),
        };
        mac.update(b"semikv cluster secret proof\0");
        mac.update(&PROTOCOL_VERSION.to_be_bytes());
        mac.update(match side {
            Side::Accepting => b"accepting\0",
            Side::Connecting => b"connecting",
        });
        mac.update(&[match transcript.role {
            Role::Client => 0,
            Role::Balancer => 1,
            Role::Replica => 2,
        }]);
        mac.update(
            &transcript
                .node
                .map_or(u64::MAX, |n| u64::from(n.0))
                .to_be_bytes(),
        );
        mac.update(&transcript.connecting.0);
        mac.update(&transcript.accepting.0);
        mac
    }
}

/// HMAC accepts keys of every length, so `new_from_slice` cannot fail; kept
/// out of line so that no `expect` sits on the path.
#[cold]
fn unreachable_hmac() -> ! {
    unreachable!("HMAC-SHA256 takes keys of any length")
}

/// Which side of the handshake a MAC is from: each signs under its own
/// label, so neither's MAC passes for the other's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The side that accepted the connection.
    Accepting,
    /// The side that connected.
    Connecting,
}

/// What both MACs of one handshake cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transcript {
    /// The role the connecting side declared.
    pub role: Role,
    /// The replica id it declared, if any.
    pub node: Option<crate::ReplicaId>,
    /// The connecting side's nonce.
    pub connecting: Nonce,
    /// The accepting side's nonce.
    pub accepting: Nonce,
}

impl Transcript {
    /// The transcript of `hello` with these nonces.
    pub fn new(hello: &Hello, connecting: Nonce, accepting: Nonce) -> Transcript {
        Transcript {
            role: hello.role,
            node: hello.node,
            connecting,
            accepting,
        }
    }
}

impl Nonce {
    /// A nonce fresh from the operating system's randomness (through
    /// [`crate::entropy`], so a simulation replays it).
    ///
    /// # Errors
    /// The system has no randomness to give.
    pub fn fresh() -> std::io::Result<Nonce> {
        let mut bytes = [0u8; 32];
        crate::entropy::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Nonce(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ReplicaId;

    fn secret(fill: u8) -> ClusterSecret {
        ClusterSecret::from_bytes(&[fill; 40]).unwrap()
    }

    fn transcript() -> Transcript {
        Transcript::new(
            &Hello::new(Role::Replica, Some(ReplicaId(2))),
            Nonce([1; 32]),
            Nonce([2; 32]),
        )
    }

    #[test]
    fn a_proof_verifies_only_for_its_secret_side_and_transcript() {
        let s = secret(7);
        let t = transcript();
        let mac = s.prove(Side::Connecting, &t);
        assert!(s.verify(Side::Connecting, &t, &mac));
        assert!(
            !secret(8).verify(Side::Connecting, &t, &mac),
            "other secret"
        );
        assert!(
            !s.verify(Side::Accepting, &t, &mac),
            "one side's proof never passes for the other's"
        );
        for changed in [
            Transcript {
                accepting: Nonce([3; 32]),
                ..t
            },
            Transcript {
                connecting: Nonce([3; 32]),
                ..t
            },
            Transcript {
                role: Role::Balancer,
                ..t
            },
            Transcript {
                node: Some(ReplicaId(3)),
                ..t
            },
        ] {
            assert!(!s.verify(Side::Connecting, &changed, &mac), "{changed:?}");
        }
    }

    #[test]
    fn a_secret_file_needs_32_bytes_and_loses_its_newline() {
        assert!(ClusterSecret::from_bytes(&[b'a'; 31]).is_none());
        let mut line = vec![b'a'; 32];
        line.push(b'\n');
        assert_eq!(
            ClusterSecret::from_bytes(&line),
            ClusterSecret::from_bytes(&[b'a'; 32])
        );
        let text = ClusterSecret::generate_file_text().unwrap();
        assert_eq!(text.len(), 65);
        assert!(ClusterSecret::from_bytes(text.as_bytes()).is_some());
        assert_ne!(text, ClusterSecret::generate_file_text().unwrap());
        assert_eq!(format!("{:?}", secret(1)), "ClusterSecret(..)");
    }

    #[test]
    fn nonces_are_fresh() {
        assert_ne!(Nonce::fresh().unwrap(), Nonce::fresh().unwrap());
    }
}
