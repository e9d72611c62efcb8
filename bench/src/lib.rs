//! The benchmarks of the Orkestra data layer (the programs of `src/bin`, run by the `just bench*`
//! verbs and described in `BENCHMARKS.md`), and what they share: charts, latency percentiles and
//! a delaying proxy. Their databases come from the test harness (`orkestra_tests`).

pub mod delay;
pub mod plot;
pub mod stats;
