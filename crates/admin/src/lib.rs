//! A client for Ferry's admin HTTP API.
//!
//! The API is JSON over plain HTTP/1.1 on the broker's HTTP listener.
//! Refusals come back as a non-2xx status with `{"code", "message"}`,
//! where `code` is the RocketMQ status name; this client turns them into
//! [`AdminError::Refused`]. Built on hyper directly: a full HTTP client
//! crate would add URL and IDNA machinery a loopback admin call never
//! needs.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Largest answer read (a page of dead letters or messages is far less).
pub const MAX_ANSWER_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot reach the admin API at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("{method} {path} refused (HTTP {http}, {code}): {message}")]
    Refused {
        method: String,
        path: String,
        http: u16,
        code: String,
        message: String,
    },
    #[error("{method} {path}: no answer within {timeout:?}")]
    Timeout {
        method: String,
        path: String,
        timeout: Duration,
    },
    #[error("{method} {path}: unreadable answer: {reason}")]
    BadAnswer {
        method: String,
        path: String,
        reason: String,
    },
}

impl AdminError {
    /// The HTTP status of a refusal.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            AdminError::Refused { http, .. } => Some(*http),
            _ => None,
        }
    }

    /// The RocketMQ code name of a refusal (`TOPIC_NOT_FOUND`, ...).
    pub fn code(&self) -> Option<&str> {
        match self {
            AdminError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Talks to one broker's HTTP listener.
#[derive(Clone)]
pub struct AdminClient {
    addr: String,
    timeout: Duration,
    http: Client<HttpConnector, Full<Bytes>>,
}

/// Percent-encodes one path segment (topic `%DLQ%g` becomes `%25DLQ%25g`).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl AdminClient {
    /// `addr` is `host:port` of the broker's HTTP listener.
    pub fn new(addr: impl Into<String>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(3)));
        connector.set_nodelay(true);
        AdminClient {
            addr: addr
                .into()
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string(),
            timeout: Duration::from_secs(30),
            http: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub async fn get(&self, path: &str) -> Result<Value, AdminError> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Option<Value>) -> Result<Value, AdminError> {
        self.call(Method::POST, path, body).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Result<Value, AdminError> {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value, AdminError> {
        self.call(Method::DELETE, path, None).await
    }

    /// Plain-text endpoints (`/metrics`, `/healthz`).
    pub async fn get_text(&self, path: &str) -> Result<String, AdminError> {
        let (_, bytes) = self.exchange(Method::GET, path, None).await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Any call, with the HTTP status and the JSON answer whatever the
    /// status (a non-JSON answer comes back as a string): for callers that
    /// look at refusals themselves, such as tests of the API.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), AdminError> {
        let method = Method::from_bytes(method.as_bytes()).map_err(|e| AdminError::BadAnswer {
            method: method.to_string(),
            path: path.to_string(),
            reason: format!("not an HTTP method: {e}"),
        })?;
        let (status, bytes) = self.exchange(method, path, body).await?;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok((status.as_u16(), value))
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, AdminError> {
        let (status, bytes) = self.exchange(method.clone(), path, body).await?;
        let bad = |reason: String| AdminError::BadAnswer {
            method: method.to_string(),
            path: path.to_string(),
            reason,
        };
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| {
                bad(format!(
                    "HTTP {status}, not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                ))
            })?
        };
        if status.is_success() {
            return Ok(value);
        }
        let text = |k: &str| value.get(k).and_then(Value::as_str).map(str::to_string);
        Err(AdminError::Refused {
            method: method.to_string(),
            path: path.to_string(),
            http: status.as_u16(),
            code: text("code")
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("ERROR").to_string()),
            message: text("message").unwrap_or_else(|| value.to_string()),
        })
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Bytes), AdminError> {
        let uri = format!("http://{}{path}", self.addr);
        let payload = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let mut req = Request::builder().method(method.clone()).uri(&uri);
        if !payload.is_empty() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(payload))
            .map_err(|e| AdminError::BadAnswer {
                method: method.to_string(),
                path: path.to_string(),
                reason: format!("cannot build the request: {e}"),
            })?;
        let work = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| AdminError::Unreachable {
                    addr: self.addr.clone(),
                    reason: error_chain(&e),
                })?;
            let status = resp.status();
            let mut body = resp.into_body();
            let mut out = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| AdminError::BadAnswer {
                    method: method.to_string(),
                    path: path.to_string(),
                    reason: e.to_string(),
                })?;
                if let Some(d) = frame.data_ref() {
                    if out.len() + d.len() > MAX_ANSWER_BYTES {
                        return Err(AdminError::BadAnswer {
                            method: method.to_string(),
                            path: path.to_string(),
                            reason: format!("answer larger than {MAX_ANSWER_BYTES} bytes"),
                        });
                    }
                    out.extend_from_slice(d);
                }
            }
            Ok((status, Bytes::from(out)))
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(AdminError::Timeout {
                method: method.to_string(),
                path: path.to_string(),
                timeout: self.timeout,
            }),
        }
    }
}

/// An error with its causes, one line ("connection refused" is usually
/// two levels down in hyper's errors).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_escaped() {
        assert_eq!(segment("orders"), "orders");
        assert_eq!(segment("%DLQ%g"), "%25DLQ%25g");
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
    }

    #[tokio::test]
    async fn an_absent_server_is_named() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let e = AdminClient::new(addr.clone())
            .get("/healthz")
            .await
            .unwrap_err();
        assert!(matches!(e, AdminError::Unreachable { .. }), "{e}");
        assert!(e.to_string().contains(&addr), "{e}");
    }
}
