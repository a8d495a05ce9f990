//! The history: every client operation of a run, one JSON object a line,
//! appended by the worker that did it.
//!
//! A worker writes an operation's *invocation* before it calls the broker
//! and its *outcome* after, each with one `write` call on a file opened for
//! appending. A worker killed with SIGKILL loses nothing it wrote (the
//! bytes are in the kernel), so the history tells exactly which operations
//! were acknowledged — the checker's ground truth. A line cut short by a
//! kill (possible in theory) is skipped and counted by the reader.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// What kind of message a producer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Plain,
    Fifo,
    Delayed,
    Tx,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Plain, Kind::Fifo, Kind::Delayed, Kind::Tx];

    pub fn topic(self) -> &'static str {
        match self {
            Kind::Plain => "chaos-plain",
            Kind::Fifo => "chaos-fifo",
            Kind::Delayed => "chaos-delayed",
            Kind::Tx => "chaos-tx",
        }
    }

    /// The consumer group reading this kind's topic.
    pub fn group(self) -> &'static str {
        match self {
            Kind::Plain => "chaos-plain-readers",
            Kind::Fifo => "chaos-fifo-readers",
            Kind::Delayed => "chaos-delayed-readers",
            Kind::Tx => "chaos-tx-readers",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Plain => "plain",
            Kind::Fifo => "fifo",
            Kind::Delayed => "delayed",
            Kind::Tx => "tx",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// How a transactional producer treats one transaction (chosen per key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxPlan {
    /// Local commit or rollback, then the end right away.
    Prompt,
    /// The end is sent twice.
    Replayed,
    /// The local transaction outlasts the first check-back (whose answer,
    /// "no local record yet", is rollback), then commits and sends a late
    /// commit that contradicts it.
    Late,
    /// Never ended; the checker always answers "unknown", so the broker
    /// must discard it after its configured checks.
    Silent,
}

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    /// A worker process started (a new incarnation after a kill).
    Start {
        worker: String,
        pid: u32,
    },
    /// About to send `key`; the same key may be sent again after an
    /// unknown outcome (each attempt is one `Send`).
    Send {
        key: String,
        kind: Kind,
        /// FIFO: the message group and the key's place in it.
        group: Option<String>,
        seq: u64,
        /// Delayed: the delivery time asked for.
        deliver_at_ms: Option<i64>,
        plan: Option<TxPlan>,
    },
    SendOk {
        key: String,
        message_id: String,
        transaction_id: Option<String>,
    },
    /// The send failed; `refused` when the broker said it stored nothing
    /// (a 4xxxx refusal), otherwise the outcome is unknown.
    SendFailed {
        key: String,
        refused: bool,
        error: String,
    },
    /// The local (database) transaction's outcome, recorded before the end
    /// is sent — what a check-back answer is read from.
    Local {
        key: String,
        commit: bool,
    },
    EndOk {
        key: String,
        commit: bool,
    },
    EndFailed {
        key: String,
        commit: bool,
        error: String,
    },
    /// A check-back's answer: "commit", "rollback" or "unknown".
    Check {
        key: String,
        answer: String,
    },
    /// A consumer received a message. `key` is read from its body;
    /// `intact` says the body is the one its key was sent with.
    Delivered {
        group: String,
        key: String,
        message_id: String,
        /// Where the broker holds it: a message id stored twice (a
        /// client's retry after a lost answer) sits at two places.
        queue_id: i32,
        queue_offset: Option<i64>,
        attempt: u32,
        intact: bool,
    },
    Acked {
        group: String,
        key: String,
        message_id: String,
        queue_id: i32,
        queue_offset: Option<i64>,
        ok: bool,
    },
    /// The consumer chose not to ack (a handler failure), so the message
    /// comes back after its invisibility.
    Skipped {
        group: String,
        key: String,
        message_id: String,
    },
}

