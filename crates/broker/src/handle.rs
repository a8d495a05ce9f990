//! Receipt handles: the opaque string a consumer must present to settle a
//! delivery. It names the queue, the queue offset and the delivery's unique
//! handle number, under a checksum that also covers group and topic — so a
//! handle edited by hand, or presented for another group or topic, is
//! refused instead of settling the wrong message.

use crate::BrokerError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub queue_id: u32,
    pub queue_offset: u64,
    pub handle: u64,
}

fn check(group: &str, topic: &str, r: &Receipt) -> u32 {
    let mut c = crc32c::crc32c(group.as_bytes());
    c = crc32c::crc32c_append(c, &[0]);
    c = crc32c::crc32c_append(c, topic.as_bytes());
    c = crc32c::crc32c_append(c, &r.queue_id.to_le_bytes());
    c = crc32c::crc32c_append(c, &r.queue_offset.to_le_bytes());
    crc32c::crc32c_append(c, &r.handle.to_le_bytes())
}

pub fn encode(group: &str, topic: &str, r: &Receipt) -> String {
    format!(
        "F1.{:x}.{:x}.{:x}.{:08x}",
        r.queue_id,
        r.queue_offset,
        r.handle,
        check(group, topic, r)
    )
}

pub fn decode(group: &str, topic: &str, s: &str) -> Result<Receipt, BrokerError> {
    let bad = || {
        BrokerError::InvalidReceiptHandle(format!(
            "{s:?} is not a receipt handle of group {group:?} on topic {topic:?}"
        ))
    };
    if s.len() > 96 {
        return Err(bad());
    }
    let mut parts = s.split('.');
    if parts.next() != Some("F1") {
        return Err(bad());
    }
    let mut num = || {
        parts
            .next()
            .and_then(|p| u64::from_str_radix(p, 16).ok())
            .ok_or_else(bad)
    };
    let queue_id = u32::try_from(num()?).map_err(|_| bad())?;
    let queue_offset = num()?;
    let handle = num()?;
    let sum = u32::try_from(num()?).map_err(|_| bad())?;
    let r = Receipt {
        queue_id,
        queue_offset,
        handle,
    };
    if check(group, topic, &r) != sum {
        return Err(bad());
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let r = Receipt {
            queue_id: 3,
            queue_offset: 77,
            handle: 12345,
        };
        let s = encode("g", "t", &r);
        assert_eq!(decode("g", "t", &s).unwrap(), r);
        assert!(decode("g2", "t", &s).is_err());
        assert!(decode("g", "t2", &s).is_err());
        assert!(decode("g", "t", &s.replace(".4d.", ".4e.")).is_err());
        assert!(decode("g", "t", "garbage").is_err());
        assert!(decode("g", "t", "").is_err());
    }
}
