//! Hand-written TraceQL parser: tokens in, syntax tree out, no type checking (that is
//! `validate`). It follows Tempo's grammar and precedence:
//!
//! * inside `{ }`: `&&`/`||` (loosest, equal, left-assoc) < comparisons `= != < <= > >= =~ !~`
//!   < `+ -` (and unary `-`) < unary `!` < `* / %` < `^` (right-assoc); `x != nil` is the
//!   existence test and `nil` may appear nowhere else;
//! * between spansets and scalar expressions the same ladder applies, with `|` loosest of all,
//!   the structural operators (`> < >> << ~ !> !< !>> !<< !~ &> &< &>> &<< &~`) at the
//!   comparison level and `&& ||` just above `|`.
//!
//! Parsing has two steps: a precedence-climbing pass builds a loose tree of everything that
//! may appear outside braces, then `shape_*` functions check it against the grammar's root
//! forms (spanset pipeline, pipeline expression, scalar pipeline filter, metrics pipeline,
//! metrics arithmetic), which resolves the many meanings of `(`. Errors carry the byte offset
//! of the culprit.
//!
//! Metrics forms: `pipeline | fn(…) [by (…)] [cmp number] [| topk(n)|bottomk(n) [cmp number]]`
//! and `(pipeline | fn(…)) op (…) … [cmp number]` with `op` one of `+ - * /` (Tempo's
//! precedence: `* /` over `+ -`) and numbers allowed as operands; hints end the query.

use super::ast::*;
use super::error::ParseError;
use super::lexer::{tokenize, Tok, Token};

/// Deepest nesting of parentheses and prefix operators the parser recurses into.
const MAX_RECURSION: usize = 128;
/// Deepest syntax tree accepted (long `a && b && …` chains nest without recursion).
const MAX_TREE_DEPTH: usize = 1000;

type PResult<T> = Result<T, ParseError>;

/// Shape errors: byte offset and message; the furthest one wins when alternatives fail.
type Shape<T> = Result<T, (usize, String)>;

/// The loose tree of the first pass.
#[derive(Debug, Clone)]
enum Node {
    Filter(SpansetFilter),
    Lit {
        value: Static,
        negated: bool,
    },
    Aggregate(Aggregate),
    By(FieldExpr),
    Select(Vec<Attribute>),
    Coalesce,
    Metrics(MetricsFirstStage),
    Second(SecondStage),
    Binary {
        op: Tok,
        op_pos: usize,
        lhs: Box<PNode>,
        rhs: Box<PNode>,
    },
    Paren(Box<PNode>),
}

#[derive(Debug, Clone)]
struct PNode {
    node: Node,
    /// Byte offset where the node starts.
    pos: usize,
    depth: usize,
}

pub struct Parser<'a> {
    src: &'a str,
    toks: Vec<Token>,
    i: usize,
    recursion: usize,
}

/// Parse a whole query (no validation).
pub fn parse_query(src: &str) -> PResult<Query> {
    let mut p = Parser::new(src, tokenize(src));
    p.query()
}

/// Parse tokens (ending in `Eof`) as one field expression; used by lenient extraction.
pub(crate) fn parse_field_tokens(src: &str, toks: Vec<Token>) -> PResult<FieldExpr> {
    let mut p = Parser::new(src, toks);
    let (e, _) = p.field_expr(0)?;
    p.expect_eof()?;
    Ok(e)
}

fn root_binop(t: &Tok) -> Option<(usize, bool)> {
    Some(match t {
        Tok::Pipe => (1, false),
        Tok::And | Tok::Or => (2, false),
        Tok::Eq
        | Tok::Neq
        | Tok::Lt
        | Tok::Lte
        | Tok::Gt
        | Tok::Gte
        | Tok::Re
        | Tok::Nre
        | Tok::Desc
        | Tok::Ance
        | Tok::Sibl
        | Tok::NotChild
        | Tok::NotParent
        | Tok::NotDesc
        | Tok::NotAnce
        | Tok::UnionChild
        | Tok::UnionParent
        | Tok::UnionDesc
        | Tok::UnionAnce
        | Tok::UnionSibl => (3, false),
        Tok::Add | Tok::Sub => (4, false),
        Tok::Mul | Tok::Div | Tok::Mod => (5, false),
        Tok::Pow => (6, true),
        _ => return None,
    })
}

fn field_binop(t: &Tok) -> Option<BinaryOp> {
    Some(match t {
        Tok::And => BinaryOp::And,
        Tok::Or => BinaryOp::Or,
        Tok::Eq => BinaryOp::Eq,
        Tok::Neq => BinaryOp::Neq,
        Tok::Lt => BinaryOp::Lt,
        Tok::Lte => BinaryOp::Lte,
        Tok::Gt => BinaryOp::Gt,
        Tok::Gte => BinaryOp::Gte,
        Tok::Re => BinaryOp::Re,
        Tok::Nre => BinaryOp::Nre,
        Tok::Add => BinaryOp::Add,
        Tok::Sub => BinaryOp::Sub,
        Tok::Mul => BinaryOp::Mul,
        Tok::Div => BinaryOp::Div,
        Tok::Mod => BinaryOp::Mod,
        Tok::Pow => BinaryOp::Pow,
        _ => return None,
    })
}

