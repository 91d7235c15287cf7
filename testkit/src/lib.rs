//! Test support shared by the FinSight crates' test suites. Not published.
//!
//! * [`redis_url`] / [`amqp_url`]: where the real services are
//!   (`FINSIGHT_REDIS_URL`, default `redis://127.0.0.1:6379`;
//!   `FINSIGHT_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`).
//! * [`unique`]: a name no other test, thread or process uses, for Redis key
//!   prefixes, queue names and exchange names, so tests run in parallel.
//! * [`RedisOutage`] / [`RabbitOutage`]: stop a real service for a fault test
//!   and restore it when the guard drops — also when the test panics.
//! * [`RabbitBlocked`]: raise RabbitMQ's memory alarm (publishers blocked,
//!   no confirms) and clear it when the guard drops.
//!
//! # Outage tests
//!
//! A test that stops a service must be named `outage_*`. The repository's test
//! command runs every other test first, in parallel, then the `outage_*` tests
//! one at a time, so an outage never disturbs another test. The guards also
//! take an exclusive file lock (`$TMPDIR/finsight-outage.lock`), so outage
//! tests started by hand in several processes queue instead of overlapping.
//!
//! ```no_run
//! # fn demo() -> std::io::Result<()> {
//! let outage = finsight_testkit::RedisOutage::stop()?; // Redis is down now
//! // ... assert the code under test degrades as documented ...
//! outage.restore()?; // or let it drop: Drop restores too, bounded in time
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

use std::fs::File;
use std::io;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Default Redis URL when `FINSIGHT_REDIS_URL` is unset.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Default AMQP URL when `FINSIGHT_AMQP_URL` is unset.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// How long a guard waits for a service to come back before it gives up.
pub const RESTORE_TIMEOUT: Duration = Duration::from_secs(90);

/// The Redis URL the tests use: `FINSIGHT_REDIS_URL` or [`DEFAULT_REDIS_URL`].
pub fn redis_url() -> String {
    std::env::var("FINSIGHT_REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.to_owned())
}

/// The AMQP URL the tests use: `FINSIGHT_AMQP_URL` or [`DEFAULT_AMQP_URL`].
pub fn amqp_url() -> String {
    std::env::var("FINSIGHT_AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.to_owned())
}

/// A name unique across tests, threads and processes: `"<label>-<pid>-<nanos>-<n>"`.
///
/// Use it as a Redis key prefix (append `:`), a queue name or an exchange name.
pub fn unique(label: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{label}-{}-{nanos:x}-{n}", std::process::id())
}

/// `host:port` of a `scheme://[user[:pass]@]host[:port][/...]` URL.
fn host_port(url: &str, default_port: u16) -> (String, u16) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => {
            (h.to_owned(), p.parse().unwrap_or(default_port))
        }
        _ => (hostport.to_owned(), default_port),
    }
}

/// Host and port of [`redis_url`].
pub fn redis_host_port() -> (String, u16) {
    host_port(&redis_url(), 6379)
}

/// Host and port of [`amqp_url`].
pub fn amqp_host_port() -> (String, u16) {
    host_port(&amqp_url(), 5672)
}

/// True when something accepts TCP connections at `host:port` within 500 ms.
pub fn port_open(host: &str, port: u16) -> bool {
    use std::net::ToSocketAddrs;
    let Ok(addrs) = (host, port).to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|a| TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok())
}

fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    ready()
}

fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// An exclusive lock that serialises outage tests across processes.
fn outage_lock() -> io::Result<File> {
    let path: PathBuf = std::env::temp_dir().join("finsight-outage.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    file.lock()?;
    Ok(file)
}

fn redis_ping(host: &str, port: u16) -> bool {
    Command::new("redis-cli")
        .args(["-h", host, "-p", &port.to_string(), "ping"])
        .stdin(Stdio::null())
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "PONG")
        .unwrap_or(false)
}

/// Redis stopped for a fault test (`redis-cli shutdown nosave`); restored on
/// [`RedisOutage::restore`] or on drop, even while a failed test unwinds.
#[derive(Debug)]
pub struct RedisOutage {
    host: String,
    port: u16,
    restored: bool,
    _lock: File,
}

