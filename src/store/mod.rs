//! The store layer: the only place that reads or writes rows.
pub mod model;
