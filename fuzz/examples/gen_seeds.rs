//! Writes the seed corpus of every fuzz target under `seeds/<target>/`:
//! small valid inputs in each target's input layout (see the comment at the
//! top of each file in `fuzz_targets/`). Deterministic; rerun it after
//! changing an input layout:
//!
//! ```text
//! cd fuzz && cargo +nightly run --example gen_seeds
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use ferry_fuzz::message::{check_incoming, FuzzIncoming, Outcome, NOW_MS};
use ferry_proto::prost_types;
use ferry_proto::v2 as pb;
use ferry_record::{
    encode, AckRecord, DeadLetterRecord, DeliverRecord, FireRecord, MessageRecord, Payload,
    RecallRecord, Record, RedriveRecord, RenewRecord, TopicDeleteRecord, TxCheckRecord,
    TxEndRecord, TxOutcome, TxSource,
};
use ferry_store::segment::encode_header;
use prost::Message as _;

fn message(i: u64) -> MessageRecord {
    MessageRecord {
        topic: "orders".into(),
        queue_id: (i % 4) as u32,
        queue_offset: i,
        message_id: format!("ID{i:08}"),
        message_type: 1 + (i % 4) as u8,
        body_encoding: 1,
        tag: i.is_multiple_of(2).then(|| "created".into()),
        keys: vec![format!("k{i}")],
        message_group: (i % 4 == 1).then(|| "g1".into()),
        delivery_timestamp_ms: (i % 4 == 2).then_some(NOW_MS + 1000),
        check_after_ms: (i % 4 == 3).then_some(5000),
        born_timestamp_ms: NOW_MS - 5,
        born_host: "host-1".into(),
        properties: vec![
            ("region".into(), "eu".into()),
            ("price".into(), "150".into()),
        ],
        body: Bytes::from(vec![b'a' + (i % 26) as u8; 8 + i as usize]),
    }
}

/// One record of every kind.
fn records() -> Vec<Record> {
    let payloads = vec![
        Payload::Message(message(0)),
        Payload::Message(message(1)),
        Payload::Deliver(DeliverRecord {
            group: "g".into(),
            topic: "orders".into(),
            queue_id: 0,
            queue_offset: 0,
            attempt: 1,
            handle: 7,
            visible_at_ms: NOW_MS + 30_000,
            cursor: 1,
            client: Some("consumer-1".into()),
        }),
        // As written before deliveries named their consumer client.
        Payload::Deliver(DeliverRecord {
            group: "g".into(),
            topic: "orders".into(),
            queue_id: 0,
            queue_offset: 1,
            attempt: 1,
            handle: 8,
            visible_at_ms: NOW_MS + 30_000,
            cursor: 2,
            client: None,
        }),
        Payload::Ack(AckRecord {
            group: "g".into(),
            topic: "orders".into(),
            queue_id: 0,
            queue_offset: 0,
            handle: 7,
        }),
        Payload::Renew(RenewRecord {
            group: "g".into(),
            topic: "orders".into(),
            queue_id: 0,
            queue_offset: 0,
            handle: 7,
            visible_at_ms: NOW_MS + 60_000,
        }),
        Payload::TxEnd(TxEndRecord {
            half_offset: 0,
            topic: "orders".into(),
            message_id: "ID00000003".into(),
            outcome: TxOutcome::Commit,
            source: TxSource::Client,
            queue_id: 1,
            queue_offset: Some(3),
            reason: String::new(),
        }),
        Payload::TxCheck(TxCheckRecord {
            half_offset: 0,
            checks: 2,
            next_check_ms: NOW_MS + 10_000,
        }),
        Payload::Fire(FireRecord {
            message_offset: 0,
            topic: "orders".into(),
            queue_id: 2,
            queue_offset: 4,
        }),
        Payload::DeadLetter(DeadLetterRecord {
            group: "g".into(),
            topic: "orders".into(),
            queue_id: 0,
            queue_offset: 0,
            message_offset: 0,
            message_len: 120,
            attempts: 16,
            dlq_queue_offset: 0,
        }),
        Payload::Recall(RecallRecord {
            message_offset: 0,
            topic: "orders".into(),
            message_id: "ID00000002".into(),
        }),
        Payload::Redrive(RedriveRecord {
            group: "g".into(),
            topic: "orders".into(),
            queue_id: 0,
            queue_offset: 0,
            dlq_queue_offset: 0,
            handle: 9,
        }),
        Payload::TopicDelete(TopicDeleteRecord {
            topic: "orders".into(),
        }),
    ];
    payloads
        .into_iter()
        .enumerate()
        .map(|(i, payload)| Record {
            term: 0,
            timestamp_ms: NOW_MS + i as i64,
            payload,
        })
        .collect()
}

