//! Fault test on a Redis that persists every write before it answers
//! (`appendonly yes`, `appendfsync always`): the server is stopped three
//! times in the middle of 10 000 confirmed publishes while a consumer runs,
//! without waiting for the consumer to catch up, and every confirmed message
//! must still be handled at least once.
//!
//! The test starts its own `redis-server` (from `PATH`) on a free port with
//! its data in a private directory, so it does not touch the shared Redis and
//! takes no outage lock. It is still named `outage_*` so the test command runs
//! it in the serial phase: it is heavy. The guard kills the server and removes
//! the directory on drop, also when the test panics.
#![cfg(feature = "redis-streams")]

mod common;

use common::*;
use finsight_bus::redis_streams::{RedisStreams, RedisStreamsConfig};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Bound of every wait for the private server (ready, stopped).
const WAIT: Duration = Duration::from_secs(10);

/// How the private server is stopped.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// `redis-cli shutdown nosave`: no RDB, the AOF is flushed and kept.
    ShutdownNosave,
    /// `kill -TERM`: Redis shuts down cleanly.
    Term,
    /// SIGKILL: a crash; only what was fsynced before answering survives.
    Kill,
}

/// A `redis-server` child process with AOF on every write, on its own port
/// and directory. Dropping it kills the server and removes the directory.
struct PrivateRedis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts a server on a free port; tries another port (at most five)
    /// when the one found was taken before the server bound it.
    fn start() -> io::Result<Self> {
        let dir = std::env::temp_dir().join(finsight_testkit::unique("finsight-redis-aof"));
        std::fs::create_dir_all(&dir)?;
        let mut r = Self {
            port: 0,
            dir,
            child: None,
        };
        let mut last = io::Error::other("no port tried");
        for _ in 0..5 {
            r.port = free_port()?;
            match r.spawn() {
                Ok(()) => return Ok(r),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (same arguments and directory every time) and waits,
    /// bounded, until it answers `PING` (not `-LOADING`).
    fn spawn(&mut self) -> io::Result<()> {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", "", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--logfile", "redis.log"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(io::Error::other(format!(
                    "redis-server exited at start: {status}; log:\n{}",
                    self.log_tail()
                )));
            }
            if ping(self.port) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(io::Error::other(format!(
            "redis-server did not answer PING within {WAIT:?}; log:\n{}",
            self.log_tail()
        )))
    }

    /// Stops the server and waits, bounded, until the process has exited.
    fn stop(&mut self, how: Stop) -> io::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        match how {
            Stop::ShutdownNosave => {
                // The connection closes on shutdown: the status means nothing.
                let _ = Command::new("redis-cli")
                    .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                    .args(["shutdown", "nosave"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()?;
            }
            Stop::Term => {
                Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status()?;
            }
            Stop::Kill => child.kill()?,
        }
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(io::Error::other(format!(
            "redis-server did not stop ({how:?}) within {WAIT:?}"
        )))
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("private redis log (tail):\n{}", self.log_tail());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port nothing listens on right now (bound to port 0, then released).
fn free_port() -> io::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    l.local_addr().map(|a| a.port())
}

/// One `PING` with short timeouts: `true` only on `+PONG`.
fn ping(port: u16) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_redis_aof_restarts_lose_no_confirmed_message() {
    init_tracing();
    let mut server = PrivateRedis::start().expect("start private redis-server");
    let mut cfg = RedisStreamsConfig::new(server.url());
    cfg.key_prefix = format!("{}:", finsight_testkit::unique("bus-aof"));
    cfg.block = Duration::from_millis(200);
    let t = RedisStreams::connect(cfg).await.unwrap();
    let mut run = Run::start(t.clone(), "outage-aof", "aof").await;
    for (i, how) in [Stop::ShutdownNosave, Stop::Term, Stop::Kill]
        .into_iter()
        .enumerate()
    {
        let at = run.at_checkpoint.recv().await.expect("checkpoint");
        // No waiting for the consumer: the publisher goes on and Redis stops
        // with confirmed entries not yet read or not yet acked.
        run.go.send(()).await.unwrap();
        let backlog = at.saturating_sub(run.handled.lock().await.len() as u64);
        let subscribed = run.consumer.stats().subscriptions;
        tokio::task::block_in_place(|| server.stop(how)).expect("stop private redis");
        tokio::time::sleep(Duration::from_secs(2)).await;
        tokio::task::block_in_place(|| server.spawn()).expect("restart private redis");
        eprintln!(
            "outage {} ({how:?}) after {at} publishes, {backlog} confirmed not yet handled at the stop",
            i + 1
        );
        // Let the consumer and the shared connection notice this restart
        // before the next stop, so that three outages are three (the
        // publisher may reach its next checkpoint sooner). Not a catch-up:
        // the backlog stays. Bounded.
        run.wait_restart_noticed(subscribed, || t.reconnects() > i as u64)
            .await;
        assert!(
            run.consumer.stats().subscriptions > subscribed,
            "consumer did not re-subscribe after outage {}: {:?}",
            i + 1,
            run.consumer.stats()
        );
        assert!(
            t.reconnects() > i as u64,
            "no reconnect after outage {}: {}",
            i + 1,
            t.reconnects()
        );
    }
    let (bus, handled) = run.finish().await;
    assert!(t.reconnects() >= 3, "reconnects: {}", t.reconnects());
    let h = bus.health().await;
    assert_eq!(h.reconnects, t.reconnects(), "{h:?}");
    assert_eq!(h.dead_letter_failures, 0, "{h:?}");
    // With the data kept, Redis never lost the topology (reported only).
    eprintln!("topology re-declarations: {}", t.topology_redeclares());
    assert_eq!(handled.lock().await.len() as u64, TOTAL);
    drop(server);
}
