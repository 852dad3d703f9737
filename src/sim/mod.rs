//! The escalation simulator: scenario files, two domain models (healthcare monitoring
//! and support routing), runs on the real runtime under virtual time, and reports.
//!
//! Layout: `scenario` (the TOML format, validation) · `model` (what every simulated agent
//! shares: service time, faults, the recorder) · `healthcare` and `support` (agents,
//! workloads, ground truth) · `run` (spawning and driving a scenario) · `report` (text
//! and JSON) · `html` (a self-contained page with charts).

#[cfg(feature = "cluster")]
pub mod cluster;
pub mod healthcare;
pub mod html;
pub(crate) mod model;
pub mod report;
mod run;
pub mod scenario;
pub mod support;

pub use report::Report;
pub use run::{simulate, SimError};
pub use scenario::{Scenario, ScenarioError};