/// A history line: the event and when it was written.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Line {
    pub at_ms: i64,
    #[serde(flatten)]
    pub event: Event,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Appends events to one worker's history file.
pub struct Writer {
    file: File,
    path: PathBuf,
}

impl Writer {
    /// Opens `path` for appending. A previous incarnation killed in the
    /// middle of a line left it unterminated: end it, so the next event
    /// starts a line of its own.
    pub fn open(path: &Path) -> std::io::Result<Writer> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)?;
        let len = file.metadata()?.len();
        if len > 0 {
            let mut last = [0u8; 1];
            file.seek(SeekFrom::Start(len - 1))?;
            file.read_exact(&mut last)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")?;
            }
        }
        Ok(Writer {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Writes one event with one `write` call.
    pub fn record(&mut self, event: Event) {
        let line = Line {
            at_ms: now_ms(),
            event,
        };
        let mut text = serde_json::to_string(&line).expect("history events serialise");
        text.push('\n');
        if let Err(e) = self.file.write_all(text.as_bytes()) {
            // Without its history the run cannot be checked: stop here.
            eprintln!("cannot write history {}: {e}", self.path.display());
            std::process::exit(3);
        }
    }
}

/// Every worker's history: its name and its lines in write order.
pub type Histories = Vec<(String, Vec<Line>)>;

/// Every line of the history files in `dir`, per file in write order, and
/// the number of unreadable (torn) lines skipped.
pub fn read_dir(dir: &Path) -> std::io::Result<(Histories, usize)> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    names.sort();
    let mut out = Vec::new();
    let mut torn = 0;
    for path in names {
        let mut lines = Vec::new();
        for text in BufReader::new(File::open(&path)?).lines() {
            let text = text?;
            if text.is_empty() {
                continue;
            }
            match serde_json::from_str::<Line>(&text) {
                Ok(l) => lines.push(l),
                Err(_) => torn += 1,
            }
        }
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push((name, lines));
    }
    Ok((out, torn))
}

/// The body a key is sent with: the key, a separator, then filler derived
/// from the key, so a consumer can tell an intact body from a damaged or
/// foreign one without any shared state.
pub fn body_for(key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 1 + 512);
    out.extend_from_slice(key.as_bytes());
    out.push(b'|');
    let mut x = u64::from(crc32c::crc32c(key.as_bytes())) | 1;
    let len = 64 + (x % 448) as usize;
    for _ in 0..len {
        // xorshift64: cheap, deterministic filler.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(b'a' + (x % 26) as u8);
    }
    out
}

/// The key a body names, and whether the body is exactly `body_for(key)`.
pub fn key_of(body: &[u8]) -> Option<(String, bool)> {
    let cut = body.iter().position(|&b| b == b'|')?;
    let key = std::str::from_utf8(&body[..cut]).ok()?.to_string();
    let intact = body_for(&key) == body;
    Some((key, intact))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_name_their_key_and_any_change_shows() {
        let b = body_for("tx-3-17");
        assert_eq!(key_of(&b), Some(("tx-3-17".to_string(), true)));
        let mut damaged = b.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert_eq!(key_of(&damaged), Some(("tx-3-17".to_string(), false)));
        assert_eq!(key_of(b"no separator"), None);
    }

    #[test]
    fn a_torn_line_is_ended_and_skipped() {
        let dir = std::env::temp_dir().join(format!("ferry-chaos-history-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.jsonl");
        let _ = std::fs::remove_file(&path);
        let mut w = Writer::open(&path).unwrap();
        w.record(Event::Local {
            key: "k".into(),
            commit: true,
        });
        drop(w);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"at_ms\":1,\"ev\":\"loc")
            .unwrap();
        let mut w = Writer::open(&path).unwrap();
        w.record(Event::Local {
            key: "k2".into(),
            commit: false,
        });
        let (files, torn) = read_dir(&dir).unwrap();
        assert_eq!(torn, 1);
        assert_eq!(files[0].1.len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
