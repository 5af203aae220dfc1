//! Static checks on a parsed query, following the rules Tempo applies after parsing: operand
//! types must agree, operators must suit their types, filters must be boolean, aggregates and
//! `by()` must read the span, metrics arguments must be in range, hint values must have the
//! right type, regular expressions must compile; every operand of metrics arithmetic is checked
//! like a metrics query of its own. Constructs Tempo parses but refuses
//! (`parent`, `childCount`, `= nil`, scalar filters other than `aggregate op literal`) are
//! reported as `Unsupported`. Owns no parsing; never changes the tree.

use super::ast::*;
use super::error::{line_col, TraceqlError, UnsupportedError, ValidationError};

/// Most `by()` attributes a metrics function may group by.
pub const MAX_GROUP_BYS: usize = 5;

type VResult = Result<(), TraceqlError>;

struct Validator<'a> {
    src: &'a str,
}

fn unsupported(feature: impl Into<String>) -> TraceqlError {
    TraceqlError::Unsupported(UnsupportedError {
        feature: feature.into(),
    })
}

/// Check a parsed query; `src` is the query text, used to place errors.
pub fn validate(q: &Query, src: &str) -> VResult {
    let v = Validator { src };
    match &q.root {
        RootExpr::Pipeline(p) => v.pipeline(p)?,
        RootExpr::PipelineExpr(e) => v.pipeline_expr(e)?,
        RootExpr::ScalarPipelineFilter(f) => v.scalar_pipeline_filter(f)?,
        RootExpr::Metrics(m) => v.metrics(m)?,
        RootExpr::MetricsMath(m) => {
            for q in m.expr.queries() {
                if let MetricsFunction::Compare { .. } = q.first_stage.func {
                    return Err(v.invalid(
                        Some(q.first_stage.pos),
                        "compare() cannot take part in metrics arithmetic",
                    ));
                }
                v.metrics(q)?;
            }
            v.limits(&m.stages)?;
        }
    }
    for h in &q.hints {
        v.hint(h)?;
    }
    Ok(())
}

/// The largest `topN` `compare()` takes.
pub const MAX_COMPARE_TOP_N: i64 = 1000;

