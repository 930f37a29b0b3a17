//! Every integration test of the gateway in one test binary (but `hostile_rules`, which reads
//! the process's own RSS and heap and installs the gateway's allocator, so it keeps a process
//! of its own). One binary instead of one per file: the test build compiles and links the
//! gateway's dependency graph into one executable, not 25 (minutes of the README's second
//! command on two cores). Run one file's tests with `cargo test --release --test integration
//! history_shared::`.
//!
//! Each file reads its shared helpers through `crate::common` / `crate::sources_common`.

mod common;
mod sources_common;

mod actions;
mod admin;
mod backpressure;
mod cli;
mod cluster;
mod connect;
mod fanout;
mod handshake;
mod history;
mod history_shared;
mod hostile_http;
mod hostile_ws;
mod identity;
mod ingest;
mod lifecycle;
mod limits;
mod operations;
mod pattern_fidelity;
mod secrets;
mod sources_amqp;
mod sources_nats;
mod sources_redis;
mod tls;