fn spanset_op(t: &Tok) -> Option<SpansetOp> {
    Some(match t {
        Tok::And => SpansetOp::And,
        Tok::Or => SpansetOp::Union,
        Tok::Gt => SpansetOp::Child,
        Tok::Lt => SpansetOp::Parent,
        Tok::Desc => SpansetOp::Descendant,
        Tok::Ance => SpansetOp::Ancestor,
        Tok::Sibl => SpansetOp::Sibling,
        Tok::NotChild => SpansetOp::NotChild,
        Tok::NotParent => SpansetOp::NotParent,
        Tok::NotDesc => SpansetOp::NotDescendant,
        Tok::NotAnce => SpansetOp::NotAncestor,
        Tok::Nre => SpansetOp::NotSibling,
        Tok::UnionChild => SpansetOp::UnionChild,
        Tok::UnionParent => SpansetOp::UnionParent,
        Tok::UnionDesc => SpansetOp::UnionDescendant,
        Tok::UnionAnce => SpansetOp::UnionAncestor,
        Tok::UnionSibl => SpansetOp::UnionSibling,
        _ => return None,
    })
}

fn scalar_cmp(t: &Tok) -> Option<BinaryOp> {
    field_binop(t).filter(|op| {
        matches!(
            op,
            BinaryOp::Eq
                | BinaryOp::Neq
                | BinaryOp::Lt
                | BinaryOp::Lte
                | BinaryOp::Gt
                | BinaryOp::Gte
        )
    })
}

fn arith(t: &Tok) -> Option<BinaryOp> {
    field_binop(t).filter(|op| op.is_arithmetic())
}

fn is_numeric_lit(s: &Static) -> bool {
    matches!(s, Static::Int(_) | Static::Float(_) | Static::Duration(_))
}

fn further<T>(a: Shape<T>, b: Shape<T>) -> Shape<T> {
    match (a, b) {
        (Ok(v), _) | (_, Ok(v)) => Ok(v),
        (Err(x), Err(y)) => Err(if y.0 > x.0 { y } else { x }),
    }
}

impl<'a> Parser<'a> {
    pub fn new(src: &'a str, toks: Vec<Token>) -> Self {
        Parser {
            src,
            toks,
            i: 0,
            recursion: 0,
        }
    }

    fn peek(&self) -> &Token {
        &self.toks[self.i.min(self.toks.len() - 1)]
    }

    fn bump(&mut self) -> Token {
        let t = self.peek().clone();
        if self.i < self.toks.len() - 1 {
            self.i += 1;
        }
        t
    }

    fn err_at(&self, offset: usize, msg: impl Into<String>) -> ParseError {
        ParseError::new(self.src, offset, msg)
    }

    /// "unexpected X" for the current token (a lexing error speaks for itself).
    fn unexpected(&self, expected: &str) -> ParseError {
        let t = self.peek();
        match &t.tok {
            Tok::Error(m) => self.err_at(t.start, m.clone()),
            other => self.err_at(
                t.start,
                format!("unexpected {}, expected {expected}", other.describe()),
            ),
        }
    }

    fn expect(&mut self, tok: Tok) -> PResult<Token> {
        if self.peek().tok == tok {
            Ok(self.bump())
        } else {
            Err(self.unexpected(&format!("`{}`", tok.symbol())))
        }
    }

    fn expect_eof(&mut self) -> PResult<()> {
        if self.peek().tok == Tok::Eof {
            Ok(())
        } else {
            Err(self.unexpected("end of query"))
        }
    }

