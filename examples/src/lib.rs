//! Nothing here: see the examples next to this crate (`cargo run -p ferry-examples --example quickstart`).
