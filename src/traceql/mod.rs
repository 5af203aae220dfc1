//! TraceQL front end: lexer, parser, syntax tree, validator, plus the lenient helpers the
//! tag endpoints need. Pure functions over query text; it must not touch storage, HTTP or
//! execution (the executor consumes `Query`). Behaviour follows Grafana Tempo's grammar
//! (`pkg/traceql/expr.y`) and validation rules; see `tests/traceql_conformance.rs`.
//!
//! Entry points: [`parse`] (parse + validate), [`parse_unvalidated`], [`validate`],
//! [`parse_lenient_filters`], [`parse_identifier`].

pub mod ast;
pub mod duration;
pub mod error;
pub mod eval;
pub mod lenient;
pub mod lexer;
pub mod parser;
pub mod plan;
pub mod validate;

pub use ast::*;
pub use error::{ParseError, TraceqlError, UnsupportedError, ValidationError};
pub use lenient::{parse_identifier, parse_lenient_filters};

/// Parse and validate a query. Errors are `Parse` (not TraceQL), `Validation` (breaks a
/// static rule) or `Unsupported` (valid syntax Tempo refuses to run).
pub fn parse(q: &str) -> Result<Query, TraceqlError> {
    let query = parse_unvalidated(q)?;
    validate::validate(&query, q)?;
    Ok(query)
}

/// Parse without the static checks.
pub fn parse_unvalidated(q: &str) -> Result<Query, TraceqlError> {
    Ok(parser::parse_query(q)?)
}

/// Run the static checks on an already parsed query (`src` places error positions).
pub fn validate(query: &Query, src: &str) -> Result<(), TraceqlError> {
    validate::validate(query, src)
}
