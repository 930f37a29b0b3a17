//! The edge: everything between a stranger's TCP connection and an announced session or an
//! HTTP handler. The accept loop and the first request head (`listener`), the WebSocket
//! handshake checks (`handshake`), TLS (`tls`), the limits on connections, rates and request
//! bodies (`limits`, `http_body`), the API key (`auth`) and verified identities with their
//! scopes (`identity`).
//!
//! Owns who gets in and at what cost. Does not own what a session does once it is in
//! (`session`), matching (`dispatch`) or where events come from (`inputs`).

pub mod auth;
pub mod handshake;
pub mod http_body;
pub mod identity;
pub mod limits;
pub mod listener;
pub mod tls;