    fn enter(&mut self) -> PResult<()> {
        self.recursion += 1;
        if self.recursion > MAX_RECURSION {
            return Err(self.err_at(self.peek().start, "query is nested too deeply"));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.recursion -= 1;
    }

    fn check_depth(&self, depth: usize, at: usize) -> PResult<()> {
        if depth > MAX_TREE_DEPTH {
            return Err(self.err_at(at, "query expression is too long or nested too deeply"));
        }
        Ok(())
    }

    // ---------------------------------------------------------------- query

    fn query(&mut self) -> PResult<Query> {
        let node = self.root_expr(0)?;
        let mut hints = Vec::new();
        while self.peek().tok.is_word("with") {
            hints.extend(self.hints()?);
        }
        self.expect_eof()?;
        let root = shape_root(&node).map_err(|(at, msg)| self.err_at(at, msg))?;
        Ok(Query { root, hints })
    }

    fn hints(&mut self) -> PResult<Vec<Hint>> {
        self.bump(); // with
        self.expect(Tok::LParen)?;
        let mut out = Vec::new();
        loop {
            let t = self.peek().clone();
            let name = match &t.tok {
                Tok::Word(w) => w.clone(),
                _ => return Err(self.unexpected("a hint name")),
            };
            self.bump();
            self.expect(Tok::Eq)?;
            let v = self.peek().clone();
            let value = match &v.tok {
                Tok::Str(s) => Static::String(s.clone()),
                Tok::Int(i) => Static::Int(*i),
                Tok::Float(f) => Static::Float(*f),
                Tok::Duration(d) => Static::Duration(*d),
                Tok::Word(w) if w != "nil" && Static::from_word(w).is_some() => {
                    Static::from_word(w).unwrap_or(Static::Nil)
                }
                _ => return Err(self.unexpected("a hint value")),
            };
            self.bump();
            out.push(Hint {
                name,
                value,
                pos: Pos(t.start),
            });
            if self.peek().tok == Tok::Comma {
                self.bump();
                continue;
            }
            self.expect(Tok::RParen)?;
            return Ok(out);
        }
    }

    // ------------------------------------------------- outside braces (loose)

    fn root_expr(&mut self, min_bp: usize) -> PResult<PNode> {
        let mut lhs = self.root_primary()?;
        loop {
            let t = self.peek().clone();
            let Some((level, right)) = root_binop(&t.tok) else {
                break;
            };
            let lbp = 2 * level;
            if lbp < min_bp {
                break;
            }
            self.bump();
            self.enter()?;
            let rhs = self.root_expr(if right { lbp } else { lbp + 1 });
            self.leave();
            let rhs = rhs?;
            let depth = lhs.depth.max(rhs.depth) + 1;
            self.check_depth(depth, t.start)?;
            lhs = PNode {
                pos: lhs.pos,
                depth,
                node: Node::Binary {
                    op: t.tok,
                    op_pos: t.start,
                    lhs: Box::new(lhs),
                    rhs: Box::new(rhs),
                },
            };
        }
        Ok(lhs)
    }

    fn leaf(node: Node, pos: usize) -> PNode {
        PNode {
            node,
            pos,
            depth: 1,
        }
    }

    fn root_primary(&mut self) -> PResult<PNode> {
        let t = self.peek().clone();
        let start = t.start;
        let node = match &t.tok {
            Tok::LBrace => Node::Filter(self.spanset_filter()?),
            Tok::LParen => {
                self.bump();
                self.enter()?;
                let inner = self.root_expr(0);
                self.leave();
                let inner = inner?;
                self.expect(Tok::RParen)?;
                let depth = inner.depth + 1;
                return Ok(PNode {
                    node: Node::Paren(Box::new(inner)),
                    pos: start,
                    depth,
                });
            }
            Tok::Int(i) => {
                self.bump();
                Node::Lit {
                    value: Static::Int(*i),
                    negated: false,
                }
            }
            Tok::Float(f) => {
                self.bump();
                Node::Lit {
                    value: Static::Float(*f),
                    negated: false,
                }
            }
            Tok::Duration(d) => {
                self.bump();
                Node::Lit {
                    value: Static::Duration(*d),
                    negated: false,
                }
            }
            Tok::Str(s) => {
                self.bump();
                Node::Lit {
                    value: Static::String(s.clone()),
                    negated: false,
                }
            }
            Tok::Sub => {
                self.bump();
                let value = match self.peek().tok {
                    Tok::Int(i) => Static::Int(i.wrapping_neg()),
                    Tok::Float(f) => Static::Float(-f),
                    Tok::Duration(d) => Static::Duration(d.wrapping_neg()),
                    _ => return Err(self.unexpected("a number after `-`")),
                };
                self.bump();
                Node::Lit {
                    value,
                    negated: true,
                }
            }
            Tok::Word(w) => {
                let w = w.clone();
                if w != "nil" {
                    if let Some(value) = Static::from_word(&w) {
                        self.bump();
                        return Ok(Self::leaf(
                            Node::Lit {
                                value,
                                negated: false,
                            },
                            start,
                        ));
                    }
                }
                if let Some(kind) = AggregateKind::from_word(&w) {
                    Node::Aggregate(self.aggregate(kind)?)
                } else {
                    match w.as_str() {
                        "by" => {
                            self.bump();
                            self.expect(Tok::LParen)?;
                            if self.peek().tok == Tok::RParen {
                                return Err(self.unexpected("a field expression"));
                            }
                            let (e, _) = self.field_expr(0)?;
                            self.expect(Tok::RParen)?;
                            Node::By(e)
                        }
                        "select" => {
                            self.bump();
                            Node::Select(self.attribute_list()?)
                        }
                        "coalesce" => {
                            self.bump();
                            self.expect(Tok::LParen)?;
                            self.expect(Tok::RParen)?;
                            Node::Coalesce
                        }
                        "topk" | "bottomk" => {
                            self.bump();
                            self.expect(Tok::LParen)?;
                            let limit = match self.peek().tok {
                                Tok::Int(i) => i,
                                _ => return Err(self.unexpected("an integer")),
                            };
                            self.bump();
                            self.expect(Tok::RParen)?;
                            Node::Second(SecondStage {
                                kind: if w == "topk" {
                                    SecondStageKind::TopK
                                } else {
                                    SecondStageKind::BottomK
                                },
                                limit,
                                pos: Pos(start),
                            })
                        }
                        "rate"
                        | "count_over_time"
                        | "min_over_time"
                        | "max_over_time"
                        | "avg_over_time"
                        | "sum_over_time"
                        | "quantile_over_time"
                        | "histogram_over_time"
                        | "compare" => Node::Metrics(self.metrics_function()?),
                        _ => {
                            return Err(
                                self.unexpected("a spanset filter `{ … }` or pipeline stage")
                            )
                        }
                    }
                }
            }
            _ => return Err(self.unexpected("a spanset filter `{ … }` or pipeline stage")),
        };
        Ok(Self::leaf(node, start))
    }

    fn aggregate(&mut self, kind: AggregateKind) -> PResult<Aggregate> {
        let start = self.bump().start;
        self.expect(Tok::LParen)?;
        let arg = if kind == AggregateKind::Count {
            None
        } else {
            if self.peek().tok == Tok::RParen {
                return Err(self.unexpected("a field expression"));
            }
            Some(self.field_expr(0)?.0)
        };
        self.expect(Tok::RParen)?;
        Ok(Aggregate {
            kind,
            arg,
            pos: Pos(start),
        })
    }

    fn metrics_function(&mut self) -> PResult<MetricsFirstStage> {
        let t = self.bump();
        let name = match &t.tok {
            Tok::Word(w) => w.clone(),
            _ => String::new(),
        };
        self.expect(Tok::LParen)?;
        let func = match name.as_str() {
            "rate" => MetricsFunction::Rate,
            "count_over_time" => MetricsFunction::CountOverTime,
            "quantile_over_time" => {
                let a = self.attribute()?;
                self.expect(Tok::Comma)?;
                let mut qs = Vec::new();
                loop {
                    match self.peek().tok {
                        Tok::Int(i) => qs.push(i as f64),
                        Tok::Float(f) => qs.push(f),
                        _ => return Err(self.unexpected("a number")),
                    }
                    self.bump();
                    if self.peek().tok == Tok::Comma {
                        self.bump();
                    } else {
                        break;
                    }
                }
                MetricsFunction::QuantileOverTime(a, qs)
            }
            "compare" => {
                if self.peek().tok != Tok::LBrace {
                    return Err(self.unexpected("a spanset filter `{ … }`"));
                }
                let selection = self.spanset_filter()?;
                let (mut top_n, mut start, mut end) = (10, 0, 0);
                if self.peek().tok == Tok::Comma {
                    self.bump();
                    top_n = self.integer()?;
                    if self.peek().tok == Tok::Comma {
                        self.bump();
                        start = self.integer()?;
                        self.expect(Tok::Comma)?;
                        end = self.integer()?;
                    }
                }
                MetricsFunction::Compare {
                    selection,
                    top_n,
                    start,
                    end,
                }
            }
            other => {
                let a = self.attribute()?;
                match other {
                    "min_over_time" => MetricsFunction::MinOverTime(a),
                    "max_over_time" => MetricsFunction::MaxOverTime(a),
                    "avg_over_time" => MetricsFunction::AvgOverTime(a),
                    "sum_over_time" => MetricsFunction::SumOverTime(a),
                    _ => MetricsFunction::HistogramOverTime(a),
                }
            }
        };
        self.expect(Tok::RParen)?;
        let mut by = Vec::new();
        if !matches!(func, MetricsFunction::Compare { .. }) && self.peek().tok.is_word("by") {
            self.bump();
            by = self.attribute_list()?;
        }
        Ok(MetricsFirstStage {
            func,
            by,
            pos: Pos(t.start),
        })
    }

    fn integer(&mut self) -> PResult<i64> {
        match self.peek().tok {
            Tok::Int(i) => {
                self.bump();
                Ok(i)
            }
            _ => Err(self.unexpected("an integer")),
        }
    }

    /// `( attr, attr, … )` with at least one attribute.
    fn attribute_list(&mut self) -> PResult<Vec<Attribute>> {
        self.expect(Tok::LParen)?;
        let mut out = vec![self.attribute()?];
        while self.peek().tok == Tok::Comma {
            self.bump();
            out.push(self.attribute()?);
        }
        self.expect(Tok::RParen)?;
        Ok(out)
    }

    /// An intrinsic, scoped intrinsic or attribute (no expression).
    fn attribute(&mut self) -> PResult<Attribute> {
        let t = self.peek().clone();
        match &t.tok {
            Tok::Attribute {
                scope,
                parent,
                name,
            } => {
                self.bump();
                Ok(Attribute::Scoped {
                    scope: *scope,
                    parent: *parent,
                    name: name.clone(),
                })
            }
            Tok::Word(w) => match Intrinsic::from_unscoped(w) {
                Some(i) => {
                    self.bump();
                    Ok(Attribute::Intrinsic(i))
                }
                None => Err(self.unexpected("an attribute or intrinsic")),
            },
            Tok::ScopeColon(_) => self.scoped_intrinsic(),
            _ => Err(self.unexpected("an attribute or intrinsic")),
        }
    }

    fn scoped_intrinsic(&mut self) -> PResult<Attribute> {
        let t = self.bump();
        let Tok::ScopeColon(scope) = &t.tok else {
            return Err(self.err_at(t.start, "expected a scoped intrinsic"));
        };
        let n = self.peek().clone();
        match &n.tok {
            Tok::Word(w) => match Intrinsic::from_scoped(scope, w) {
                Some(i) => {
                    self.bump();
                    Ok(Attribute::Intrinsic(i))
                }
                None => Err(self.err_at(t.start, format!("unknown intrinsic `{scope}:{w}`"))),
            },
            _ => Err(self.unexpected(&format!("an intrinsic name after `{scope}:`"))),
        }
    }

    // ------------------------------------------------------------ in braces

    pub(crate) fn spanset_filter(&mut self) -> PResult<SpansetFilter> {
        let open = self.expect(Tok::LBrace)?;
        if self.peek().tok == Tok::RBrace {
            self.bump();
            return Ok(SpansetFilter {
                expr: FieldExpr::Static(Static::Bool(true)),
                pos: Pos(open.start),
            });
        }
        let (expr, _) = self.field_expr(0)?;
        self.expect(Tok::RBrace)?;
        Ok(SpansetFilter {
            expr,
            pos: Pos(open.start),
        })
    }

    /// Precedence climbing over field expressions; returns the tree and its depth.
    fn field_expr(&mut self, min_bp: usize) -> PResult<(FieldExpr, usize)> {
        let (mut lhs, mut depth) = self.field_prefix()?;
        loop {
            let t = self.peek().clone();
            let Some(op) = field_binop(&t.tok) else {
                break;
            };
            let level = op.level() as usize;
            let lbp = 2 * level;
            if lbp < min_bp {
                break;
            }
            self.bump();
            if op == BinaryOp::Eq && self.peek().tok.is_word("nil") {
                // Parsed so validation can say it is unsupported (use `!= nil`).
                self.bump();
                depth += 1;
                self.check_depth(depth, t.start)?;
                lhs = FieldExpr::Binary {
                    op,
                    lhs: Box::new(lhs),
                    rhs: Box::new(FieldExpr::Static(Static::Nil)),
                    pos: Pos(t.start),
                };
                continue;
            }
            if op == BinaryOp::Neq && self.peek().tok.is_word("nil") {
                self.bump();
                depth += 1;
                self.check_depth(depth, t.start)?;
                lhs = FieldExpr::Unary {
                    op: UnaryOp::Exists,
                    expr: Box::new(lhs),
                    pos: Pos(t.start),
                };
                continue;
            }
            self.enter()?;
            let rhs = self.field_expr(if op.is_right_assoc() { lbp } else { lbp + 1 });
            self.leave();
            let (rhs, rdepth) = rhs?;
            depth = depth.max(rdepth) + 1;
            self.check_depth(depth, t.start)?;
            lhs = FieldExpr::Binary {
                op,
                lhs: Box::new(lhs),
                rhs: Box::new(rhs),
                pos: Pos(t.start),
            };
        }
        Ok((lhs, depth))
    }

    fn field_prefix(&mut self) -> PResult<(FieldExpr, usize)> {
        let t = self.peek().clone();
        let leaf = |e: FieldExpr| Ok((e, 1));
        match &t.tok {
            Tok::LParen => {
                self.bump();
                self.enter()?;
                let inner = self.field_expr(0);
                self.leave();
                let inner = inner?;
                self.expect(Tok::RParen)?;
                Ok(inner)
            }
            Tok::Sub | Tok::Not => {
                self.bump();
                let (op, bp) = if t.tok == Tok::Sub {
                    (UnaryOp::Neg, 7)
                } else {
                    (UnaryOp::Not, 9)
                };
                self.enter()?;
                let operand = self.field_expr(bp);
                self.leave();
                let (operand, d) = operand?;
                self.check_depth(d + 1, t.start)?;
                Ok((
                    FieldExpr::Unary {
                        op,
                        expr: Box::new(operand),
                        pos: Pos(t.start),
                    },
                    d + 1,
                ))
            }
            Tok::Word(w) if w == "nil" => {
                self.bump();
                match self.peek().tok {
                    Tok::Eq => {
                        self.bump();
                        if !self.peek().tok.is_word("nil") {
                            return Err(
                                self.err_at(t.start, "`nil` may only be used as `x != nil`")
                            );
                        }
                        self.bump();
                        leaf(FieldExpr::Static(Static::Bool(false)))
                    }
                    Tok::Neq => {
                        let neq = self.bump();
                        if self.peek().tok.is_word("nil") {
                            self.bump();
                            return leaf(FieldExpr::Static(Static::Bool(false)));
                        }
                        self.enter()?;
                        let operand = self.field_expr(5);
                        self.leave();
                        let (operand, d) = operand?;
                        Ok((
                            FieldExpr::Unary {
                                op: UnaryOp::Exists,
                                expr: Box::new(operand),
                                pos: Pos(neq.start),
                            },
                            d + 1,
                        ))
                    }
                    _ => Err(self.err_at(t.start, "`nil` may only be used as `x != nil`")),
                }
            }
            Tok::Word(w) => {
                if let Some(s) = Static::from_word(w) {
                    self.bump();
                    return leaf(FieldExpr::Static(s));
                }
                if let Some(i) = Intrinsic::from_unscoped(w) {
                    self.bump();
                    return leaf(FieldExpr::Attribute(Attribute::Intrinsic(i)));
                }
                Err(self.err_at(
                    t.start,
                    format!(
                        "unexpected `{w}`: attributes need a scope (`.{w}`, `span.{w}`, `resource.{w}`) and intrinsics must be spelled exactly"
                    ),
                ))
            }
            Tok::Attribute { .. } | Tok::ScopeColon(_) => {
                let a = self.attribute()?;
                leaf(FieldExpr::Attribute(a))
            }
            Tok::Str(s) => {
                self.bump();
                leaf(FieldExpr::Static(Static::String(s.clone())))
            }
            Tok::Int(i) => {
                self.bump();
                leaf(FieldExpr::Static(Static::Int(*i)))
            }
            Tok::Float(f) => {
                self.bump();
                leaf(FieldExpr::Static(Static::Float(*f)))
            }
            Tok::Duration(d) => {
                self.bump();
                leaf(FieldExpr::Static(Static::Duration(*d)))
            }
            _ => Err(self.unexpected("a field expression")),
        }
    }
}

// ------------------------------------------------------------------ shaping

fn describe_node(n: &PNode) -> &'static str {
    match &n.node {
        Node::Filter(_) => "a spanset filter",
        Node::Lit { .. } => "a literal",
        Node::Aggregate(_) => "an aggregate",
        Node::By(_) => "by()",
        Node::Select(_) => "select()",
        Node::Coalesce => "coalesce()",
        Node::Metrics(_) => "a metrics function",
        Node::Second(_) => "topk()/bottomk()",
        Node::Binary { .. } => "an operation",
        Node::Paren(_) => "a parenthesised expression",
    }
}

