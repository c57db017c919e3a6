//! wip
pub mod decode;
