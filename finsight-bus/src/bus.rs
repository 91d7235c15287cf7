//! The [`Bus`]: publishing on a backend with the topology and service name,
//! and the handler [`Context`].

use crate::consumer::ConsumerBuilder;
use crate::envelope::Envelope;
use crate::error::Result;
use crate::router::Router;
use crate::topology::Topology;
use crate::transport::{Health, PendingConfirm, PublishOptions, PublishOutcome, Transport};
use serde::Serialize;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A connected bus: a backend, the declared topology and this service's name.
/// Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Bus {
    inner: Arc<BusInner>,
}

struct BusInner {
    transport: Arc<dyn Transport>,
    topology: Topology,
    service: String,
    publish_options: PublishOptions,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("transport", &self.inner.transport)
            .field("service", &self.inner.service)
            .field("exchange", &self.inner.topology.exchange.name)
            .finish()
    }
}

impl Bus {
    /// Declares `topology` on `transport` and returns the bus. `service` is
    /// the last word of published routing keys (`<event_type>.<service>`).
    ///
    /// # Errors
    /// Those of [`Transport::declare`], e.g. [`crate::Error::TopologyMismatch`].
    pub async fn connect(
        transport: impl Transport,
        topology: Topology,
        service: impl Into<String>,
    ) -> Result<Self> {
        Self::connect_shared(Arc::new(transport), topology, service).await
    }

    /// [`Bus::connect`] with an already shared transport.
    ///
    /// # Errors
    /// As [`Bus::connect`].
    pub async fn connect_shared(
        transport: Arc<dyn Transport>,
        topology: Topology,
        service: impl Into<String>,
    ) -> Result<Self> {
        transport.declare(&topology).await?;
        Ok(Self {
            inner: Arc::new(BusInner {
                transport,
                topology,
                service: service.into(),
                publish_options: PublishOptions::default(),
            }),
        })
    }

    /// Returns a bus publishing with `options` (e.g. `mandatory: false`).
    #[must_use]
    pub fn with_publish_options(&self, options: PublishOptions) -> Self {
        Self {
            inner: Arc::new(BusInner {
                transport: self.inner.transport.clone(),
                topology: self.inner.topology.clone(),
                service: self.inner.service.clone(),
                publish_options: options,
            }),
        }
    }

    /// The backend.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.inner.transport
    }
    /// The declared topology.
    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }
    /// This service's name.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// The SPEC §5 routing key `<event_type>.<service>`.
    pub fn routing_key(&self, event_type: &str) -> String {
        let service = &self.inner.service;
        let mut key = String::with_capacity(event_type.len() + 1 + service.len());
        key.push_str(event_type);
        key.push('.');
        key.push_str(service);
        key
    }

    /// Sends `envelope` to the main exchange and returns its pending confirm
    /// without waiting for it: the pipelined path. Waits only for a free
    /// slot in the backend's in-flight window.
    ///
    /// # Errors
    /// Connection errors before the message was sent.
    pub async fn send(&self, envelope: &Envelope) -> Result<PendingConfirm> {
        let message = envelope.to_message(|| self.routing_key(envelope.event_type()));
        self.inner
            .transport
            .send(
                &self.inner.topology.exchange.name,
                message,
                self.inner.publish_options,
            )
            .await
    }

    /// Sends `envelope` and waits for the broker's answer. For many messages,
    /// prefer [`Bus::send`] and await the confirms together.
    ///
    /// # Errors
    /// Connection errors before the message was sent.
    pub async fn publish(&self, envelope: &Envelope) -> Result<PublishOutcome> {
        Ok(self.send(envelope).await?.await)
    }

    /// A consumer of `queue` dispatching to `router`; configure it and call
    /// [`ConsumerBuilder::start`].
    pub fn consumer(&self, queue: &str, router: Router) -> ConsumerBuilder {
        ConsumerBuilder::new(self.clone(), queue, router)
    }

    /// A health snapshot (see [`Transport::health`]).
    pub async fn health(&self) -> Health {
        self.inner.transport.health().await
    }

    /// Flushes confirms (up to `deadline`) and closes the backend connection.
    ///
    /// # Errors
    /// Backend errors while closing.
    pub async fn close(&self, deadline: Duration) -> Result<()> {
        self.inner.transport.close(deadline).await
    }
}

/// What a handler gets: the inbound envelope, delivery facts, and a way to
/// publish follow-up events that keep the correlation id. Cheap to clone.
#[derive(Clone)]
pub struct Context {
    inner: Arc<ContextInner>,
}

struct ContextInner {
    envelope: Envelope,
    bus: Bus,
    queue: Arc<str>,
    redelivered: bool,
    delivery_count: u32,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("envelope", &self.inner.envelope)
            .field("queue", &self.inner.queue)
            .field("delivery_count", &self.inner.delivery_count)
            .finish()
    }
}

impl Context {
    pub(crate) fn new(
        envelope: Envelope,
        bus: Bus,
        queue: Arc<str>,
        redelivered: bool,
        delivery_count: u32,
    ) -> Self {
        Self {
            inner: Arc::new(ContextInner {
                envelope,
                bus,
                queue,
                redelivered,
                delivery_count,
            }),
        }
    }

    /// The inbound envelope.
    pub fn envelope(&self) -> &Envelope {
        &self.inner.envelope
    }
    /// The queue it came from.
    pub fn queue(&self) -> &str {
        &self.inner.queue
    }
    /// Whether the broker delivered it before.
    pub fn redelivered(&self) -> bool {
        self.inner.redelivered
    }
    /// Delivery count as the broker reports it (see [`crate::Delivery::delivery_count`]).
    pub fn delivery_count(&self) -> u32 {
        self.inner.delivery_count
    }
    /// The bus, e.g. to publish an unrelated event.
    pub fn bus(&self) -> &Bus {
        &self.inner.bus
    }

    /// A follow-up envelope: same correlation id, causation id = the inbound
    /// message id.
    ///
    /// # Errors
    /// [`crate::Error::Payload`] when `payload` cannot be serialised.
    pub fn follow_up<T: Serialize + ?Sized>(
        &self,
        event_type: &str,
        payload: &T,
    ) -> Result<Envelope> {
        self.inner.envelope.follow_up(event_type, payload)
    }

    /// Publishes a follow-up event (see [`Context::follow_up`]) and waits for
    /// its confirm.
    ///
    /// # Errors
    /// Serialisation and connection errors.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        event_type: &str,
        payload: &T,
    ) -> Result<PublishOutcome> {
        let env = self.follow_up(event_type, payload)?;
        self.inner.bus.publish(&env).await
    }
}
