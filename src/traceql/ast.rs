//! The TraceQL syntax tree, its canonical printing (`Display` writes TraceQL that parses back to
//! an equal tree) and small read-only helpers the executor needs (implied types, walking the
//! spanset filters, hints). It owns no parsing or validation logic and must not grow any
//! knowledge of storage or execution.
//!
//! Positions (`Pos`) are byte offsets into the query; they never take part in equality, so a
//! tree compares equal to the tree of its own printed form.
//!
//! Metrics queries come in two root shapes ([`Query::is_metrics`] covers both):
//!
//! * [`RootExpr::Metrics`] holds one [`MetricsQuery`]: the spanset [`Pipeline`], the
//!   [`MetricsFirstStage`] (a [`MetricsFunction`] — `rate`, `count_over_time`,
//!   `min/max/avg/sum_over_time`, `quantile_over_time` with one or more quantiles,
//!   `histogram_over_time`, `compare` with its selection, topN and window — plus its `by`
//!   attributes) and `second_stages`, a list of [`MetricsStage`]s in source order: a
//!   [`MetricsFilter`] (`> 10`, applied to every sample) directly after the function and/or a
//!   [`SecondStage`] limit (`| topk(n)`, `| bottomk(n)`) optionally followed by another
//!   filter. [`MetricsQuery::limit`] and [`MetricsQuery::filters`] read them.
//! * [`RootExpr::MetricsMath`] holds a [`MetricsMath`]: a [`MetricsExpr`] tree whose leaves are
//!   parenthesised metrics queries (each with its own second stages, applied first) and numbers, joined by `+ - * /` with
//!   `*`/`/` binding tighter and every operator left-associative, and an optional
//!   [`MetricsFilter`] on the result. [`MetricsExpr::queries`] and [`Query::metrics_queries`]
//!   list the leaves left to right.
//!
//! Query hints (`with(sample=0.1)`) belong to the whole query ([`Query::hints`]).

use std::fmt::{self, Display, Formatter, Write};

use super::duration::format_duration;
use super::lexer::is_attribute_char;

/// A byte offset in the query text. Always compares equal: it is metadata, not structure.
#[derive(Debug, Clone, Copy, Default, Eq)]
pub struct Pos(pub usize);

impl PartialEq for Pos {
    fn eq(&self, _: &Pos) -> bool {
        true
    }
}

/// Where an attribute is looked up. `None` is the unscoped `.name` form (span, then resource).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    None,
    Resource,
    Span,
    Event,
    Link,
    Instrumentation,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::None => "",
            Scope::Resource => "resource",
            Scope::Span => "span",
            Scope::Event => "event",
            Scope::Link => "link",
            Scope::Instrumentation => "instrumentation",
        }
    }
}

/// Intrinsic fields. Unscoped and scoped spellings of the same field map to one variant
/// (`traceDuration` = `trace:duration`, `name` = `span:name`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Intrinsic {
    Duration,
    Name,
    Status,
    StatusMessage,
    Kind,
    ChildCount,
    Parent,
    TraceRootName,
    TraceRootService,
    TraceDuration,
    NestedSetLeft,
    NestedSetRight,
    NestedSetParent,
    TraceId,
    SpanId,
    ParentId,
    EventName,
    EventTimeSinceStart,
    LinkTraceId,
    LinkSpanId,
    InstrumentationName,
    InstrumentationVersion,
}

impl Intrinsic {
    /// Bare intrinsic words usable inside `{ }`.
    pub fn from_unscoped(word: &str) -> Option<Intrinsic> {
        Some(match word {
            "duration" => Intrinsic::Duration,
            "name" => Intrinsic::Name,
            "status" => Intrinsic::Status,
            "statusMessage" => Intrinsic::StatusMessage,
            "kind" => Intrinsic::Kind,
            "childCount" => Intrinsic::ChildCount,
            "parent" => Intrinsic::Parent,
            "rootName" => Intrinsic::TraceRootName,
            "rootServiceName" => Intrinsic::TraceRootService,
            "traceDuration" => Intrinsic::TraceDuration,
            "nestedSetLeft" => Intrinsic::NestedSetLeft,
            "nestedSetRight" => Intrinsic::NestedSetRight,
            "nestedSetParent" => Intrinsic::NestedSetParent,
            _ => return None,
        })
    }

    /// `scope:word` forms (`span:name`, `trace:rootService`, …).
    pub fn from_scoped(scope: &str, word: &str) -> Option<Intrinsic> {
        Some(match (scope, word) {
            ("trace", "duration") => Intrinsic::TraceDuration,
            ("trace", "rootName") => Intrinsic::TraceRootName,
            ("trace", "rootService") => Intrinsic::TraceRootService,
            ("trace", "id") => Intrinsic::TraceId,
            ("span", "duration") => Intrinsic::Duration,
            ("span", "name") => Intrinsic::Name,
            ("span", "kind") => Intrinsic::Kind,
            ("span", "status") => Intrinsic::Status,
            ("span", "statusMessage") => Intrinsic::StatusMessage,
            ("span", "id") => Intrinsic::SpanId,
            ("span", "parentID") => Intrinsic::ParentId,
            ("span", "childCount") => Intrinsic::ChildCount,
            ("event", "name") => Intrinsic::EventName,
            ("event", "timeSinceStart") => Intrinsic::EventTimeSinceStart,
            ("link", "traceID") => Intrinsic::LinkTraceId,
            ("link", "spanID") => Intrinsic::LinkSpanId,
            ("instrumentation", "name") => Intrinsic::InstrumentationName,
            ("instrumentation", "version") => Intrinsic::InstrumentationVersion,
            _ => return None,
        })
    }

