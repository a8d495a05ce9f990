//! Property tests of the record codec: round trips, and that damage of any
//! kind — a flipped bit, a truncation, a record at the wrong offset — is
//! always refused.

use bytes::Bytes;
use ferry_record::*;
use proptest::prelude::*;

const MAX: usize = 16 << 20;

fn short_string() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-zA-Z0-9_%|. -]{0,24}").unwrap()
}

fn message() -> impl Strategy<Value = Payload> {
    (
        (
            short_string(),
            any::<u32>(),
            any::<u64>(),
            short_string(),
            any::<u8>(),
            any::<u8>(),
        ),
        (
            proptest::option::of(short_string()),
            proptest::collection::vec(short_string(), 0..4),
            proptest::option::of(short_string()),
            proptest::option::of(any::<i64>()),
            any::<i64>(),
            short_string(),
            proptest::option::of(any::<i64>()),
        ),
        proptest::collection::vec((short_string(), short_string()), 0..5),
        proptest::collection::vec(any::<u8>(), 0..2048),
    )
        .prop_map(|(a, b, properties, body)| {
            Payload::Message(MessageRecord {
                topic: a.0,
                queue_id: a.1,
                queue_offset: a.2,
                message_id: a.3,
                message_type: a.4,
                body_encoding: a.5,
                tag: b.0,
                keys: b.1,
                message_group: b.2,
                delivery_timestamp_ms: b.3,
                check_after_ms: b.6,
                born_timestamp_ms: b.4,
                born_host: b.5,
                properties,
                body: Bytes::from(body),
            })
        })
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        message(),
        (
            short_string(),
            short_string(),
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
            any::<i64>(),
            any::<u64>(),
            proptest::option::of(short_string())
        )
            .prop_map(
                |(
                    group,
                    topic,
                    queue_id,
                    queue_offset,
                    attempt,
                    handle,
                    visible_at_ms,
                    cursor,
                    client,
                )| {
                    Payload::Deliver(DeliverRecord {
                        group,
                        topic,
                        queue_id,
                        queue_offset,
                        attempt,
                        handle,
                        visible_at_ms,
                        cursor,
                        client,
                    })
                }
            ),
        (
            short_string(),
            short_string(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(|(group, topic, queue_id, queue_offset, handle)| {
                Payload::Ack(AckRecord {
                    group,
                    topic,
                    queue_id,
                    queue_offset,
                    handle,
                })
            }),
        (
            short_string(),
            short_string(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<i64>()
        )
            .prop_map(
                |(group, topic, queue_id, queue_offset, handle, visible_at_ms)| {
                    Payload::Renew(RenewRecord {
                        group,
                        topic,
                        queue_id,
                        queue_offset,
                        handle,
                        visible_at_ms,
                    })
                }
            ),
        (
            any::<u64>(),
            short_string(),
            short_string(),
            prop_oneof![
                Just(TxOutcome::Commit),
                Just(TxOutcome::Rollback),
                Just(TxOutcome::Discard)
            ],
            prop_oneof![
                Just(TxSource::Client),
                Just(TxSource::ServerCheck),
                Just(TxSource::CheckLimit)
            ],
            any::<u32>(),
            proptest::option::of(any::<u64>()),
            short_string(),
        )
            .prop_map(
                |(
                    half_offset,
                    topic,
                    message_id,
                    outcome,
                    source,
                    queue_id,
                    queue_offset,
                    reason,
                )| {
                    Payload::TxEnd(TxEndRecord {
                        half_offset,
                        topic,
                        message_id,
                        outcome,
                        source,
                        queue_id,
                        queue_offset,
                        reason,
                    })
                }
            ),
        (any::<u64>(), any::<u32>(), any::<i64>()).prop_map(
            |(half_offset, checks, next_check_ms)| {
                Payload::TxCheck(TxCheckRecord {
                    half_offset,
                    checks,
                    next_check_ms,
                })
            }
        ),
        (any::<u64>(), short_string(), any::<u32>(), any::<u64>()).prop_map(
            |(message_offset, topic, queue_id, queue_offset)| {
                Payload::Fire(FireRecord {
                    message_offset,
                    topic,
                    queue_id,
                    queue_offset,
                })
            }
        ),
        (
            (short_string(), short_string(), any::<u32>(), any::<u64>()),
            (any::<u64>(), any::<u32>(), any::<u32>(), any::<u64>()),
        )
            .prop_map(|(a, b)| {
                Payload::DeadLetter(DeadLetterRecord {
                    group: a.0,
                    topic: a.1,
                    queue_id: a.2,
                    queue_offset: a.3,
                    message_offset: b.0,
                    message_len: b.1,
                    attempts: b.2,
                    dlq_queue_offset: b.3,
                })
            }),
        (any::<u64>(), short_string(), short_string()).prop_map(
            |(message_offset, topic, message_id)| {
                Payload::Recall(RecallRecord {
                    message_offset,
                    topic,
                    message_id,
                })
            }
        ),
        (
            short_string(),
            short_string(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(
                |(group, topic, queue_id, queue_offset, dlq_queue_offset, handle)| {
                    Payload::Redrive(RedriveRecord {
                        group,
                        topic,
                        queue_id,
                        queue_offset,
                        dlq_queue_offset,
                        handle,
                    })
                }
            ),
        short_string().prop_map(|topic| Payload::TopicDelete(TopicDeleteRecord { topic })),
    ]
}

fn record() -> impl Strategy<Value = Record> {
    (any::<u64>(), any::<i64>(), payload()).prop_map(|(term, timestamp_ms, payload)| Record {
        term,
        timestamp_ms,
        payload,
    })
}

fn encoded(rec: &Record, offset: u64) -> Bytes {
    let mut out = Vec::new();
    encode(rec, offset, &mut out);
    Bytes::from(out)
}

proptest! {
    #[test]
    fn round_trip(rec in record(), offset in any::<u64>()) {
        let buf = encoded(&rec, offset);
        prop_assert_eq!(buf.len(), encoded_len(&rec));
        let (back, len) = decode(&buf, offset, MAX).unwrap();
        prop_assert_eq!(len, buf.len());
        prop_assert_eq!(back, rec);
    }

    #[test]
    fn any_flipped_bit_is_detected(rec in record(), offset in any::<u64>(), pick in any::<prop::sample::Index>(), bit in 0u8..8) {
        let buf = encoded(&rec, offset);
        let mut bad = buf.to_vec();
        let i = pick.index(bad.len());
        bad[i] ^= 1 << bit;
        prop_assert!(decode(&Bytes::from(bad), offset, MAX).is_err());
    }

    #[test]
    fn any_truncation_is_detected(rec in record(), offset in any::<u64>(), pick in any::<prop::sample::Index>()) {
        let buf = encoded(&rec, offset);
        let cut = pick.index(buf.len());
        prop_assert!(decode(&buf.slice(..cut), offset, MAX).is_err());
    }

    #[test]
    fn wrong_offset_is_refused(rec in record(), offset in any::<u64>(), other in any::<u64>()) {
        prop_assume!(offset != other);
        let buf = encoded(&rec, offset);
        let refused = matches!(decode(&buf, other, MAX), Err(DecodeError::OffsetMismatch { .. }));
        prop_assert!(refused);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512), offset in any::<u64>()) {
        let _ = decode(&Bytes::from(data), offset, MAX);
    }
}

#[test]
fn oversized_length_is_refused_before_reading() {
    let mut buf = vec![0u8; 64];
    buf[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = decode(&Bytes::from(buf), 0, 1024).unwrap_err();
    assert!(matches!(err, DecodeError::BadLength { .. }), "{err}");
}

#[test]
fn topic_delete_is_kind_11() {
    let rec = Record {
        term: 0,
        timestamp_ms: 5,
        payload: Payload::TopicDelete(TopicDeleteRecord {
            topic: "orders".into(),
        }),
    };
    let buf = encoded(&rec, 64);
    assert_eq!(buf[8], 11);
    assert_eq!(Kind::from_u8(11), Some(Kind::TopicDelete));
    assert_eq!(decode(&buf, 64, MAX).unwrap().0, rec);
}

/// Found by the `record_decode` fuzz target: a record whose reserved header
/// bytes are not zero, under a matching checksum, used to decode — and then
/// re-encoded to different bytes.
#[test]
fn nonzero_reserved_bytes_are_refused() {
    let rec = Record {
        term: 0,
        timestamp_ms: 5,
        payload: Payload::TopicDelete(TopicDeleteRecord {
            topic: "orders".into(),
        }),
    };
    let mut buf = encoded(&rec, 64).to_vec();
    buf[11] = 0xff;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&buf[0..4]), &buf[8..]);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    let err = decode(&Bytes::from(buf), 64, MAX).unwrap_err();
    assert!(matches!(err, DecodeError::Malformed(_)), "{err}");
}