impl RedisOutage {
    /// Stops Redis at [`redis_url`] and waits (bounded) until its port is closed.
    ///
    /// # Errors
    /// When `redis-cli` is missing or Redis does not stop within
    /// [`RESTORE_TIMEOUT`].
    pub fn stop() -> io::Result<Self> {
        let lock = outage_lock()?;
        let (host, port) = redis_host_port();
        let mut guard = Self {
            host,
            port,
            restored: false,
            _lock: lock,
        };
        guard.ensure_up()?;
        // `shutdown nosave` closes the connection, so its exit status is not meaningful.
        let _ = Command::new("redis-cli")
            .args(["-h", &guard.host, "-p", &guard.port.to_string()])
            .args(["shutdown", "nosave"])
            .stdin(Stdio::null())
            .output()?;
        if !wait_until(RESTORE_TIMEOUT, || !port_open(&guard.host, guard.port)) {
            return Err(io::Error::other("redis did not stop"));
        }
        guard.restored = false;
        Ok(guard)
    }

    /// Starts Redis again (same flags as the machine's own start) and waits
    /// until it answers `PING`. Idempotent.
    ///
    /// # Errors
    /// When Redis does not answer within [`RESTORE_TIMEOUT`].
    pub fn restore(mut self) -> io::Result<()> {
        self.ensure_up()
    }

    /// Starts Redis again without giving up the guard, for tests that stop
    /// and start it several times (use [`RedisOutage::stop_again`] next).
    ///
    /// # Errors
    /// As [`RedisOutage::restore`].
    pub fn start(&mut self) -> io::Result<()> {
        self.ensure_up()
    }

    /// Stops Redis again under the same guard.
    ///
    /// # Errors
    /// When Redis does not stop within [`RESTORE_TIMEOUT`].
    pub fn stop_again(&mut self) -> io::Result<()> {
        let _ = Command::new("redis-cli")
            .args(["-h", &self.host, "-p", &self.port.to_string()])
            .args(["shutdown", "nosave"])
            .stdin(Stdio::null())
            .output()?;
        self.restored = false;
        if wait_until(RESTORE_TIMEOUT, || !port_open(&self.host, self.port)) {
            Ok(())
        } else {
            Err(io::Error::other("redis did not stop"))
        }
    }

    fn ensure_up(&mut self) -> io::Result<()> {
        if !redis_ping(&self.host, self.port) {
            let dir = std::env::temp_dir();
            let log = dir.join(format!("finsight-redis-{}.log", self.port));
            run(Command::new("redis-server")
                .args(["--daemonize", "yes", "--bind", "127.0.0.1", "-::1"])
                .args(["--port", &self.port.to_string()])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&dir)
                .arg("--logfile")
                .arg(&log))?;
        }
        if wait_until(RESTORE_TIMEOUT, || redis_ping(&self.host, self.port)) {
            self.restored = true;
            Ok(())
        } else {
            Err(io::Error::other("redis did not come back"))
        }
    }
}

impl Drop for RedisOutage {
    fn drop(&mut self) {
        if !self.restored {
            let _ = self.ensure_up();
        }
    }
}

fn rabbitmqctl(args: &[&str]) -> io::Result<()> {
    run(Command::new("rabbitmqctl").args(args))
}

/// RabbitMQ's application stopped for a fault test (`rabbitmqctl stop_app`);
/// restored (`start_app`) on [`RabbitOutage::restore`] or on drop, even while
/// a failed test unwinds.
#[derive(Debug)]
pub struct RabbitOutage {
    host: String,
    port: u16,
    restored: bool,
    _lock: File,
}

impl RabbitOutage {
    /// Stops the RabbitMQ application and waits (bounded) until its AMQP port
    /// is closed.
    ///
    /// # Errors
    /// When `rabbitmqctl` fails or the port stays open.
    pub fn stop() -> io::Result<Self> {
        let lock = outage_lock()?;
        let (host, port) = amqp_host_port();
        let mut guard = Self {
            host,
            port,
            restored: false,
            _lock: lock,
        };
        guard.ensure_up()?;
        guard.stop_again()?;
        Ok(guard)
    }

    /// Stops the application again under the same guard.
    ///
    /// # Errors
    /// When `rabbitmqctl stop_app` fails or the port stays open.
    pub fn stop_again(&mut self) -> io::Result<()> {
        self.restored = false;
        rabbitmqctl(&["stop_app"])?;
        if wait_until(RESTORE_TIMEOUT, || !port_open(&self.host, self.port)) {
            Ok(())
        } else {
            Err(io::Error::other("rabbitmq did not stop"))
        }
    }