    /// Canonical spelling (the unscoped word where one exists).
    pub fn as_str(self) -> &'static str {
        match self {
            Intrinsic::Duration => "duration",
            Intrinsic::Name => "name",
            Intrinsic::Status => "status",
            Intrinsic::StatusMessage => "statusMessage",
            Intrinsic::Kind => "kind",
            Intrinsic::ChildCount => "childCount",
            Intrinsic::Parent => "parent",
            Intrinsic::TraceRootName => "rootName",
            Intrinsic::TraceRootService => "rootServiceName",
            Intrinsic::TraceDuration => "traceDuration",
            Intrinsic::NestedSetLeft => "nestedSetLeft",
            Intrinsic::NestedSetRight => "nestedSetRight",
            Intrinsic::NestedSetParent => "nestedSetParent",
            Intrinsic::TraceId => "trace:id",
            Intrinsic::SpanId => "span:id",
            Intrinsic::ParentId => "span:parentID",
            Intrinsic::EventName => "event:name",
            Intrinsic::EventTimeSinceStart => "event:timeSinceStart",
            Intrinsic::LinkTraceId => "link:traceID",
            Intrinsic::LinkSpanId => "link:spanID",
            Intrinsic::InstrumentationName => "instrumentation:name",
            Intrinsic::InstrumentationVersion => "instrumentation:version",
        }
    }

    /// The type the field always has.
    pub fn static_type(self) -> StaticType {
        match self {
            Intrinsic::Duration | Intrinsic::TraceDuration | Intrinsic::EventTimeSinceStart => {
                StaticType::Duration
            }
            Intrinsic::Status => StaticType::Status,
            Intrinsic::Kind => StaticType::Kind,
            Intrinsic::ChildCount
            | Intrinsic::NestedSetLeft
            | Intrinsic::NestedSetRight
            | Intrinsic::NestedSetParent => StaticType::Int,
            Intrinsic::Parent => StaticType::Nil,
            Intrinsic::Name
            | Intrinsic::StatusMessage
            | Intrinsic::TraceRootName
            | Intrinsic::TraceRootService
            | Intrinsic::TraceId
            | Intrinsic::SpanId
            | Intrinsic::ParentId
            | Intrinsic::EventName
            | Intrinsic::LinkTraceId
            | Intrinsic::LinkSpanId
            | Intrinsic::InstrumentationName
            | Intrinsic::InstrumentationVersion => StaticType::String,
        }
    }
}

/// A field reference: an intrinsic or a (possibly parent-) scoped attribute name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Attribute {
    Intrinsic(Intrinsic),
    Scoped {
        scope: Scope,
        /// `parent.` prefix (Tempo parses it; validation reports it unsupported).
        parent: bool,
        name: String,
    },
}

impl Attribute {
    pub fn scoped(scope: Scope, name: impl Into<String>) -> Attribute {
        Attribute::Scoped {
            scope,
            parent: false,
            name: name.into(),
        }
    }

    pub fn intrinsic(&self) -> Option<Intrinsic> {
        match self {
            Attribute::Intrinsic(i) => Some(*i),
            Attribute::Scoped { .. } => None,
        }
    }

    /// Implied type: the intrinsic's type, or `Attribute` (known only at run time).
    pub fn static_type(&self) -> StaticType {
        match self {
            Attribute::Intrinsic(i) => i.static_type(),
            Attribute::Scoped { .. } => StaticType::Attribute,
        }
    }
}

fn needs_quotes(name: &str, parent: bool, scope: Scope) -> bool {
    name.is_empty()
        || name.contains('"')
        || !name.chars().all(is_attribute_char)
        || (scope == Scope::None && name.starts_with(|c: char| c.is_ascii_digit()))
        || (parent
            && scope == Scope::None
            && (name.starts_with("span.") || name.starts_with("resource.")))
        || name.contains("//")
        || name.contains("/*")
}

impl Display for Attribute {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Attribute::Intrinsic(i) => f.write_str(i.as_str()),
            Attribute::Scoped {
                scope,
                parent,
                name,
            } => {
                if *parent {
                    f.write_str("parent.")?;
                }
                match scope {
                    Scope::None if *parent => {}
                    Scope::None => f.write_char('.')?,
                    s => write!(f, "{}.", s.as_str())?,
                }
                if needs_quotes(name, *parent, *scope) {
                    f.write_char('"')?;
                    for c in name.chars() {
                        if c == '"' || c == '\\' {
                            f.write_char('\\')?;
                        }
                        f.write_char(c)?;
                    }
                    f.write_char('"')
                } else {
                    f.write_str(name)
                }
            }
        }
    }
}

/// Static types of the validator. `Attribute` means "unknown until run time".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StaticType {
    Nil,
    Bool,
    Int,
    Float,
    String,
    Duration,
    Status,
    Kind,
    Attribute,
    Spanset,
}

impl StaticType {
    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            StaticType::Int | StaticType::Float | StaticType::Duration
        )
    }

    /// Whether two operand types may meet in one binary operation.
    pub fn matches_operand(self, other: StaticType) -> bool {
        self == StaticType::Attribute
            || other == StaticType::Attribute
            || self == other
            || (self.is_numeric() && other.is_numeric())
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StaticType::Nil => "nil",
            StaticType::Bool => "boolean",
            StaticType::Int => "int",
            StaticType::Float => "float",
            StaticType::String => "string",
            StaticType::Duration => "duration",
            StaticType::Status => "status",
            StaticType::Kind => "kind",
            StaticType::Attribute => "attribute",
            StaticType::Spanset => "spanset",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Error,
    Ok,
    Unset,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Error => "error",
            Status::Ok => "ok",
            Status::Unset => "unset",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Unspecified,
    Internal,
    Client,
    Server,
    Producer,
    Consumer,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Unspecified => "unspecified",
            Kind::Internal => "internal",
            Kind::Client => "client",
            Kind::Server => "server",
            Kind::Producer => "producer",
            Kind::Consumer => "consumer",
        }
    }
}

/// A literal value.
#[derive(Debug, Clone, PartialEq)]
pub enum Static {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    /// Nanoseconds.
    Duration(i64),
    Status(Status),
    Kind(Kind),
}

