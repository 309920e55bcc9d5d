//! Where a process draws the randomness that steers it (handshake nonces, a
//! balancer's coordinator id): the operating system's, or (feature `sim`)
//! a seeded generator a deterministic simulation installs on its thread,
//! so that a seed replays the same run.
//!
//! Secrets and password salts never come from here: they are drawn from
//! the operating system directly, whatever is installed.

use std::cell::RefCell;

thread_local! {
    /// The generator installed on this thread, if any.
    static SEEDED: RefCell<Option<SplitMix64>> = const { RefCell::new(None) };
}

/// Fills `buf` with random bytes: the operating system's, unless a
/// simulation installed a seeded generator on this thread.
///
/// # Errors
/// The operating system has no randomness to give.
pub fn fill(buf: &mut [u8]) -> Result<(), getrandom::Error> {
    let seeded = SEEDED.with(|cell| match cell.borrow_mut().as_mut() {
        Some(rng) => {
            rng.fill(buf);
            true
        }
        None => false,
    });
    if seeded {
        Ok(())
    } else {
        getrandom::fill(buf)
    }
}

/// 64 random bits, as [`fill`].
///
/// # Errors
/// The operating system has no randomness to give.
pub fn u64() -> Result<u64, getrandom::Error> {
    let mut bytes = [0u8; 8];
    fill(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

/// While it lives, [`fill`] on this thread draws from a generator seeded
/// with the seed it was made with; dropping it restores the operating
/// system's randomness (or the generator installed before it).
#[cfg(feature = "sim")]
#[derive(Debug)]
#[must_use = "the seeded generator is removed when the guard drops"]
pub struct Seeded {
    previous: Option<SplitMix64>,
}

#[cfg(feature = "sim")]
impl Seeded {
    /// Installs a generator seeded with `seed` on this thread.
    pub fn install(seed: u64) -> Seeded {
        let previous = SEEDED.with(|cell| cell.borrow_mut().replace(SplitMix64(seed)));
        Seeded { previous }
    }
}

#[cfg(feature = "sim")]
impl Drop for Seeded {
    fn drop(&mut self) {
        let previous = self.previous.take();
        SEEDED.with(|cell| *cell.borrow_mut() = previous);
    }
}

/// Steele, Lea and Flood's SplitMix64: tiny, fast and statistically fine
/// for steering a simulation (not for secrets, which never come from it).
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn without_a_seed_draws_differ() {
        assert_ne!(u64().unwrap(), u64().unwrap());
    }

    #[cfg(feature = "sim")]
    #[test]
    fn a_seed_replays_and_the_guard_restores() {
        let draw = |seed| {
            let _seeded = Seeded::install(seed);
            let mut buf = [0u8; 13];
            fill(&mut buf).unwrap();
            (buf, u64().unwrap())
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
        let outer = Seeded::install(5);
        let first = u64().unwrap();
        drop(outer);
        let _again = Seeded::install(5);
        assert_eq!(u64().unwrap(), first);
    }

    #[test]
    fn splitmix_matches_its_reference_output() {
        // The first outputs for seed 0 of the reference implementation.
        let mut rng = SplitMix64(0);
        assert_eq!(rng.next(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(rng.next(), 0x6e78_9e6a_a1b9_65f4);
    }
}