    /// Starts the application again without giving up the guard.
    ///
    /// # Errors
    /// As [`RabbitOutage::restore`].
    pub fn start(&mut self) -> io::Result<()> {
        self.ensure_up()
    }

    /// Starts the application and waits until the AMQP port accepts
    /// connections. Idempotent.
    ///
    /// # Errors
    /// When RabbitMQ does not come back within [`RESTORE_TIMEOUT`].
    pub fn restore(mut self) -> io::Result<()> {
        self.ensure_up()
    }

    fn ensure_up(&mut self) -> io::Result<()> {
        if !port_open(&self.host, self.port) {
            rabbitmqctl(&["start_app"])?;
            let _ = rabbitmqctl(&["await_startup", "--timeout", "90"]);
        }
        if wait_until(RESTORE_TIMEOUT, || port_open(&self.host, self.port)) {
            self.restored = true;
            Ok(())
        } else {
            Err(io::Error::other("rabbitmq did not come back"))
        }
    }
}

/// RabbitMQ's memory alarm raised for a fault test
/// (`rabbitmqctl set_vm_memory_high_watermark 0`): the broker blocks every
/// publishing connection, so publishes get no confirm, as when a real broker
/// runs out of memory or disk. The previous watermark is restored on
/// [`RabbitBlocked::restore`] or on drop, even while a failed test unwinds.
/// Holds the outage lock: no other fault test runs meanwhile.
#[derive(Debug)]
pub struct RabbitBlocked {
    previous: Vec<String>,
    restored: bool,
    _lock: File,
}

impl RabbitBlocked {
    /// Raises the alarm.
    ///
    /// # Errors
    /// When `rabbitmqctl` fails or the current watermark cannot be read.
    pub fn block() -> io::Result<Self> {
        let lock = outage_lock()?;
        let out = Command::new("rabbitmqctl")
            .args([
                "eval",
                "io:format(\"~p\", [vm_memory_monitor:get_vm_memory_high_watermark()]).",
            ])
            .stdin(Stdio::null())
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        // `eval` prints the value, then its own result `ok`.
        let first = text.lines().next().unwrap_or_default().trim();
        let first = first.strip_suffix("ok").unwrap_or(first).to_owned();
        // `0.4` (relative) or `{absolute,1073741824}`.
        let previous = if let Some(rest) = first.strip_prefix("{absolute,") {
            vec!["absolute".to_owned(), rest.trim_end_matches('}').to_owned()]
        } else if first.parse::<f64>().is_ok() {
            vec![first]
        } else {
            return Err(io::Error::other(format!(
                "cannot read RabbitMQ's memory watermark: {text}"
            )));
        };
        let guard = Self {
            previous,
            restored: false,
            _lock: lock,
        };
        rabbitmqctl(&["set_vm_memory_high_watermark", "0"])?;
        Ok(guard)
    }

    /// Puts the previous watermark back (clears the alarm). Idempotent.
    ///
    /// # Errors
    /// When `rabbitmqctl` fails.
    pub fn restore(mut self) -> io::Result<()> {
        self.unblock()
    }

    fn unblock(&mut self) -> io::Result<()> {
        let mut args = vec!["set_vm_memory_high_watermark"];
        args.extend(self.previous.iter().map(String::as_str));
        rabbitmqctl(&args)?;
        self.restored = true;
        Ok(())
    }
}

impl Drop for RabbitBlocked {
    fn drop(&mut self) {
        if !self.restored {
            let _ = self.unblock();
        }
    }
}

impl Drop for RabbitOutage {
    fn drop(&mut self) {
        if !self.restored {
            let _ = self.ensure_up();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique("a"), unique("a"));
        assert!(unique("queue").starts_with("queue-"));
    }

    #[test]
    fn parses_host_and_port() {
        assert_eq!(
            host_port("amqp://guest:guest@127.0.0.1:5672/%2f", 1),
            ("127.0.0.1".to_owned(), 5672)
        );
        assert_eq!(
            host_port("redis://localhost", 6379),
            ("localhost".to_owned(), 6379)
        );
        assert_eq!(
            host_port("redis://:pw@10.0.0.1:7000/2", 6379),
            ("10.0.0.1".to_owned(), 7000)
        );
    }
}