impl Static {
    /// The literal words `true false nil ok error unset unspecified internal server client
    /// producer consumer`.
    pub fn from_word(word: &str) -> Option<Static> {
        Some(match word {
            "true" => Static::Bool(true),
            "false" => Static::Bool(false),
            "nil" => Static::Nil,
            "ok" => Static::Status(Status::Ok),
            "error" => Static::Status(Status::Error),
            "unset" => Static::Status(Status::Unset),
            "unspecified" => Static::Kind(Kind::Unspecified),
            "internal" => Static::Kind(Kind::Internal),
            "server" => Static::Kind(Kind::Server),
            "client" => Static::Kind(Kind::Client),
            "producer" => Static::Kind(Kind::Producer),
            "consumer" => Static::Kind(Kind::Consumer),
            _ => return None,
        })
    }

    pub fn static_type(&self) -> StaticType {
        match self {
            Static::Nil => StaticType::Nil,
            Static::Bool(_) => StaticType::Bool,
            Static::Int(_) => StaticType::Int,
            Static::Float(_) => StaticType::Float,
            Static::String(_) => StaticType::String,
            Static::Duration(_) => StaticType::Duration,
            Static::Status(_) => StaticType::Status,
            Static::Kind(_) => StaticType::Kind,
        }
    }

    /// Numeric value as f64 (durations in nanoseconds).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Static::Int(i) => Some(*i as f64),
            Static::Float(f) => Some(*f),
            Static::Duration(d) => Some(*d as f64),
            _ => None,
        }
    }
}

fn write_quoted(f: &mut Formatter<'_>, s: &str) -> fmt::Result {
    f.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if (c as u32) < 0x20 || c == '\u{7f}' => write!(f, "\\u{:04x}", c as u32)?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

impl Display for Static {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Static::Nil => f.write_str("nil"),
            Static::Bool(b) => write!(f, "{b}"),
            Static::Int(i) => write!(f, "{i}"),
            Static::Float(x) => write!(f, "{x:?}"),
            Static::String(s) => write_quoted(f, s),
            Static::Duration(d) => f.write_str(&format_duration(*d)),
            Static::Status(s) => f.write_str(s.as_str()),
            Static::Kind(k) => f.write_str(k.as_str()),
        }
    }
}

/// Binary operators of field and scalar expressions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    Re,
    Nre,
    And,
    Or,
}

impl BinaryOp {
    pub fn as_str(self) -> &'static str {
        match self {
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Mod => "%",
            BinaryOp::Pow => "^",
            BinaryOp::Eq => "=",
            BinaryOp::Neq => "!=",
            BinaryOp::Lt => "<",
            BinaryOp::Lte => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Gte => ">=",
            BinaryOp::Re => "=~",
            BinaryOp::Nre => "!~",
            BinaryOp::And => "&&",
            BinaryOp::Or => "||",
        }
    }

    /// Precedence level, low to high: `&& ||` 1, comparisons 2, `+ -` 3, `* / %` 5, `^` 6.
    /// (Level 4 is unary `!`; unary `-` sits at 3.)
    pub fn level(self) -> u8 {
        match self {
            BinaryOp::And | BinaryOp::Or => 1,
            BinaryOp::Eq
            | BinaryOp::Neq
            | BinaryOp::Lt
            | BinaryOp::Lte
            | BinaryOp::Gt
            | BinaryOp::Gte
            | BinaryOp::Re
            | BinaryOp::Nre => 2,
            BinaryOp::Add | BinaryOp::Sub => 3,
            BinaryOp::Mul | BinaryOp::Div | BinaryOp::Mod => 5,
            BinaryOp::Pow => 6,
        }
    }

    pub fn is_right_assoc(self) -> bool {
        self == BinaryOp::Pow
    }

    /// Operators whose result is a boolean.
    pub fn is_boolean(self) -> bool {
        self.level() <= 2
    }

    pub fn is_comparison(self) -> bool {
        self.level() == 2
    }

    pub fn is_arithmetic(self) -> bool {
        self.level() >= 3
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `-x`
    Neg,
    /// `!x`
    Not,
    /// `x != nil`
    Exists,
}

impl UnaryOp {
    fn level(self) -> u8 {
        match self {
            UnaryOp::Neg => 3,
            UnaryOp::Not => 4,
            UnaryOp::Exists => 2,
        }
    }
}

/// An expression inside `{ }`, `by()` or an aggregate.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldExpr {
    Static(Static),
    Attribute(Attribute),
    Binary {
        op: BinaryOp,
        lhs: Box<FieldExpr>,
        rhs: Box<FieldExpr>,
        pos: Pos,
    },
    Unary {
        op: UnaryOp,
        expr: Box<FieldExpr>,
        pos: Pos,
    },
}

impl FieldExpr {
    /// Tempo's implied type: boolean operators give booleans, arithmetic takes the type of
    /// its first operand whose type is known.
    pub fn implied_type(&self) -> StaticType {
        match self {
            FieldExpr::Static(s) => s.static_type(),
            FieldExpr::Attribute(a) => a.static_type(),
            FieldExpr::Binary { op, lhs, rhs, .. } => {
                if op.is_boolean() {
                    StaticType::Bool
                } else {
                    match lhs.implied_type() {
                        StaticType::Attribute => rhs.implied_type(),
                        t => t,
                    }
                }
            }
            FieldExpr::Unary { op, expr, .. } => match op {
                UnaryOp::Neg => expr.implied_type(),
                UnaryOp::Not | UnaryOp::Exists => StaticType::Bool,
            },
        }
    }

    /// Whether the expression reads anything from the span (an attribute or intrinsic).
    pub fn references_span(&self) -> bool {
        match self {
            FieldExpr::Static(_) => false,
            FieldExpr::Attribute(_) => true,
            FieldExpr::Binary { lhs, rhs, .. } => lhs.references_span() || rhs.references_span(),
            FieldExpr::Unary { expr, .. } => expr.references_span(),
        }
    }