/// Flatten a left-leaning chain of top-level `|` (parentheses stop it).
fn pipe_elements(n: &PNode) -> Vec<&PNode> {
    let mut out = Vec::new();
    let mut cur = n;
    while let Node::Binary {
        op: Tok::Pipe,
        lhs,
        rhs,
        ..
    } = &cur.node
    {
        out.push(&**rhs);
        cur = lhs;
    }
    out.push(cur);
    out.reverse();
    out
}

/// The metrics function an element starts with: `rate()` or `rate() > 10`.
fn metrics_head(e: &PNode) -> Option<&MetricsFirstStage> {
    match &e.node {
        Node::Metrics(m) => Some(m),
        Node::Binary { op, lhs, .. } if scalar_cmp(op).is_some() => match &lhs.node {
            Node::Metrics(m) => Some(m),
            _ => None,
        },
        _ => None,
    }
}

/// The number a metrics result is compared with (`> 10`, `< -0.5`).
fn metrics_filter(op: &Tok, op_pos: usize, rhs: &PNode) -> Shape<MetricsFilter> {
    let op = scalar_cmp(op).ok_or_else(|| {
        (
            op_pos,
            format!("`{}` is not a comparison on a metrics result", op.symbol()),
        )
    })?;
    match &rhs.node {
        Node::Lit { value, .. }
            if matches!(
                value,
                Static::Int(_) | Static::Float(_) | Static::Duration(_)
            ) =>
        {
            Ok(MetricsFilter {
                op,
                value: value.clone(),
                pos: Pos(op_pos),
            })
        }
        _ => Err((
            rhs.pos,
            format!(
                "a metrics result can only be compared with a number or a duration, found {}",
                describe_node(rhs)
            ),
        )),
    }
}

