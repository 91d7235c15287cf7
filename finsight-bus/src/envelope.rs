//! The event envelope, its wire form ([`Message`]) and the CloudEvents mapping.

use crate::error::{Error, Result};
use bytes::Bytes;
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat, Utc};
use serde::{Serialize, de::DeserializeOwned};
use std::cell::{Cell, RefCell};
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
#[derive(Clone)]
pub struct Envelope {
    event_type: String,
    payload: Bytes,
    message_id: String,
    timestamp: DateTime<Utc>,
    /// `None`: the same as `message_id` (a new chain), without a second copy.
    correlation_id: Option<String>,
    causation_id: Option<String>,
    routing_key: Option<String>,
    headers: Headers,
}

impl PartialEq for Envelope {
    fn eq(&self, other: &Self) -> bool {
        self.event_type == other.event_type
            && self.payload == other.payload
            && self.message_id == other.message_id
            && self.timestamp == other.timestamp
            && self.correlation_id() == other.correlation_id()
            && self.causation_id == other.causation_id
            && self.routing_key == other.routing_key
            && self.headers == other.headers
    }
}

impl Eq for Envelope {}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("event_type", &self.event_type)
            .field("message_id", &self.message_id)
            .field("correlation_id", &self.correlation_id())
            .field("causation_id", &self.causation_id)
            .field("routing_key", &self.routing_key)
            .field("timestamp", &self.timestamp)
            .field("payload_len", &self.payload.len())
            .finish_non_exhaustive()
    }
}

/// A new UUID v4 as a hyphenated lowercase string (one exact allocation).
fn new_id() -> String {
    let mut buf = uuid::Uuid::encode_buffer();
    uuid::Uuid::new_v4()
        .hyphenated()
        .encode_lower(&mut buf)
        .to_owned()
}

