//! The Rust front end spike of issue 18: `NodeService` served over the node's wire (QUIC, one client-opened
//! bidirectional stream, two-party Cap'n Proto RPC) by quinn and capnp-rpc, answering in Rust (`EchoNode`) or
//! handing decoded `enqueue` calls to Python in batches (`handoff`). A measuring tool, not part of the node.

capnp::generated_code!(pub mod node_capnp);

pub mod client;
pub mod handoff;
pub mod node_load;
pub mod runner;
pub mod server;
pub mod tls;

#[cfg(feature = "python")]
mod python;