/// `element [op number]` → the element and its optional filter.
fn split_filter(e: &PNode) -> Shape<(&PNode, Option<MetricsFilter>)> {
    match &e.node {
        Node::Binary {
            op,
            op_pos,
            lhs,
            rhs,
            ..
        } if scalar_cmp(op).is_some() => Ok((lhs, Some(metrics_filter(op, *op_pos, rhs)?))),
        _ => Ok((e, None)),
    }
}

/// A `|` chain holding a metrics function: `pipeline | fn [filter] [| topk(n) [filter]]`.
/// `None` when no element is a metrics function.
fn shape_metrics_query(elems: &[&PNode]) -> Option<Shape<MetricsQuery>> {
    let mi = elems.iter().position(|e| metrics_head(e).is_some())?;
    Some((|| {
        let first = metrics_head(elems[mi])
            .cloned()
            .ok_or((elems[mi].pos, String::new()))?;
        if mi == 0 {
            return Err((
                elems[0].pos,
                "a metrics function must follow a spanset pipeline, e.g. `{ } | rate()`".into(),
            ));
        }
        let mut second_stages = Vec::new();
        if let (_, Some(f)) = split_filter(elems[mi])? {
            second_stages.push(MetricsStage::Filter(f));
        }
        second_stages.extend(shape_second_stages(&elems[mi + 1..])?);
        let pipeline = shape_pipeline(&elems[..mi])?;
        Ok(MetricsQuery {
            pipeline,
            first_stage: first,
            second_stages,
        })
    })())
}

