//! One retry policy for every loop that waits out an outage: the source gone
//! away, the object store or the broker down, a snapshot that failed.
//!
//! The delays grow exponentially (backon's schedule, doubling) from a first
//! delay to a ceiling, and start over after a success, so a long outage costs
//! few attempts and a short one is noticed quickly.

use std::time::Duration;

use backon::BackoffBuilder;

pub struct Retry {
    builder: backon::ExponentialBuilder,
    delays: backon::ExponentialBackoff,
    ceiling: Duration,
}

impl Retry {
    /// Waits `first`, then twice as long each time, never more than `ceiling`.
    pub fn new(first: Duration, ceiling: Duration) -> Retry {
        let builder = backon::ExponentialBuilder::default()
            .with_min_delay(first)
            .with_max_delay(ceiling)
            .with_factor(2.0)
            .without_max_times();
        Retry {
            builder,
            delays: builder.build(),
            ceiling,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        // Without a maximum count the schedule never ends; the ceiling stands in if it did.
        self.delays.next().unwrap_or(self.ceiling)
    }

    /// After a success: the next failure waits the first delay again.
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_ceiling_and_starts_over_after_a_success() {
        let mut retry = Retry::new(Duration::from_millis(500), Duration::from_secs(3));
        let delays: Vec<u128> = (0..5).map(|_| retry.next_delay().as_millis()).collect();
        assert_eq!(delays, [500, 1000, 2000, 3000, 3000]);
        retry.reset();
        assert_eq!(retry.next_delay(), Duration::from_millis(500));
    }
}
