//! DeepFlow auto-tracing (placeholder until the engine lands).
