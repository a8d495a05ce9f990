//! The one error type for both dialects.
//!
//! A filter is typed by a person into client code and rejected by a broker
//! far away, so the error must say where: every error carries the 1-based
//! character column (not byte offset, so non-ASCII text lines up with what
//! the user sees) where the problem starts.

use thiserror::Error;

/// Why an expression was rejected, and where.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{message} at position {position}")]
pub struct FilterError {
    /// 1-based character column where the problem starts. One past the last
    /// character means "at the end of the expression".
    pub position: usize,
    /// What was expected and what was found, without the position.
    pub message: String,
}

impl FilterError {
    pub(crate) fn new(position: usize, message: impl Into<String>) -> FilterError {
        FilterError {
            position,
            message: message.into(),
        }
    }

    /// The error for an expression over [`crate::MAX_EXPRESSION_LEN`],
    /// raised before any scanning so a huge expression costs nothing.
    pub(crate) fn too_long(len: usize) -> FilterError {
        FilterError::new(
            1,
            format!(
                "expression is {len} bytes long, over the limit of {} bytes",
                crate::MAX_EXPRESSION_LEN
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_includes_position() {
        let e = FilterError::new(7, "expected a value after '=' but found end of expression");
        assert_eq!(
            e.to_string(),
            "expected a value after '=' but found end of expression at position 7"
        );
    }

    #[test]
    fn too_long_names_the_limit() {
        let e = FilterError::too_long(5000);
        assert_eq!(e.position, 1);
        assert!(e.message.contains("4096"), "{e}");
        assert!(e.message.contains("5000"), "{e}");
    }
}
