//! Handlers and the router from event type to handlers.

use crate::bus::Context;
use crate::error::{Error, Result};
use crate::topology::{QueueSpec, binding_routes_event_type};
use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

/// Why a handler failed. Build it with `?` from any error (retryable), or
/// with [`HandlerError::permanent`] to skip the remaining retries.
///
/// Deliberately not `std::error::Error`, so `From<E: Error>` can exist (like
/// `anyhow::Error`).
pub struct HandlerError {
    message: String,
    source: Option<crate::BoxError>,
    permanent: bool,
}

impl HandlerError {
    /// A retryable failure with a message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            source: None,
            permanent: false,
        }
    }
    /// A failure that retrying cannot fix: the message is dead-lettered at once.
    pub fn permanent(message: impl fmt::Display) -> Self {
        Self {
            permanent: true,
            ..Self::msg(message)
        }
    }
    /// Whether retries are skipped.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }
    /// The underlying error, if built from one.
    pub fn source(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.source.as_deref()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}
impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("message", &self.message)
            .field("permanent", &self.permanent)
            .finish()
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(e: E) -> Self {
        Self {
            message: e.to_string(),
            source: Some(Box::new(e)),
            permanent: false,
        }
    }
}

/// Handles one event. Implemented for every
/// `Fn(Context) -> impl Future<Output = Result<(), HandlerError>>`.
///
/// Called once per attempt: a retried message calls the handler again with a
/// clone of the same [`Context`] (cheap: one `Arc`).
pub trait Handler: Send + Sync + 'static {
    /// Handles the event in `ctx`.
    fn call(&self, ctx: Context) -> BoxFuture<'static, Result<(), HandlerError>>;
}

impl<F, Fut> Handler for F
where
    F: Fn(Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    fn call(&self, ctx: Context) -> BoxFuture<'static, Result<(), HandlerError>> {
        Box::pin(self(ctx))
    }
}

struct Typed<T, F> {
    f: F,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<T, F, Fut> Handler for Typed<T, F>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(Context, T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    fn call(&self, ctx: Context) -> BoxFuture<'static, Result<(), HandlerError>> {
        match ctx.envelope().decode::<T>() {
            // A payload that does not fit the type will not fit on retry either.
            Err(e) => Box::pin(std::future::ready(Err(HandlerError::permanent(e)))),
            Ok(v) => Box::pin((self.f)(ctx, v)),
        }
    }
}

/// Up to this many event types, a lookup compares names instead of hashing.
const SCAN_UP_TO: usize = 8;

/// What to do with an event type that has no handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum UnknownEventPolicy {
    /// Dead-letter it with reason `unknown-event-type` (default: nothing is lost).
    #[default]
    DeadLetter,
    /// Acknowledge it and log a warning (the Python services' behaviour).
    AckAndWarn,
}

#[derive(Clone)]
pub(crate) struct Route {
    pub(crate) name: Arc<str>,
    pub(crate) handler: Arc<dyn Handler>,
    /// Added with [`Router::on_typed`]: the handler parses the whole body
    /// before running any user code, so it fails without side effects on a
    /// body that is not JSON (the consumer skips its own JSON check then).
    pub(crate) parses_body: bool,
}

/// Maps event types to handlers (several per type, run in registration order).
///
/// ```
/// use finsight_bus::{Context, HandlerError, Router, UnknownEventPolicy};
/// #[derive(serde::Deserialize)]
/// struct OrderPlaced { id: u64 }
/// let router = Router::new()
///     .on_typed("order_placed", |_ctx: Context, o: OrderPlaced| async move {
///         assert!(o.id > 0);
///         Ok::<_, HandlerError>(())
///     })
///     .on("order_placed", |_ctx: Context| async { Ok(()) })
///     .unknown_events(UnknownEventPolicy::AckAndWarn)
///     .strict(true);
/// assert_eq!(router.handlers_for("order_placed"), 2);
/// ```
#[derive(Clone, Default)]
pub struct Router {
    routes: HashMap<String, Vec<Route>>,
    unknown: UnknownEventPolicy,
    strict: bool,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self
            .routes
            .iter()
            .map(|(k, v)| (k.as_str(), v.iter().map(|r| &*r.name).collect::<Vec<_>>()))
            .collect();
        names.sort();
        f.debug_struct("Router")
            .field("routes", &names)
            .field("unknown", &self.unknown)
            .field("strict", &self.strict)
            .finish()
    }
}

impl Router {
    /// An empty router (unknown events dead-lettered, strict mode off).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `handler` for `event_type`, named `<event_type>#<n>` in
    /// dead-letter headers and spans.
    #[must_use]
    pub fn on(self, event_type: &str, handler: impl Handler) -> Self {
        self.add(event_type, None, handler, false)
    }

    /// Adds `handler` for `event_type` under `name`.
    #[must_use]
    pub fn on_named(self, event_type: &str, name: &str, handler: impl Handler) -> Self {
        self.add(event_type, Some(name), handler, false)
    }

    fn add(
        mut self,
        event_type: &str,
        name: Option<&str>,
        handler: impl Handler,
        parses_body: bool,
    ) -> Self {
        let name: Arc<str> = match name {
            Some(n) => n.into(),
            None => format!("{event_type}#{}", self.handlers_for(event_type)).into(),
        };
        self.routes
            .entry(event_type.to_owned())
            .or_default()
            .push(Route {
                name,
                handler: Arc::new(handler),
                parses_body,
            });
        self
    }

    /// Adds a handler that receives the payload decoded as `T`; a payload
    /// that does not decode is a permanent failure (dead-lettered, no retry).
    #[must_use]
    pub fn on_typed<T, F, Fut>(self, event_type: &str, f: F) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(Context, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.add(
            event_type,
            None,
            Typed {
                f,
                _t: std::marker::PhantomData,
            },
            true,
        )
    }

    /// Sets the policy for event types without a handler.
    #[must_use]
    pub fn unknown_events(mut self, policy: UnknownEventPolicy) -> Self {
        self.unknown = policy;
        self
    }

    /// Strict mode: starting a consumer fails if a binding of its queue
    /// routes no event type that has a handler.
    #[must_use]
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// Number of handlers for `event_type`.
    pub fn handlers_for(&self, event_type: &str) -> usize {
        self.routes.get(event_type).map_or(0, Vec::len)
    }

    /// The handlers for `event_type`; `None` when it has none. With a few
    /// event types, comparing names is cheaper than hashing one.
    pub(crate) fn routes(&self, event_type: &str) -> Option<&[Route]> {
        let found = if self.routes.len() <= SCAN_UP_TO {
            self.routes
                .iter()
                .find(|(k, _)| k.as_str() == event_type)
                .map(|(_, v)| v)
        } else {
            self.routes.get(event_type)
        };
        found.map(Vec::as_slice).filter(|r| !r.is_empty())
    }

    pub(crate) fn unknown_policy(&self) -> UnknownEventPolicy {
        self.unknown
    }

    /// Strict-mode check of `queue`'s bindings against the handlers.
    pub(crate) fn check(&self, queue: &QueueSpec) -> Result<()> {
        if !self.strict {
            return Ok(());
        }
        for binding in &queue.bindings {
            if !self
                .routes
                .keys()
                .any(|et| binding_routes_event_type(binding, et))
            {
                return Err(Error::MissingHandler {
                    queue: queue.name.clone(),
                    binding: binding.clone(),
                });
            }
        }
        Ok(())
    }
}