    /// Every attribute the expression reads, in order of appearance.
    pub fn attributes(&self) -> Vec<&Attribute> {
        let mut out = Vec::new();
        self.collect_attributes(&mut out);
        out
    }

    fn collect_attributes<'a>(&'a self, out: &mut Vec<&'a Attribute>) {
        match self {
            FieldExpr::Static(_) => {}
            FieldExpr::Attribute(a) => out.push(a),
            FieldExpr::Binary { lhs, rhs, .. } => {
                lhs.collect_attributes(out);
                rhs.collect_attributes(out);
            }
            FieldExpr::Unary { expr, .. } => expr.collect_attributes(out),
        }
    }

    /// Precedence of the node when it appears as an operand (9 for atoms).
    fn level(&self) -> u8 {
        match self {
            FieldExpr::Static(_) | FieldExpr::Attribute(_) => 9,
            FieldExpr::Binary { op, .. } => op.level(),
            FieldExpr::Unary { op, .. } => op.level(),
        }
    }
}

fn write_operand(f: &mut Formatter<'_>, e: &FieldExpr, parens: bool) -> fmt::Result {
    if parens {
        write!(f, "({e})")
    } else {
        write!(f, "{e}")
    }
}

impl Display for FieldExpr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            FieldExpr::Static(s) => write!(f, "{s}"),
            FieldExpr::Attribute(a) => write!(f, "{a}"),
            FieldExpr::Binary { op, lhs, rhs, .. } => {
                let pl = op.level();
                let child_parens = |child: &FieldExpr, right: bool| match child {
                    FieldExpr::Binary { op: cop, .. } => {
                        let cl = cop.level();
                        cl < pl || (cl == pl && right != op.is_right_assoc())
                    }
                    FieldExpr::Unary {
                        op: UnaryOp::Exists,
                        ..
                    } => 2 < pl || (pl == 2 && right),
                    FieldExpr::Unary { op: uop, .. } => pl >= uop.level(),
                    _ => false,
                };
                write_operand(f, lhs, child_parens(lhs, false))?;
                write!(f, " {} ", op.as_str())?;
                write_operand(f, rhs, child_parens(rhs, true))
            }
            FieldExpr::Unary { op, expr, .. } => match op {
                UnaryOp::Neg | UnaryOp::Not => {
                    f.write_str(if *op == UnaryOp::Neg { "-" } else { "!" })?;
                    let parens = matches!(
                        **expr,
                        FieldExpr::Binary { .. }
                            | FieldExpr::Unary {
                                op: UnaryOp::Exists,
                                ..
                            }
                    );
                    write_operand(f, expr, parens)
                }
                UnaryOp::Exists => {
                    write_operand(f, expr, expr.level() <= 2)?;
                    f.write_str(" != nil")
                }
            },
        }
    }
}

/// `{ expr }`; `{}` is `{ true }`.
#[derive(Debug, Clone, PartialEq)]
pub struct SpansetFilter {
    pub expr: FieldExpr,
    pub pos: Pos,
}

impl Display for SpansetFilter {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "{{ {} }}", self.expr)
    }
}

/// Operators between spansets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpansetOp {
    /// `&&`
    And,
    /// `||`
    Union,
    /// `>`
    Child,
    /// `<`
    Parent,
    /// `>>`
    Descendant,
    /// `<<`
    Ancestor,
    /// `~`
    Sibling,
    /// `!>`
    NotChild,
    /// `!<`
    NotParent,
    /// `!>>`
    NotDescendant,
    /// `!<<`
    NotAncestor,
    /// `!~`
    NotSibling,
    /// `&>`
    UnionChild,
    /// `&<`
    UnionParent,
    /// `&>>`
    UnionDescendant,
    /// `&<<`
    UnionAncestor,
    /// `&~`
    UnionSibling,
}

impl SpansetOp {
    pub fn as_str(self) -> &'static str {
        match self {
            SpansetOp::And => "&&",
            SpansetOp::Union => "||",
            SpansetOp::Child => ">",
            SpansetOp::Parent => "<",
            SpansetOp::Descendant => ">>",
            SpansetOp::Ancestor => "<<",
            SpansetOp::Sibling => "~",
            SpansetOp::NotChild => "!>",
            SpansetOp::NotParent => "!<",
            SpansetOp::NotDescendant => "!>>",
            SpansetOp::NotAncestor => "!<<",
            SpansetOp::NotSibling => "!~",
            SpansetOp::UnionChild => "&>",
            SpansetOp::UnionParent => "&<",
            SpansetOp::UnionDescendant => "&>>",
            SpansetOp::UnionAncestor => "&<<",
            SpansetOp::UnionSibling => "&~",
        }
    }

    /// `&&` and `||` bind looser (1) than the structural operators (2).
    pub fn level(self) -> u8 {
        match self {
            SpansetOp::And | SpansetOp::Union => 1,
            _ => 2,
        }
    }

    pub fn is_structural(self) -> bool {
        self.level() == 2
    }
}

/// Spanset filters combined with spanset operators.
#[derive(Debug, Clone, PartialEq)]
pub enum SpansetExpr {
    Filter(SpansetFilter),
    Op {
        op: SpansetOp,
        lhs: Box<SpansetExpr>,
        rhs: Box<SpansetExpr>,
    },
}

impl SpansetExpr {
    fn collect_filters<'a>(&'a self, out: &mut Vec<&'a SpansetFilter>) {
        match self {
            SpansetExpr::Filter(f) => out.push(f),
            SpansetExpr::Op { lhs, rhs, .. } => {
                lhs.collect_filters(out);
                rhs.collect_filters(out);
            }
        }
    }
}

