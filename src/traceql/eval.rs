//! Evaluation of TraceQL field expressions against one span. The span is anything that can
//! answer "what is the value of this attribute" ([`SpanAttrs`]); this module knows nothing of
//! DeepFlow's rows or of stores.
//!
//! Semantics follow Tempo: a missing attribute is `nil` and makes every comparison false except
//! `!= nil`; numbers compare across int, float and duration; strings compare lexically and
//! match RE2 regexes; a text attribute compared with a number is read as a number when it
//! parses as one.

use super::ast::*;
use regex::Regex;
use std::collections::HashMap;

/// What a span answers for an attribute (`None` = nil).
pub trait SpanAttrs {
    fn attr(&self, attr: &Attribute) -> Option<Static>;
}

/// Compiled regexes of a query.
#[derive(Debug, Default)]
pub struct Evaluator {
    regexes: HashMap<String, Regex>,
}

impl Evaluator {
    /// Compile every regex of the query's filters (anchored as Tempo anchors them).
    pub fn new(filters: &[&SpansetFilter]) -> Result<Evaluator, String> {
        let mut regexes = HashMap::new();
        fn walk(e: &FieldExpr, out: &mut HashMap<String, Regex>) -> Result<(), String> {
            match e {
                FieldExpr::Binary { op, lhs, rhs, .. } => {
                    if matches!(op, BinaryOp::Re | BinaryOp::Nre) {
                        if let FieldExpr::Static(Static::String(p)) = &**rhs {
                            if !out.contains_key(p) {
                                let re = Regex::new(&format!("^(?:{p})$"))
                                    .map_err(|e| format!("invalid regex {p:?}: {e}"))?;
                                out.insert(p.clone(), re);
                            }
                        }
                    }
                    walk(lhs, out)?;
                    walk(rhs, out)
                }
                FieldExpr::Unary { expr, .. } => walk(expr, out),
                _ => Ok(()),
            }
        }
        for f in filters {
            walk(&f.expr, &mut regexes)?;
        }
        Ok(Evaluator { regexes })
    }

    /// Whether the span passes the filter.
    pub fn matches(&self, filter: &SpansetFilter, span: &dyn SpanAttrs) -> bool {
        matches!(self.eval(&filter.expr, span), Some(Static::Bool(true)))
    }

    /// The value of an expression on a span (`None` = nil).
    pub fn eval(&self, e: &FieldExpr, span: &dyn SpanAttrs) -> Option<Static> {
        match e {
            FieldExpr::Static(Static::Nil) => None,
            FieldExpr::Static(s) => Some(s.clone()),
            FieldExpr::Attribute(a) => span.attr(a),
            FieldExpr::Unary { op, expr, .. } => {
                let v = self.eval(expr, span);
                match op {
                    UnaryOp::Exists => Some(Static::Bool(v.is_some())),
                    UnaryOp::Not => match v? {
                        Static::Bool(b) => Some(Static::Bool(!b)),
                        _ => None,
                    },
                    UnaryOp::Neg => match v? {
                        Static::Int(i) => Some(Static::Int(-i)),
                        Static::Float(f) => Some(Static::Float(-f)),
                        Static::Duration(d) => Some(Static::Duration(-d)),
                        _ => None,
                    },
                }
            }
            FieldExpr::Binary { op, lhs, rhs, .. } => {
                match op {
                    BinaryOp::And => {
                        let l = matches!(self.eval(lhs, span), Some(Static::Bool(true)));
                        return Some(Static::Bool(
                            l && matches!(self.eval(rhs, span), Some(Static::Bool(true))),
                        ));
                    }
                    BinaryOp::Or => {
                        let l = matches!(self.eval(lhs, span), Some(Static::Bool(true)));
                        return Some(Static::Bool(
                            l || matches!(self.eval(rhs, span), Some(Static::Bool(true))),
                        ));
                    }
                    _ => {}
                }
                // `x != nil` / `x = nil`
                if let FieldExpr::Static(Static::Nil) = &**rhs {
                    let present = self.eval(lhs, span).is_some();
                    return match op {
                        BinaryOp::Neq => Some(Static::Bool(present)),
                        BinaryOp::Eq => Some(Static::Bool(!present)),
                        _ => Some(Static::Bool(false)),
                    };
                }
                let l = self.eval(lhs, span);
                let r = self.eval(rhs, span);
                if op.is_comparison() || matches!(op, BinaryOp::Re | BinaryOp::Nre) {
                    let (Some(l), Some(r)) = (l, r) else {
                        return Some(Static::Bool(false));
                    };
                    return Some(Static::Bool(self.compare(*op, &l, &r)));
                }
                arith(*op, &l?, &r?)
            }
        }
    }

