//! A TCP proxy that adds a round trip: each direction is delayed by half of it
//! ([`orkestra_bench::delay`], what `repo-bench --rtt` uses), for measuring another client (a
//! service, another ORM) over the same emulated network as the benchmark.
//!
//! `cargo run --release -p orkestra-bench --bin delay-proxy -- <rtt ms> <server host:port>`: prints
//! the address to connect to, then relays until stopped.

use std::net::ToSocketAddrs;
use std::time::Duration;

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: delay-proxy <rtt ms> <server host:port>";
    let rtt: f64 = args.next().context(usage)?.parse().context(usage)?;
    anyhow::ensure!(
        (0.0..=100.0).contains(&rtt),
        "the round trip is in milliseconds, 0 to 100"
    );
    let server = args
        .next()
        .context(usage)?
        .to_socket_addrs()?
        .next()
        .context("the server's address")?;
    let address = orkestra_bench::delay::start(server, Duration::from_secs_f64(rtt / 2_000.0))?;
    println!("{address}");
    loop {
        std::thread::park();
    }
}