fn write_spanset_op<T: Display>(
    f: &mut Formatter<'_>,
    op: SpansetOp,
    lhs: &T,
    lhs_level: Option<u8>,
    rhs: &T,
    rhs_level: Option<u8>,
) -> fmt::Result {
    let pl = op.level();
    match lhs_level {
        Some(l) if l < pl => write!(f, "({lhs})")?,
        _ => write!(f, "{lhs}")?,
    }
    write!(f, " {} ", op.as_str())?;
    match rhs_level {
        Some(l) if l <= pl => write!(f, "({rhs})"),
        _ => write!(f, "{rhs}"),
    }
}

impl Display for SpansetExpr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            SpansetExpr::Filter(x) => write!(f, "{x}"),
            SpansetExpr::Op { op, lhs, rhs } => {
                let level = |e: &SpansetExpr| match e {
                    SpansetExpr::Op { op, .. } => Some(op.level()),
                    SpansetExpr::Filter(_) => None,
                };
                write_spanset_op(f, *op, &**lhs, level(lhs), &**rhs, level(rhs))
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AggregateKind {
    Count,
    Avg,
    Min,
    Max,
    Sum,
}

impl AggregateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AggregateKind::Count => "count",
            AggregateKind::Avg => "avg",
            AggregateKind::Min => "min",
            AggregateKind::Max => "max",
            AggregateKind::Sum => "sum",
        }
    }

    pub fn from_word(w: &str) -> Option<AggregateKind> {
        Some(match w {
            "count" => AggregateKind::Count,
            "avg" => AggregateKind::Avg,
            "min" => AggregateKind::Min,
            "max" => AggregateKind::Max,
            "sum" => AggregateKind::Sum,
            _ => return None,
        })
    }
}

/// `count()`, `avg(expr)`, `min(expr)`, `max(expr)`, `sum(expr)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    pub kind: AggregateKind,
    /// `None` only for `count()`.
    pub arg: Option<FieldExpr>,
    pub pos: Pos,
}

impl Aggregate {
    pub fn implied_type(&self) -> StaticType {
        match (&self.kind, &self.arg) {
            (AggregateKind::Count, _) | (_, None) => StaticType::Int,
            (_, Some(e)) => e.implied_type(),
        }
    }
}

impl Display for Aggregate {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match &self.arg {
            Some(e) => write!(f, "{}({e})", self.kind.as_str()),
            None => write!(f, "{}()", self.kind.as_str()),
        }
    }
}

/// Arithmetic over aggregates and numeric literals (the sides of a scalar filter).
#[derive(Debug, Clone, PartialEq)]
pub enum ScalarExpr {
    Aggregate(Aggregate),
    Static(Static),
    Op {
        op: BinaryOp,
        lhs: Box<ScalarExpr>,
        rhs: Box<ScalarExpr>,
    },
}

impl ScalarExpr {
    pub fn implied_type(&self) -> StaticType {
        match self {
            ScalarExpr::Aggregate(a) => a.implied_type(),
            ScalarExpr::Static(s) => s.static_type(),
            ScalarExpr::Op { lhs, rhs, .. } => match lhs.implied_type() {
                StaticType::Attribute => rhs.implied_type(),
                t => t,
            },
        }
    }
}

fn write_arith<T: Display>(
    f: &mut Formatter<'_>,
    op: BinaryOp,
    lhs: &T,
    lhs_level: Option<u8>,
    rhs: &T,
    rhs_level: Option<u8>,
) -> fmt::Result {
    let pl = op.level();
    let parens = |l: Option<u8>, right: bool| match l {
        Some(l) => l < pl || (l == pl && right != op.is_right_assoc()),
        None => false,
    };
    if parens(lhs_level, false) {
        write!(f, "({lhs})")?;
    } else {
        write!(f, "{lhs}")?;
    }
    write!(f, " {} ", op.as_str())?;
    if parens(rhs_level, true) {
        write!(f, "({rhs})")
    } else {
        write!(f, "{rhs}")
    }
}

impl Display for ScalarExpr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            ScalarExpr::Aggregate(a) => write!(f, "{a}"),
            ScalarExpr::Static(s) => write!(f, "{s}"),
            ScalarExpr::Op { op, lhs, rhs } => {
                let level = |e: &ScalarExpr| match e {
                    ScalarExpr::Op { op, .. } => Some(op.level()),
                    _ => None,
                };
                write_arith(f, *op, &**lhs, level(lhs), &**rhs, level(rhs))
            }
        }
    }
}

/// `lhs op rhs` with `op` one of `= != < <= > >=`, e.g. `count() > 2`, `avg(duration) > 1s`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalarFilter {
    pub op: BinaryOp,
    pub lhs: ScalarExpr,
    pub rhs: ScalarExpr,
    pub pos: Pos,
}

impl Display for ScalarFilter {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.lhs, self.op.as_str(), self.rhs)
    }
}

/// One `|`-separated element of a spanset pipeline.
#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    Spanset(SpansetExpr),
    ScalarFilter(ScalarFilter),
    GroupBy { expr: FieldExpr, pos: Pos },
    Coalesce,
    Select(Vec<Attribute>),
}

impl Display for Stage {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Stage::Spanset(s) => write!(f, "{s}"),
            Stage::ScalarFilter(s) => write!(f, "{s}"),
            Stage::GroupBy { expr, .. } => write!(f, "by({expr})"),
            Stage::Coalesce => f.write_str("coalesce()"),
            Stage::Select(attrs) => {
                f.write_str("select(")?;
                write_list(f, attrs)?;
                f.write_char(')')
            }
        }
    }
}

fn write_list<T: Display>(f: &mut Formatter<'_>, items: &[T]) -> fmt::Result {
    for (i, a) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{a}")?;
    }
    Ok(())
}

/// `stage | stage | …` (never empty).
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    pub stages: Vec<Stage>,
}

impl Pipeline {
    /// Spanset filters of the pipeline, in order.
    pub fn spanset_filters(&self) -> Vec<&SpansetFilter> {
        let mut out = Vec::new();
        for s in &self.stages {
            if let Stage::Spanset(e) = s {
                e.collect_filters(&mut out);
            }
        }
        out
    }
}