impl Validator<'_> {
    /// Every `topk(n)`/`bottomk(n)` keeps at least one series.
    fn limits(&self, stages: &[MetricsStage]) -> VResult {
        for stage in stages {
            if let MetricsStage::Limit(s) = stage {
                if s.limit <= 0 {
                    return Err(
                        self.invalid(Some(s.pos), format!("{s}: limit must be greater than 0"))
                    );
                }
            }
        }
        Ok(())
    }

    fn invalid(&self, pos: Option<Pos>, message: impl Into<String>) -> TraceqlError {
        let position = pos.map(|Pos(o)| {
            let (l, c) = line_col(self.src, o);
            (o, l, c)
        });
        TraceqlError::Validation(ValidationError {
            message: message.into(),
            position,
        })
    }

    fn pipeline(&self, p: &Pipeline) -> VResult {
        for s in &p.stages {
            match s {
                Stage::Spanset(e) => self.spanset(e)?,
                Stage::ScalarFilter(f) => self.scalar_filter(f)?,
                Stage::GroupBy { expr, pos } => {
                    if !expr.references_span() {
                        return Err(self.invalid(
                            Some(*pos),
                            format!("grouping field expressions must reference the span: {s}"),
                        ));
                    }
                    self.field(expr)?;
                }
                Stage::Coalesce => {}
                Stage::Select(attrs) => {
                    for a in attrs {
                        self.attribute(a)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn spanset(&self, e: &SpansetExpr) -> VResult {
        match e {
            SpansetExpr::Filter(f) => self.filter(f),
            SpansetExpr::Op { lhs, rhs, .. } => {
                self.spanset(lhs)?;
                self.spanset(rhs)
            }
        }
    }

    fn filter(&self, f: &SpansetFilter) -> VResult {
        self.field(&f.expr)?;
        match f.expr.implied_type() {
            StaticType::Bool | StaticType::Attribute => Ok(()),
            t => Err(self.invalid(
                Some(f.pos),
                format!(
                    "span filter field expressions must resolve to a boolean, not {}: {f}",
                    t.as_str()
                ),
            )),
        }
    }

    fn attribute(&self, a: &Attribute) -> VResult {
        match a {
            Attribute::Scoped { parent: true, .. } => Err(unsupported("parent")),
            Attribute::Intrinsic(i @ (Intrinsic::Parent | Intrinsic::ChildCount)) => {
                Err(unsupported(format!("intrinsic ({})", i.as_str())))
            }
            _ => Ok(()),
        }
    }

    fn field(&self, e: &FieldExpr) -> VResult {
        match e {
            FieldExpr::Static(_) => Ok(()),
            FieldExpr::Attribute(a) => self.attribute(a),
            FieldExpr::Binary { op, lhs, rhs, pos } => {
                self.field(lhs)?;
                self.field(rhs)?;
                let (lt, rt) = (lhs.implied_type(), rhs.implied_type());
                if !lt.matches_operand(rt) {
                    return Err(self.invalid(
                        Some(*pos),
                        format!(
                            "binary operations must operate on the same type ({} and {}): {e}",
                            lt.as_str(),
                            rt.as_str()
                        ),
                    ));
                }
                if rt == StaticType::Nil && *op == BinaryOp::Eq {
                    return Err(unsupported(
                        "comparing with `= nil` (use `!= nil` for existence)",
                    ));
                }
                if !binary_types_valid(*op, lt) || !binary_types_valid(*op, rt) {
                    return Err(self.invalid(
                        Some(*pos),
                        format!("illegal operation for the given types: {e}"),
                    ));
                }
                if matches!(op, BinaryOp::Re | BinaryOp::Nre) {
                    if let FieldExpr::Static(Static::String(re)) = &**rhs {
                        if let Err(why) = check_regex(re) {
                            return Err(
                                self.invalid(Some(*pos), format!("invalid regex {re:?}: {why}"))
                            );
                        }
                    }
                }
                Ok(())
            }
            FieldExpr::Unary { op, expr, pos } => {
                self.field(expr)?;
                let t = expr.implied_type();
                let ok = t == StaticType::Attribute
                    || match op {
                        UnaryOp::Neg => t.is_numeric(),
                        UnaryOp::Not => t == StaticType::Bool,
                        UnaryOp::Exists => true,
                    };
                if ok {
                    Ok(())
                } else {
                    Err(self.invalid(
                        Some(*pos),
                        format!("illegal operation for the given type ({}): {e}", t.as_str()),
                    ))
                }
            }
        }
    }

    fn aggregate(&self, a: &Aggregate) -> VResult {
        let Some(arg) = &a.arg else {
            return Ok(());
        };
        self.field(arg)?;
        let t = arg.implied_type();
        if t != StaticType::Attribute && !t.is_numeric() {
            return Err(self.invalid(
                Some(a.pos),
                format!("aggregate field expressions must resolve to a number type: {a}"),
            ));
        }
        if !arg.references_span() {
            return Err(self.invalid(
                Some(a.pos),
                format!("aggregate field expressions must reference the span: {a}"),
            ));
        }
        Ok(())
    }

    fn scalar(&self, e: &ScalarExpr) -> VResult {
        match e {
            ScalarExpr::Aggregate(a) => self.aggregate(a),
            ScalarExpr::Static(_) => Ok(()),
            ScalarExpr::Op { op, lhs, rhs } => {
                self.scalar(lhs)?;
                self.scalar(rhs)?;
                self.operand_types(*op, lhs.implied_type(), rhs.implied_type(), None, || {
                    e.to_string()
                })
            }
        }
    }

    fn operand_types(
        &self,
        op: BinaryOp,
        lt: StaticType,
        rt: StaticType,
        pos: Option<Pos>,
        text: impl Fn() -> String,
    ) -> VResult {
        if !lt.matches_operand(rt) {
            return Err(self.invalid(
                pos,
                format!(
                    "binary operations must operate on the same type ({} and {}): {}",
                    lt.as_str(),
                    rt.as_str(),
                    text()
                ),
            ));
        }
        if !binary_types_valid(op, lt) || !binary_types_valid(op, rt) {
            return Err(self.invalid(
                pos,
                format!("illegal operation for the given types: {}", text()),
            ));
        }
        Ok(())
    }

    fn scalar_filter(&self, f: &ScalarFilter) -> VResult {
        self.scalar(&f.lhs)?;
        self.scalar(&f.rhs)?;
        self.operand_types(
            f.op,
            f.lhs.implied_type(),
            f.rhs.implied_type(),
            Some(f.pos),
            || f.to_string(),
        )?;
        if !matches!(f.lhs, ScalarExpr::Aggregate(_)) {
            return Err(unsupported(format!(
                "scalar filter with a left-hand side other than one aggregate ({})",
                f.lhs
            )));
        }
        if !matches!(f.rhs, ScalarExpr::Static(_)) {
            return Err(unsupported(format!(
                "scalar filter with a right-hand side other than a literal ({})",
                f.rhs
            )));
        }
        Ok(())
    }

    fn pipeline_expr(&self, e: &PipelineExpr) -> VResult {
        match e {
            PipelineExpr::Wrapped(p) => self.pipeline(p),
            PipelineExpr::Op { lhs, rhs, .. } => {
                self.pipeline_expr(lhs)?;
                self.pipeline_expr(rhs)
            }
        }
    }

    fn scalar_pipeline(&self, e: &ScalarPipelineExpr) -> VResult {
        match e {
            ScalarPipelineExpr::Pipeline {
                pipeline,
                aggregate,
            } => {
                self.pipeline(pipeline)?;
                self.aggregate(aggregate)
            }
            ScalarPipelineExpr::Static(_) => Ok(()),
            ScalarPipelineExpr::Op { op, lhs, rhs } => {
                self.scalar_pipeline(lhs)?;
                self.scalar_pipeline(rhs)?;
                self.operand_types(*op, lhs.implied_type(), rhs.implied_type(), None, || {
                    e.to_string()
                })
            }
        }
    }

    fn scalar_pipeline_filter(&self, f: &ScalarPipelineFilter) -> VResult {
        self.scalar_pipeline(&f.lhs)?;
        self.scalar_pipeline(&f.rhs)?;
        self.operand_types(
            f.op,
            f.lhs.implied_type(),
            f.rhs.implied_type(),
            Some(f.pos),
            || f.to_string(),
        )?;
        Err(unsupported("scalar filters over parenthesised pipelines"))
    }

    fn metrics(&self, m: &MetricsQuery) -> VResult {
        self.pipeline(&m.pipeline)?;
        let first = &m.first_stage;
        for a in &first.by {
            self.attribute(a)?;
        }
        let reserve_bucket = matches!(
            first.func,
            MetricsFunction::QuantileOverTime(..) | MetricsFunction::HistogramOverTime(_)
        );
        let limit = if reserve_bucket {
            MAX_GROUP_BYS - 1
        } else {
            MAX_GROUP_BYS
        };
        if first.by.len() > limit {
            return Err(unsupported(format!(
                "metrics group by {} values",
                first.by.len()
            )));
        }
        if let Some(a) = first.func.attribute() {
            self.attribute(a)?;
            let t = a.static_type();
            if t != StaticType::Attribute && !t.is_numeric() {
                return Err(self.invalid(
                    Some(first.pos),
                    format!(
                        "{}() needs a numeric attribute, {a} is a {}",
                        first.func.name(),
                        t.as_str()
                    ),
                ));
            }
        }
        match &first.func {
            MetricsFunction::QuantileOverTime(_, qs) => {
                if let Some(q) = qs.iter().find(|q| !(0.0..=1.0).contains(*q)) {
                    return Err(self.invalid(
                        Some(first.pos),
                        format!("quantile must be between 0 and 1: {q}"),
                    ));
                }
            }
            MetricsFunction::Compare {
                selection,
                top_n,
                start,
                end,
            } => {
                self.filter(selection)?;
                if !(1..=MAX_COMPARE_TOP_N).contains(top_n) {
                    return Err(self.invalid(
                        Some(first.pos),
                        format!(
                            "compare() topN must be between 1 and {MAX_COMPARE_TOP_N}: {top_n}"
                        ),
                    ));
                }
                if (*start != 0 || *end != 0) && !(*start > 0 && end > start) {
                    return Err(self.invalid(
                        Some(first.pos),
                        "compare() timestamps must be positive integer unix nanoseconds with start before end",
                    ));
                }
                if !m.second_stages.is_empty() {
                    return Err(self.invalid(
                        Some(first.pos),
                        "compare() cannot be followed by topk(), bottomk() or a comparison",
                    ));
                }
            }
            _ => {}
        }
        self.limits(&m.second_stages)?;
        Ok(())
    }

    fn hint(&self, h: &Hint) -> VResult {
        let ok = match h.name.as_str() {
            HINT_MOST_RECENT => matches!(h.value, Static::Bool(_)),
            HINT_SAMPLE => match &h.value {
                Static::Bool(_) => true,
                v => {
                    v.as_f64().is_some_and(|f| f > 0.0 && f <= 1.0)
                        && !matches!(v, Static::Duration(_))
                }
            },
            HINT_EXEMPLARS => matches!(h.value, Static::Bool(_) | Static::Int(0..)),
            _ => true,
        };
        if ok {
            Ok(())
        } else {
            let want = match h.name.as_str() {
                HINT_MOST_RECENT => "true or false",
                HINT_SAMPLE => "true, false or a number in (0, 1]",
                _ => "true, false or a non-negative integer",
            };
            Err(self.invalid(
                Some(h.pos),
                format!("hint {} must be {want}, got {}", h.name, h.value),
            ))
        }
    }
}

/// Whether `op` accepts an operand of type `t` (Tempo's operator/type table; strings may
/// also be ordered with `< <= > >=`).
pub fn binary_types_valid(op: BinaryOp, t: StaticType) -> bool {
    use BinaryOp::*;
    match t {
        StaticType::Attribute => true,
        StaticType::Bool => matches!(op, And | Or | Eq | Neq),
        StaticType::Int | StaticType::Float | StaticType::Duration => matches!(
            op,
            Add | Sub | Mul | Div | Mod | Pow | Eq | Neq | Gt | Gte | Lt | Lte
        ),
        StaticType::String => matches!(op, Eq | Neq | Re | Nre | Gt | Gte | Lt | Lte),
        StaticType::Nil | StaticType::Status | StaticType::Kind => matches!(op, Eq | Neq),
        StaticType::Spanset => false,
    }
}

/// A syntax check for RE2 (Go `regexp`) patterns: balanced groups and classes, valid escapes,
/// repetition operators with something to repeat, no nested repetition, sane `{n,m}` counts.
/// It accepts what Go accepts in all common cases; the executor compiles the real thing.
pub fn check_regex(p: &str) -> Result<(), String> {
    let c: Vec<char> = p.chars().collect();
    let n = c.len();
    let mut i = 0;
    let mut depth = 0usize;
    let mut can_repeat = false;
    // 0: last item not a repetition, 1: after a repetition, 2: after a lazy repetition
    let mut rep = 0u8;
    while i < n {
        let ch = c[i];
        match ch {
            '\\' => {
                i += 1;
                if i >= n {
                    return Err("trailing backslash at end of expression".into());
                }
                let e = c[i];
                match e {
                    '1'..='9' => return Err(format!("invalid escape sequence: \\{e}")),
                    'p' | 'P' | 'x' => {
                        if i + 1 < n && c[i + 1] == '{' {
                            match c[i + 1..].iter().position(|&x| x == '}') {
                                Some(j) => i += j + 1,
                                None => return Err(format!("invalid escape sequence: \\{e}")),
                            }
                        } else if e == 'x' {
                            if i + 2 >= n
                                || !c[i + 1].is_ascii_hexdigit()
                                || !c[i + 2].is_ascii_hexdigit()
                            {
                                return Err("invalid escape sequence: \\x".into());
                            }
                            i += 2;
                        } else {
                            if i + 1 >= n {
                                return Err(format!("invalid character class range: \\{e}"));
                            }
                            i += 1;
                        }
                    }
                    'Q' => {
                        let rest: String = c[i + 1..].iter().collect();
                        match rest.find("\\E") {
                            Some(j) => i += rest[..j].chars().count() + 2,
                            None => i = n - 1,
                        }
                    }
                    'a' | 'f' | 't' | 'n' | 'r' | 'v' | 'd' | 'D' | 's' | 'S' | 'w' | 'W' | 'b'
                    | 'B' | 'A' | 'z' | '0' => {}
                    e if e.is_ascii_alphanumeric() => {
                        return Err(format!("invalid escape sequence: \\{e}"))
                    }
                    _ => {}
                }
                can_repeat = true;
                rep = 0;
            }
            '(' => {
                if i + 1 < n && c[i + 1] == '?' {
                    // (?:…) (?flags) (?flags:…) (?P<name>…) (?<name>…)
                    let mut j = i + 2;
                    if j < n && (c[j] == 'P' || c[j] == '<') {
                        if c[j] == 'P' {
                            j += 1;
                        }
                        if j >= n || c[j] != '<' {
                            return Err("invalid named capture".into());
                        }
                        match c[j..].iter().position(|&x| x == '>') {
                            Some(k) if k > 1 => {
                                i = j + k;
                                depth += 1;
                                can_repeat = false;
                                rep = 0;
                                i += 1;
                                continue;
                            }
                            _ => return Err("invalid named capture".into()),
                        }
                    }
                    while j < n && matches!(c[j], 'i' | 'm' | 's' | 'U' | '-') {
                        j += 1;
                    }
                    match c.get(j) {
                        Some(':') => {
                            depth += 1;
                            i = j;
                        }
                        Some(')') if j > i + 2 => {
                            i = j;
                            i += 1;
                            continue;
                        }
                        _ => return Err("invalid or unsupported Perl syntax".into()),
                    }
                } else {
                    depth += 1;
                }
                can_repeat = false;
                rep = 0;
            }
            ')' => {
                if depth == 0 {
                    return Err("unexpected )".into());
                }
                depth -= 1;
                can_repeat = true;
                rep = 0;
            }
            '[' => {
                let mut j = i + 1;
                if j < n && c[j] == '^' {
                    j += 1;
                }
                let mut first = true;
                let mut prev: Option<char> = None;
                loop {
                    if j >= n {
                        return Err("missing closing ]".into());
                    }
                    let x = c[j];
                    if x == ']' && !first {
                        break;
                    }
                    first = false;
                    if x == '[' && j + 1 < n && c[j + 1] == ':' {
                        let rest: String = c[j..].iter().collect();
                        if let Some(k) = rest.find(":]") {
                            j += rest[..k].chars().count() + 2;
                            prev = None;
                            continue;
                        }
                    }
                    let lit = if x == '\\' {
                        j += 1;
                        if j >= n {
                            return Err("missing closing ]".into());
                        }
                        if c[j].is_ascii_alphabetic() {
                            None
                        } else {
                            Some(c[j])
                        }
                    } else {
                        Some(x)
                    };
                    if x == '-' && prev.is_some() && j + 1 < n && c[j + 1] != ']' {
                        let lo = prev.unwrap_or('\0');
                        let mut hi = c[j + 1];
                        j += 1;
                        if hi == '\\' && j + 1 < n {
                            j += 1;
                            hi = c[j];
                        }
                        if hi < lo {
                            return Err(format!("invalid character class range: {lo}-{hi}"));
                        }
                        prev = None;
                        j += 1;
                        continue;
                    }
                    prev = lit;
                    j += 1;
                }
                i = j;
                can_repeat = true;
                rep = 0;
            }
            '*' | '+' | '?' => {
                if !can_repeat {
                    return Err(format!("missing argument to repetition operator: {ch}"));
                }
                rep = match (rep, ch) {
                    (0, _) => 1,
                    (1, '?') => 2,
                    _ => return Err(format!("invalid nested repetition operator: {ch}")),
                };
            }
            '{' => {
                let rest: String = c[i + 1..].iter().collect();
                let counted = rest.find('}').and_then(|k| {
                    let body = &rest[..k];
                    let (lo, hi) = match body.split_once(',') {
                        Some((a, b)) => (a, Some(b)),
                        None => (body, None),
                    };
                    let lo: u32 = lo.parse().ok().filter(|_| !lo.is_empty())?;
                    let hi: Option<Option<u32>> = match hi {
                        None => Some(Some(lo)),
                        Some("") => Some(None),
                        Some(h) if h.bytes().all(|b| b.is_ascii_digit()) => {
                            h.parse().ok().map(Some)
                        }
                        Some(_) => None,
                    };
                    Some((lo, hi?, body.chars().count()))
                });
                match counted {
                    Some((lo, hi, len)) => {
                        if lo > 1000 || hi.is_some_and(|h| h > 1000 || h < lo) {
                            return Err("invalid repeat count".into());
                        }
                        if !can_repeat {
                            return Err("missing argument to repetition operator: {".into());
                        }
                        rep = match rep {
                            0 => 1,
                            _ => return Err("invalid nested repetition operator: {".into()),
                        };
                        i += len + 1;
                    }
                    None => {
                        can_repeat = true;
                        rep = 0;
                    }
                }
            }
            '|' => {
                can_repeat = false;
                rep = 0;
            }
            _ => {
                can_repeat = true;
                rep = 0;
            }
        }
        i += 1;
    }
    if depth > 0 {
        return Err("missing closing )".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_regex;

    #[test]
    fn regex_syntax() {
        for ok in [
            "",
            ".*",
            "a|b",
            "^GET /api/(users|orders)$",
            "[a-z0-9_-]+",
            "a*?",
            "x{2,5}",
            "(?i)foo",
            "(?:a|b)+",
            "(?P<x>a)",
            "\\d+\\.\\d+",
            "[[:alpha:]]",
            "a{",
            "\\p{Greek}",
            "frontend|cart\\.svc",
        ] {
            assert!(check_regex(ok).is_ok(), "{ok}: {:?}", check_regex(ok));
        }
        for bad in [
            "[", "(", ")", "*a", "a**", "a\\", "[z-a]", "\\1", "(?<", "a{3,2}", "\\y", "(?=x)",
        ] {
            assert!(check_regex(bad).is_err(), "{bad}");
        }
    }
}
