//! The query layer: services over the store that answer the API's questions — trace by ID
//! and DeepFlow's tracing (`trace`), TraceQL search (`search`). Handlers in `api` call these;
//! these call the pure engines (`autotrace`, `traceql`) and the `FlowStore`. Nothing here
//! parses HTTP or renders SQL.

pub mod metrics;
pub mod pipeline;
pub mod search;
pub mod trace;
