//! Waiting for an event outside the test (a slot position, a metric, the
//! archive's window), blocking or awaiting, never for a fixed time.

use std::time::{Duration, Instant};

/// A wait's deadline, and the pause before the next look: short at first so
/// the event is seen soon after it happens.
pub struct Wait<'a> {
    deadline: Instant,
    what: &'a str,
    pause: Duration,
}

impl Wait<'_> {
    pub fn new(limit: Duration, what: &str) -> Wait<'_> {
        Wait {
            deadline: Instant::now() + limit,
            what,
            pause: Duration::from_millis(5),
        }
    }

    /// The pause before the next look; panics naming the event past the deadline.
    pub fn next_pause(&mut self) -> Duration {
        assert!(
            Instant::now() < self.deadline,
            "timed out waiting for {}",
            self.what
        );
        let pause = self.pause;
        self.pause = (pause * 2).min(Duration::from_millis(100));
        pause
    }
}

/// An event a test can wait for in either kind of test: `wait` blocks a
/// test without a runtime, `arrives` awaits it without holding up an async
/// test's runtime. Each look is a quick query.
pub struct Event<'a> {
    what: String,
    limit: Duration,
    happened: Box<dyn FnMut() -> bool + 'a>,
}

impl<'a> Event<'a> {
    pub fn new(
        what: impl Into<String>,
        limit: Duration,
        happened: impl FnMut() -> bool + 'a,
    ) -> Self {
        Event {
            what: what.into(),
            limit,
            happened: Box::new(happened),
        }
    }

    pub fn wait(self) {
        wait_for(self.limit, &self.what, self.happened)
    }

    pub async fn arrives(mut self) {
        let mut wait = Wait::new(self.limit, &self.what);
        while !(self.happened)() {
            tokio::time::sleep(wait.next_pause()).await;
        }
    }
}

/// Waits, blocking, until `condition` holds: for tests without a runtime.
pub fn wait_for(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let mut wait = Wait::new(limit, what);
    while !condition() {
        std::thread::sleep(wait.next_pause());
    }
}

/// Awaits `event` without holding up the test's runtime: for async tests.
pub async fn wait_until<F: std::future::Future<Output = bool>>(
    limit: Duration,
    what: &str,
    mut event: impl FnMut() -> F,
) {
    let mut wait = Wait::new(limit, what);
    while !event().await {
        tokio::time::sleep(wait.next_pause()).await;
    }
}