    fn compare(&self, op: BinaryOp, l: &Static, r: &Static) -> bool {
        use std::cmp::Ordering;
        if let (BinaryOp::Re | BinaryOp::Nre, Static::String(s), Static::String(p)) = (op, l, r) {
            let hit = match self.regexes.get(p) {
                Some(re) => re.is_match(s),
                None => Regex::new(&format!("^(?:{p})$")).is_ok_and(|re| re.is_match(s)),
            };
            return (op == BinaryOp::Re) == hit;
        }
        let ord: Option<Ordering> = match (l, r) {
            (Static::String(a), Static::String(b)) => Some(a.cmp(b)),
            (Static::Bool(a), Static::Bool(b)) => Some(a.cmp(b)),
            (Static::Status(a), Static::Status(b)) => return eq_only(op, a == b),
            (Static::Kind(a), Static::Kind(b)) => return eq_only(op, a == b),
            (Static::String(s), n) | (n, Static::String(s)) if n.as_f64().is_some() => {
                // A text attribute holding a number compares as that number.
                let parsed = s.trim().parse::<f64>().ok();
                let (a, b) = if matches!(l, Static::String(_)) {
                    (parsed, n.as_f64())
                } else {
                    (n.as_f64(), parsed)
                };
                match (a, b) {
                    (Some(a), Some(b)) => a.partial_cmp(&b),
                    _ => return op == BinaryOp::Neq,
                }
            }
            (a, b) => match (a.as_f64(), b.as_f64()) {
                (Some(x), Some(y)) => x.partial_cmp(&y),
                _ => return op == BinaryOp::Neq,
            },
        };
        let Some(ord) = ord else { return false };
        match op {
            BinaryOp::Eq => ord == Ordering::Equal,
            BinaryOp::Neq => ord != Ordering::Equal,
            BinaryOp::Lt => ord == Ordering::Less,
            BinaryOp::Lte => ord != Ordering::Greater,
            BinaryOp::Gt => ord == Ordering::Greater,
            BinaryOp::Gte => ord != Ordering::Less,
            _ => false,
        }
    }
}

fn eq_only(op: BinaryOp, equal: bool) -> bool {
    match op {
        BinaryOp::Eq => equal,
        BinaryOp::Neq => !equal,
        _ => false,
    }
}

fn arith(op: BinaryOp, l: &Static, r: &Static) -> Option<Static> {
    let both_int = matches!((l, r), (Static::Int(_), Static::Int(_)));
    let dur = matches!(l, Static::Duration(_)) || matches!(r, Static::Duration(_));
    let (a, b) = (l.as_f64()?, r.as_f64()?);
    let v = match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => {
            if b == 0.0 {
                return None;
            }
            a / b
        }
        BinaryOp::Mod => {
            if b == 0.0 {
                return None;
            }
            a % b
        }
        BinaryOp::Pow => a.powf(b),
        _ => return None,
    };
    Some(if dur {
        Static::Duration(v as i64)
    } else if both_int && op != BinaryOp::Div && op != BinaryOp::Pow {
        Static::Int(v as i64)
    } else {
        Static::Float(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct S(Vec<(&'static str, Static)>);
    impl SpanAttrs for S {
        fn attr(&self, a: &Attribute) -> Option<Static> {
            let key = match a {
                Attribute::Intrinsic(i) => i.as_str().to_string(),
                Attribute::Scoped { name, .. } => name.clone(),
            };
            self.0
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.clone())
        }
    }

    fn check(q: &str, span: &S) -> bool {
        let query = crate::traceql::parse(q).unwrap();
        let filters = query.spanset_filters();
        let ev = Evaluator::new(&filters).unwrap();
        ev.matches(filters[0], span)
    }

    #[test]
    fn filters_evaluate_like_tempo() {
        let s = S(vec![
            ("service.name", Static::String("frontend".into())),
            ("duration", Static::Duration(150_000_000)),
            ("status", Static::Status(Status::Error)),
            ("kind", Static::Kind(Kind::Server)),
            ("http.status_code", Static::Int(503)),
            ("tenant", Static::String("42".into())),
        ]);
        for (q, want) in [
            ("{}", true),
            ("{resource.service.name = \"frontend\"}", true),
            ("{resource.service.name != \"frontend\"}", false),
            ("{resource.service.name =~ \"front.*\"}", true),
            ("{resource.service.name =~ \"front\"}", false),
            ("{resource.service.name !~ \"back.*\"}", true),
            ("{duration > 100ms && duration <= 2s}", true),
            ("{duration > 1s || status = error}", true),
            ("{status = ok}", false),
            ("{kind = server && span.http.status_code >= 500}", true),
            ("{span.tenant = 42}", true),
            ("{span.tenant > 40}", true),
            ("{span.missing = \"x\"}", false),
            ("{span.missing != \"x\"}", false),
            ("{span.missing != nil}", false),
            ("{span.tenant != nil}", true),
            ("{span.http.status_code - 3 = 500}", true),
            ("{!(status = ok)}", true),
        ] {
            assert_eq!(check(q, &s), want, "{q}");
        }
    }
}
