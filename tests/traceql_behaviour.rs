//! TraceQL front-end behaviour beyond accept/reject: error positions and wording, canonical
//! printing, the query accessors the executor uses, lenient filter extraction for tag values,
//! and tag-name identifier parsing.

use deepflow_tempo::traceql::{
    parse, parse_identifier, parse_lenient_filters, parse_unvalidated, Attribute, BinaryOp,
    Condition, Intrinsic, MetricsExpr, MetricsFunction, MetricsStage, RootExpr, Scope,
    SecondStageKind, Static, Status, TraceqlError,
};

fn parse_err(q: &str) -> (usize, usize, String) {
    match parse(q) {
        Err(TraceqlError::Parse(e)) => (e.line, e.col, e.to_string()),
        other => panic!("{q:?}: expected a parse error, got {other:?}"),
    }
}

#[test]
fn parse_error_positions() {
    let cases: &[(&str, usize, usize, &str)] = &[
        ("{ .a = 1 ", 1, 10, "unexpected end of query, expected `}`"),
        ("{ .attribute == 4 }", 1, 15, "unexpected `=`"),
        ("{ status = error } | count = 1", 1, 28, "expected `(`"),
        ("{\n  .a = \"x\n}", 2, 8, "string literal not terminated"),
        ("{ span:foo = 1 }", 1, 3, "unknown intrinsic `span:foo`"),
        ("{ true } + { true }", 1, 10, "`+`"),
        ("{ .a = 99999999999999999999 }", 1, 8, "out of range"),
        (
            "{ } | rate() | topk(5) | rate()",
            1,
            26,
            "after a metrics function",
        ),
        ("{ bartag = 0 }", 1, 3, "attributes need a scope"),
        ("{ .a = 1 } { .b = 2 }", 1, 12, "expected end of query"),
        ("{ .a = nil }  ", 1, 1, ""),
    ];
    for (q, line, col, needle) in cases {
        if needle.is_empty() {
            continue; // parses (validation concern), listed to document the nil rule
        }
        let (l, c, msg) = parse_err(q);
        assert_eq!((l, c), (*line, *col), "{q:?}: {msg}");
        assert!(msg.contains(needle), "{q:?}: {msg:?} lacks {needle:?}");
        assert!(
            msg.starts_with(&format!("parse error at line {line}, col {col}: ")),
            "{msg}"
        );
    }
}