/// Formats a timestamp as ISO 8601 / RFC 3339 with milliseconds and `Z`
/// (`2024-05-01T12:30:00.123Z`), as
/// `to_rfc3339_opts(SecondsFormat::Millis, true)` does. Years 0–9999 are
/// written directly (one allocation, no formatting machinery; the text of
/// the last millisecond formatted on the thread is reused); others and
/// leap seconds go through chrono.
pub fn format_timestamp(t: &DateTime<Utc>) -> String {
    thread_local! {
        static LAST: Cell<Option<(i64, u32, [u8; 24])>> = const { Cell::new(None) };
    }
    let secs = t.timestamp();
    let nanos = t.timestamp_subsec_nanos();
    let millis = nanos / 1_000_000;
    let text = match LAST.try_with(Cell::get) {
        Ok(Some((s, m, text))) if s == secs && m == millis && nanos < 1_000_000_000 => text,
        _ => match format_millis(secs, nanos) {
            Some(text) => {
                let _ = LAST.try_with(|l| l.set(Some((secs, millis, text))));
                text
            }
            None => return t.to_rfc3339_opts(SecondsFormat::Millis, true),
        },
    };
    match std::str::from_utf8(&text) {
        Ok(s) => s.to_owned(),
        Err(_) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for `secs` since the epoch and `nanos`;
/// `None` outside years 0–9999 and for leap seconds.
fn format_millis(secs: i64, nanos: u32) -> Option<[u8; 24]> {
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let year = u32::try_from(year).ok()?;
    if year > 9999 || nanos >= 1_000_000_000 {
        return None;
    }
    // In 0..86_400: the cast cannot truncate.
    let day_secs = secs.rem_euclid(86_400) as u32;
    let mut b = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut v: u32| {
        for i in (at..at + width).rev() {
            if let Some(c) = b.get_mut(i) {
                // v % 10 < 10: the cast cannot truncate.
                *c = b'0' + (v % 10) as u8;
            }
            v /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, day_secs / 3600);
    put(14, 2, day_secs / 60 % 60);
    put(17, 2, day_secs % 60);
    put(20, 3, nanos / 1_000_000);
    Some(b)
}

/// (year, month, day) of the proleptic Gregorian calendar for `days` since
/// 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    // In 1..=31 and 1..=12: the casts cannot truncate.
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The exact form [`format_timestamp`] writes (`YYYY-MM-DDTHH:MM:SS.mmmZ`),
/// parsed without chrono's general parser; `None` for anything else.
fn parse_millis_utc(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    if b.len() != 24 {
        return None;
    }
    for (i, sep) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (23, b'Z'),
    ] {
        if b.get(i) != Some(&sep) {
            return None;
        }
    }
    let num = |from: usize, to: usize| -> Option<u32> {
        b.get(from..to)?.iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let date = NaiveDate::from_ymd_opt(i32::try_from(num(0, 4)?).ok()?, num(5, 7)?, num(8, 10)?)?;
    let time =
        NaiveTime::from_hms_milli_opt(num(11, 13)?, num(14, 16)?, num(17, 19)?, num(20, 23)?)?;
    Some(date.and_time(time).and_utc())
}

/// Parses an ISO 8601 timestamp; a naive one (no offset, as Python's
/// `datetime.utcnow().isoformat()` writes) is taken as UTC. The form this
/// crate writes takes a fast path.
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    if let Some(t) = parse_millis_utc(s) {
        return Some(t);
    }
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
        let bytes = to_json(payload).map_err(|source| Error::Payload {
            event_type: event_type.clone(),
            source,
        })?;
        Ok(Self::from_json_bytes_unchecked(event_type, bytes))
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
        // A new chain: the correlation id is the message id (`None` until
        // either is changed).
        Self {
            event_type,
            payload,
            correlation_id: None,
            message_id: new_id(),
            timestamp: Utc::now(),
            causation_id: None,
            routing_key: None,
            headers: Headers::new(),
        }
    }

    /// Sets the message id (default: a new UUID v4).
    #[must_use]
    pub fn with_message_id(mut self, id: impl Into<String>) -> Self {
        let old = std::mem::replace(&mut self.message_id, id.into());
        // The correlation id stays what it was.
        self.correlation_id.get_or_insert(old);
        self
    }
    /// Sets the correlation id (default: a new UUID; handlers publishing
    /// through [`crate::Context`] inherit the inbound one).
    #[must_use]
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
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
        self.correlation_id.as_deref().unwrap_or(&self.message_id)
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
            .with_correlation_id(self.correlation_id())
            .with_causation_id(self.message_id.clone()))
    }

    /// The wire form with `routing_key` (SPEC §5: persistent, headers
    /// `event_type`, `timestamp`, `correlation_id`). Allocates the header map.
    pub fn to_message(&self, default_routing_key: impl FnOnce() -> String) -> Message {
        let mut headers = self.headers.clone();
        // In descending key order: each insert compares with one key.
        headers.insert(HEADER_TIMESTAMP.into(), format_timestamp(&self.timestamp));
        headers.insert(HEADER_MESSAGE_ID.into(), self.message_id.clone());
        headers.insert(HEADER_EVENT_TYPE.into(), self.event_type.clone());
        headers.insert(
            HEADER_CORRELATION_ID.into(),
            self.correlation_id().to_owned(),
        );
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
        let r = Reserved::check(&message.headers, message, true)?;
        Ok(r.envelope(
            &message.headers,
            message.body.clone(),
            message.routing_key.clone(),
            message.message_id.clone(),
        ))
    }

    /// [`Envelope::from_message`] taking the message: its routing key and
    /// message id move into the envelope instead of being copied; the
    /// returned [`Wire`] gives the identical message back. The JSON check of
    /// the body only runs when `validate` (the consumer skips it when its
    /// first handler parses the body anyway, and checks on that handler's
    /// failure). On error the message is handed back.
    // The error hands the message back; it is no larger than the success.
    #[allow(clippy::result_large_err)]
    pub(crate) fn read_owned(
        message: Message,
        validate: bool,
    ) -> std::result::Result<(Self, Wire), (Error, Message)> {
        let headers = message.headers.clone();
        let r = match Reserved::check(&headers, &message, validate) {
            Ok(r) => r,
            Err(e) => return Err((e, message)),
        };
        let had_message_id = message.message_id.is_some();
        let envelope = r.envelope(
            &headers,
            message.body,
            message.routing_key,
            message.message_id,
        );
        let wire = Wire {
            headers,
            had_message_id,
            persistent: message.persistent,
        };
        Ok((envelope, wire))
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
        map.insert("correlationid".into(), self.correlation_id().into());
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
            env.correlation_id = Some(c.to_owned());
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

/// The reserved headers of an inbound message, found in one pass.
struct Reserved<'a> {
    event_type: &'a String,
    timestamp: Option<&'a String>,
    message_id: Option<&'a String>,
    correlation_id: Option<&'a String>,
    causation_id: Option<&'a String>,
    extra: usize,
}

