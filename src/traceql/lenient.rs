//! Lenient helpers for the tag endpoints: pulling the safe `attribute op value` matchers out
//! of a possibly half-typed `{ … }` (Grafana sends the query being edited as `q`), and parsing
//! a tag name given in a URL path as one TraceQL identifier. Owns no grammar beyond reusing the
//! lexer and the field-expression parser; never fails loudly (the lenient path returns fewer
//! conditions instead).

use super::ast::*;
use super::error::{ParseError, TraceqlError};
use super::lexer::{tokenize, Tok, Token};
use super::parser::parse_field_tokens;
use super::validate::binary_types_valid;

/// The matchers that every span returned by `q` must satisfy, from its first `{ … }`.
///
/// Only conditions that are safe to AND together are returned: the `&&`-joined matchers after
/// the last top-level `||` operand (TraceQL reads `a || b && c` as `(a || b) && c`);
/// chunks that do not parse (the one being typed) or are not `attr op literal` are dropped.
/// Queries whose first filter is followed by anything but a pipeline or hints (e.g. `{a} >> {b}`)
/// give no conditions, as does anything unparsable.
pub fn parse_lenient_filters(q: &str) -> Vec<Condition> {
    let toks = tokenize(q);
    if toks.first().map(|t| &t.tok) != Some(&Tok::LBrace) {
        return Vec::new();
    }
    let mut inner: Vec<Token> = Vec::new();
    let mut closed_at = None;
    for (i, t) in toks.iter().enumerate().skip(1) {
        match t.tok {
            Tok::RBrace => {
                closed_at = Some(i);
                break;
            }
            Tok::LBrace | Tok::Error(_) | Tok::Eof => break,
            _ => inner.push(t.clone()),
        }
    }
    if let Some(i) = closed_at {
        match &toks[i + 1].tok {
            Tok::Eof | Tok::Pipe => {}
            Tok::Word(w) if w == "with" => {}
            _ => return Vec::new(),
        }
    }
    // Split on top-level `&&`/`||`. `&&` and `||` share one precedence level and associate to
    // the left, so only the chunks joined by `&&` after the last `||` are safe; the chunk right
    // after that `||` is one of its operands.
    let mut chunks: Vec<(bool, Vec<Token>)> = vec![(true, Vec::new())];
    let mut depth = 0i32;
    for t in inner {
        match t.tok {
            Tok::LParen => depth += 1,
            Tok::RParen => depth -= 1,
            Tok::And if depth == 0 => {
                chunks.push((true, Vec::new()));
                continue;
            }
            Tok::Or if depth == 0 => {
                chunks.clear();
                chunks.push((false, Vec::new()));
                continue;
            }
            _ => {}
        }
        if let Some((_, last)) = chunks.last_mut() {
            last.push(t);
        }
    }
    let mut out = Vec::new();
    for (safe, mut chunk) in chunks {
        if !safe || chunk.is_empty() {
            continue;
        }
        let end = chunk.last().map(|t| t.end).unwrap_or(0);
        chunk.push(Token {
            tok: Tok::Eof,
            start: end,
            end,
        });
        if let Ok(e) = parse_field_tokens(q, chunk) {
            collect_conditions(&e, &mut out);
        }
    }
    out
}

fn collect_conditions(e: &FieldExpr, out: &mut Vec<Condition>) {
    match e {
        FieldExpr::Binary {
            op: BinaryOp::And,
            lhs,
            rhs,
            ..
        } => {
            collect_conditions(lhs, out);
            collect_conditions(rhs, out);
        }
        FieldExpr::Binary { op, lhs, rhs, .. } if op.is_comparison() => {
            if let (FieldExpr::Attribute(a), FieldExpr::Static(v)) = (&**lhs, &**rhs) {
                let (at, vt) = (a.static_type(), v.static_type());
                let regex_ok = !matches!(op, BinaryOp::Re | BinaryOp::Nre)
                    || matches!(v, Static::String(s) if super::validate::check_regex(s).is_ok());
                if at.matches_operand(vt)
                    && binary_types_valid(*op, at)
                    && binary_types_valid(*op, vt)
                    && v != &Static::Nil
                    && regex_ok
                {
                    out.push(Condition {
                        attribute: a.clone(),
                        op: *op,
                        value: v.clone(),
                    });
                }
            }
        }
        FieldExpr::Unary {
            op: UnaryOp::Exists,
            expr,
            ..
        } => {
            if let FieldExpr::Attribute(a) = &**expr {
                out.push(Condition {
                    attribute: a.clone(),
                    op: BinaryOp::Neq,
                    value: Static::Nil,
                });
            }
        }
        _ => {}
    }
}

/// Parse one identifier as used in `/api/v2/search/tag/<name>/values`: `resource.x`, `span.x`,
/// `event.x`, `link.x`, `instrumentation.x`, `parent.x`, `.x`, a bare intrinsic (`name`,
/// `status`, …), a scoped intrinsic (`span:name`, …) or a quoted form (`span."a b"`).
pub fn parse_identifier(s: &str) -> Result<Attribute, TraceqlError> {
    let fail = |msg: &str| {
        TraceqlError::Parse(ParseError::new(
            s,
            0,
            format!("failed to parse identifier {s:?}: {msg}"),
        ))
    };
    let toks = tokenize(s);
    let kinds: Vec<&Tok> = toks.iter().map(|t| &t.tok).collect();
    match kinds.as_slice() {
        [Tok::Attribute {
            scope,
            parent,
            name,
        }, Tok::Eof] => Ok(Attribute::Scoped {
            scope: *scope,
            parent: *parent,
            name: name.clone(),
        }),
        [Tok::Word(w), Tok::Eof] => Intrinsic::from_unscoped(w)
            .map(Attribute::Intrinsic)
            .ok_or_else(|| {
                fail("not an intrinsic; attributes need a scope such as `span.` or `.`")
            }),
        [Tok::ScopeColon(scope), Tok::Word(w), Tok::Eof] => Intrinsic::from_scoped(scope, w)
            .map(Attribute::Intrinsic)
            .ok_or_else(|| fail("unknown scoped intrinsic")),
        [.., Tok::Error(m), Tok::Eof] => Err(fail(m)),
        _ => Err(fail("not a single attribute or intrinsic")),
    }
}
