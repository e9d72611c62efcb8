//! Latency percentiles for the benchmark binaries, from an HDR histogram: a run records its samples
//! without keeping or sorting them, and every quantile is exact to three significant digits.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Significant digits each recorded time keeps: a quantile is within 0.1% of the exact one, finer
/// than the run-to-run spread of any benchmark here.
pub const SIGNIFICANT_DIGITS: u8 = 3;

/// Recorded times, in nanoseconds, in a histogram that grows to whatever is recorded.
#[derive(Debug, Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    /// No times yet.
    #[must_use]
    pub fn new() -> Self {
        Self(Histogram::new(SIGNIFICANT_DIGITS).expect("3 significant digits is within 0 to 5"))
    }

    /// Records one time.
    pub fn record(&mut self, time: Duration) {
        let nanos = u64::try_from(time.as_nanos()).unwrap_or(u64::MAX);
        // An auto-resizing histogram refuses a value only when its counts would not fit in
        // memory's address space, which no u64 of nanoseconds needs.
        self.0
            .record(nanos)
            .expect("an auto-resizing histogram takes any u64");
    }

    /// How many times were recorded.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// Whether no time was recorded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `q` quantile (0.5 the median, 0.99 the p99): the time that a `q` share of the recorded
    /// ones are at most, to three significant digits. `None` when none was recorded.
    #[must_use]
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        (!self.is_empty()).then(|| Duration::from_nanos(self.0.value_at_quantile(q)))
    }

    /// [`Latencies::quantile`] in milliseconds; NaN when none was recorded.
    #[must_use]
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.quantile(q)
            .map_or(f64::NAN, |time| time.as_secs_f64() * 1e3)
    }

    /// [`Latencies::quantile`] in microseconds; NaN when none was recorded.
    #[must_use]
    pub fn quantile_us(&self, q: f64) -> f64 {
        self.quantile(q)
            .map_or(f64::NAN, |time| time.as_secs_f64() * 1e6)
    }
}

impl Extend<Duration> for Latencies {
    fn extend<I: IntoIterator<Item = Duration>>(&mut self, times: I) {
        for time in times {
            self.record(time);
        }
    }
}

impl FromIterator<Duration> for Latencies {
    fn from_iter<I: IntoIterator<Item = Duration>>(times: I) -> Self {
        let mut latencies = Self::new();
        latencies.extend(times);
        latencies
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `got` is within three significant digits of `exact`.
    fn close(got: f64, exact: f64) -> bool {
        (got - exact).abs() <= exact * 1e-3
    }

    #[test]
    fn quantiles_are_exact_to_three_significant_digits() {
        let latencies: Latencies = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(latencies.len(), 100);
        for (q, exact) in [
            (0.0, 1.0),
            (0.5, 50.0),
            (0.9, 90.0),
            (0.99, 99.0),
            (1.0, 100.0),
        ] {
            let got = latencies.quantile_ms(q);
            assert!(close(got, exact), "q {q}: {got} ms, not {exact} ms");
        }
        // Never below the exact value: a quantile is the top of its bucket.
        assert!(latencies.quantile_ms(0.5) >= 50.0);
        assert!(close(latencies.quantile_us(0.5), 50_000.0));
    }

    #[test]
    fn times_far_apart_keep_their_precision() {
        // From 1 µs to 10 s in one histogram: it grows to the largest, and the smallest keep
        // their own precision.
        let mut latencies = Latencies::new();
        for micros in [1, 7, 333, 12_345, 999_999, 10_000_000] {
            latencies.record(Duration::from_micros(micros));
        }
        #[allow(clippy::cast_precision_loss)]
        for (i, micros) in [1u64, 7, 333, 12_345, 999_999, 10_000_000]
            .into_iter()
            .enumerate()
        {
            // Mid-way between ranks, so that rounding cannot tip it into the next one.
            let q = (i as f64 + 0.5) / 6.0;
            let got = latencies.quantile_us(q);
            assert!(
                close(got, micros as f64),
                "q {q}: {got} µs, not {micros} µs"
            );
        }
    }

    #[test]
    fn no_times_have_no_quantile() {
        let latencies = Latencies::default();
        assert!(latencies.is_empty());
        assert_eq!(latencies.quantile(0.5), None);
        assert!(latencies.quantile_ms(0.5).is_nan());
    }
}
