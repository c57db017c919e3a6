//! The `weir` daemon: loads gateway.yaml, wires sources → bus → pipeline stages → outbox →
//! forwarder, reloads on SIGHUP, and shuts down in order.
//!
//! * [`load`] — the file into parsed sources and stages (feature-gated matches), cross-section
//!   checks (one owner per device), partial loads for commands that need less;
//! * [`supervisor`] — a supervisor per source, and the running set a reload reconciles;
//! * [`pipeline`] — bus → registry admission → stages → outbox, events, staleness sweeps;
//! * [`daemon`] — the wiring, the reload by section, the shutdown order;
//! * [`http`] — the local endpoint: `/metrics` (Prometheus) and `/devices` (the registry, JSON).
//!
//! ARCHITECTURE.md at the root of the repository draws the whole picture.

pub mod daemon;
pub mod http;
pub mod load;
pub mod pipeline;
pub mod supervisor;

pub use daemon::{changed_sections, open_outbox, run, run_with_reload, STALE_AFTER_PERIODS};
pub use load::{load, load_for, source_builder, Loaded, Need, SourceDecl, SOURCE_KINDS};
pub use pipeline::{pipeline, Pipeline};
