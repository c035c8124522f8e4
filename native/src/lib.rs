//! Native core of quicnprotochat: MLS groups (OpenMLS) in an encrypted vault, OPAQUE
//! (opaque-ke), and hybrid X-Wing HPKE envelopes. The pure-Rust core is tested by `cargo test`;
//! the `python` feature adds the PyO3 bindings.

pub mod envelope;
pub mod error;
pub mod mls;
pub mod opaque;
pub mod rootkey;

#[cfg(feature = "python")]
mod python;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(test)]
mod xwing_vectors;
