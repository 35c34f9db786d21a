//! What the executor's tools share: `bench` (the benchmark), `soak` (the soak run) and
//! `replay` (the keep-alive trace replay) are this crate's binaries, kept out of the
//! executor's package so that installing the executor builds none of them.
//!
//! The tools read `/metrics` through the executor library's
//! [`mecanywhere_executor::metrics_text`], never with a parser of their own.

pub mod docker;
pub mod launch;
pub mod procfs;
