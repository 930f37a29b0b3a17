//! eventgate: a WebSocket event gateway that speaks the LambdaSharp `App.EventBus`
//! protocol, matches events with EventBridge patterns and fans them out to browsers.
//!
//! The library is the whole server; `main.rs` only parses the command line. Tests start it
//! with [`run`] on `127.0.0.1:0`.
#![forbid(unsafe_code)]

// The tree follows the data path: a stranger's connection passes the edge, becomes a
// session; events come in through the inputs and are matched and fanned out by dispatch;
// operations configures and watches it all; `server` wires the parts together around the
// shared `state`.
pub mod dispatch;
pub mod edge;
pub mod errors;
pub mod inputs;
pub mod operations;
pub mod server;
pub mod session;
pub mod state;

// Short paths (`crate::hub`, `eventgate::config`, ...) to the modules in their folders.
pub use dispatch::{history, hub};
pub use edge::{auth, handshake, http_body, identity, limits, listener, tls};
pub use inputs::{backoff, cluster, ingest, sources};
pub use operations::{admin, config, genconfig, memory, readiness, telemetry, units};
pub use session::{outbound, stop};

pub use config::Config;
pub use server::{run, run_with_reload, RunError};
pub use tls::CertReload;
