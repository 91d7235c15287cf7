//! Errors of the crate.

use std::path::PathBuf;

/// A boxed error from a backend (Redis, the file system, a sink).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why one flag definition was rejected at load time.
///
/// A rejected flag is left out of the loaded set; the other flags load
/// normally (see [`LoadReport`](crate::LoadReport)). The message names the
/// flag key, the offending field (a path such as `targeting_rules[1].operator`)
/// and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("flag `{key}`: field `{field}`: {message}")]
#[non_exhaustive]
pub struct FlagError {
    /// The flag key, or `#<index>` when the definition has no readable key.
    pub key: String,
    /// The offending field, as a path into the definition
    /// (`variants[2].weight`, `targeting_rules[0].values[1]`, `prerequisites`).
    pub field: String,
    /// What is wrong and what to fix.
    pub message: String,
}

impl FlagError {
    pub(crate) fn new(
        key: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            key: key.into(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The crate's error type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The flag document as a whole is not usable (not JSON, not an array of
    /// flags or an object with a `flags` array). Nothing was loaded from it.
    #[error("flag document is not valid: {message}")]
    Document {
        /// What is wrong, with the line and column when the JSON parser knows them.
        message: String,
    },
    /// A file could not be read.
    #[error("cannot read flag file `{}`: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A backend (Redis, an exposure sink) failed.
    #[error("{backend} backend failed while {action}: {source}")]
    Backend {
        /// Which backend, e.g. `"redis"`.
        backend: &'static str,
        /// What was being done, e.g. `"loading sticky assignments"`.
        action: &'static str,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
    /// A configuration value is invalid (the message says which and why).
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    #[cfg(feature = "redis")]
    pub(crate) fn backend(
        backend: &'static str,
        action: &'static str,
        source: impl Into<BoxError>,
    ) -> Self {
        Self::Backend {
            backend,
            action,
            source: source.into(),
        }
    }
}
