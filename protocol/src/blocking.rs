//! Where a process runs work that blocks its thread: tokio's blocking pool, or inline for a deterministic simulation.

/// Where a process runs work that blocks its thread (file I/O, hashing): on
/// tokio's blocking pool, or inline on the calling task.
///
/// A deterministic simulation (every simulated host a single-threaded
/// runtime with virtual time, all on one OS thread) needs [`Blocking::Inline`]:
/// work on another thread finishes at a moment the simulation does not
/// choose, and survives a simulated crash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Blocking {
    /// On tokio's blocking pool ([`tokio::task::spawn_blocking`]): the
    /// runtime's workers keep serving while the work runs.
    #[default]
    Threads,
    /// Inline, on the calling task: the work happens exactly where it is
    /// awaited, and the task's thread waits for it.
    Inline,
}

/// A blocking task that did not return its result.
#[derive(Debug, thiserror::Error)]
pub enum BlockingError {
    /// The work panicked (on the blocking pool; inline, the panic unwinds
    /// through the caller instead).
    #[error("blocking task panicked: {0}")]
    Panicked(String),
    /// The runtime shut down before the work ran.
    #[error("blocking task cancelled: the runtime is shutting down")]
    Cancelled,
}

impl Blocking {
    /// Runs `f` where `self` says and returns what it returned.
    ///
    /// # Errors
    /// With [`Blocking::Threads`], [`BlockingError::Panicked`] if `f`
    /// panicked and [`BlockingError::Cancelled`] if the runtime shut down
    /// before it ran. [`Blocking::Inline`] never fails: a panic in `f`
    /// unwinds through the caller.
    pub async fn run<T: Send + 'static>(
        self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, BlockingError> {
        match self {
            Blocking::Threads => tokio::task::spawn_blocking(f).await.map_err(|e| {
                if e.is_panic() {
                    BlockingError::Panicked(panic_message(e.into_panic()))
                } else {
                    BlockingError::Cancelled
                }
            }),
            Blocking::Inline => Ok(f()),
        }
    }
}

/// The message a panic carried, when it was a string (it almost always is).
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_string(),
            Err(_) => "a panic without a message".to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn default_is_threads() {
        assert_eq!(Blocking::default(), Blocking::Threads);
    }

    #[tokio::test]
    async fn threads_runs_on_the_blocking_pool() {
        let caller = std::thread::current().id();
        let ran_on = Blocking::Threads
            .run(|| std::thread::current().id())
            .await
            .unwrap();
        assert_ne!(ran_on, caller);
    }

    #[tokio::test]
    async fn inline_runs_on_the_calling_thread() {
        let caller = std::thread::current().id();
        let ran_on = Blocking::Inline
            .run(|| std::thread::current().id())
            .await
            .unwrap();
        assert_eq!(ran_on, caller);
    }

    /// Inline work happens when the future is first polled: nothing runs
    /// before it is awaited, and it is done by the time it returns.
    #[tokio::test(start_paused = true)]
    async fn inline_runs_where_it_is_awaited() {
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ran.clone();
        let work =
            Blocking::Inline.run(move || flag.store(true, std::sync::atomic::Ordering::SeqCst));
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
        work.await.unwrap();
        assert!(ran.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_panic_on_the_pool_is_a_typed_error_with_its_message() {
        let err = Blocking::Threads
            .run(|| -> u32 { panic!("disk on fire") })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, BlockingError::Panicked(m) if m == "disk on fire"),
            "{err:?}"
        );
        let err = Blocking::Threads
            .run(|| -> u32 { panic!("{}", String::from("formatted")) })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, BlockingError::Panicked(m) if m == "formatted"),
            "{err:?}"
        );
    }

    #[test]
    fn errors_are_send_sync_static() {
        fn check<T: Send + Sync + 'static>() {}
        check::<BlockingError>();
    }
}
