//! Translation between wire messages and the core's types.

use std::time::Duration;

use ferry_broker::{BrokerError, Incoming, MessageKind};
use ferry_proto::v2 as pb;
use md5::{Digest as _, Md5};
use prost_types::Timestamp;

use ferry_record::MessageRecord;

use crate::engine::Delivered;

pub fn ts_to_ms(t: &Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(t.nanos) / 1_000_000)
}

/// A delivery time in whole milliseconds, rounded *up*: a message due at
/// X.0009 s must not fire at X.000 s (never early).
pub fn due_ms(t: &Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1000)
        .saturating_add((i64::from(t.nanos) + 999_999).div_euclid(1_000_000))
}

pub fn ms_to_ts(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A protobuf duration in ms, refusing negative or absurd values.
pub fn duration_ms(d: &prost_types::Duration) -> Option<i64> {
    if d.seconds < 0 || d.nanos < 0 || d.seconds > i64::MAX / 1000 - 1 {
        return None;
    }
    Some(d.seconds * 1000 + i64::from(d.nanos) / 1_000_000)
}

pub fn to_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Reads a wire message into the core's form. Structural problems (no
/// topic, unknown type) are refused here; content rules are `validate`'s.
pub fn incoming(m: pb::Message) -> Result<Incoming, BrokerError> {
    let topic = m.topic.map(|t| t.name).unwrap_or_default();
    let sp = m.system_properties.unwrap_or_default();
    let kind = match pb::MessageType::try_from(sp.message_type)
        .unwrap_or(pb::MessageType::Unspecified)
    {
        pb::MessageType::Normal => MessageKind::Normal,
        pb::MessageType::Fifo => MessageKind::Fifo,
        pb::MessageType::Delay => MessageKind::Delay,
        pb::MessageType::Transaction => MessageKind::Transaction,
        pb::MessageType::Unspecified => {
            if sp.delivery_timestamp.is_some() {
                MessageKind::Delay
            } else if sp.message_group.is_some() {
                MessageKind::Fifo
            } else {
                MessageKind::Normal
            }
        }
        pb::MessageType::Lite => return Err(BrokerError::NotImplemented("lite topics")),
        pb::MessageType::Priority => return Err(BrokerError::NotImplemented("priority messages")),
    };
    let mut properties: Vec<(String, String)> = m.user_properties.into_iter().collect();
    properties.sort();
    Ok(Incoming {
        topic,
        message_id: sp.message_id,
        kind,
        tag: sp.tag,
        keys: sp.keys,
        message_group: sp.message_group,
        delivery_timestamp_ms: sp.delivery_timestamp.as_ref().map(due_ms),
        // A malformed (negative) duration means "the broker's default".
        check_after_ms: sp
            .orphaned_transaction_recovery_duration
            .as_ref()
            .and_then(duration_ms),
        born_timestamp_ms: sp.born_timestamp.as_ref().map_or(0, ts_to_ms),
        born_host: sp.born_host,
        queue_id: u32::try_from(sp.queue_id).unwrap_or(0),
        body_encoding: u8::try_from(sp.body_encoding).unwrap_or(0),
        properties,
        body: m.body,
    })
}

/// The digest a consumer gets with each body: CRC32 when the client asks
/// for it with `x-ferry-accept-digest: CRC32` (Ferry's own client does),
/// MD5 otherwise.
///
/// Why two: MD5 is the digest every official client checks the same way,
/// but it was a tenth of the broker's CPU (and of the consumer's) when
/// delivering 1 KiB messages (BENCHMARKS.md, profiling). CRC32 costs next to nothing,
/// yet clients differ in how they write it (Python zero-pads eight hex
/// digits; not every client is known to do the same), so it goes only to a
/// client that says it checks Ferry's form (eight upper-case hex digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyDigest {
    Md5,
    Crc32,
}

impl BodyDigest {
    /// From the value of `ferry_proto::ext::ACCEPT_DIGEST_HEADER`, if the
    /// request had one.
    pub fn accepted(header: Option<&str>) -> BodyDigest {
        match header {
            Some("CRC32") => BodyDigest::Crc32,
            _ => BodyDigest::Md5,
        }
    }

    fn of(self, body: &[u8]) -> pb::Digest {
        match self {
            BodyDigest::Md5 => pb::Digest {
                r#type: pb::DigestType::Md5 as i32,
                checksum: hex::encode_upper(Md5::digest(body)),
            },
            BodyDigest::Crc32 => pb::Digest {
                r#type: pb::DigestType::Crc32 as i32,
                checksum: format!("{:08X}", crc32fast::hash(body)),
            },
        }
    }
}

