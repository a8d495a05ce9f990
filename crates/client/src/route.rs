//! Topic routes: which queues a topic has and what each accepts, cached
//! and refreshed the way the official clients do.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_proto::v2 as pb;
use tracing::warn;

use crate::error::{check, ClientError, Result};
use crate::message::resource;
use crate::session::Session;

/// A route older than this is fetched again before use.
pub const ROUTE_TTL: Duration = Duration::from_secs(30);
/// Topics whose routes are remembered; past this, stale ones are dropped.
pub const MAX_CACHED_ROUTES: usize = 4096;

/// The usable queues of a topic.
#[derive(Debug)]
pub(crate) struct Route {
    /// Queues of master brokers (`broker.id == 0`) a producer may write.
    pub writable: Vec<pb::MessageQueue>,
    /// Queues of master brokers a consumer may read.
    pub readable: Vec<pb::MessageQueue>,
}

impl Route {
    fn from_queues(queues: Vec<pb::MessageQueue>) -> Route {
        let master = |q: &pb::MessageQueue| q.broker.as_ref().is_some_and(|b| b.id == 0);
        let perm = |q: &pb::MessageQueue| pb::Permission::try_from(q.permission).ok();
        let writable = queues
            .iter()
            .filter(|q| master(q))
            .filter(|q| {
                matches!(
                    perm(q),
                    Some(pb::Permission::Write | pb::Permission::ReadWrite)
                )
            })
            .cloned()
            .collect();
        let readable = queues
            .iter()
            .filter(|q| master(q))
            .filter(|q| {
                matches!(
                    perm(q),
                    Some(pb::Permission::Read | pb::Permission::ReadWrite)
                )
            })
            .cloned()
            .collect();
        Route { writable, readable }
    }

    /// Whether `kind` may be sent to this topic (an empty list means the
    /// broker does not say: anything goes).
    pub fn accepts(&self, kind: pb::MessageType) -> bool {
        self.writable.iter().all(|q| {
            q.accept_message_types.is_empty() || q.accept_message_types.contains(&(kind as i32))
        })
    }
}

#[derive(Default)]
pub(crate) struct Routes {
    cache: Mutex<HashMap<String, (Instant, Arc<Route>)>>,
}

impl Routes {
    pub async fn get(&self, session: &Session, topic: &str) -> Result<Arc<Route>> {
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.get(topic).cloned()
        };
        if let Some((at, r)) = &cached {
            if at.elapsed() < ROUTE_TTL {
                return Ok(r.clone());
            }
        }
        match fetch(session, topic).await {
            Ok(route) => {
                let route = Arc::new(route);
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                if cache.len() >= MAX_CACHED_ROUTES {
                    cache.retain(|_, (at, _)| at.elapsed() < ROUTE_TTL);
                }
                cache.insert(topic.to_string(), (Instant::now(), route.clone()));
                Ok(route)
            }
            // A stale route beats none while the broker is briefly away.
            Err(e) if e.is_retryable() && cached.is_some() => {
                warn!(%topic, error = %e, "route refresh failed; using the previous route");
                Ok(cached.map(|(_, r)| r).expect("checked above"))
            }
            Err(e) => Err(e),
        }
    }
}

async fn fetch(session: &Session, topic: &str) -> Result<Route> {
    let req = pb::QueryRouteRequest {
        topic: Some(resource(&session.config.namespace, topic)),
        endpoints: Some(session.access_point()),
    };
    let deadline = session.config.request_timeout;
    let reply = session
        .unary(deadline, |mut rpc| async move {
            rpc.query_route(session.request(req, deadline)).await
        })
        .await?;
    check(reply.status)?;
    let route = Route::from_queues(reply.message_queues);
    if route.writable.is_empty() && route.readable.is_empty() {
        return Err(ClientError::Protocol(format!(
            "the route of topic {topic} has no usable queue"
        )));
    }
    Ok(route)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(
        id: i32,
        broker: i32,
        perm: pb::Permission,
        types: &[pb::MessageType],
    ) -> pb::MessageQueue {
        pb::MessageQueue {
            topic: None,
            id,
            permission: perm as i32,
            broker: Some(pb::Broker {
                name: "b".into(),
                id: broker,
                endpoints: None,
            }),
            accept_message_types: types.iter().map(|t| *t as i32).collect(),
        }
    }

    #[test]
    fn only_master_queues_with_the_right_permission_are_used() {
        let r = Route::from_queues(vec![
            queue(0, 0, pb::Permission::ReadWrite, &[pb::MessageType::Normal]),
            queue(1, 0, pb::Permission::Read, &[pb::MessageType::Normal]),
            queue(2, 1, pb::Permission::ReadWrite, &[pb::MessageType::Normal]),
            queue(3, 0, pb::Permission::Write, &[pb::MessageType::Normal]),
        ]);
        assert_eq!(r.writable.iter().map(|q| q.id).collect::<Vec<_>>(), [0, 3]);
        assert_eq!(r.readable.iter().map(|q| q.id).collect::<Vec<_>>(), [0, 1]);
        assert!(r.accepts(pb::MessageType::Normal));
        assert!(!r.accepts(pb::MessageType::Fifo));
    }
}
