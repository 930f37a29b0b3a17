//! Dispatch: the one task that owns the pattern index and turns each accepted event into
//! notifications (`hub`), and the history every event is positioned in, so a client can
//! resume (`history`).
//!
//! Owns the order of events and rules. Does not own sockets (`session`) or where events
//! come from (`inputs`).

pub mod history;
pub mod hub;
