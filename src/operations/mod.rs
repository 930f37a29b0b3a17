//! Operations: what an operator configures and watches. Configuration (`config`, and
//! `genconfig` for a fresh commented file), metrics and logs (`telemetry`), `/readyz`
//! (`readiness`), the allocator's housekeeping (`memory`) and the admin API and page
//! (`admin`), and the small value types the configuration sections share (`units`).
//!
//! Owns the knobs and the dials. Does not own the behaviour they configure or report.

pub mod admin;
pub mod config;
pub mod genconfig;
pub mod memory;
pub mod readiness;
pub mod telemetry;
pub mod units;
