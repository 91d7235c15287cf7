//! The event envelope, its wire form ([`Message`]) and the CloudEvents mapping.

use crate::error::{Error, Result};
use bytes::Bytes;
use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde::{Serialize, de::DeserializeOwned};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// String headers carried with a message (AMQP headers table, Redis stream fields).
pub type Headers = BTreeMap<String, String>;

/// Header with the event type (SPEC §5).
pub const HEADER_EVENT_TYPE: &str = "event_type";
/// Header with the ISO 8601 timestamp (SPEC §5).
pub const HEADER_TIMESTAMP: &str = "timestamp";
/// Header with the correlation id (SPEC §5).
pub const HEADER_CORRELATION_ID: &str = "correlation_id";
/// Header with the causation id: the message id of the message being handled
/// when this one was published.
pub const HEADER_CAUSATION_ID: &str = "causation_id";
/// Header with the message id (also the AMQP `message_id` property).
pub const HEADER_MESSAGE_ID: &str = "message_id";
/// Dead-letter header: why the message was dead-lettered.
pub const HEADER_DEAD_LETTER_REASON: &str = "x-dead-letter-reason";
/// Dead-letter header: the handler that failed (or `-` when none ran).
pub const HEADER_DEAD_LETTER_HANDLER: &str = "x-dead-letter-handler";
/// Dead-letter header: how many attempts the failed handler got.
pub const HEADER_DEAD_LETTER_ATTEMPTS: &str = "x-dead-letter-attempts";
/// Dead-letter header: the queue the message was consumed from.
pub const HEADER_DEAD_LETTER_QUEUE: &str = "x-dead-letter-queue";
/// Dead-letter header: the routing key the message was published with.
pub const HEADER_ORIGINAL_ROUTING_KEY: &str = "x-original-routing-key";

const RESERVED: [&str; 5] = [
    HEADER_EVENT_TYPE,
    HEADER_TIMESTAMP,
    HEADER_CORRELATION_ID,
    HEADER_CAUSATION_ID,
    HEADER_MESSAGE_ID,
];

/// A message as it travels: JSON body bytes, string headers, routing key,
/// message id and persistence. Backends map it onto AMQP properties or Redis
/// stream fields; [`Envelope`] is the typed view handlers see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The body: the JSON payload (SPEC §5).
    pub body: Bytes,
    /// Headers, including `event_type`, `timestamp`, `correlation_id`.
    /// Shared: cloning a message does not copy them (`Arc::make_mut` to change).
    pub headers: Arc<Headers>,
    /// The routing key it was published with.
    pub routing_key: String,
    /// The message id, when the publisher set one.
    pub message_id: Option<String>,
    /// Persistent (AMQP delivery mode 2).
    pub persistent: bool,
}