/// Records encoded back to back from log offset `base`.
fn chain(recs: &[Record], base: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for r in recs {
        let at = base + out.len() as u64;
        encode(r, at, &mut out);
    }
    out
}

fn put(dir: &Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join(name), bytes).expect("writing a seed");
}

fn record_decode(dir: &Path) {
    for (i, rec) in records().iter().enumerate() {
        for (j, offset) in [0u64, 4096].into_iter().enumerate() {
            let mut seed = vec![0u8];
            seed.extend_from_slice(&offset.to_le_bytes());
            seed.extend_from_slice(&0u32.to_le_bytes());
            encode(rec, offset, &mut seed);
            put(dir, &format!("kind{:02}-{j}", i), &seed);
        }
    }
    // Resealing on, limit given: the fuzzer's fast path into payloads.
    let mut seed = vec![7u8];
    seed.extend_from_slice(&64u64.to_le_bytes());
    seed.extend_from_slice(&4096u32.to_le_bytes());
    encode(&records()[0], 64, &mut seed);
    put(dir, "resealed-limited", &seed);
}

fn segment_recovery(dir: &Path) {
    let recs = records();
    // One clean segment at base 0: flags 0, base u16 0, sflags 0, records.
    let mut seed = vec![0u8, 0, 0, 0];
    seed.extend_from_slice(&chain(&recs, 0));
    put(dir, "one-segment", &seed);

    // The same with a torn tail, and with an append after recovery.
    let mut torn = seed.clone();
    torn.truncate(torn.len() - 5);
    put(dir, "torn-tail", &torn);
    let mut append = seed.clone();
    append[0] = 16;
    put(dir, "append", &append);

    // Two segments back to back (base 100), resealed; the second is the
    // rest of the input.
    let first = chain(&recs[..6], 100);
    let second = chain(&recs[6..], 100 + first.len() as u64);
    let mut seed = vec![1u8];
    seed.extend_from_slice(&100u16.to_le_bytes());
    seed.push(2);
    seed.extend_from_slice(&(first.len() as u16).to_le_bytes());
    seed.extend_from_slice(&first);
    seed.push(2);
    seed.extend_from_slice(&second);
    put(dir, "two-segments", &seed);

    // Damage in the middle of the first of two segments.
    let mut damaged = seed.clone();
    damaged[3] = 0; // not resealed, so the damage stays
    damaged[6 + 60] ^= 0xff;
    put(dir, "two-segments-damaged", &damaged);

    // Three segments, the middle one's header declaring another base.
    let a = chain(&recs[..4], 0);
    let b = chain(&recs[4..8], a.len() as u64);
    let c = chain(&recs[8..], (a.len() + b.len()) as u64);
    let mut seed = vec![2u8, 0, 0];
    seed.push(0);
    seed.extend_from_slice(&(a.len() as u16).to_le_bytes());
    seed.extend_from_slice(&a);
    seed.push(4);
    seed.extend_from_slice(&(b.len() as u16).to_le_bytes());
    seed.extend_from_slice(&b);
    seed.push(0);
    seed.extend_from_slice(&c);
    put(dir, "three-segments-bad-header", &seed);

    // A whole segment file given raw (header included), with a CLEAN mark.
    let mut file = encode_header(0, NOW_MS, 0).to_vec();
    file.extend_from_slice(&chain(&recs[..3], 0));
    let mut seed = vec![4u8, 0, 0];
    seed.extend_from_slice(&7u16.to_le_bytes());
    seed.push(1);
    seed.extend_from_slice(&file);
    put(dir, "raw-file-clean", &seed);
}