/// The stages after a metrics result: `| topk(n)` or `| bottomk(n)`, each with an optional
/// comparison, as many as written.
fn shape_second_stages(elems: &[&PNode]) -> Shape<Vec<MetricsStage>> {
    let mut out = Vec::new();
    for s in elems {
        let (stage, filter) = split_filter(s)?;
        match &stage.node {
            Node::Second(l) => out.push(MetricsStage::Limit(l.clone())),
            _ => {
                return Err((
                    stage.pos,
                    format!(
                        "unexpected {} after a metrics function",
                        describe_node(stage)
                    ),
                ))
            }
        }
        if let Some(f) = filter {
            out.push(MetricsStage::Filter(f));
        }
    }
    Ok(out)
}

fn metrics_arith(t: &Tok) -> Option<BinaryOp> {
    arith(t).filter(|op| {
        matches!(
            op,
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div
        )
    })
}

/// An operand or operation of metrics arithmetic.
fn shape_metrics_expr(n: &PNode) -> Shape<MetricsExpr> {
    match &n.node {
        Node::Paren(x) => {
            let elems = pipe_elements(x);
            if elems.len() == 1 {
                let inner = shape_metrics_expr(x)?;
                if inner.queries().is_empty() {
                    // Constant arithmetic is not folded.
                    return Err((
                        n.pos,
                        "a parenthesised operand must hold a metrics query such as `({ } | rate())`"
                            .into(),
                    ));
                }
                return Ok(inner);
            }
            match shape_metrics_query(&elems) {
                Some(Ok(q)) => Ok(MetricsExpr::Query(Box::new(q))),
                Some(Err(e)) => Err(e),
                None => Err((
                    n.pos,
                    "expected a metrics query such as `({ } | rate())` or a number".into(),
                )),
            }
        }
        Node::Lit { value, .. } if matches!(value, Static::Int(_) | Static::Float(_)) => {
            Ok(MetricsExpr::Scalar(value.clone()))
        }
        Node::Binary {
            op,
            op_pos,
            lhs,
            rhs,
            ..
        } => match metrics_arith(op) {
            Some(a) => Ok(MetricsExpr::Op {
                op: a,
                lhs: Box::new(shape_metrics_expr(lhs)?),
                rhs: Box::new(shape_metrics_expr(rhs)?),
                pos: Pos(*op_pos),
            }),
            None => Err((
                *op_pos,
                format!(
                    "`{}` cannot combine metrics queries (use + - * /)",
                    op.symbol()
                ),
            )),
        },
        _ => Err((
            n.pos,
            format!(
                "expected a metrics query such as `({{ }} | rate())` or a number, found {}",
                describe_node(n)
            ),
        )),
    }
}