impl Display for Pipeline {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        for (i, s) in self.stages.iter().enumerate() {
            if i > 0 {
                f.write_str(" | ")?;
            }
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

/// Spanset operators between parenthesised pipelines: `({…} | count() > 1) >> ({…})`.
#[derive(Debug, Clone, PartialEq)]
pub enum PipelineExpr {
    Wrapped(Pipeline),
    Op {
        op: SpansetOp,
        lhs: Box<PipelineExpr>,
        rhs: Box<PipelineExpr>,
    },
}

impl Display for PipelineExpr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            PipelineExpr::Wrapped(p) => write!(f, "({p})"),
            PipelineExpr::Op { op, lhs, rhs } => {
                let level = |e: &PipelineExpr| match e {
                    PipelineExpr::Op { op, .. } => Some(op.level()),
                    PipelineExpr::Wrapped(_) => None,
                };
                write_spanset_op(f, *op, &**lhs, level(lhs), &**rhs, level(rhs))
            }
        }
    }
}

/// Arithmetic over parenthesised scalar pipelines `({…} | count())`; a bare static only
/// appears as the whole right-hand side of a `ScalarPipelineFilter`.
#[derive(Debug, Clone, PartialEq)]
pub enum ScalarPipelineExpr {
    Pipeline {
        pipeline: Pipeline,
        aggregate: Aggregate,
    },
    Static(Static),
    Op {
        op: BinaryOp,
        lhs: Box<ScalarPipelineExpr>,
        rhs: Box<ScalarPipelineExpr>,
    },
}

impl ScalarPipelineExpr {
    pub fn implied_type(&self) -> StaticType {
        match self {
            ScalarPipelineExpr::Pipeline { aggregate, .. } => aggregate.implied_type(),
            ScalarPipelineExpr::Static(s) => s.static_type(),
            ScalarPipelineExpr::Op { lhs, rhs, .. } => match lhs.implied_type() {
                StaticType::Attribute => rhs.implied_type(),
                t => t,
            },
        }
    }
}

impl Display for ScalarPipelineExpr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            ScalarPipelineExpr::Pipeline {
                pipeline,
                aggregate,
            } => write!(f, "({pipeline} | {aggregate})"),
            ScalarPipelineExpr::Static(s) => write!(f, "{s}"),
            ScalarPipelineExpr::Op { op, lhs, rhs } => {
                let level = |e: &ScalarPipelineExpr| match e {
                    ScalarPipelineExpr::Op { op, .. } => Some(op.level()),
                    _ => None,
                };
                write_arith(f, *op, &**lhs, level(lhs), &**rhs, level(rhs))
            }
        }
    }
}

/// `({…} | count()) > 2`, `({…} | count()) + ({…} | count()) = 1` (Tempo: not yet supported).
#[derive(Debug, Clone, PartialEq)]
pub struct ScalarPipelineFilter {
    pub op: BinaryOp,
    pub lhs: ScalarPipelineExpr,
    pub rhs: ScalarPipelineExpr,
    pub pos: Pos,
}

impl Display for ScalarPipelineFilter {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.lhs, self.op.as_str(), self.rhs)
    }
}

/// First-stage metrics functions.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricsFunction {
    Rate,
    CountOverTime,
    MinOverTime(Attribute),
    MaxOverTime(Attribute),
    AvgOverTime(Attribute),
    SumOverTime(Attribute),
    QuantileOverTime(Attribute, Vec<f64>),
    HistogramOverTime(Attribute),
    /// `compare({selection}, topN, start, end)`; defaults 10, 0, 0.
    Compare {
        selection: SpansetFilter,
        top_n: i64,
        start: i64,
        end: i64,
    },
}

impl MetricsFunction {
    pub fn name(&self) -> &'static str {
        match self {
            MetricsFunction::Rate => "rate",
            MetricsFunction::CountOverTime => "count_over_time",
            MetricsFunction::MinOverTime(_) => "min_over_time",
            MetricsFunction::MaxOverTime(_) => "max_over_time",
            MetricsFunction::AvgOverTime(_) => "avg_over_time",
            MetricsFunction::SumOverTime(_) => "sum_over_time",
            MetricsFunction::QuantileOverTime(..) => "quantile_over_time",
            MetricsFunction::HistogramOverTime(_) => "histogram_over_time",
            MetricsFunction::Compare { .. } => "compare",
        }
    }

    /// The attribute the function measures, if any.
    pub fn attribute(&self) -> Option<&Attribute> {
        match self {
            MetricsFunction::MinOverTime(a)
            | MetricsFunction::MaxOverTime(a)
            | MetricsFunction::AvgOverTime(a)
            | MetricsFunction::SumOverTime(a)
            | MetricsFunction::QuantileOverTime(a, _)
            | MetricsFunction::HistogramOverTime(a) => Some(a),
            _ => None,
        }
    }
}

/// `| rate() by (resource.service.name)` and friends.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsFirstStage {
    pub func: MetricsFunction,
    pub by: Vec<Attribute>,
    pub pos: Pos,
}

