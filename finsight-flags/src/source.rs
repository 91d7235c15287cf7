//! Flag sources: a JSON file reloaded on change (the in-memory source is
//! [`FlagEngine::replace`]; Redis is in the `redis` module).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

use crate::error::{Error, FlagError};
use crate::eval::FlagEngine;
use crate::flagset::{FlagSet, LoadReport};

/// What the last reload of a source did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReloadStatus {
    /// Reload attempts so far (successful or not), after the initial load.
    pub attempts: u64,
    /// Reloads that swapped in a new set.
    pub applied: u64,
    /// Why the last attempt was refused as a whole (unreadable file, not a
    /// flag document): the previous set stayed in place. `None` after a
    /// successful reload.
    pub last_error: Option<String>,
    /// Flags rejected by the last applied reload (their last good definition,
    /// if any, was kept).
    pub rejected: Vec<FlagError>,
}

/// A JSON flag file (the format [`FlagSet::from_json`] reads).
///
/// [`FileSource::watch`] polls the file's modification time and size every
/// `poll_interval` (default 1 s) and, when they change and the content
/// differs, validates the new content *before* swapping it in. A file that is
/// not a flag document keeps the last good set; a file with some bad flags
/// swaps in the good ones and keeps the last good definition of each bad one.
/// [`ReloadStatus`] says what happened and why.
#[derive(Debug, Clone)]
pub struct FileSource {
    path: PathBuf,
    interval: Duration,
}

impl FileSource {
    /// A source reading `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            interval: Duration::from_secs(1),
        }
    }

    /// How often [`FileSource::watch`] checks the file (default 1 s).
    #[must_use]
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.interval = every.max(Duration::from_millis(10));
        self
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and validates the file now (blocking file read).
    ///
    /// # Errors
    /// [`Error::Io`] when unreadable, [`Error::Document`] when not a flag document.
    pub fn load(&self) -> Result<LoadReport, Error> {
        let text = std::fs::read_to_string(&self.path).map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })?;
        FlagSet::from_json(&text)
    }

    /// Loads the file into `engine` now and keeps reloading it on change
    /// from a tokio task, until the returned watcher is dropped.
    ///
    /// # Errors
    /// The initial load's error (then nothing is watched), or
    /// [`Error::Config`] without a tokio runtime.
    pub async fn watch(self, engine: FlagEngine) -> Result<SourceWatcher, Error> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Config("FileSource::watch needs a running tokio runtime".into()))?;
        let (text, stamp) = read(&self.path).await?;
        let rejected = engine.load_json(&text)?;
        let (tx, rx) = watch::channel(ReloadStatus {
            rejected,
            ..ReloadStatus::default()
        });
        let task = handle.spawn(poll_loop(self, engine, tx, stamp, hash(&text)));
        Ok(SourceWatcher { status: rx, task })
    }
}

type Stamp = (Option<SystemTime>, u64);

async fn stamp_of(path: &Path) -> std::io::Result<Stamp> {
    let m = tokio::fs::metadata(path).await?;
    Ok((m.modified().ok(), m.len()))
}

async fn read(path: &Path) -> Result<(String, Stamp), Error> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let stamp = stamp_of(path).await.map_err(io)?;
    let text = tokio::fs::read_to_string(path).await.map_err(io)?;
    Ok((text, stamp))
}

fn hash(text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

async fn poll_loop(
    src: FileSource,
    engine: FlagEngine,
    tx: watch::Sender<ReloadStatus>,
    mut stamp: Stamp,
    mut last_hash: u64,
) {
    let mut tick = tokio::time::interval(src.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if tx.is_closed() {
            return;
        }
        let now = match stamp_of(&src.path).await {
            Ok(s) => s,
            Err(e) => {
                // A missing file keeps the last good set (editors replace files by rename).
                let msg = format!("cannot read `{}`: {e}", src.path.display());
                tx.send_if_modified(|s| {
                    if s.last_error.as_deref() == Some(msg.as_str()) {
                        return false;
                    }
                    s.attempts += 1;
                    s.last_error = Some(msg.clone());
                    true
                });
                continue;
            }
        };
        if now == stamp {
            continue;
        }
        stamp = now;
        let result = match read(&src.path).await {
            Ok((text, s)) => {
                stamp = s;
                let h = hash(&text);
                if h == last_hash {
                    continue;
                }
                last_hash = h;
                engine.load_json(&text)
            }
            Err(e) => Err(e),
        };
        tx.send_modify(|s| {
            s.attempts += 1;
            match result {
                Ok(rejected) => {
                    s.applied += 1;
                    s.last_error = None;
                    s.rejected = rejected;
                }
                Err(e) => {
                    tracing::warn!(path = %src.path.display(), error = %e,
                        "finsight-flags: flag file refused; keeping the last good set");
                    s.last_error = Some(e.to_string());
                }
            }
        });
    }
}

/// A running source watch ([`FileSource::watch`], or the Redis source's);
/// stops watching when dropped.
#[derive(Debug)]
pub struct SourceWatcher {
    status: watch::Receiver<ReloadStatus>,
    task: tokio::task::JoinHandle<()>,
}

impl SourceWatcher {
    #[cfg(feature = "redis")]
    pub(crate) fn new(
        status: watch::Receiver<ReloadStatus>,
        task: tokio::task::JoinHandle<()>,
    ) -> Self {
        Self { status, task }
    }

    /// What the last reload did.
    pub fn status(&self) -> ReloadStatus {
        self.status.borrow().clone()
    }

    /// A receiver notified after every reload attempt.
    pub fn subscribe(&self) -> watch::Receiver<ReloadStatus> {
        self.status.clone()
    }
}

impl Drop for SourceWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}
