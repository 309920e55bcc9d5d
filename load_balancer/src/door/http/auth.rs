//! HTTP Basic logins, cached: each request carries its credentials, and a
//! password check costs tens of milliseconds of Argon2 (and counts against
//! the address's failed-login limit while it runs), so a checked pair is
//! remembered, keyed by a salted digest of the pair, never the password
//! itself, until the users file is reloaded (the only way a password or a
//! role changes). Remembering them for good, not for a while, keeps a
//! scraper that logged in once out of reach of anyone who fails logins
//! from its address (a shared NAT, a proxy) and holds it back.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::users::{LoginError, UserRole, Users};

/// Pairs remembered at most; past it the cache starts afresh.
const MAX_REMEMBERED: usize = 4096;

/// The door's remembered logins.
#[derive(Debug)]
pub struct Logins {
    /// Random per process: a digest taken from memory matches nothing else.
    salt: [u8; 32],
    remembered: Mutex<HashMap<[u8; 32], Remembered>>,
}

#[derive(Debug, Clone, Copy)]
struct Remembered {
    generation: u64,
    role: UserRole,
}

impl Default for Logins {
    fn default() -> Logins {
        Logins::new()
    }
}

impl Logins {
    /// An empty cache.
    pub fn new() -> Logins {
        let mut salt = [0u8; 32];
        // Without the OS's randomness the salt is all zeroes: the digests
        // are still one-way, only not unique to this process.
        let _ = getrandom::fill(&mut salt);
        Logins {
            salt,
            remembered: Mutex::new(HashMap::new()),
        }
    }

    fn key(&self, name: &str, password: &str) -> [u8; 32] {
        let mut digest = Sha256::new();
        digest.update(self.salt);
        digest.update((name.len() as u64).to_be_bytes());
        digest.update(name.as_bytes());
        digest.update(password.as_bytes());
        digest.finalize().into()
    }

    /// `name`'s role if `password` is theirs: from the cache while the
    /// users file is the generation the pair was checked against, otherwise
    /// checked by `users` (from `peer`, under its failed-login limit).
    ///
    /// # Errors
    /// As [`Users::login`].
    pub async fn login(
        &self,
        users: &Users,
        peer: IpAddr,
        name: &str,
        password: &str,
    ) -> Result<UserRole, LoginError> {
        let key = self.key(name, password);
        let generation = users.generation();
        let hit = semikv_protocol::sync::lock(&self.remembered)
            .get(&key)
            .copied()
            .filter(|r| r.generation == generation);
        if let Some(hit) = hit {
            // A role changed by a reload moved the generation: checked above.
            return Ok(hit.role);
        }
        let role = users.login(peer, name, password).await?;
        let mut remembered = semikv_protocol::sync::lock(&self.remembered);
        if remembered.len() >= MAX_REMEMBERED {
            remembered.clear();
        }
        remembered.insert(key, Remembered { generation, role });
        Ok(role)
    }
}