/// Whether a metrics function appears anywhere in the tree.
fn contains_metrics(n: &PNode) -> bool {
    match &n.node {
        Node::Metrics(_) | Node::Second(_) => true,
        Node::Binary { lhs, rhs, .. } => contains_metrics(lhs) || contains_metrics(rhs),
        Node::Paren(x) => contains_metrics(x),
        _ => false,
    }
}

/// `(q) op (q) … [cmp number]` with at least one operator and one metrics query.
fn shape_metrics_math(n: &PNode) -> Shape<MetricsMath> {
    let (arith_node, filter) = split_filter(n)?;
    if !matches!(&arith_node.node, Node::Binary { .. }) {
        return Err((
            arith_node.pos,
            format!("expected metrics arithmetic, found {}", describe_node(n)),
        ));
    }
    let expr = shape_metrics_expr(arith_node)?;
    if expr.queries().is_empty() {
        return Err((
            arith_node.pos,
            "metrics arithmetic needs at least one metrics query such as `({ } | rate())`".into(),
        ));
    }
    Ok(MetricsMath {
        expr,
        filter,
        stages: vec![],
    })
}

fn shape_root(n: &PNode) -> Shape<RootExpr> {
    let elems = pipe_elements(n);
    if elems.len() > 1 {
        if let Some(m) = shape_metrics_query(&elems) {
            return m.map(RootExpr::Metrics);
        }
        // Arithmetic followed by second stages: `(a) / (b) | topk(10)`.
        if contains_metrics(elems[0]) && !matches!(elems[0].node, Node::Paren(_)) {
            if let Ok(mut math) = shape_metrics_math(elems[0]) {
                math.stages = shape_second_stages(&elems[1..])?;
                return Ok(RootExpr::MetricsMath(math));
            }
        }
        return Ok(RootExpr::Pipeline(shape_pipeline(&elems)?));
    }
    // One parenthesised metrics query: `({ } | rate())`.
    if let Node::Paren(x) = &n.node {
        let inner = pipe_elements(x);
        if inner.len() > 1 {
            if let Some(m) = shape_metrics_query(&inner) {
                return m.map(RootExpr::Metrics);
            }
        }
    }
    if metrics_head(n).is_some() {
        return Err((
            n.pos,
            "a metrics function must follow a spanset pipeline, e.g. `{ } | rate()`".into(),
        ));
    }
    if let Node::Second(_) = &n.node {
        return Err((
            n.pos,
            "topk()/bottomk() must follow a metrics function".into(),
        ));
    }
    let as_stage = shape_stage(n, true).map(|s| RootExpr::Pipeline(Pipeline { stages: vec![s] }));
    if as_stage.is_ok() {
        return as_stage;
    }
    let as_math = shape_metrics_math(n).map(RootExpr::MetricsMath);
    if as_math.is_ok() || contains_metrics(n) {
        // No other root form may hold a metrics function: its error is the one to report.
        return as_math;
    }
    let as_pexpr = shape_pipeline_expr(n).map(RootExpr::PipelineExpr);
    let as_scalar = shape_scalar_pipeline_filter(n).map(RootExpr::ScalarPipelineFilter);
    further(further(further(as_stage, as_pexpr), as_scalar), as_math)
}

fn shape_pipeline(elems: &[&PNode]) -> Shape<Pipeline> {
    let mut stages = Vec::with_capacity(elems.len());
    for (i, e) in elems.iter().enumerate() {
        stages.push(shape_stage(e, i == 0)?);
    }
    Ok(Pipeline { stages })
}

fn shape_stage(n: &PNode, first: bool) -> Shape<Stage> {
    match &n.node {
        Node::By(e) => Ok(Stage::GroupBy {
            expr: e.clone(),
            pos: Pos(n.pos),
        }),
        Node::Select(a) => Ok(Stage::Select(a.clone())),
        Node::Coalesce if first => Err((n.pos, "a pipeline cannot start with coalesce()".into())),
        Node::Coalesce => Ok(Stage::Coalesce),
        Node::Aggregate(_) => Err((
            n.pos,
            "an aggregate must be compared with a value, e.g. `count() > 1`".into(),
        )),
        Node::Metrics(_) | Node::Second(_) => Err((
            n.pos,
            "metrics functions may only end a top-level pipeline".into(),
        )),
        Node::Lit { .. } => Err((
            n.pos,
            "unexpected literal, expected a spanset filter `{ … }` or pipeline stage".into(),
        )),
        _ => further(
            shape_spanset(n).map(Stage::Spanset),
            shape_scalar_filter(n).map(Stage::ScalarFilter),
        ),
    }
}

fn shape_spanset(n: &PNode) -> Shape<SpansetExpr> {
    match &n.node {
        Node::Filter(f) => Ok(SpansetExpr::Filter(f.clone())),
        Node::Paren(x) => shape_spanset(x),
        Node::Binary {
            op,
            op_pos,
            lhs,
            rhs,
            ..
        } => match spanset_op(op) {
            Some(sop) => Ok(SpansetExpr::Op {
                op: sop,
                lhs: Box::new(shape_spanset(lhs)?),
                rhs: Box::new(shape_spanset(rhs)?),
            }),
            None => Err((
                *op_pos,
                format!("`{}` cannot combine spansets", op.symbol()),
            )),
        },
        _ => Err((
            n.pos,
            format!("expected a spanset expression, found {}", describe_node(n)),
        )),
    }
}