impl<'a> Reserved<'a> {
    /// Finds the reserved headers; the `event_type` header must be there,
    /// and the body JSON when `validate`.
    fn check(headers: &'a Headers, message: &Message, validate: bool) -> Result<Self> {
        let mut event_type = None;
        let mut timestamp = None;
        let mut message_id = None;
        let mut correlation_id = None;
        let mut causation_id = None;
        let mut extra = 0usize;
        for (k, v) in headers.iter() {
            match k.as_str() {
                HEADER_EVENT_TYPE => event_type = Some(v),
                HEADER_TIMESTAMP => timestamp = Some(v),
                HEADER_MESSAGE_ID => message_id = Some(v),
                HEADER_CORRELATION_ID => correlation_id = Some(v),
                HEADER_CAUSATION_ID => causation_id = Some(v),
                _ => extra += 1,
            }
        }
        let event_type = event_type.ok_or_else(|| {
            Error::InvalidMessage(format!(
                "missing `{HEADER_EVENT_TYPE}` header (routing key `{}`)",
                message.routing_key
            ))
        })?;
        if validate {
            validate_json(&message.body)?;
        }
        Ok(Self {
            event_type,
            timestamp,
            message_id,
            correlation_id,
            causation_id,
            extra,
        })
    }

    /// The envelope. A missing message id or correlation id becomes a new
    /// UUID, a missing or unparsable timestamp the time of receipt.
    fn envelope(
        self,
        h: &Headers,
        payload: Bytes,
        routing_key: String,
        message_id: Option<String>,
    ) -> Envelope {
        let timestamp = self
            .timestamp
            .and_then(|t| parse_timestamp(t))
            .unwrap_or_else(Utc::now);
        let message_id = message_id
            .or_else(|| self.message_id.cloned())
            .unwrap_or_else(new_id);
        let correlation_id = Some(self.correlation_id.cloned().unwrap_or_else(new_id));
        // Only the extra headers are copied (usually none).
        let headers = if self.extra == 0 {
            Headers::new()
        } else {
            h.iter()
                .filter(|(k, _)| !RESERVED.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        Envelope {
            event_type: self.event_type.clone(),
            payload,
            message_id,
            timestamp,
            correlation_id,
            causation_id: self.causation_id.cloned(),
            routing_key: Some(routing_key),
            headers,
        }
    }
}

/// What [`Envelope::read_owned`] keeps of a message besides the envelope.
#[derive(Debug)]
pub(crate) struct Wire {
    headers: Arc<Headers>,
    had_message_id: bool,
    persistent: bool,
}

impl Wire {
    /// The message exactly as it was delivered, given the envelope read
    /// from it.
    pub(crate) fn into_message(self, envelope: &Envelope) -> Message {
        Message {
            body: envelope.payload.clone(),
            headers: self.headers,
            routing_key: envelope.routing_key.clone().unwrap_or_default(),
            message_id: self.had_message_id.then(|| envelope.message_id.clone()),
            persistent: self.persistent,
        }
    }
}

/// Serialises `payload` as JSON into a per-thread buffer that is reused, and
/// copies the result into exactly sized bytes: no growth reallocations per
/// message. The buffer is dropped when it grew beyond 64 KiB.
fn to_json<T: Serialize + ?Sized>(payload: &T) -> std::result::Result<Bytes, serde_json::Error> {
    thread_local! {
        static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    let reused = BUF.try_with(|buf| {
        // Busy when a `Serialize` impl builds an envelope itself.
        let mut buf = buf.try_borrow_mut().ok()?;
        buf.clear();
        let r = serde_json::to_writer(&mut *buf, payload).map(|()| Bytes::copy_from_slice(&buf));
        if buf.capacity() > 64 * 1024 {
            *buf = Vec::new();
        }
        Some(r)
    });
    match reused {
        Ok(Some(r)) => r,
        _ => serde_json::to_vec(payload).map(Bytes::from),
    }
}

pub(crate) fn validate_json(bytes: &[u8]) -> Result<()> {
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
    fn fast_timestamp_paths_match_chrono() {
        use chrono::TimeZone;
        // xorshift: deterministic spread over years 0..=9999.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let min = Utc
            .with_ymd_and_hms(0, 1, 1, 0, 0, 0)
            .unwrap()
            .timestamp_millis();
        let max = Utc
            .with_ymd_and_hms(9999, 12, 31, 23, 59, 59)
            .unwrap()
            .timestamp_millis();
        for i in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let span = u64::try_from(max - min).unwrap();
            let ms = min + i64::try_from(x % span).unwrap();
            let t = Utc.timestamp_millis_opt(ms).unwrap()
                + chrono::Duration::nanoseconds(i64::try_from(i % 1_000_000).unwrap());
            let s = format_timestamp(&t);
            assert_eq!(s, t.to_rfc3339_opts(SecondsFormat::Millis, true));
            assert_eq!(
                parse_timestamp(&s),
                Some(
                    DateTime::parse_from_rfc3339(&s)
                        .unwrap()
                        .with_timezone(&Utc)
                )
            );
        }
        // Outside the fast paths: years past 9999 and before 0 (written as
        // chrono writes them), a leap second (also parsed back).
        for t in [
            Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(-1, 12, 31, 23, 59, 59).unwrap(),
        ] {
            assert_eq!(
                format_timestamp(&t),
                t.to_rfc3339_opts(SecondsFormat::Millis, true)
            );
        }
        let leap = NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_milli_opt(23, 59, 59, 1_500)
            .unwrap()
            .and_utc();
        let s = format_timestamp(&leap);
        assert_eq!(s, "2016-12-31T23:59:60.500Z");
        assert_eq!(parse_timestamp(&s), Some(leap));
        assert_eq!(
            format_timestamp(&Utc.timestamp_millis_opt(0).unwrap()),
            "1970-01-01T00:00:00.000Z"
        );
        assert!(parse_timestamp("2024-13-01T00:00:00.000Z").is_none());
        assert!(parse_timestamp("2024-02-30T00:00:00.000Z").is_none());
    }

    #[test]
    fn read_owned_gives_the_identical_message_back() {
        let env = Envelope::new("order_placed", &serde_json::json!({"id": 1}))
            .unwrap()
            .with_header("tenant", "acme");
        let mut msg = env.to_message(|| "order_placed.billing".into());
        for had_id in [true, false] {
            if !had_id {
                msg.message_id = None;
            }
            let (back, wire) = Envelope::read_owned(msg.clone(), true).unwrap();
            assert_eq!(back, Envelope::from_message(&msg).unwrap());
            assert_eq!(wire.into_message(&back), msg);
        }
        msg.body = Bytes::from_static(b"{");
        let (e, same) = Envelope::read_owned(msg.clone(), true).unwrap_err();
        assert!(matches!(e, Error::InvalidMessage(_)));
        assert_eq!(same, msg);
        assert!(Envelope::read_owned(msg, false).is_ok());
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