impl Display for MetricsFirstStage {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let name = self.func.name();
        match &self.func {
            MetricsFunction::Rate | MetricsFunction::CountOverTime => write!(f, "{name}()")?,
            MetricsFunction::QuantileOverTime(a, qs) => {
                write!(f, "{name}({a}")?;
                for q in qs {
                    write!(f, ", {q:?}")?;
                }
                f.write_char(')')?;
            }
            MetricsFunction::Compare {
                selection,
                top_n,
                start,
                end,
            } => write!(f, "{name}({selection}, {top_n}, {start}, {end})")?,
            other => match other.attribute() {
                Some(a) => write!(f, "{name}({a})")?,
                None => write!(f, "{name}()")?,
            },
        }
        if !self.by.is_empty() {
            f.write_str(" by (")?;
            write_list(f, &self.by)?;
            f.write_char(')')?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecondStageKind {
    TopK,
    BottomK,
}

/// `| topk(n)` / `| bottomk(n)`: keep the `limit` series with the highest (lowest) values.
#[derive(Debug, Clone, PartialEq)]
pub struct SecondStage {
    pub kind: SecondStageKind,
    pub limit: i64,
    pub pos: Pos,
}

impl Display for SecondStage {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let name = match self.kind {
            SecondStageKind::TopK => "topk",
            SecondStageKind::BottomK => "bottomk",
        };
        write!(f, "{name}({})", self.limit)
    }
}

/// A comparison applied to every sample of a metrics result, written right after the
/// function or the `topk`/`bottomk` it filters: `{ } | rate() > 10`. Samples for which
/// `sample op value` is false are dropped. `op` is one of `= != < <= > >=`; `value` is an
/// `Int` or `Float` literal (possibly negative) or a duration (compared in seconds).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsFilter {
    pub op: BinaryOp,
    pub value: Static,
    pub pos: Pos,
}

impl MetricsFilter {
    /// The threshold as a number; a duration in seconds (metrics report durations in
    /// seconds).
    pub fn threshold(&self) -> f64 {
        match self.value {
            Static::Duration(ns) => ns as f64 / 1e9,
            _ => self.value.as_f64().unwrap_or(f64::NAN),
        }
    }

    /// Whether a sample passes the filter.
    pub fn keeps(&self, sample: f64) -> bool {
        let v = self.threshold();
        match self.op {
            BinaryOp::Eq => sample == v,
            BinaryOp::Neq => sample != v,
            BinaryOp::Lt => sample < v,
            BinaryOp::Lte => sample <= v,
            BinaryOp::Gt => sample > v,
            BinaryOp::Gte => sample >= v,
            _ => false,
        }
    }
}

impl Display for MetricsFilter {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.op.as_str(), self.value)
    }
}

/// What follows the metrics function, in order. The parser accepts
/// `function [filter] (| topk(n)|bottomk(n) [filter])*`.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricsStage {
    /// `| topk(n)` / `| bottomk(n)`.
    Limit(SecondStage),
    /// `> 10` and friends.
    Filter(MetricsFilter),
}

impl Display for MetricsStage {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            MetricsStage::Limit(s) => write!(f, " | {s}"),
            MetricsStage::Filter(x) => write!(f, " {x}"),
        }
    }
}

/// A spanset pipeline feeding a metrics function, then its second stages:
/// `{ … } | rate() by (resource.service.name) > 1 | topk(5)`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsQuery {
    pub pipeline: Pipeline,
    pub first_stage: MetricsFirstStage,
    /// Limits and filters after the function, in source order (often empty).
    pub second_stages: Vec<MetricsStage>,
}

impl MetricsQuery {
    /// The first `topk`/`bottomk` stage, if any.
    pub fn limit(&self) -> Option<&SecondStage> {
        self.second_stages.iter().find_map(|s| match s {
            MetricsStage::Limit(l) => Some(l),
            MetricsStage::Filter(_) => None,
        })
    }

    /// The sample filters, in order.
    pub fn filters(&self) -> impl Iterator<Item = &MetricsFilter> {
        self.second_stages.iter().filter_map(|s| match s {
            MetricsStage::Filter(f) => Some(f),
            MetricsStage::Limit(_) => None,
        })
    }
}

impl Display for MetricsQuery {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "{} | {}", self.pipeline, self.first_stage)?;
        for s in &self.second_stages {
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

/// Arithmetic between metrics results and scalars (`+ - * /`, `*`/`/` binding tighter, all
/// left-associative): `({status=error} | rate()) / ({} | rate()) * 100`. Every metrics
/// operand is a parenthesised metrics query, which may carry its own second stages
/// (`({} | rate() by (name) | topk(5)) / ({} | rate())`), applied before the arithmetic.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricsExpr {
    /// `(pipeline | function)`.
    Query(Box<MetricsQuery>),
    /// A number (`Int` or `Float`, possibly negative), applied to every sample.
    Scalar(Static),
    Op {
        op: BinaryOp,
        lhs: Box<MetricsExpr>,
        rhs: Box<MetricsExpr>,
        pos: Pos,
    },
}

impl MetricsExpr {
    /// Every metrics query operand, left to right.
    pub fn queries(&self) -> Vec<&MetricsQuery> {
        let mut out = Vec::new();
        self.collect_queries(&mut out);
        out
    }

    fn collect_queries<'a>(&'a self, out: &mut Vec<&'a MetricsQuery>) {
        match self {
            MetricsExpr::Query(q) => out.push(q),
            MetricsExpr::Scalar(_) => {}
            MetricsExpr::Op { lhs, rhs, .. } => {
                lhs.collect_queries(out);
                rhs.collect_queries(out);
            }
        }
    }

    fn level(&self) -> Option<u8> {
        match self {
            MetricsExpr::Op { op, .. } => Some(op.level()),
            _ => None,
        }
    }
}

impl Display for MetricsExpr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            MetricsExpr::Query(q) => write!(f, "({q})"),
            MetricsExpr::Scalar(s) => write!(f, "{s}"),
            MetricsExpr::Op { op, lhs, rhs, .. } => {
                write_arith(f, *op, &**lhs, lhs.level(), &**rhs, rhs.level())
            }
        }
    }
}

/// A metrics arithmetic expression with an optional comparison on its result and then
/// second stages: `({…} | rate()) / ({…} | rate()) > 0.1 | topk(5)`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsMath {
    pub expr: MetricsExpr,
    pub filter: Option<MetricsFilter>,
    /// `| topk(n)`, `| bottomk(n)` and their filters after the arithmetic, in order.
    pub stages: Vec<MetricsStage>,
}

