//! Inputs: where events come from. HTTP ingest (`ingest`), broker sources (`sources`:
//! RabbitMQ, Redis Streams, NATS JetStream) and the other nodes of a cluster (`cluster`: a
//! shared log or a pub/sub backplane, which wraps the hub's publishing).
//!
//! Owns turning outside messages into events and handing them to the hub with its
//! backpressure, and the reconnect backoff they share (`backoff`). Does not own matching or delivery (`dispatch`).

pub mod backoff;
pub mod cluster;
pub mod ingest;
pub mod sources;
