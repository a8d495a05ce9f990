//! Clients known through Telemetry: the settings each announced, and the
//! channel to push commands back to it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_proto::v2 as pb;
use tokio::sync::mpsc;
use tonic::Status;

/// One connected client.
pub struct Client {
    pub settings: pb::Settings,
    pub last_seen: Instant,
    /// Identifies the Telemetry stream that registered this entry, so an old
    /// stream closing does not remove a newer registration.
    pub stream_id: u64,
    pub commands: mpsc::Sender<Result<pb::TelemetryCommand, Status>>,
}

impl Client {
    /// Whether this client is a producer that announced `topic` in its
    /// settings: the only kind that can answer a check-back for it.
    pub fn publishes(&self, topic: &str) -> bool {
        match &self.settings.pub_sub {
            Some(pb::settings::PubSub::Publishing(p)) => p.topics.iter().any(|t| t.name == topic),
            _ => false,
        }
    }

    pub fn language(&self) -> String {
        let lang = self
            .settings
            .user_agent
            .as_ref()
            .map_or(0, |ua| ua.language);
        pb::Language::try_from(lang)
            .map(|l| l.as_str_name().to_string())
            .unwrap_or_else(|_| "UNKNOWN".into())
    }
}

#[derive(serde::Serialize)]
pub struct ClientView {
    pub client_id: String,
    pub client_type: String,
    pub language: String,
    pub version: String,
    pub group: Option<String>,
    pub idle_ms: u64,
}

pub struct Clients {
    max: usize,
    inner: Mutex<HashMap<String, Client>>,
}

impl Clients {
    pub fn new(max: usize) -> Self {
        Clients {
            max,
            inner: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Client>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers (or refreshes) a client's settings. Fails when the client
    /// table is full and this client is new.
    pub fn register(&self, id: &str, client: Client) -> Result<(), String> {
        let mut map = self.lock();
        if !map.contains_key(id) && map.len() >= self.max {
            return Err(format!("at most {} clients may be connected", self.max));
        }
        map.insert(id.to_string(), client);
        Ok(())
    }

    /// Marks a heartbeat; false when the client never sent its settings.
    pub fn touch(&self, id: &str) -> bool {
        match self.lock().get_mut(id) {
            Some(c) => {
                c.last_seen = Instant::now();
                true
            }
            None => false,
        }
    }

    pub fn remove(&self, id: &str, stream_id: Option<u64>) {
        let mut map = self.lock();
        if stream_id.is_none() || map.get(id).map(|c| c.stream_id) == stream_id {
            map.remove(id);
        }
    }

    /// The connected producer of `topic` with the most room on its
    /// Telemetry stream, to send a check-back to; `None` when none has room.
    pub fn producer_for(
        &self,
        topic: &str,
    ) -> Option<mpsc::Sender<Result<pb::TelemetryCommand, Status>>> {
        let map = self.lock();
        map.values()
            .filter(|c| !c.commands.is_closed() && c.publishes(topic))
            .map(|c| &c.commands)
            .filter(|tx| tx.capacity() > 0)
            .max_by_key(|tx| tx.capacity())
            .cloned()
    }

    /// Room for check-backs on the Telemetry streams of `topic`'s connected
    /// producers: 0 means none can be asked right now.
    pub fn producer_room(&self, topic: &str) -> usize {
        self.lock()
            .values()
            .filter(|c| !c.commands.is_closed() && c.publishes(topic))
            .map(|c| c.commands.capacity())
            .sum()
    }

    /// Forgets clients silent for longer than `idle`.
    pub fn expire_idle(&self, idle: Duration) {
        self.lock().retain(|_, c| c.last_seen.elapsed() <= idle);
    }

    pub fn list(&self) -> Vec<ClientView> {
        let mut v: Vec<ClientView> = self
            .lock()
            .iter()
            .map(|(id, c)| ClientView {
                client_id: id.clone(),
                client_type: c
                    .settings
                    .client_type
                    .and_then(|t| pb::ClientType::try_from(t).ok())
                    .map_or("UNKNOWN".into(), |t| t.as_str_name().to_string()),
                language: c.language(),
                version: c
                    .settings
                    .user_agent
                    .as_ref()
                    .map(|u| u.version.clone())
                    .unwrap_or_default(),
                group: match &c.settings.pub_sub {
                    Some(pb::settings::PubSub::Subscription(s)) => {
                        s.group.as_ref().map(|g| g.name.clone())
                    }
                    _ => None,
                },
                idle_ms: c.last_seen.elapsed().as_millis() as u64,
            })
            .collect();
        v.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        v
    }

    /// Connected clients per language, for metrics.
    pub fn by_language(&self) -> Vec<(String, u64)> {
        let mut counts: HashMap<String, u64> = HashMap::new();
        for c in self.lock().values() {
            *counts.entry(c.language()).or_default() += 1;
        }
        let mut v: Vec<_> = counts.into_iter().collect();
        v.sort();
        v
    }
}
