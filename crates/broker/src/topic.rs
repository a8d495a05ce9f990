//! Topics and their queues. A queue is the consume-queue index: entry `i`
//! says where the message with queue offset `base + i` lies in the log.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use crate::message_type::MessageTypes;

/// Where one message lies, plus what filtering needs without reading it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Log offset of the record; [`Entry::LOST`] for a message recovery
    /// could not read (its slot is kept so later offsets stay right).
    pub log_offset: u64,
    pub len: u32,
    pub tag: Option<Arc<str>>,
    /// Message group (FIFO key), interned like tags.
    pub group: Option<Arc<str>>,
    pub store_ms: i64,
    /// The log must be durable up to here before this entry may be served:
    /// the end of the record that indexed it — the message itself, or the
    /// later commit or timer record that made it deliverable.
    pub ready_at: u64,
}

impl Entry {
    pub const LOST: u64 = u64::MAX;

    pub fn is_lost(&self) -> bool {
        self.log_offset == Self::LOST
    }
}

#[derive(Debug, Default)]
pub struct Queue {
    /// Queue offset of `entries[0]`.
    pub base: u64,
    pub entries: VecDeque<Entry>,
    /// Some entry was indexed after records newer than its own (a committed
    /// transaction, a fired timer): log offsets in `entries` are then not
    /// ascending, and retention must look past the front.
    pub has_late: bool,
}

impl Queue {
    /// Queue offset the next message will get.
    pub fn next_offset(&self) -> u64 {
        self.base + self.entries.len() as u64
    }

    pub fn get(&self, queue_offset: u64) -> Option<&Entry> {
        let i = queue_offset.checked_sub(self.base)?;
        self.entries.get(usize::try_from(i).ok()?)
    }

    pub fn get_mut(&mut self, queue_offset: u64) -> Option<&mut Entry> {
        let i = queue_offset.checked_sub(self.base)?;
        self.entries.get_mut(usize::try_from(i).ok()?)
    }
}

/// What an operator decides about a topic, kept in `meta/topics.json`
/// rather than the log: it shapes how messages are admitted, not what
/// happened to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicConfig {
    pub queues: u32,
    /// Message types a send may carry; others are refused whole.
    pub message_types: MessageTypes,
}

#[derive(Debug)]
pub struct Topic {
    pub name: String,
    /// At least `config.queues` queues: replay adds any queue a record
    /// names beyond them.
    pub queues: Vec<Queue>,
    /// As configured; when replay resets the topic (see `created_at`) it
    /// starts again from this.
    pub config: TopicConfig,
    /// Log offset from which this incarnation of the topic exists: the log
    /// end when it was created. A `TopicDelete` record *below* it deleted an
    /// earlier topic of the same name (met while replaying, because the
    /// topic file already describes the re-created one), so replay resets
    /// the topic instead of removing it; one at or above it removes it.
    pub created_at: u64,
    /// Interned tags and message groups: most topics use a handful of tags
    /// and reuse their groups, stored once.
    tags: HashSet<Arc<str>>,
}

impl Topic {
    pub fn new(name: &str, config: TopicConfig, created_at: u64) -> Self {
        Topic {
            name: name.to_string(),
            queues: (0..config.queues).map(|_| Queue::default()).collect(),
            config,
            created_at,
            tags: HashSet::new(),
        }
    }

    pub fn message_types(&self) -> MessageTypes {
        self.config.message_types
    }

    pub fn intern(&mut self, tag: &str) -> Arc<str> {
        if let Some(t) = self.tags.get(tag) {
            return t.clone();
        }
        let t: Arc<str> = Arc::from(tag);
        self.tags.insert(t.clone());
        t
    }
}