#[test]
fn validation_and_unsupported_errors_are_distinct() {
    match parse("{ 1 = \"a\" }") {
        Err(TraceqlError::Validation(e)) => {
            assert_eq!(e.position.map(|p| (p.1, p.2)), Some((1, 5)));
            let msg = e.to_string();
            assert!(msg.starts_with("invalid query at line 1, col 5: "), "{msg}");
            assert!(msg.contains("same type"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    match parse("{ } | quantile_over_time(duration, 1.5)") {
        Err(TraceqlError::Validation(e)) => {
            assert!(
                e.to_string().contains("quantile must be between 0 and 1"),
                "{e}"
            )
        }
        other => panic!("{other:?}"),
    }
    match parse("{ parent.a = 1 }") {
        Err(e @ TraceqlError::Unsupported(_)) => {
            assert!(e.is_unsupported());
            assert_eq!(e.to_string(), "parent not yet supported");
        }
        other => panic!("{other:?}"),
    }
    let e = parse("{").unwrap_err();
    assert!(e.is_parse() && !e.is_validation());
    // Every message is lowercase at the start.
    for q in ["{", "{ 1 = \"a\" }", "{ parent }", "{ } | rate() | topk(0)"] {
        let msg = parse(q).unwrap_err().to_string();
        assert!(msg.starts_with(|c: char| c.is_lowercase()), "{msg}");
    }
}

#[test]
fn canonical_printing() {
    let cases = [
        (
            "{resource.service.name=\"frontend\" && status=error}",
            "{ resource.service.name = \"frontend\" && status = error }",
        ),
        ("{}", "{ true }"),
        ("{duration>1500ms}", "{ duration > 1.5s }"),
        ("{ duration > 2h30m }", "{ duration > 2h30m0s }"),
        (
            "{span:name=\"x\" && trace:duration>1s}",
            "{ name = \"x\" && traceDuration > 1s }",
        ),
        ("{ span.\"a b\" = `x\"y` }", "{ span.\"a b\" = \"x\\\"y\" }"),
        ("{ (.a + .b) * 2 > 1 }", "{ (.a + .b) * 2 > 1 }"),
        ("{ .a + .b * 2 > 1 }", "{ .a + .b * 2 > 1 }"),
        ("{ !(.a = 1) }", "{ !(.a = 1) }"),
        ("{ .a != nil }", "{ .a != nil }"),
        ("{ nil != .a }", "{ .a != nil }"),
        (
            "{ .a = 1 || (.b = 2 && .c = 3) }",
            "{ .a = 1 || (.b = 2 && .c = 3) }",
        ),
        ("{ .a } && ({ .b } >> { .c })", "{ .a } && { .b } >> { .c }"),
        (
            "({ .a } && { .b }) >> { .c }",
            "({ .a } && { .b }) >> { .c }",
        ),
        (
            "{} | rate() by(resource.service.name) | topk(5)",
            "{ true } | rate() by (resource.service.name) | topk(5)",
        ),
        (
            "{} | quantile_over_time(duration, .5, 1) with(sample=true)",
            "{ true } | quantile_over_time(duration, 0.5, 1.0) with(sample=true)",
        ),
        (
            "{} | compare({status=error})",
            "{ true } | compare({ status = error }, 10, 0, 0)",
        ),
        ("{ } | count() > -1", "{ true } | count() > -1"),
        ("({ .a } | count()) > 2", "({ .a } | count()) > 2"),
        ("{}|rate()>10", "{ true } | rate() > 10"),
        (
            "{} | rate() by (name) >= 1.5 | topk(3) < 100",
            "{ true } | rate() by (name) >= 1.5 | topk(3) < 100",
        ),
        (
            "({status=error}|rate())/({}|rate())*100",
            "({ status = error } | rate()) / ({ true } | rate()) * 100",
        ),
        (
            "(({} | rate()) + ({} | rate())) * 2",
            "(({ true } | rate()) + ({ true } | rate())) * 2",
        ),
        (
            "({} | rate()) - (({} | rate()) - 1)",
            "({ true } | rate()) - (({ true } | rate()) - 1)",
        ),
        (
            "({} | rate()) / ({} | rate()) > 0.5 with(sample=0.1)",
            "({ true } | rate()) / ({ true } | rate()) > 0.5 with(sample=0.1)",
        ),
        ("{ span:childCount > 2 }", "{ childCount > 2 }"),
    ];
    for (q, want) in cases {
        let got = parse_unvalidated(q)
            .unwrap_or_else(|e| panic!("{q}: {e}"))
            .to_string();
        assert_eq!(got, want, "{q}");
    }
}

#[test]
fn accessors() {
    let q = parse("{ .a = 1 } >> { .b = 2 } | by(resource.service.name) with(most_recent=true)")
        .unwrap();
    assert!(!q.is_metrics());
    assert!(q.most_recent());
    assert_eq!(q.spanset_filters().len(), 2);
    assert_eq!(q.hint("most_recent"), Some(&Static::Bool(true)));
    assert!(q.pipeline().is_some());

    let m = parse(
        "{ status = error } | quantile_over_time(duration, 0.5, 0.9) by (resource.service.name)",
    )
    .unwrap();
    assert!(m.is_metrics());
    assert!(!m.most_recent());
    let mq = m.metrics().unwrap();
    assert_eq!(
        mq.first_stage.func,
        MetricsFunction::QuantileOverTime(
            Attribute::Intrinsic(Intrinsic::Duration),
            vec![0.5, 0.9]
        )
    );
    assert_eq!(
        mq.first_stage.by,
        vec![Attribute::scoped(Scope::Resource, "service.name")]
    );
    assert_eq!(m.spanset_filters().len(), 1);

    let p = parse("({ .a } | count() > 1) && ({ .b })").unwrap();
    assert_eq!(p.spanset_filters().len(), 2);
    assert!(p.pipeline().is_none());

    let f = parse("{ .a = 1 }").unwrap();
    assert!(matches!(
        parse("{ } with(most_recent=false)").map(|q| q.most_recent()),
        Ok(false)
    ));
    assert_eq!(f.spanset_filters()[0].expr.attributes().len(), 1);
}

fn cond(attribute: Attribute, op: BinaryOp, value: Static) -> Condition {
    Condition {
        attribute,
        op,
        value,
    }
}

#[test]
fn lenient_filters() {
    let svc = || Attribute::scoped(Scope::Resource, "service.name");
    let method = || Attribute::scoped(Scope::Span, "http.method");
    let frontend = || Static::String("frontend".into());
    assert_eq!(
        parse_lenient_filters("{resource.service.name=\"frontend\" && span.http.method=\"GET\"}"),
        vec![
            cond(svc(), BinaryOp::Eq, frontend()),
            cond(method(), BinaryOp::Eq, Static::String("GET".into()))
        ]
    );
    // Being typed: the unfinished matcher is dropped.
    for partial in [
        "{resource.service.name=\"frontend\" && span.http.method=",
        "{resource.service.name=\"frontend\" && span.http.method=\"GE",
        "{resource.service.name=\"frontend\" && span.http.",
        "{resource.service.name=\"frontend\" && ",
        "{ resource.service.name = \"frontend\" && span.http.method = \"GET\" ||",
        "{resource.service.name=\"frontend\"",
        "{resource.service.name=\"frontend\"} | rate()",
        "{resource.service.name=\"frontend\"} with(most_recent=true)",
    ] {
        let got = parse_lenient_filters(partial);
        if partial.contains("||") {
            assert!(got.is_empty(), "{partial}: {got:?}");
        } else {
            assert_eq!(
                got,
                vec![cond(svc(), BinaryOp::Eq, frontend())],
                "{partial}"
            );
        }
    }
    assert_eq!(
        parse_lenient_filters("{ status = error && kind = server && duration > 100ms }").len(),
        3
    );
    assert_eq!(
        parse_lenient_filters("{ status = error }"),
        vec![cond(
            Attribute::Intrinsic(Intrinsic::Status),
            BinaryOp::Eq,
            Static::Status(Status::Error)
        )]
    );
    assert_eq!(
        parse_lenient_filters("{ .a = \"x\" || .b = \"y\" && .c = 1 }"),
        vec![cond(
            Attribute::scoped(Scope::None, "c"),
            BinaryOp::Eq,
            Static::Int(1)
        )]
    );
    assert_eq!(
        parse_lenient_filters("{ (.a = \"x\" || .a = \"y\") && .b = 2 }"),
        vec![cond(
            Attribute::scoped(Scope::None, "b"),
            BinaryOp::Eq,
            Static::Int(2)
        )]
    );
    assert_eq!(
        parse_lenient_filters("{ (.a = \"x\" && .c = 3) && .b = 2 }").len(),
        3
    );
    assert_eq!(
        parse_lenient_filters("{ .a != nil }"),
        vec![cond(
            Attribute::scoped(Scope::None, "a"),
            BinaryOp::Neq,
            Static::Nil
        )]
    );
    assert_eq!(
        parse_lenient_filters("{ span.http.status_code >= 500 && "),
        vec![cond(
            Attribute::scoped(Scope::Span, "http.status_code"),
            BinaryOp::Gte,
            Static::Int(500)
        )]
    );
    for nothing in [
        "",
        "garbage",
        "{}",
        "{ }",
        "{ status = \"error\" }",
        "{ .a =~ \"[\" }",
        "{ .a = 1 } >> { .b = 2 }",
        "{ .a = \"x\" || .b = \"y\" }",
        "({ .a = 1 })",
        "{ 1 = .a }",
        "{ .a = 1 + 2 }",
        "{ .a && .b }",
        "{ count() > 1 }",
    ] {
        assert!(parse_lenient_filters(nothing).is_empty(), "{nothing:?}");
    }
}

#[test]
fn identifiers() {
    let ok: &[(&str, Attribute)] = &[
        (
            "resource.service.name",
            Attribute::scoped(Scope::Resource, "service.name"),
        ),
        (
            "span.http.method",
            Attribute::scoped(Scope::Span, "http.method"),
        ),
        (
            "event.exception.message",
            Attribute::scoped(Scope::Event, "exception.message"),
        ),
        ("link.foo", Attribute::scoped(Scope::Link, "foo")),
        (
            "instrumentation.foo",
            Attribute::scoped(Scope::Instrumentation, "foo"),
        ),
        (".foo", Attribute::scoped(Scope::None, "foo")),
        (
            ".foo/bar:baz",
            Attribute::scoped(Scope::None, "foo/bar:baz"),
        ),
        ("span.\"a b\"", Attribute::scoped(Scope::Span, "a b")),
        (
            "span.\"a=b,c(d)\"",
            Attribute::scoped(Scope::Span, "a=b,c(d)"),
        ),
        (
            "resource.\"\u{1f600}\"",
            Attribute::scoped(Scope::Resource, "\u{1f600}"),
        ),
        ("name", Attribute::Intrinsic(Intrinsic::Name)),
        ("status", Attribute::Intrinsic(Intrinsic::Status)),
        ("kind", Attribute::Intrinsic(Intrinsic::Kind)),
        ("duration", Attribute::Intrinsic(Intrinsic::Duration)),
        (
            "traceDuration",
            Attribute::Intrinsic(Intrinsic::TraceDuration),
        ),
        (
            "rootServiceName",
            Attribute::Intrinsic(Intrinsic::TraceRootService),
        ),
        ("span:name", Attribute::Intrinsic(Intrinsic::Name)),
        ("span:status", Attribute::Intrinsic(Intrinsic::Status)),
        (
            "trace:rootService",
            Attribute::Intrinsic(Intrinsic::TraceRootService),
        ),
        ("event:name", Attribute::Intrinsic(Intrinsic::EventName)),
        ("link:traceID", Attribute::Intrinsic(Intrinsic::LinkTraceId)),
        (
            "instrumentation:version",
            Attribute::Intrinsic(Intrinsic::InstrumentationVersion),
        ),
        (
            "parent.span.x",
            Attribute::Scoped {
                scope: Scope::Span,
                parent: true,
                name: "x".into(),
            },
        ),
    ];
    for (s, want) in ok {
        assert_eq!(parse_identifier(s).as_ref(), Ok(want), "{s}");
        // The identifier prints back to something that parses to the same attribute.
        assert_eq!(
            parse_identifier(&want.to_string()).as_ref(),
            Ok(want),
            "{s}"
        );
    }
    for bad in [
        "",
        "foo",
        "span",
        "span.",
        ".",
        "span:foo",
        "trace:name",
        "resource.a b",
        "{.a}",
        "span.a = 1",
        "span.\"unterminated",
        "1",
        "\"quoted\"",
        "true",
        "error",
    ] {
        let e = parse_identifier(bad).unwrap_err();
        assert!(e.is_parse(), "{bad}: {e:?}");
        assert!(e.to_string().contains("failed to parse identifier"), "{e}");
    }
}

/// Tempo's precedence table: `&&` and `||` are one level (left-assoc), unary `-` binds like
/// binary `-`, unary `!` between `+` and `*`, `^` is right-assoc.
#[test]
fn precedence_follows_tempo() {
    use deepflow_tempo::traceql::{FieldExpr, RootExpr, SpansetExpr, SpansetOp, Stage, UnaryOp};
    let filter = |q: &str| -> FieldExpr {
        let parsed = parse_unvalidated(q).unwrap();
        match parsed.root {
            RootExpr::Pipeline(p) => match &p.stages[0] {
                Stage::Spanset(SpansetExpr::Filter(f)) => f.expr.clone(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    };
    let top = |e: &FieldExpr| match e {
        FieldExpr::Binary { op, lhs, .. } => (Some(*op), lhs.to_string()),
        FieldExpr::Unary { op, expr, .. } => (
            Some(match op {
                UnaryOp::Neg => BinaryOp::Sub,
                UnaryOp::Not => BinaryOp::Or,
                UnaryOp::Exists => BinaryOp::Neq,
            }),
            expr.to_string(),
        ),
        _ => (None, String::new()),
    };
    // (a || b) && c
    assert_eq!(
        top(&filter("{ .a || .b && .c }")),
        (Some(BinaryOp::And), ".a || .b".into())
    );
    // (a && b) || c
    assert_eq!(
        top(&filter("{ .a && .b || .c }")),
        (Some(BinaryOp::Or), ".a && .b".into())
    );
    // -(a * 2): unary minus is looser than `*`
    assert_eq!(top(&filter("{ -.a * 2 = 1 }")).0, Some(BinaryOp::Eq));
    match filter("{ -.a * 2 = 1 }") {
        FieldExpr::Binary { lhs, .. } => assert!(matches!(
            *lhs,
            FieldExpr::Unary {
                op: UnaryOp::Neg,
                ..
            }
        )),
        other => panic!("{other:?}"),
    }
    // (!a) = b
    assert_eq!(
        top(&filter("{ !.a = true }")),
        (Some(BinaryOp::Eq), "!.a".into())
    );
    // 2 ^ (3 ^ 2)
    match filter("{ 2 ^ 3 ^ 2 = 1 }") {
        FieldExpr::Binary { lhs, .. } => assert_eq!(lhs.to_string(), "2 ^ 3 ^ 2"),
        other => panic!("{other:?}"),
    }
    // Between spansets: structural operators bind tighter than && / ||.
    let q = parse_unvalidated("{ .a } && { .b } >> { .c }").unwrap();
    match q.root {
        RootExpr::Pipeline(p) => match &p.stages[0] {
            Stage::Spanset(SpansetExpr::Op { op, .. }) => assert_eq!(*op, SpansetOp::And),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

#[test]
fn metrics_second_stages_in_order() {
    let q = parse("{ } | rate() by (name) > 1 | bottomk(5) <= 100").unwrap();
    let m = q.metrics().unwrap();
    assert_eq!(m.second_stages.len(), 3);
    assert!(
        matches!(&m.second_stages[0], MetricsStage::Filter(f) if f.op == BinaryOp::Gt && f.value == Static::Int(1))
    );
    assert!(
        matches!(&m.second_stages[1], MetricsStage::Limit(l) if l.kind == SecondStageKind::BottomK && l.limit == 5)
    );
    assert!(matches!(&m.second_stages[2], MetricsStage::Filter(f) if f.op == BinaryOp::Lte));
    assert_eq!(m.limit().map(|l| l.limit), Some(5));
    let filters: Vec<_> = m.filters().collect();
    assert_eq!(filters.len(), 2);
    assert!(filters[0].keeps(1.5) && !filters[0].keeps(1.0));
    assert!(filters[1].keeps(100.0) && !filters[1].keeps(100.5));
    assert_eq!(q.metrics_queries().len(), 1);

    let neg = parse("{ } | count_over_time() != -2.5").unwrap();
    let f = neg.metrics().unwrap().filters().next().unwrap().clone();
    assert_eq!(f.value, Static::Float(-2.5));
    assert_eq!(f.threshold(), -2.5);
}

#[test]
fn metrics_arithmetic_follows_tempo_precedence() {
    // `*` and `/` bind tighter than `+` and `-`; all are left-associative.
    let q = parse("({ .a } | rate()) + ({ .b } | rate()) * 100 - 1").unwrap();
    assert!(q.is_metrics());
    assert!(q.metrics().is_none());
    assert!(q.pipeline().is_none());
    let math = q.metrics_math().unwrap();
    assert!(math.filter.is_none());
    let MetricsExpr::Op { op, lhs, rhs, .. } = &math.expr else {
        panic!("expected an operation: {:?}", math.expr);
    };
    assert_eq!(*op, BinaryOp::Sub);
    assert_eq!(**rhs, MetricsExpr::Scalar(Static::Int(1)));
    let MetricsExpr::Op { op, lhs, rhs, .. } = &**lhs else {
        panic!("expected an operation: {lhs:?}");
    };
    assert_eq!(*op, BinaryOp::Add);
    assert!(matches!(&**lhs, MetricsExpr::Query(_)));
    let MetricsExpr::Op {
        op, rhs: hundred, ..
    } = &**rhs
    else {
        panic!("expected an operation: {rhs:?}");
    };
    assert_eq!(*op, BinaryOp::Mul);
    assert_eq!(**hundred, MetricsExpr::Scalar(Static::Int(100)));

    let leaves = q.metrics_queries();
    assert_eq!(leaves.len(), 2);
    assert_eq!(leaves[0].first_stage.func, MetricsFunction::Rate);
    assert_eq!(q.spanset_filters().len(), 2);

    let cmp = parse("({} | rate()) / ({} | count_over_time()) >= 0.25").unwrap();
    let RootExpr::MetricsMath(m) = &cmp.root else {
        panic!("expected metrics arithmetic");
    };
    let f = m.filter.as_ref().unwrap();
    assert_eq!(
        (f.op, f.value.clone()),
        (BinaryOp::Gte, Static::Float(0.25))
    );
}

#[test]
fn metrics_arithmetic_errors() {
    for (q, needle) in [
        ("({} | rate()) % 2", "cannot combine metrics queries"),
        (
            "({} | rate() | count() > 1) / ({} | rate())",
            "after a metrics function",
        ),
        (
            "({} | rate()) / ({} | rate()) > \"a\"",
            "compared with a number",
        ),
        (
            "{} | rate() > \"1s\"",
            "compared with a number or a duration",
        ),
    ] {
        let (_, _, msg) = parse_err(q);
        assert!(msg.contains(needle), "{q}: {msg}");
    }
    // Validation applies to every operand.
    assert!(matches!(
        parse("({} | rate()) / ({} | quantile_over_time(duration, 2))"),
        Err(TraceqlError::Validation(_))
    ));
}