/// An event: type, JSON payload, ids, timestamp, routing key and headers.
///
/// Cloning is cheap for the payload (reference-counted bytes) and costs one
/// map clone for the headers.
///
/// ```
/// use finsight_bus::Envelope;
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct OrderPlaced { id: u64 }
/// let env = Envelope::new("order_placed", &OrderPlaced { id: 7 })?;
/// assert_eq!(env.event_type(), "order_placed");
/// assert_eq!(env.decode::<OrderPlaced>()?.id, 7);
/// # Ok::<(), finsight_bus::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    event_type: String,
    payload: Bytes,
    message_id: String,
    timestamp: DateTime<Utc>,
    correlation_id: String,
    causation_id: Option<String>,
    routing_key: Option<String>,
    headers: Headers,
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("event_type", &self.event_type)
            .field("message_id", &self.message_id)
            .field("correlation_id", &self.correlation_id)
            .field("causation_id", &self.causation_id)
            .field("routing_key", &self.routing_key)
            .field("timestamp", &self.timestamp)
            .field("payload_len", &self.payload.len())
            .finish_non_exhaustive()
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Formats a timestamp as ISO 8601 / RFC 3339 with milliseconds and `Z`.
pub fn format_timestamp(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses an ISO 8601 timestamp; a naive one (no offset, as Python's
/// `datetime.utcnow().isoformat()` writes) is taken as UTC.
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        .map(|n| n.and_utc())
}

impl Envelope {
    /// An envelope for `payload` serialised as JSON, with a new random message
    /// id (UUID v4), the correlation id equal to it (a new chain), and the
    /// current time.
    ///
    /// Costs one serialisation and one UUID (thread-local RNG).
    ///
    /// # Errors
    /// [`Error::Payload`] when `payload` cannot be serialised.
    pub fn new<T: Serialize + ?Sized>(event_type: impl Into<String>, payload: &T) -> Result<Self> {
        let event_type = event_type.into();
        let bytes = serde_json::to_vec(payload).map_err(|source| Error::Payload {
            event_type: event_type.clone(),
            source,
        })?;
        Ok(Self::from_json_bytes_unchecked(
            event_type,
            Bytes::from(bytes),
        ))
    }

    /// An envelope whose payload is already-encoded JSON.
    ///
    /// # Errors
    /// [`Error::InvalidMessage`] when `json` is not valid JSON.
    pub fn from_json_bytes(event_type: impl Into<String>, json: impl Into<Bytes>) -> Result<Self> {
        let json = json.into();
        validate_json(&json)?;
        Ok(Self::from_json_bytes_unchecked(event_type.into(), json))
    }

    fn from_json_bytes_unchecked(event_type: String, payload: Bytes) -> Self {
        // A new chain: the correlation id starts as the message id.
        let id = new_id();
        Self {
            event_type,
            payload,
            correlation_id: id.clone(),
            message_id: id,
            timestamp: Utc::now(),
            causation_id: None,
            routing_key: None,
            headers: Headers::new(),
        }
    }

    /// Sets the message id (default: a new UUID v4).
    #[must_use]
    pub fn with_message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = id.into();
        self
    }
    /// Sets the correlation id (default: a new UUID; handlers publishing
    /// through [`crate::Context`] inherit the inbound one).
    #[must_use]
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = id.into();
        self
    }
    /// Sets the causation id: the id of the message that caused this one.
    #[must_use]
    pub fn with_causation_id(mut self, id: impl Into<String>) -> Self {
        self.causation_id = Some(id.into());
        self
    }
    /// Sets the timestamp (default: now). Use it for deterministic tests.
    #[must_use]
    pub fn with_timestamp(mut self, t: DateTime<Utc>) -> Self {
        self.timestamp = t;
        self
    }
    /// Sets the routing key (default: `<event_type>.<service>` from the bus).
    #[must_use]
    pub fn with_routing_key(mut self, key: impl Into<String>) -> Self {
        self.routing_key = Some(key.into());
        self
    }
    /// Adds a header. Reserved names (`event_type`, `timestamp`,
    /// `correlation_id`, `causation_id`, `message_id`) are overwritten by the
    /// envelope's own fields on the wire.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// The event type.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }
    /// The JSON payload bytes.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }
    /// The message id.
    pub fn message_id(&self) -> &str {
        &self.message_id
    }
    /// The correlation id.
    pub fn correlation_id(&self) -> &str {
        &self.correlation_id
    }
    /// The causation id, if any.
    pub fn causation_id(&self) -> Option<&str> {
        self.causation_id.as_deref()
    }
    /// The timestamp.
    pub fn timestamp(&self) -> DateTime<Utc> {
        self.timestamp
    }
    /// The routing key, if set (inbound envelopes always have one).
    pub fn routing_key(&self) -> Option<&str> {
        self.routing_key.as_deref()
    }
    /// The extra headers (not the reserved ones).
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// Deserialises the payload into `T`. Costs one JSON parse.
    ///
    /// # Errors
    /// [`Error::Payload`] when the JSON does not fit `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.payload).map_err(|source| Error::Payload {
            event_type: self.event_type.clone(),
            source,
        })
    }

    /// The payload as a `serde_json::Value`.
    ///
    /// # Errors
    /// [`Error::Payload`] when the payload is not JSON (cannot happen for
    /// envelopes built by this crate).
    pub fn json(&self) -> Result<serde_json::Value> {
        self.decode()
    }

    /// An envelope for a follow-up event caused by this one: same correlation
    /// id, causation id = this message id, new message id.
    ///
    /// # Errors
    /// [`Error::Payload`] when `payload` cannot be serialised.
    pub fn follow_up<T: Serialize + ?Sized>(
        &self,
        event_type: impl Into<String>,
        payload: &T,
    ) -> Result<Self> {
        Ok(Self::new(event_type, payload)?
            .with_correlation_id(self.correlation_id.clone())
            .with_causation_id(self.message_id.clone()))
    }

    /// The wire form with `routing_key` (SPEC §5: persistent, headers
    /// `event_type`, `timestamp`, `correlation_id`). Allocates the header map.
    pub fn to_message(&self, default_routing_key: impl FnOnce() -> String) -> Message {
        let mut headers = self.headers.clone();
        headers.insert(HEADER_EVENT_TYPE.into(), self.event_type.clone());
        headers.insert(HEADER_TIMESTAMP.into(), format_timestamp(&self.timestamp));
        headers.insert(HEADER_CORRELATION_ID.into(), self.correlation_id.clone());
        headers.insert(HEADER_MESSAGE_ID.into(), self.message_id.clone());
        if let Some(c) = &self.causation_id {
            headers.insert(HEADER_CAUSATION_ID.into(), c.clone());
        }
        Message {
            body: self.payload.clone(),
            headers: Arc::new(headers),
            routing_key: self.routing_key.clone().unwrap_or_else(default_routing_key),
            message_id: Some(self.message_id.clone()),
            persistent: true,
        }
    }

    /// Reads an inbound [`Message`]. The body must be JSON and the
    /// `event_type` header present. A missing message id or correlation id
    /// is replaced by a new UUID (a Python publisher may not set them), and a
    /// missing or unparsable timestamp by the time of receipt.
    ///
    /// # Errors
    /// [`Error::InvalidMessage`] naming what is wrong; the consumer
    /// dead-letters such messages.
    pub fn from_message(message: &Message) -> Result<Self> {
        let h = &message.headers;
        let event_type = h.get(HEADER_EVENT_TYPE).cloned().ok_or_else(|| {
            Error::InvalidMessage(format!(
                "missing `{HEADER_EVENT_TYPE}` header (routing key `{}`)",
                message.routing_key
            ))
        })?;
        validate_json(&message.body)?;
        let timestamp = h
            .get(HEADER_TIMESTAMP)
            .and_then(|t| parse_timestamp(t))
            .unwrap_or_else(Utc::now);
        let message_id = message
            .message_id
            .clone()
            .or_else(|| h.get(HEADER_MESSAGE_ID).cloned())
            .unwrap_or_else(new_id);
        let correlation_id = h.get(HEADER_CORRELATION_ID).cloned().unwrap_or_else(new_id);
        let causation_id = h.get(HEADER_CAUSATION_ID).cloned();
        // Only the extra headers are copied (usually none).
        let reserved_present = 1
            + usize::from(h.contains_key(HEADER_TIMESTAMP))
            + usize::from(h.contains_key(HEADER_MESSAGE_ID))
            + usize::from(h.contains_key(HEADER_CORRELATION_ID))
            + usize::from(causation_id.is_some());
        let headers = if h.len() == reserved_present {
            Headers::new()
        } else {
            h.iter()
                .filter(|(k, _)| !RESERVED.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        Ok(Self {
            event_type,
            payload: message.body.clone(),
            message_id,
            timestamp,
            correlation_id,
            causation_id,
            routing_key: Some(message.routing_key.clone()),
            headers,
        })
    }

    /// The CloudEvents 1.0 structured-mode JSON (`application/cloudevents+json`):
    /// `id` = message id, `type` = event type, `source` = the given URI
    /// reference, `time`, `datacontenttype` = `application/json`, `data` =
    /// the payload, and the extensions `correlationid`, `causationid`,
    /// `routingkey`; extra headers whose names are valid extension names
    /// (lowercase a-z, 0-9) are carried too.
    ///
    /// # Errors
    /// [`Error::Payload`] when the payload is not JSON.
    pub fn to_cloudevent(&self, source: &str) -> Result<serde_json::Value> {
        let mut map = serde_json::Map::new();
        map.insert("specversion".into(), "1.0".into());
        map.insert("id".into(), self.message_id.clone().into());
        map.insert("source".into(), source.into());
        map.insert("type".into(), self.event_type.clone().into());
        map.insert("time".into(), format_timestamp(&self.timestamp).into());
        map.insert("datacontenttype".into(), "application/json".into());
        map.insert("correlationid".into(), self.correlation_id.clone().into());
        if let Some(c) = &self.causation_id {
            map.insert("causationid".into(), c.clone().into());
        }
        if let Some(r) = &self.routing_key {
            map.insert("routingkey".into(), r.clone().into());
        }
        for (k, v) in &self.headers {
            if is_extension_name(k) && !map.contains_key(k.as_str()) {
                map.insert(k.clone(), v.clone().into());
            }
        }
        map.insert("data".into(), self.json()?);
        Ok(serde_json::Value::Object(map))
    }

    /// Reads a CloudEvents 1.0 structured-mode JSON event (the inverse of
    /// [`Envelope::to_cloudevent`]). String extensions become headers.
    ///
    /// # Errors
    /// [`Error::InvalidMessage`] when `specversion` is not `1.0` or `id`/`type`
    /// is missing.
    pub fn from_cloudevent(event: &serde_json::Value) -> Result<Self> {
        let obj = event
            .as_object()
            .ok_or_else(|| Error::InvalidMessage("a CloudEvent must be a JSON object".into()))?;
        let get = |k: &str| obj.get(k).and_then(|v| v.as_str());
        if get("specversion") != Some("1.0") {
            return Err(Error::InvalidMessage(
                "CloudEvent `specversion` must be \"1.0\"".into(),
            ));
        }
        let id =
            get("id").ok_or_else(|| Error::InvalidMessage("CloudEvent without `id`".into()))?;
        let ty =
            get("type").ok_or_else(|| Error::InvalidMessage("CloudEvent without `type`".into()))?;
        let data = obj.get("data").cloned().unwrap_or(serde_json::Value::Null);
        let mut env = Self::new(ty, &data)?.with_message_id(id);
        if let Some(t) = get("time").and_then(parse_timestamp) {
            env.timestamp = t;
        }
        if let Some(c) = get("correlationid") {
            env.correlation_id = c.to_owned();
        }
        env.causation_id = get("causationid").map(str::to_owned);
        env.routing_key = get("routingkey").map(str::to_owned);
        const KNOWN: [&str; 11] = [
            "specversion",
            "id",
            "source",
            "type",
            "time",
            "datacontenttype",
            "dataschema",
            "subject",
            "correlationid",
            "causationid",
            "routingkey",
        ];
        for (k, v) in obj {
            if k != "data"
                && !KNOWN.contains(&k.as_str())
                && let Some(s) = v.as_str()
            {
                env.headers.insert(k.clone(), s.to_owned());
            }
        }
        Ok(env)
    }
}

fn is_extension_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 20
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn validate_json(bytes: &[u8]) -> Result<()> {
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
        .map(|_| ())
        .map_err(|e| Error::InvalidMessage(format!("body is not valid JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip_keeps_ids_and_headers() {
        let env = Envelope::new("order_placed", &serde_json::json!({"id": 1}))
            .unwrap()
            .with_causation_id("c-1")
            .with_header("tenant", "acme");
        let msg = env.to_message(|| "order_placed.billing".into());
        assert!(msg.persistent);
        assert_eq!(msg.routing_key, "order_placed.billing");
        assert_eq!(msg.headers["event_type"], "order_placed");
        assert_eq!(msg.headers["correlation_id"], env.correlation_id());
        assert!(msg.headers["timestamp"].ends_with('Z'));
        let back = Envelope::from_message(&msg).unwrap();
        assert_eq!(back.message_id(), env.message_id());
        assert_eq!(back.causation_id(), Some("c-1"));
        assert_eq!(
            back.headers().get("tenant").map(String::as_str),
            Some("acme")
        );
        assert_eq!(
            back.timestamp().timestamp_millis(),
            env.timestamp().timestamp_millis()
        );
    }

    #[test]
    fn naive_python_timestamps_are_utc() {
        let t = parse_timestamp("2024-05-01T12:30:00.123456").unwrap();
        assert_eq!(format_timestamp(&t), "2024-05-01T12:30:00.123Z");
        assert!(parse_timestamp("yesterday").is_none());
    }

    #[test]
    fn invalid_json_and_missing_type_are_rejected() {
        let mut msg = Envelope::new("x", &1).unwrap().to_message(|| "x.s".into());
        msg.body = Bytes::from_static(b"{not json");
        assert!(
            matches!(Envelope::from_message(&msg), Err(Error::InvalidMessage(m)) if m.contains("JSON"))
        );
        let mut msg = Envelope::new("x", &1).unwrap().to_message(|| "x.s".into());
        Arc::make_mut(&mut msg.headers).remove("event_type");
        assert!(
            matches!(Envelope::from_message(&msg), Err(Error::InvalidMessage(m)) if m.contains("event_type"))
        );
    }

    #[test]
    fn cloudevents_round_trip() {
        let env = Envelope::new("order_placed", &serde_json::json!({"id": 1}))
            .unwrap()
            .with_causation_id("cause")
            .with_routing_key("order_placed.billing")
            .with_header("tenant", "acme");
        let ce = env.to_cloudevent("/services/billing").unwrap();
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["type"], "order_placed");
        assert_eq!(ce["data"]["id"], 1);
        assert_eq!(ce["tenant"], "acme");
        let back = Envelope::from_cloudevent(&ce).unwrap();
        assert_eq!(back.message_id(), env.message_id());
        assert_eq!(back.correlation_id(), env.correlation_id());
        assert_eq!(back.causation_id(), Some("cause"));
        assert_eq!(back.routing_key(), Some("order_placed.billing"));
        assert_eq!(back.json().unwrap(), env.json().unwrap());
        assert!(Envelope::from_cloudevent(&serde_json::json!({"specversion": "0.3"})).is_err());
    }

    #[test]
    fn follow_up_propagates_correlation() {
        let env = Envelope::new("a", &1).unwrap();
        let next = env.follow_up("b", &2).unwrap();
        assert_eq!(next.correlation_id(), env.correlation_id());
        assert_eq!(next.causation_id(), Some(env.message_id()));
        assert_ne!(next.message_id(), env.message_id());
    }
}
