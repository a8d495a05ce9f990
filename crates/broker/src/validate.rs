//! Rules for names and messages, checked before anything is stored.

use crate::core::{Incoming, MessageKind};
use crate::{BrokerError, Limits};

fn name_ok(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'%' | b'|'))
}

pub fn topic_name(name: &str, limits: &Limits) -> Result<(), BrokerError> {
    if name_ok(name, limits.max_topic_name_len) {
        Ok(())
    } else {
        Err(BrokerError::IllegalTopic(name.to_string()))
    }
}

pub fn group_name(name: &str, limits: &Limits) -> Result<(), BrokerError> {
    if name_ok(name, limits.max_group_name_len) {
        Ok(())
    } else {
        Err(BrokerError::IllegalGroup(name.to_string()))
    }
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// Checks one message against every rule and limit. Pure.
pub fn message(m: &Incoming, limits: &Limits) -> Result<(), BrokerError> {
    topic_name(&m.topic, limits)?;
    if m.message_id.is_empty() {
        return Err(BrokerError::IllegalMessageId(
            "message id is required".into(),
        ));
    }
    if m.message_id.len() > limits.max_message_id_len || has_control(&m.message_id) {
        return Err(BrokerError::IllegalMessageId(format!(
            "at most {} printable characters",
            limits.max_message_id_len
        )));
    }
    if m.body.is_empty() {
        return Err(BrokerError::BodyEmpty);
    }
    if m.body.len() > limits.max_body_bytes {
        return Err(BrokerError::BodyTooLarge {
            size: m.body.len(),
            max: limits.max_body_bytes,
        });
    }
    if let Some(tag) = &m.tag {
        if tag.trim().is_empty() {
            return Err(BrokerError::IllegalTag("tag must not be blank".into()));
        }
        if tag.contains('|') || tag.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(BrokerError::IllegalTag(format!(
                "{tag:?} contains '|', whitespace or a control character"
            )));
        }
    }
    for k in &m.keys {
        if k.trim().is_empty() || has_control(k) {
            return Err(BrokerError::IllegalKey(format!(
                "{k:?} is blank or has a control character"
            )));
        }
    }
    if let Some(g) = &m.message_group {
        if g.is_empty() || g.len() >= limits.max_message_group_len || has_control(g) {
            return Err(BrokerError::IllegalMessageGroup(format!(
                "{g:?}: 1 to {} bytes without control characters",
                limits.max_message_group_len - 1
            )));
        }
    }
    // The commit-log record holds it as a string of at most 64 KiB, and
    // nothing else bounds it: longer, it would make the record encoder panic
    // in the middle of `Log::append` (found by fuzz/request_validation).
    if m.born_host.len() > ferry_record::MAX_STR_BYTES {
        return Err(BrokerError::BadRequest(format!(
            "born host of {} bytes; at most {} allowed",
            m.born_host.len(),
            ferry_record::MAX_STR_BYTES
        )));
    }
    if m.properties.len() > limits.max_properties {
        return Err(BrokerError::PropertiesTooLarge(format!(
            "{} properties, at most {} allowed",
            m.properties.len(),
            limits.max_properties
        )));
    }
    let mut size =
        m.tag.as_ref().map_or(0, String::len) + m.keys.iter().map(String::len).sum::<usize>();
    for (k, v) in &m.properties {
        if k.is_empty() || has_control(k) || k.len() > ferry_record::MAX_STR_BYTES {
            return Err(BrokerError::IllegalPropertyKey(format!(
                "{k:?} is empty or has a control character"
            )));
        }
        size += k.len() + v.len();
    }
    if size > limits.max_properties_bytes {
        return Err(BrokerError::PropertiesTooLarge(format!(
            "{size} bytes of properties, tag and keys; at most {} allowed",
            limits.max_properties_bytes
        )));
    }
    match (
        m.kind,
        m.message_group.is_some(),
        m.delivery_timestamp_ms.is_some(),
    ) {
        (MessageKind::Normal, false, false) => Ok(()),
        (MessageKind::Fifo, true, false) => Ok(()),
        (MessageKind::Delay, false, true) => Ok(()),
        // Unlike the reference broker, a transactional message may carry a
        // message group (it joins the group's order when committed) and a
        // delivery time (it fires then, if committed by that time).
        (MessageKind::Transaction, _, _) => Ok(()),
        (MessageKind::Normal, true, _) => Err(BrokerError::TypeConflict(
            "a NORMAL message has a message group".into(),
        )),
        (MessageKind::Normal, _, true) => Err(BrokerError::TypeConflict(
            "a NORMAL message has a delivery time".into(),
        )),
        (MessageKind::Fifo, false, _) => Err(BrokerError::TypeConflict(
            "a FIFO message needs a message group".into(),
        )),
        (MessageKind::Fifo, _, true) => Err(BrokerError::TypeConflict(
            "a FIFO message cannot have a delivery time".into(),
        )),
        (MessageKind::Delay, _, false) => Err(BrokerError::TypeConflict(
            "a DELAY message needs a delivery time".into(),
        )),
        (MessageKind::Delay, true, true) => Err(BrokerError::TypeConflict(
            "a DELAY message cannot have a message group".into(),
        )),
    }
}

/// Checks what depends on the clock: a delivery time may lie in the past
/// (the message is due at once) but not further ahead than the limit.
pub fn delivery_time(m: &Incoming, now_ms: i64, limits: &Limits) -> Result<(), BrokerError> {
    match m.delivery_timestamp_ms {
        Some(t) if t > now_ms.saturating_add(limits.max_delay_ms) => {
            Err(BrokerError::IllegalDeliveryTime(format!(
                "{t} ms lies {} s ahead; at most {} s is allowed",
                (t - now_ms) / 1000,
                limits.max_delay_ms / 1000
            )))
        }
        _ => Ok(()),
    }
}