impl Display for MetricsMath {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.expr)?;
        if let Some(x) = &self.filter {
            write!(f, " {x}")?;
        }
        for s in &self.stages {
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

/// The five top-level shapes of a query.
#[derive(Debug, Clone, PartialEq)]
pub enum RootExpr {
    /// `{…} | by(…) | count() > 2 | select(…)`
    Pipeline(Pipeline),
    /// `({…} | …) && ({…} | …)`
    PipelineExpr(PipelineExpr),
    /// `({…} | count()) > ({…} | count())`
    ScalarPipelineFilter(ScalarPipelineFilter),
    /// `{…} | rate() by (…) > 1 | topk(5)`
    Metrics(MetricsQuery),
    /// `({…} | rate()) / ({…} | count_over_time()) * 100`
    MetricsMath(MetricsMath),
}

impl Display for RootExpr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            RootExpr::Pipeline(p) => write!(f, "{p}"),
            RootExpr::PipelineExpr(p) => write!(f, "{p}"),
            RootExpr::ScalarPipelineFilter(p) => write!(f, "{p}"),
            RootExpr::Metrics(m) => write!(f, "{m}"),
            RootExpr::MetricsMath(m) => write!(f, "{m}"),
        }
    }
}

/// `with(name=value)` query hint.
#[derive(Debug, Clone, PartialEq)]
pub struct Hint {
    pub name: String,
    pub value: Static,
    pub pos: Pos,
}

pub const HINT_MOST_RECENT: &str = "most_recent";
pub const HINT_SAMPLE: &str = "sample";
pub const HINT_EXEMPLARS: &str = "exemplars";

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub root: RootExpr,
    pub hints: Vec<Hint>,
}

impl Query {
    /// A metrics query: a single one or arithmetic between several.
    pub fn is_metrics(&self) -> bool {
        matches!(self.root, RootExpr::Metrics(_) | RootExpr::MetricsMath(_))
    }

    /// The single metrics query (`None` for metrics arithmetic and non-metrics queries).
    pub fn metrics(&self) -> Option<&MetricsQuery> {
        match &self.root {
            RootExpr::Metrics(m) => Some(m),
            _ => None,
        }
    }

    /// The metrics arithmetic, if that is the query's shape.
    pub fn metrics_math(&self) -> Option<&MetricsMath> {
        match &self.root {
            RootExpr::MetricsMath(m) => Some(m),
            _ => None,
        }
    }

    /// Every metrics query the query runs, left to right (one for a plain metrics query).
    pub fn metrics_queries(&self) -> Vec<&MetricsQuery> {
        match &self.root {
            RootExpr::Metrics(m) => vec![m],
            RootExpr::MetricsMath(m) => m.expr.queries(),
            _ => Vec::new(),
        }
    }

    /// The spanset pipeline for plain pipeline and metrics queries.
    pub fn pipeline(&self) -> Option<&Pipeline> {
        match &self.root {
            RootExpr::Pipeline(p) => Some(p),
            RootExpr::Metrics(m) => Some(&m.pipeline),
            _ => None,
        }
    }

    /// Every spanset filter of the query in source order (not counting a `compare()`
    /// selection, which is a metrics argument).
    pub fn spanset_filters(&self) -> Vec<&SpansetFilter> {
        let mut out = Vec::new();
        match &self.root {
            RootExpr::Pipeline(p) => out.extend(p.spanset_filters()),
            RootExpr::Metrics(m) => out.extend(m.pipeline.spanset_filters()),
            RootExpr::MetricsMath(m) => {
                for q in m.expr.queries() {
                    out.extend(q.pipeline.spanset_filters());
                }
            }
            RootExpr::PipelineExpr(e) => collect_pipeline_expr(e, &mut out),
            RootExpr::ScalarPipelineFilter(s) => {
                collect_scalar_pipeline(&s.lhs, &mut out);
                collect_scalar_pipeline(&s.rhs, &mut out);
            }
        }
        out
    }

    /// The last value given for a hint.
    pub fn hint(&self, name: &str) -> Option<&Static> {
        self.hints
            .iter()
            .rev()
            .find(|h| h.name == name)
            .map(|h| &h.value)
    }

    /// `with(most_recent=true)`.
    pub fn most_recent(&self) -> bool {
        matches!(self.hint(HINT_MOST_RECENT), Some(Static::Bool(true)))
    }
}

fn collect_pipeline_expr<'a>(e: &'a PipelineExpr, out: &mut Vec<&'a SpansetFilter>) {
    match e {
        PipelineExpr::Wrapped(p) => out.extend(p.spanset_filters()),
        PipelineExpr::Op { lhs, rhs, .. } => {
            collect_pipeline_expr(lhs, out);
            collect_pipeline_expr(rhs, out);
        }
    }
}

fn collect_scalar_pipeline<'a>(e: &'a ScalarPipelineExpr, out: &mut Vec<&'a SpansetFilter>) {
    match e {
        ScalarPipelineExpr::Pipeline { pipeline, .. } => out.extend(pipeline.spanset_filters()),
        ScalarPipelineExpr::Static(_) => {}
        ScalarPipelineExpr::Op { lhs, rhs, .. } => {
            collect_scalar_pipeline(lhs, out);
            collect_scalar_pipeline(rhs, out);
        }
    }
}

impl Display for Query {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.root)?;
        if !self.hints.is_empty() {
            f.write_str(" with(")?;
            for (i, h) in self.hints.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{}={}", h.name, h.value)?;
            }
            f.write_char(')')?;
        }
        Ok(())
    }
}

/// A simple `attribute op value` matcher, as extracted by `parse_lenient_filters`.
/// `op` is a comparison (`= != < <= > >= =~ !~`); `value` `Nil` with `Neq` means "exists".
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub attribute: Attribute,
    pub op: BinaryOp,
    pub value: Static,
}

impl Display for Condition {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.attribute, self.op.as_str(), self.value)
    }
}
