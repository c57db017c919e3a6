//! Weir's fuzz targets: the bodies live in [`harness`] (shared with `tests/fuzz_corpora.rs`).
#![allow(missing_docs)]

#[path = "harness.rs"]
pub mod harness;
