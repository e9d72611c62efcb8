//! Small statistics shared by the benchmark binaries.

use std::time::Duration;

/// The `q` quantile (0.5 the median, 0.99 the p99) of `samples`, in milliseconds, by the nearest
/// rank; sorts `samples` first. NaN when there are none.
pub fn quantile_ms(samples: &mut [Duration], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_unstable();
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let index = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[index].as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_the_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(quantile_ms(&mut samples, 0.5), 51.0);
        assert_eq!(quantile_ms(&mut samples, 0.99), 99.0);
        assert_eq!(quantile_ms(&mut samples, 0.0), 1.0);
        assert!(quantile_ms(&mut [], 0.5).is_nan());
    }
}
