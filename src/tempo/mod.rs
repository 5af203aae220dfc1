//! Tempo's wire formats: the prost types of proto/tempo.proto (with OTLP from
//! `opentelemetry-proto`), trace IDs, the encoding of an assembled trace into OTLP, and Tempo's
//! JSON conventions (jsonpb). Owns no IO and no tracing logic.

pub mod encode;
pub mod ids;
pub mod json;

/// Messages of proto/tempo.proto.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/tempopb.rs"));
}
