//! Error types of the TraceQL front end: syntax errors (`ParseError`), static-check failures
//! (`ValidationError`) and valid syntax that Tempo itself refuses as "not yet supported".
//! Owns only error values and their rendering; never inspects queries itself beyond turning a
//! byte offset into a line and column.

/// Line (1-based) and column (1-based, counted in characters) of a byte offset in `src`.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(src, offset.min(src.len()));
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// A syntax error: the query is not TraceQL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parse error at line {line}, col {col}: {message}")]
pub struct ParseError {
    pub message: String,
    /// Byte offset of the offending token in the query.
    pub offset: usize,
    pub line: usize,
    pub col: usize,
}

impl ParseError {
    pub fn new(src: &str, offset: usize, message: impl Into<String>) -> Self {
        let (line, col) = line_col(src, offset);
        ParseError {
            message: message.into(),
            offset,
            line,
            col,
        }
    }
}

/// The query parses but breaks a static rule (types, argument kinds, ranges).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render_validation(.message, .position))]
pub struct ValidationError {
    pub message: String,
    /// Byte offset, line and column of the construct at fault, when known.
    pub position: Option<(usize, usize, usize)>,
}

fn render_validation(message: &str, position: &Option<(usize, usize, usize)>) -> String {
    match position {
        Some((_, line, col)) => format!("invalid query at line {line}, col {col}: {message}"),
        None => format!("invalid query: {message}"),
    }
}

/// The query is valid syntax for a construct Tempo parses but refuses to run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{feature} not yet supported")]
pub struct UnsupportedError {
    pub feature: String,
}

/// Every way `traceql::parse` can fail. The HTTP layer maps all of them to 400 with the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceqlError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error(transparent)]
    Validation(#[from] ValidationError),
    #[error(transparent)]
    Unsupported(#[from] UnsupportedError),
}

impl TraceqlError {
    pub fn is_parse(&self) -> bool {
        matches!(self, TraceqlError::Parse(_))
    }
    pub fn is_validation(&self) -> bool {
        matches!(self, TraceqlError::Validation(_))
    }
    pub fn is_unsupported(&self) -> bool {
        matches!(self, TraceqlError::Unsupported(_))
    }
}