fn pb_message(kind: pb::MessageType, i: u32) -> pb::Message {
    let ts = |ms: i64| prost_types::Timestamp {
        seconds: ms / 1000,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    };
    pb::Message {
        topic: Some(pb::Resource {
            resource_namespace: String::new(),
            name: "orders".into(),
        }),
        user_properties: [("region".to_string(), "eu".to_string())].into(),
        system_properties: Some(pb::SystemProperties {
            tag: Some("created".into()),
            keys: vec![format!("k{i}")],
            message_id: format!("01A2B3C4D5E6F7{i:010}"),
            body_encoding: pb::Encoding::Identity as i32,
            message_type: kind as i32,
            born_timestamp: Some(ts(NOW_MS - 10)),
            born_host: "host-1".into(),
            delivery_timestamp: (kind == pb::MessageType::Delay).then(|| ts(NOW_MS + 5000)),
            message_group: (kind == pb::MessageType::Fifo).then(|| "g1".into()),
            orphaned_transaction_recovery_duration: (kind == pb::MessageType::Transaction)
                .then_some(prost_types::Duration {
                    seconds: 30,
                    nanos: 0,
                }),
            ..Default::default()
        }),
        body: Bytes::from(format!("body {i}")),
    }
}

/// A tiny deterministic generator (xorshift64*), so seeds never change
/// between runs.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn request_validation(dir: &Path) {
    // Mode 0: arbitrary-built messages that pass validation, one per kind
    // of outcome, found by a seeded search.
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut found: Vec<(Outcome, u8)> = Vec::new();
    let mut panicked = 0;
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for _ in 0..100_000 {
        if found.len() >= 6 {
            break;
        }
        let len = 16 + (rng.next() % 200) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let Ok(m) = FuzzIncoming::arbitrary(&mut Unstructured::new(&bytes)) else {
            continue;
        };
        let inc = m.build();
        let key = inc.kind as u8;
        let run = std::panic::AssertUnwindSafe(|| check_incoming(&inc, NOW_MS));
        let Ok(outcome) = std::panic::catch_unwind(run) else {
            panicked += 1;
            continue;
        };
        if outcome == Outcome::Invalid || found.contains(&(outcome, key)) {
            continue;
        }
        found.push((outcome, key));
        let mut seed = vec![0u8];
        seed.extend_from_slice(&bytes);
        put(dir, &format!("incoming-{outcome:?}-{key}"), &seed);
    }
    std::panic::set_hook(hook);
    if panicked > 0 {
        eprintln!(
            "request_validation: {panicked} searched inputs panicked (a bug the target finds)"
        );
    }

    // Mode 1: filter expressions with a tag and properties.
    let filters = [
        "*\nTagA",
        "TagA || TagB\nTagB",
        "TagA||TagB||TagA\nTagC",
        "region = 'eu' AND price > 100\nvip\nregion=eu\nprice=150",
        "price BETWEEN 100 AND 200 OR region IN ('us', 'eu')\n\nprice=99.5\nregion=us",
        "NOT (name LIKE 'ab%_c') AND flag IS NOT NULL\nt\nname=abxc\nflag=1",
        "TAGS IN ('vip', 'gold') AND level <> 3\nvip\nlevel=4",
        "a > -9223372036854775808 AND b <= 1.5E3 AND c = TRUE\n\na=0\nb=1500\nc=true",
    ];
    for (i, f) in filters.iter().enumerate() {
        let mut seed = vec![1u8];
        seed.extend_from_slice(f.as_bytes());
        put(dir, &format!("filter-{i}"), &seed);
    }

    // Mode 2: SendMessageRequests of each message type, and a batch.
    let kinds = [
        pb::MessageType::Normal,
        pb::MessageType::Fifo,
        pb::MessageType::Delay,
        pb::MessageType::Transaction,
        pb::MessageType::Unspecified,
    ];
    for (i, k) in kinds.iter().enumerate() {
        let req = pb::SendMessageRequest {
            messages: vec![pb_message(*k, i as u32)],
        };
        let mut seed = vec![2u8];
        seed.extend_from_slice(&req.encode_to_vec());
        put(dir, &format!("send-{}", k.as_str_name()), &seed);
    }
    let req = pb::SendMessageRequest {
        messages: kinds
            .iter()
            .enumerate()
            .map(|(i, k)| pb_message(*k, 10 + i as u32))
            .collect(),
    };
    let mut seed = vec![2u8];
    seed.extend_from_slice(&req.encode_to_vec());
    put(dir, "send-batch", &seed);
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds");
    type Generator = fn(&Path);
    let targets: [(&str, Generator); 3] = [
        ("record_decode", record_decode),
        ("segment_recovery", segment_recovery),
        ("request_validation", request_validation),
    ];
    for (name, gen) in targets {
        let dir = root.join(name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("creating a seed directory");
        gen(&dir);
        let n = fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        println!("{name}: {n} seeds in {}", dir.display());
    }
}
