//! A proxy that delays each direction by a fixed time, as a network would. It runs on threads of
//! its own, off the benchmark's runtime thread (whose CPU time is measured), and forwards each
//! chunk when its time comes, so that chunks in flight do not add up their delays. Tokio's timer
//! counts in milliseconds, too coarse for a quarter of one: each chunk sleeps until shortly before
//! it is due, then spins for the rest. `repo-bench --rtt` runs its pools through it, and the
//! `delay-proxy` program runs one for other clients.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How long before a chunk is due its thread stops sleeping and spins: more than the usual
/// overshoot of a sleep under Linux's default 50 µs timer slack.
const SPIN: Duration = Duration::from_micros(80);

/// Starts the proxy to `server`; its address.
///
/// # Errors
/// When no local port can be bound.
pub fn start(server: SocketAddr, one_way: Duration) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(upstream) = TcpStream::connect(server) else {
                continue;
            };
            for stream in [&client, &upstream] {
                let _ = stream.set_nodelay(true);
            }
            let pairs = client
                .try_clone()
                .and_then(|c| Ok((c, upstream.try_clone()?)));
            if let Ok((client_2, upstream_2)) = pairs {
                pump(client, upstream, one_way);
                pump(upstream_2, client_2, one_way);
            }
        }
    });
    Ok(address)
}

/// Forwards `from` to `to`, each chunk `delay` after it was read.
fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (send, receive) = mpsc::channel::<(Instant, Vec<u8>)>();
    thread::spawn(move || {
        let mut buffer = vec![0; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buffer) {
            if send
                .send((Instant::now() + delay, buffer[..n].to_vec()))
                .is_err()
            {
                break;
            }
        }
    });
    thread::spawn(move || {
        for (due, chunk) in receive {
            wait_until(due);
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

fn wait_until(due: Instant) {
    let now = Instant::now();
    if due > now + SPIN {
        thread::sleep(due - now - SPIN);
    }
    while Instant::now() < due {
        std::hint::spin_loop();
    }
}
