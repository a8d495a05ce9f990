//! Every way a client call can fail, with the broker's status code when the
//! broker gave one.

use std::time::Duration;

use ferry_proto::v2 as pb;
use pb::Code;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The broker answered with a RocketMQ status other than OK.
    #[error("broker refused ({}, {code}): {message}", code_name(*.code))]
    Status { code: i32, message: String },
    /// The call failed below RocketMQ: connection, gRPC status, deadline.
    #[error("rpc failed: {0}")]
    Rpc(#[from] tonic::Status),
    /// `reason` is the whole cause chain ("transport error: connection
    /// refused"): the top-level transport error alone says little.
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The caller asked for something the client refuses before sending.
    #[error("invalid {what}: {why}")]
    Invalid { what: &'static str, why: String },
    /// The broker's answer broke the protocol (missing status, wrong count).
    #[error("unexpected answer from the broker: {0}")]
    Protocol(String),
    #[error("the client has been shut down")]
    Shutdown,
}

fn code_name(code: i32) -> &'static str {
    Code::try_from(code).map_or("UNKNOWN_CODE", |c| c.as_str_name())
}

impl ClientError {
    /// The RocketMQ status code, when the broker gave one.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status { code, .. } => Code::try_from(*code).ok(),
            _ => None,
        }
    }

    /// Worth another attempt: the broker or the network was busy or down,
    /// not the request wrong.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Status { code, .. } => matches!(
                Code::try_from(*code),
                Ok(Code::TooManyRequests
                    | Code::InternalError
                    | Code::InternalServerError
                    | Code::HaNotAvailable
                    | Code::ProxyTimeout
                    | Code::MasterPersistenceTimeout
                    | Code::SlavePersistenceTimeout
                    | Code::RequestTimeout)
            ),
            ClientError::Rpc(s) => matches!(
                s.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Unknown
                    | tonic::Code::Internal
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::Aborted
            ),
            ClientError::Timeout(_) => true,
            ClientError::Connect { .. }
            | ClientError::Invalid { .. }
            | ClientError::Protocol(_)
            | ClientError::Shutdown => false,
        }
    }
}

/// An error and its causes on one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

/// OK, or the status as an error. A missing status is a protocol error.
pub(crate) fn check(status: Option<pb::Status>) -> Result<(), ClientError> {
    let s = status.ok_or_else(|| ClientError::Protocol("answer without a status".into()))?;
    if s.code == Code::Ok as i32 {
        Ok(())
    } else {
        Err(ClientError::Status {
            code: s.code,
            message: s.message,
        })
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_errors_name_their_code() {
        let e = check(Some(pb::Status {
            code: Code::TopicNotFound as i32,
            message: "no topic x".into(),
        }))
        .unwrap_err();
        assert_eq!(e.code(), Some(Code::TopicNotFound));
        assert_eq!(
            e.to_string(),
            "broker refused (TOPIC_NOT_FOUND, 40402): no topic x"
        );
        assert!(!e.is_retryable());
        let busy = ClientError::Status {
            code: Code::TooManyRequests as i32,
            message: String::new(),
        };
        assert!(busy.is_retryable());
        assert!(check(None).is_err());
        assert!(check(Some(pb::Status {
            code: Code::Ok as i32,
            message: String::new()
        }))
        .is_ok());
    }
}