fn shape_scalar_filter(n: &PNode) -> Shape<ScalarFilter> {
    match &n.node {
        Node::Binary {
            op,
            op_pos,
            lhs,
            rhs,
            ..
        } => match scalar_cmp(op) {
            Some(cmp) => Ok(ScalarFilter {
                op: cmp,
                lhs: shape_scalar(lhs)?,
                rhs: shape_scalar(rhs)?,
                pos: Pos(*op_pos),
            }),
            None => Err((
                *op_pos,
                format!("`{}` is not a scalar comparison", op.symbol()),
            )),
        },
        _ => Err((
            n.pos,
            format!("expected a scalar filter, found {}", describe_node(n)),
        )),
    }
}

fn shape_scalar(n: &PNode) -> Shape<ScalarExpr> {
    match &n.node {
        Node::Aggregate(a) => Ok(ScalarExpr::Aggregate(a.clone())),
        Node::Lit { value, .. } if is_numeric_lit(value) => Ok(ScalarExpr::Static(value.clone())),
        Node::Paren(x) => shape_scalar(x),
        Node::Binary {
            op,
            op_pos,
            lhs,
            rhs,
            ..
        } => match arith(op) {
            Some(a) => Ok(ScalarExpr::Op {
                op: a,
                lhs: Box::new(shape_scalar(lhs)?),
                rhs: Box::new(shape_scalar(rhs)?),
            }),
            None => Err((
                *op_pos,
                format!("unexpected `{}` in a scalar expression", op.symbol()),
            )),
        },
        _ => Err((
            n.pos,
            format!(
                "expected an aggregate or a number in a scalar filter, found {}",
                describe_node(n)
            ),
        )),
    }
}

fn shape_pipeline_expr(n: &PNode) -> Shape<PipelineExpr> {
    match &n.node {
        Node::Paren(x) => {
            let elems = pipe_elements(x);
            if elems.len() > 1 {
                return shape_pipeline(&elems).map(PipelineExpr::Wrapped);
            }
            shape_pipeline_expr(x).or_else(|e| {
                shape_stage(x, true)
                    .map(|s| PipelineExpr::Wrapped(Pipeline { stages: vec![s] }))
                    .map_err(|e2| if e2.0 > e.0 { e2 } else { e })
            })
        }
        Node::Binary {
            op,
            op_pos,
            lhs,
            rhs,
            ..
        } => match spanset_op(op) {
            Some(sop) => Ok(PipelineExpr::Op {
                op: sop,
                lhs: Box::new(shape_pipeline_expr(lhs)?),
                rhs: Box::new(shape_pipeline_expr(rhs)?),
            }),
            None => Err((
                *op_pos,
                format!("`{}` cannot combine pipelines", op.symbol()),
            )),
        },
        _ => Err((
            n.pos,
            format!(
                "expected a parenthesised pipeline, found {}",
                describe_node(n)
            ),
        )),
    }
}

fn shape_scalar_pipeline(n: &PNode) -> Shape<ScalarPipelineExpr> {
    match &n.node {
        Node::Paren(x) => {
            let elems = pipe_elements(x);
            if elems.len() > 1 {
                if let Some((last, rest)) = elems.split_last() {
                    if let Node::Aggregate(a) = &last.node {
                        return Ok(ScalarPipelineExpr::Pipeline {
                            pipeline: shape_pipeline(rest)?,
                            aggregate: a.clone(),
                        });
                    }
                    return Err((
                        last.pos,
                        "expected the pipeline to end in an aggregate".into(),
                    ));
                }
            }
            shape_scalar_pipeline(x)
        }
        Node::Binary {
            op,
            op_pos,
            lhs,
            rhs,
            ..
        } => match arith(op) {
            Some(a) => Ok(ScalarPipelineExpr::Op {
                op: a,
                lhs: Box::new(shape_scalar_pipeline(lhs)?),
                rhs: Box::new(shape_scalar_pipeline(rhs)?),
            }),
            None => Err((
                *op_pos,
                format!("unexpected `{}` in a scalar expression", op.symbol()),
            )),
        },
        _ => Err((
            n.pos,
            format!(
                "expected a parenthesised scalar pipeline, found {}",
                describe_node(n)
            ),
        )),
    }
}

fn shape_scalar_pipeline_filter(n: &PNode) -> Shape<ScalarPipelineFilter> {
    match &n.node {
        Node::Binary {
            op,
            op_pos,
            lhs,
            rhs,
            ..
        } => match scalar_cmp(op) {
            Some(cmp) => {
                let l = shape_scalar_pipeline(lhs)?;
                let r = match &rhs.node {
                    Node::Lit {
                        value,
                        negated: false,
                    } => ScalarPipelineExpr::Static(value.clone()),
                    _ => shape_scalar_pipeline(rhs)?,
                };
                Ok(ScalarPipelineFilter {
                    op: cmp,
                    lhs: l,
                    rhs: r,
                    pos: Pos(*op_pos),
                })
            }
            None => Err((
                *op_pos,
                format!("`{}` is not a scalar comparison", op.symbol()),
            )),
        },
        _ => Err((n.pos, format!("unexpected {}", describe_node(n)))),
    }
}
