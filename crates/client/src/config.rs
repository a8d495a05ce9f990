//! How a client reaches its broker.

use std::time::Duration;

use crate::error::ClientError;

/// An access key and secret for brokers that check `authorization`
/// (RocketMQ ACL). Ferry ignores it; an Apache RocketMQ proxy with ACL on
/// requires it.
#[derive(Clone)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

/// Where the broker is and how long to wait for it.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The access point, `host:port` (plain-text gRPC). With an Apache
    /// RocketMQ cluster this is the proxy; every call goes to it.
    pub endpoint: String,
    /// RocketMQ namespace, sent as `x-mq-namespace` and in every resource.
    pub namespace: String,
    pub credentials: Option<Credentials>,
    /// Deadline of one unary call (long polls get this on top of their
    /// polling time).
    pub request_timeout: Duration,
}

/// Default deadline of a unary call, as the official clients use.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

impl ClientConfig {
    pub fn new(endpoint: impl Into<String>) -> Self {
        ClientConfig {
            endpoint: endpoint.into(),
            namespace: String::new(),
            credentials: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    pub fn with_credentials(
        mut self,
        access_key: impl Into<String>,
        secret_key: impl Into<String>,
    ) -> Self {
        self.credentials = Some(Credentials {
            access_key: access_key.into(),
            secret_key: secret_key.into(),
        });
        self
    }

    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Splits the endpoint into host and port, refusing what cannot be one.
    pub(crate) fn host_port(&self) -> Result<(String, u16), ClientError> {
        let e = self
            .endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/');
        let bad = |why: &str| ClientError::Invalid {
            what: "endpoint",
            why: format!("{:?}: {why} (expected host:port)", self.endpoint),
        };
        let (host, port) = e.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = port.parse::<u16>().map_err(|_| bad("bad port"))?;
        Ok((host.to_string(), port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_or_say_why() {
        let ok = ClientConfig::new("127.0.0.1:8081").host_port().unwrap();
        assert_eq!(ok, ("127.0.0.1".to_string(), 8081));
        let v6 = ClientConfig::new("[::1]:9").host_port().unwrap();
        assert_eq!(v6, ("::1".to_string(), 9));
        let url = ClientConfig::new("http://broker:80/").host_port().unwrap();
        assert_eq!(url, ("broker".to_string(), 80));
        for bad in ["broker", ":80", "broker:http", "broker:70000"] {
            let e = ClientConfig::new(bad).host_port().unwrap_err();
            assert!(e.to_string().contains("endpoint"), "{bad}: {e}");
        }
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let c = ClientConfig::new("h:1").with_credentials("ak", "very-secret");
        assert!(!format!("{c:?}").contains("very-secret"));
    }
}
