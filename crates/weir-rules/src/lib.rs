//! Weir's rule engine: rhai scripts that transform, filter, aggregate, alert and actuate on the
//! readings between the bus and the outbox.
//!
//! * [`config`] — the `rules:` section, compiled once at load ([`RuleSet`]), errors with YAML
//!   path and script line;
//! * [`engine`] — the sandboxed rhai engine and the functions scripts call (see the README's
//!   Rules section for the script API);
//! * [`stage`] — [`RulesStage`], the pipeline [`weir_core::Transform`];
//! * [`replay`] — `weir rules test`: run rules over recorded readings and print what they do;
//! * [`window`] / [`glob`] — windowed aggregates and match patterns.
//!
//! Invariants: scripts never touch files, the network or processes; every run is bounded in
//! operations, call depth and memory; a failing run changes nothing downstream and never stops
//! the pipeline; all per-rule memory is bounded.

pub mod config;
pub mod engine;
pub mod glob;
pub mod replay;
pub mod stage;
pub mod window;

pub use config::{
    parse_section, reload_section, CompiledRule, Reload, RuleConfig, RuleError, RuleSet,
};
pub use engine::{DERIVED_SOURCE_PREFIX, MAX_CALL_LEVELS, MAX_OPERATIONS};
pub use stage::{Event, ReloadHandle, RulesBuilder, RulesStage};

#[cfg(test)]
mod tests;
