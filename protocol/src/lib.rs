//! eventgate's language-neutral contract in Rust: the wire types of the LambdaSharp
//! `App.EventBus` WebSocket protocol, the `header` query document, the EventBridge event
//! envelope (and the ingest shapes that map onto it), and the EventBridge pattern language.
//!
//! Owns parsing, validation and serialisation of everything that crosses the wire.
//! Does not own I/O, time, randomness or configuration: callers pass those in, so every
//! function here can be fuzzed and benchmarked alone.
#![forbid(unsafe_code)]

pub mod envelope;
pub mod header;
pub mod pattern;
pub mod wire;
