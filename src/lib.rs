//! eventgate: a WebSocket event gateway that speaks the LambdaSharp `App.EventBus`
//! protocol, matches events with EventBridge patterns and fans them out to browsers.
//!
//! The library is the whole server; `main.rs` only parses the command line. Tests start it
//! with [`run`] on `127.0.0.1:0`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod errors;
pub mod genconfig;
pub mod handshake;
pub mod history;
pub mod http_body;
pub mod hub;
pub mod identity;
pub mod ingest;
pub mod limits;
pub mod listener;
pub mod memory;
pub mod outbound;
pub mod readiness;
pub mod server;
pub mod session;
pub mod sources;
pub mod stop;
pub mod telemetry;
pub mod tls;

pub use config::Config;
pub use server::{run, run_with_reload, RunError};
pub use tls::CertReload;
