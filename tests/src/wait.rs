//! Bounded polling: the only way tests wait for a condition.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::bail;

/// How often conditions are re-checked.
pub const POLL: Duration = Duration::from_millis(10);

/// Polls `check` until it returns `Some`, at most for `timeout`.
///
/// # Errors
/// `timeout` passed; the error names `what`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `check` until it returns true, at most for `timeout`.
///
/// # Errors
/// `timeout` passed; the error names `what`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(timeout, what, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// A deadline for hand-written polling loops, for conditions that need
/// `&mut` state (a connection) a closure cannot lend out:
///
/// ```ignore
/// let deadline = Deadline::new(timeout, "the follower to catch up");
/// while !caught_up(&mut client).await {
///     deadline.tick().await?;
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Deadline {
    end: Instant,
    timeout: Duration,
    what: String,
}

impl Deadline {
    /// A deadline `timeout` from now, for `what`.
    pub fn new(timeout: Duration, what: &str) -> Deadline {
        Deadline {
            end: Instant::now() + timeout,
            timeout,
            what: what.to_string(),
        }
    }

    /// Whether it has passed.
    pub fn expired(&self) -> bool {
        Instant::now() >= self.end
    }

    /// Sleeps one poll interval, or fails if the deadline has passed.
    ///
    /// # Errors
    /// The deadline passed; the error names what was awaited.
    pub async fn tick(&self) -> anyhow::Result<()> {
        if self.expired() {
            bail!(
                "timed out after {:?} waiting for {}",
                self.timeout,
                self.what
            );
        }
        tokio::time::sleep(POLL).await;
        Ok(())
    }
}