/// Builds the wire message a consumer receives.
pub fn outgoing(
    d: Delivered,
    topic: &str,
    store_host: &str,
    invisible_ms: i64,
    digest: BodyDigest,
) -> pb::Message {
    // Served from another topic than it was sent to: a dead letter, which
    // carries its original identity.
    let dead_letter = (d.message.topic != topic).then(|| pb::DeadLetterQueue {
        topic: d.message.topic.clone(),
        message_id: d.message.message_id.clone(),
    });
    let mut msg = stored_message(d.message, d.store_ms, topic, store_host, digest);
    if let Some(sp) = msg.system_properties.as_mut() {
        sp.dead_letter_queue = dead_letter;
        sp.receipt_handle = Some(d.delivery.receipt_handle);
        sp.queue_id = d.delivery.queue_id as i32;
        sp.queue_offset = Some(d.delivery.queue_offset as i64);
        sp.invisible_duration = Some(to_duration(Duration::from_millis(
            invisible_ms.max(0) as u64
        )));
        sp.delivery_attempt = Some(d.delivery.attempt as i32);
    }
    msg
}

/// Builds the wire form of a stored message, without delivery details:
/// what a check-back shows the producer.
pub fn stored_message(
    m: MessageRecord,
    store_ms: i64,
    topic: &str,
    store_host: &str,
    digest: BodyDigest,
) -> pb::Message {
    let body_digest = digest.of(&m.body);
    let encoding = if m.body_encoding == 0 {
        pb::Encoding::Identity as i32
    } else {
        i32::from(m.body_encoding)
    };
    pb::Message {
        topic: Some(pb::Resource {
            resource_namespace: String::new(),
            name: topic.to_string(),
        }),
        user_properties: m.properties.into_iter().collect(),
        system_properties: Some(pb::SystemProperties {
            tag: m.tag,
            keys: m.keys,
            message_id: m.message_id,
            body_digest: Some(body_digest),
            body_encoding: encoding,
            message_type: i32::from(m.message_type),
            born_timestamp: Some(ms_to_ts(m.born_timestamp_ms)),
            born_host: m.born_host,
            store_timestamp: Some(ms_to_ts(store_ms)),
            store_host: store_host.to_string(),
            delivery_timestamp: m.delivery_timestamp_ms.map(ms_to_ts),
            queue_id: m.queue_id as i32,
            message_group: m.message_group,
            ..Default::default()
        }),
        body: m.body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_goes_only_to_clients_that_ask_for_it() {
        assert_eq!(BodyDigest::accepted(Some("CRC32")), BodyDigest::Crc32);
        for other in [Some("MD5"), Some("crc32"), Some(""), None] {
            assert_eq!(BodyDigest::accepted(other), BodyDigest::Md5, "{other:?}");
        }
        let crc = BodyDigest::Crc32.of(b"hello");
        assert_eq!(crc.r#type, pb::DigestType::Crc32 as i32);
        assert_eq!(crc.checksum, "3610A686");
        // Zero-padded to eight digits, as the receiving check expects.
        assert_eq!(BodyDigest::Crc32.of(b"").checksum, "00000000");
        let md5 = BodyDigest::Md5.of(b"hello");
        assert_eq!(md5.r#type, pb::DigestType::Md5 as i32);
        assert_eq!(md5.checksum, "5D41402ABC4B2A76B9719D911017C592");
    }

    #[test]
    fn timestamps_round_trip() {
        for ms in [0i64, 1, 999, 1_700_000_000_123, -1, -1001] {
            assert_eq!(ts_to_ms(&ms_to_ts(ms)), ms);
            assert_eq!(due_ms(&ms_to_ts(ms)), ms);
        }
        assert_eq!(
            duration_ms(&prost_types::Duration {
                seconds: -1,
                nanos: 0
            }),
            None
        );
        assert_eq!(
            duration_ms(&prost_types::Duration {
                seconds: 2,
                nanos: 5_000_000
            }),
            Some(2005)
        );
    }

    #[test]
    fn delivery_times_round_up_to_the_next_millisecond() {
        let t = Timestamp {
            seconds: 10,
            nanos: 900_000,
        };
        assert_eq!(due_ms(&t), 10_001);
        assert_eq!(ts_to_ms(&t), 10_000);
    }
}
