//! The parsed form of an SQL92 condition.
//!
//! The tree is already typed: every comparison is "property op literal"
//! (the parser flips `literal op property`), `NOT IN`, `NOT BETWEEN`,
//! `NOT LIKE` and `IS NOT NULL` are `Not` around the positive form (SQL gives
//! them the same three-valued meaning), and `AND`/`OR` chains are flat lists,
//! so the tree is never deeper than the nesting limit however long the
//! chain — evaluating and dropping it cannot overflow the stack.

use std::cmp::Ordering;

use crate::sql::like::LikePattern;
use crate::sql::number::Number;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    /// Bare `TRUE` / `FALSE`.
    Const(bool),
    Not(Box<Expr>),
    /// Two or more conditions, all of which must hold.
    And(Vec<Expr>),
    /// Two or more conditions, one of which must hold.
    Or(Vec<Expr>),
    Compare {
        property: String,
        op: CmpOp,
        value: Literal,
    },
    In {
        property: String,
        values: Vec<Literal>,
    },
    /// Inclusive on both ends, as in SQL.
    Between {
        property: String,
        low: Number,
        high: Number,
    },
    IsNull {
        property: String,
    },
    Like {
        property: String,
        pattern: LikePattern,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Literal {
    Str(String),
    Number(Number),
    Bool(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    /// Whether the operator orders its operands (and so needs numbers).
    pub(crate) fn is_ordering(self) -> bool {
        !matches!(self, CmpOp::Eq | CmpOp::Ne)
    }

    /// The operator with its operands swapped: `1 < a` is `a > 1`.
    pub(crate) fn flip(self) -> CmpOp {
        match self {
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::Le => CmpOp::Ge,
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::Ge => CmpOp::Le,
            same => same,
        }
    }

    /// Whether `left op right` holds, given how left compares to right.
    pub(crate) fn holds(self, ordering: Ordering) -> bool {
        match self {
            CmpOp::Eq => ordering.is_eq(),
            CmpOp::Ne => ordering.is_ne(),
            CmpOp::Lt => ordering.is_lt(),
            CmpOp::Le => ordering.is_le(),
            CmpOp::Gt => ordering.is_gt(),
            CmpOp::Ge => ordering.is_ge(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [CmpOp; 6] = [
        CmpOp::Eq,
        CmpOp::Ne,
        CmpOp::Lt,
        CmpOp::Le,
        CmpOp::Gt,
        CmpOp::Ge,
    ];

    #[test]
    fn flip_swaps_operands() {
        for op in ALL {
            for ord in [Ordering::Less, Ordering::Equal, Ordering::Greater] {
                assert_eq!(
                    op.holds(ord),
                    op.flip().holds(ord.reverse()),
                    "{op:?} {ord:?}"
                );
            }
            assert_eq!(op.flip().flip(), op);
        }
    }

    #[test]
    fn holds_table() {
        assert!(CmpOp::Le.holds(Ordering::Equal) && CmpOp::Le.holds(Ordering::Less));
        assert!(!CmpOp::Lt.holds(Ordering::Equal));
        assert!(CmpOp::Ne.holds(Ordering::Greater) && !CmpOp::Ne.holds(Ordering::Equal));
        assert!(CmpOp::Ge.is_ordering() && !CmpOp::Ne.is_ordering());
    }
}
