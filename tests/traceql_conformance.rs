//! TraceQL conformance: every query is marked valid, parse error, validation error or
//! unsupported (parses, validation refuses it as Tempo does). Sources: Tempo's own example
//! corpus, stored verbatim as `tests/data/tempo_test_examples.yaml` (lists `valid`,
//! `parse_fails`, `validate_fails`, `unsupported`, `dump`), the TraceQL documentation, and
//! every query shape stock Grafana generates (spec tempo-api.md §5.3). Also checks that every
//! parsable query round-trips through its canonical printing.

use std::collections::BTreeMap;

use deepflow_tempo::traceql::{parse, parse_unvalidated, TraceqlError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Parses and validates.
    Valid,
    /// Syntax error.
    Parse,
    /// Parses; validation rejects it.
    Invalid,
    /// Parses; validation reports "not yet supported" (as Tempo does).
    Unsupported,
    /// Parses (Tempo's `dump` list: parsed and printed, validation not consulted).
    Parses,
}

use Expect::*;

const TEMPO_CORPUS: &str = include_str!("data/tempo_test_examples.yaml");

/// What each list of Tempo's corpus asserts about its queries.
fn list_expectation(list: &str) -> Expect {
    match list {
        "valid" => Valid,
        "parse_fails" => Parse,
        "validate_fails" => Invalid,
        "unsupported" => Unsupported,
        "dump" => Parses,
        other => panic!("tempo corpus has an unknown list {other:?}; give it a verdict here"),
    }
}

/// Every entry of every list of Tempo's corpus, in file order, with its list name.
fn tempo_cases() -> Vec<(String, String, Expect)> {
    let doc: serde_yaml::Mapping =
        serde_yaml::from_str(TEMPO_CORPUS).expect("tempo corpus is valid yaml");
    let mut out = Vec::new();
    for (key, value) in doc {
        let list = key.as_str().expect("list names are strings").to_string();
        let want = list_expectation(&list);
        let entries = match value {
            serde_yaml::Value::Null => Vec::new(),
            serde_yaml::Value::Sequence(s) => s,
            other => panic!("list {list:?} is not a sequence: {other:?}"),
        };
        for e in entries {
            let q = e.as_str().expect("entries are strings").to_string();
            out.push((list.clone(), q, want));
        }
    }
    out
}

/// Every query shape stock Grafana (10.x–12.x) generates: search builder, ad-hoc filters,
/// service graph links, and the hand-written constructs listed in spec §5.3.
const GRAFANA: &[(&str, Expect)] = &[
    ("{}", Valid),
    ("{resource.service.name=\"frontend\" && name=\"GET /api\" && status=error && duration>100ms && duration<=2s}", Valid),
    ("{resource.service.name=\"frontend\"}", Valid),
    ("{name=\"GET /api\"}", Valid),
    ("{status=error}", Valid),
    ("{status=ok}", Valid),
    ("{status=unset}", Valid),
    ("{status!=error}", Valid),
    ("{duration>100ms}", Valid),
    ("{duration>=100ms && duration<1.5s}", Valid),
    ("{duration<=2m}", Valid),
    ("{traceDuration>100ms}", Valid),
    ("{traceDuration>100ms && traceDuration<2s}", Valid),
    ("{(resource.service.name=\"a\" || resource.service.name=\"b\")}", Valid),
    ("{(resource.service.name=\"a\" || resource.service.name=\"b\") && status=error}", Valid),
    ("{(resource.service.name!=\"a\" || resource.service.name!=\"b\")}", Valid),
    ("{resource.service.name=~\"a|b\"}", Valid),
    ("{resource.service.name!~\"a|b\"}", Valid),
    ("{resource.service.name=~\"frontend\\\\.svc|cart\"}", Valid),
    ("{name=~\"GET /api/.*\"}", Valid),
    ("{span.http.status_code>=500}", Valid),
    ("{span.http.status_code>=500 && span.http.status_code<600}", Valid),
    ("{resource.k8s.namespace.name=\"x\"}", Valid),
    ("{.footag=1234}", Valid),
    ("{.footag=\"bar\"}", Valid),
    ("{.bartag=0}", Valid),
    ("{span.bartag=0}", Valid),
    ("{bartag=0}", Parse),
    ("{event.exception.message=\"boom\"}", Valid),
    ("{link.foo=\"bar\"}", Valid),
    ("{instrumentation.name=\"io.opentelemetry\"}", Valid),
    ("{span:kind=server && span:status=error}", Valid),
    ("{span:name=\"GET /api\"}", Valid),
    ("{span:duration>100ms}", Valid),
    ("{trace:rootService=\"frontend\"}", Valid),
    ("{trace:duration>1s}", Valid),
    ("{kind=server}", Valid),
    ("{kind=client}", Valid),
    ("{kind=producer}", Valid),
    ("{kind=unspecified}", Valid),
    ("{span.flag=true}", Valid),
    ("{span.ratio=0.5}", Valid),
    ("{rootServiceName=\"frontend\" && rootName=\"GET /\"}", Valid),
    ("{statusMessage=\"deadline exceeded\"}", Valid),
    ("{span.db.name=\"X\" || span.db.system=\"X\" || span.peer.service=\"X\" || span.messaging.system=\"X\" || span.net.peer.name=\"X\"}", Valid),
    ("{resource.service.name=\"frontend\"} | select(span.http.url, span.http.method)", Valid),
    ("{} | select(span.http.url, resource.service.name, status)", Valid),
    ("{status=error} | by(resource.service.name)", Valid),
    ("{} | by(resource.service.name) | count() > 2", Valid),
    ("{} | count() > 2", Valid),
    ("{status=error} | avg(duration) > 1s", Valid),
    ("{} | min(duration) > 10ms", Valid),
    ("{} | max(duration) < 5s", Valid),
    ("{} | sum(duration) >= 1m", Valid),
    ("{resource.service.name=\"frontend\"} >> {status=error}", Valid),
    ("{resource.service.name=\"frontend\"} > {resource.service.name=\"cart\"}", Valid),
    ("{span.http.method=\"GET\"} ~ {span.http.method=\"POST\"}", Valid),
    ("{resource.service.name=\"a\"} && {resource.service.name=\"b\"}", Valid),
    ("{resource.service.name=\"a\"} || {resource.service.name=\"b\"}", Valid),
    ("{} with(most_recent=true)", Valid),
    ("{status=error} with(most_recent=true)", Valid),
    ("{resource.service.name=\"frontend\"} | rate() by(resource.service.name)", Valid),
    ("{} | rate() by (resource.service.name)", Valid),
    ("{status=error} | count_over_time()", Valid),
    ("{} | count_over_time() by (resource.service.name)", Valid),
    ("{} | quantile_over_time(duration, 0.5, 0.9, 0.99) by (resource.service.name)", Valid),
    ("{} | quantile_over_time(duration, .99)", Valid),
    ("{} | histogram_over_time(duration)", Valid),
    ("{} | histogram_over_time(duration) by (span.http.route)", Valid),
    ("{} | avg_over_time(span.x)", Valid),
    ("{} | min_over_time(span.x)", Valid),
    ("{} | max_over_time(span.x)", Valid),
    ("{} | sum_over_time(span.x)", Valid),
    ("{} | compare({status=error})", Valid),
    ("{resource.service.name=\"frontend\"} | compare({status=error}, 10)", Valid),
    ("{} | compare({status=error}, 5, 1700000000000000000, 1700003600000000000)", Valid),
    ("{} | rate() by (resource.service.name) | topk(10)", Valid),
    ("{} | count_over_time() by (span.http.route) | bottomk(5)", Valid),
    ("{} | rate() with(sample=true)", Valid),
    ("{} | rate() by (resource.service.name) with(sample=0.1, exemplars=true)", Valid),
];

/// From the TraceQL documentation and the language's corners: lexing of names, numbers,
/// durations and strings, precedence, nil checks, metrics argument rules, hints.
const DOCS_AND_EDGES: &[(&str, Expect)] = &[
    ("{ resource.service.name = \"frontend\" }", Valid),
    ("{ span.http.method = \"GET\" && span.http.status_code >= 500 }", Valid),
    ("{ .http.status_code >= 400 && .http.status_code < 500 }", Valid),
    ("{ span.http.url = \"/path/of/api\" } >> { span.db.system = \"postgresql\" }", Valid),
    ("{ span.http.status_code = 200 } | count() > 3", Valid),
    ("{ name = \"HTTP GET\" } | avg(duration) > 20ms", Valid),
    ("{ status = error } | by(resource.service.name) | count() > 1", Valid),
    ("{ resource.cloud.region = \"us-east-1\" } ~ { resource.cloud.region = \"us-west-1\" }", Valid),
    ("{ span.http.url =~ \"/api/v1/.*\" }", Valid),
    ("{ event.exception.message =~ \".*timeout.*\" }", Valid),
    ("{ span.\"http status\" = 200 }", Valid),
    ("{ .\"attribute with spaces\" = \"x\" }", Valid),
    ("{ resource.\"k8s pod\" = \"x\" && span.\"a\\\"quote\" = 1 }", Valid),
    ("{ span.foo\"bar baz\".qux = 1 }", Valid),
    ("{ .foo-bar/baz:qux@1#2 = 1 }", Valid),
    ("{ span.http.route = \"/api/{id}\" }", Valid),
    ("{ resource.service.name != nil }", Valid),
    ("{ nil != resource.service.name }", Valid),
    ("{ span.x != nil && resource.y = \"z\" }", Valid),
    ("{ nil != nil }", Valid),
    ("{ nil = nil }", Valid),
    ("{ span.a + span.b > 3 }", Valid),
    ("{ -span.x > -3 }", Valid),
    ("{ !(span.a = 1) }", Valid),
    ("{ .a = 1 || .b = 2 && .c = 3 }", Valid),
    ("{ 2 ^ 3 ^ 2 = 512 }", Valid),
    ("{ .a % 2 = 0 }", Valid),
    ("{ duration > 1.5s }", Valid),
    ("{ duration > 2h30m }", Valid),
    ("{ duration > 1d }", Valid),
    ("{ duration > 1w }", Valid),
    ("{ duration > 100us }", Valid),
    ("{ duration > 100\u{b5}s }", Valid),
    ("{ duration > 5ns }", Valid),
    ("{ duration > 0.5ms }", Valid),
    ("{ span.x = 1e3 }", Valid),
    ("{ span.x = .5 }", Valid),
    ("{ span.x > 1.5e-3 }", Valid),
    ("{ .x = \"\\u00e9\\t\\\"\\\\\" }", Valid),
    ("{ .x = `raw \\d+ \"quoted\"` }", Valid),
    ("{ .x =~ `\\d+` }", Valid),
    ("{ .x = \"caf\u{e9} \u{1f600}\" }", Valid),
    ("{ .a = 1 } // trailing comment", Valid),
    ("/* leading */ { .a = 1 }", Valid),
    ("{\n  resource.service.name = \"a\"\n  && status = error\n}", Valid),
    ("{ span:parentID = \"0000000000000000\" }", Valid),
    ("{ span: name = \"x\" }", Valid),
    ("{ status = error && kind = server && duration > 1s }", Valid),
    ("({ status = error }) && ({ kind = server })", Valid),
    ("(({ .a } && { .b }) >> { .c })", Valid),
    ("{ .a } && { .b } >> { .c } || { .d }", Valid),
    ("{ .a } | { .b } | { .c } | count() > 1 | by(.d) | coalesce() | select(.e)", Valid),
    ("{ } | count() > -1", Valid),
    ("{ } | max(duration) > -1s", Valid),
    ("{ } | (count()) > 1", Valid),
    ("{ } | avg(span.size * 2) >= 1.5", Valid),
    ("{ } | count() = 1 with(most_recent=false)", Valid),
    ("{ } with(most_recent=true) with(sample=0.5)", Valid),
    ("{ } with(custom_hint=\"whatever\", other=1h)", Valid),
    ("{ } | rate() by (resource.service.name, span.http.route, name, status, kind)", Valid),
    ("{ } | rate() by (event:name)", Valid),
    ("{ } | quantile_over_time(span:duration, 0.5)", Valid),
    ("{ } | quantile_over_time(duration, 0.5) by (resource.a, resource.b, resource.c, resource.d)", Valid),
    ("{ } | histogram_over_time(event:timeSinceStart)", Valid),
    ("{ } | avg_over_time(nestedSetLeft)", Valid),
    ("{ status = error } >> { } | rate() by (resource.service.name)", Valid),
    ("{ } | by(resource.service.name) | rate()", Valid),
    ("{ } | select(span:id, trace:id, link:traceID, instrumentation:version)", Valid),
    ("{ .a } !~ { .b } &~ { .c }", Valid),
    // parse errors
    ("", Parse),
    ("   ", Parse),
    ("{", Parse),
    ("}", Parse),
    ("{ status = error", Parse),
    ("{ .a = \"unterminated }", Parse),
    ("{ .a = 'single' }", Parse),
    ("{ .a = 0x10 }", Parse),
    ("{ .a = 1..2 }", Parse),
    ("{ .a = 99999999999999999999 }", Parse),
    ("{ resource. = 1 }", Parse),
    ("{ span.\"unterminated = 1 }", Parse),
    ("{ span.\"bad\\escape\" = 1 }", Parse),
    ("{ .a = \"bad\\qescape\" }", Parse),
    ("{ nil }", Parse),
    ("{ .a > nil }", Parse),
    ("{ !nil }", Parse),
    ("{ nil = .a }", Parse),
    ("{ count() > 1 }", Parse),
    ("{ min(duration) > 1 }", Parse),
    ("{ .a >> 1 }", Parse),
    ("{ .a ~ 1 }", Parse),
    ("{ .a !> 1 }", Parse),
    ("{ .a &> 1 }", Parse),
    ("{ .a = 1 }}", Parse),
    ("{{ .a = 1 }}", Parse),
    ("{ .a = 1 ]", Parse),
    ("{ 1 = }", Parse),
    ("{ = 1 }", Parse),
    ("{ span:foo = 1 }", Parse),
    ("{ span: = 1 }", Parse),
    ("{ trace:spanID = \"x\" }", Parse),
    ("{ link:id = \"x\" }", Parse),
    ("{ Status = error }", Parse),
    ("{ rootService = \"x\" }", Parse),
    ("{ id = \"x\" }", Parse),
    ("{ .a = 1 } { .b = 2 }", Parse),
    ("{ .a = 1 } |", Parse),
    ("| { .a = 1 }", Parse),
    ("{ .a = 1 } by(.b)", Parse),
    ("{ } | by(.a, .b)", Parse),
    ("{ } | select(.a, )", Parse),
    ("{ } | select(1)", Parse),
    ("{ } | coalesce(1)", Parse),
    ("{ } | count() > 1 > 2", Parse),
    ("{ } | count() > \"1\"", Parse),
    ("{ } | avg(duration) > ok", Parse),
    ("{ } | count() && { }", Parse),
    ("{ .a } && count() > 1", Parse),
    ("({ .a } | { .b }) && { .c }", Parse),
    ("({ .a } | { .b }) | { .c }", Parse),
    ("{ .a } | ({ .b } | { .c })", Parse),
    ("rate()", Parse),
    ("{ } | rate(duration)", Parse),
    ("{ } | count_over_time(1)", Parse),
    ("{ } | min_over_time()", Parse),
    ("{ } | min_over_time(1 + duration)", Parse),
    ("{ } | quantile_over_time(duration)", Parse),
    ("{ } | quantile_over_time(duration, )", Parse),
    ("{ } | quantile_over_time(duration, -0.5)", Parse),
    ("{ } | rate() by ()", Parse),
    ("{ } | rate() by (1)", Parse),
    ("{ } | compare(status = error)", Parse),
    ("{ } | compare({ status = error }, 5, 1)", Parse),
    ("{ } | compare({ status = error }) by (name)", Parse),
    ("{ } | topk(10)", Parse),
    ("topk(10)", Parse),
    ("{ } | rate() | topk()", Parse),
    ("{ } | rate() | topk(1.5)", Parse),
    ("{ } | rate() | topk(5) | bottomk(5)", Valid),
    ("{ } | rate() | { true }", Parse),
    ("{ } | rate() | count() > 1", Parse),
    ("{ } | rate() | rate()", Parse),
    ("({ } | rate())", Valid),
    ("{ } with(most_recent=true) | rate()", Parse),
    ("{ } with()", Parse),
    ("{ } with(most_recent)", Parse),
    ("{ } with(most_recent=)", Parse),
    ("{ } with(x=nil)", Parse),
    ("{ } with(x=-1)", Parse),
    ("with(most_recent=true)", Parse),
    ("{ } | -count() > 1", Parse),
    // validation errors
    ("{ 1 = \"a\" }", Invalid),
    ("{ status = 1 }", Invalid),
    ("{ kind = ok }", Invalid),
    ("{ status = server }", Invalid),
    ("{ duration = \"x\" }", Invalid),
    ("{ name =~ 1 }", Invalid),
    ("{ status =~ \"err.*\" }", Invalid),
    ("{ duration + \"a\" > 1 }", Invalid),
    ("{ true + 1 = 2 }", Invalid),
    ("{ name > 1 }", Invalid),
    ("{ .a = 1 && 2 }", Invalid),
    ("{ span.foo =~ \"(\" }", Invalid),
    ("{ span.foo =~ \"a**\" }", Invalid),
    ("{ span.foo =~ \"\\\\1\" }", Invalid),
    ("{ span:status = 500 }", Invalid),
    ("{ span:kind = error }", Invalid),
    ("{ event:timeSinceStart > \"x\" }", Invalid),
    ("{ span:id = 1 }", Invalid),
    ("{ -\"a\" = 1 }", Invalid),
    ("{ !(1 + 1) }", Invalid),
    ("{ .a + 1 }", Invalid),
    ("{ } | avg(name) > 1", Invalid),
    ("{ } | sum(status) > 1", Invalid),
    ("{ } | max(1) > 1", Invalid),
    ("{ } | by(1 + 2)", Invalid),
    ("{ } | by(.a = \"x\" + 1)", Invalid),
    ("{ } | quantile_over_time(duration, 1.5)", Invalid),
    ("{ } | quantile_over_time(duration, 0.5, 2)", Invalid),
    ("{ } | rate() | topk(0)", Invalid),
    ("{ } | rate() | bottomk(0)", Invalid),
    ("{ } | compare({ status = error }) | topk(5)", Invalid),
    ("{ } | compare({ status = error }, 0)", Invalid),
    ("{ } | compare({ 1 }, 5)", Invalid),
    ("{ } | compare({ status = error }, 5, 20, 10)", Invalid),
    ("{ } | min_over_time(name)", Invalid),
    ("{ } | avg_over_time(status)", Invalid),
    ("{ } | histogram_over_time(span:id)", Invalid),
    ("{ status = 1 } | rate()", Invalid),
    ("{ } with(most_recent=1)", Invalid),
    ("{ } with(most_recent=\"true\")", Invalid),
    ("{ } with(sample=2.0)", Invalid),
    ("{ } with(sample=0)", Invalid),
    ("{ } with(exemplars=\"x\")", Invalid),
    ("{ 1 = \"a\" } && { .b }", Invalid),
    ("({ .a } | by(1)) && ({ .b })", Invalid),
    // unsupported
    ("{ } | rate() by (resource.a, resource.b, resource.c, resource.d, resource.e, resource.f)", Unsupported),
    ("{ } | quantile_over_time(duration, 0.5) by (resource.a, resource.b, resource.c, resource.d, resource.e)", Unsupported),
    ("{ parent.span.x = 1 } | rate()", Unsupported),
    ("{ } | rate() by (parent.x)", Unsupported),
    ("{ } | count() > 1 + 2", Unsupported),
    ("{ childCount > 2 }", Unsupported),
    ("{ } | select(parent.a)", Unsupported),
    ("{ span.x = nil }", Unsupported),
];

/// Metrics second stages (comparisons on results, `topk`/`bottomk` with comparisons after
/// them) and arithmetic between metrics queries and with numbers.
const METRICS_GRAMMAR: &[(&str, Expect)] = &[
    ("{} | rate() > 10", Valid),
    ("{ } | rate() by (resource.service.name) >= 0.5", Valid),
    ("{} | count_over_time() < -1", Valid),
    ("{} | rate() | topk(5) > 10", Valid),
    ("{} | rate() > 1 | topk(5)", Valid),
    ("{} | rate() > 1 | bottomk(5) <= 100", Valid),
    ("{} | quantile_over_time(duration, 0.5, 0.9, 0.99) by (name) != 0", Valid),
    ("{} | rate() > 10 with(sample=true)", Valid),
    ("{} | sum_over_time(span.bytes) by (resource.service.name) = 0", Valid),
    ("{} | histogram_over_time(duration) by (span.http.route) | topk(3)", Valid),
    ("({} | rate()) / ({} | count_over_time())", Valid),
    ("({ status = error } | rate()) / ({ } | rate()) * 100", Valid),
    ("({} | rate()) * 100", Valid),
    ("100 * ({} | rate())", Valid),
    ("({} | rate()) * -1.5", Valid),
    ("({} | rate()) + ({} | rate()) * ({} | rate())", Valid),
    ("(({} | rate()) - ({} | rate())) / 2", Valid),
    ("({} | rate()) / ({} | rate()) > 0.1", Valid),
    ("({ status = error } | rate() by (resource.service.name)) / ({ } | rate() by (resource.service.name)) with(sample=0.1)", Valid),
    ("({} | min_over_time(duration)) - ({} | max_over_time(duration)) - ({} | avg_over_time(duration))", Valid),
    ("({} | rate()) / (2 * 3)", Parse),
    ("{ span:childCount > 2 }", Unsupported),
    ("({} | rate() by (resource.a, resource.b, resource.c, resource.d, resource.e, resource.f)) / ({} | rate())", Unsupported),
    ("({} | quantile_over_time(duration, 2)) / ({} | rate())", Invalid),
    ("({} | rate()) / ({ 1 = \"a\" } | rate())", Invalid),
    ("{ } | rate() | topk(0) > 1", Invalid),
    ("{ } | compare({ status = error }) > 1", Invalid),
    ("{} | rate() > \"a\"", Parse),
    ("{} | rate() > 1s", Valid),
    ("{} | rate() > 1 > 2", Parse),
    ("{} | rate() > .a", Parse),
    ("{} | rate() * 2", Parse),
    ("({} | rate()) % 2", Parse),
    ("({} | rate()) ^ 2", Parse),
    ("({} | rate()) && ({} | rate())", Parse),
    ("({} | rate()) > ({} | rate())", Parse),
    ("({} | rate()) > 1", Parse),
    ("({} | rate() by (name) | topk(5)) / ({} | rate())", Valid),
    ("({} | rate() > 1) / ({} | rate() | bottomk(2) < 3)", Valid),
    ("({} | rate() | topk(0)) / ({} | rate())", Invalid),
    ("({} | rate()) / ({} | rate()) | topk(5)", Valid),
    ("({} | rate()) / ({} | count()) ", Parse),
    ("({} | rate()) / { true }", Parse),
    ("({} | rate()) / ({} | rate()) > ({} | rate())", Parse),
    ("({} | rate() with(sample=0.1)) / ({} | rate())", Parse),
    ("2 * 3", Parse),
    ("(2) / (3)", Parse),
];

fn outcome(q: &str, want: Expect) -> Expect {
    if want == Parses {
        return match parse_unvalidated(q) {
            Ok(_) => Parses,
            Err(_) => Parse,
        };
    }
    match parse(q) {
        Ok(_) => Valid,
        Err(TraceqlError::Parse(_)) => Parse,
        Err(TraceqlError::Validation(_)) => Invalid,
        Err(TraceqlError::Unsupported(_)) => Unsupported,
    }
}

/// Tempo's corpus (tagged with its list name) followed by the project's own tables.
fn all_cases() -> Vec<(String, String, Expect)> {
    let own = |name: &str, t: &[(&str, Expect)]| {
        t.iter()
            .map(|(q, e)| (name.to_string(), q.to_string(), *e))
            .collect::<Vec<_>>()
    };
    let mut out: Vec<(String, String, Expect)> = tempo_cases()
        .into_iter()
        .map(|(list, q, e)| (format!("tempo:{list}"), q, e))
        .collect();
    out.extend(own("grafana", GRAFANA));
    out.extend(own("docs", DOCS_AND_EDGES));
    out.extend(own("metrics", METRICS_GRAMMAR));
    out
}

#[test]
fn tempo_corpus_every_verdict() {
    let mut failures = Vec::new();
    let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (list, q, want) in tempo_cases() {
        let entry = counts.entry(list.clone()).or_default();
        entry.0 += 1;
        let got = outcome(&q, want);
        if got == want {
            entry.1 += 1;
        } else {
            failures.push(format!(
                "[{list}] {q:?}: want {want:?}, got {got:?} ({})",
                detail(&q)
            ));
        }
    }
    for (list, (total, agreed)) in &counts {
        eprintln!("tempo corpus {list}: {agreed}/{total} agree");
    }
    for list in ["valid", "parse_fails", "validate_fails", "unsupported"] {
        assert!(
            counts.contains_key(list),
            "tempo corpus lost its {list} list"
        );
    }
    assert!(
        failures.is_empty(),
        "{} disagreements with Tempo's corpus:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn detail(q: &str) -> String {
    match parse(q) {
        Ok(parsed) => format!("parsed as `{parsed}`"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn conformance_table() {
    let mut failures = Vec::new();
    let mut counts = BTreeMap::new();
    for (table, q, want) in all_cases() {
        *counts.entry(format!("{want:?}")).or_insert(0usize) += 1;
        let got = outcome(&q, want);
        if got != want {
            failures.push(format!(
                "[{table}] {q:?}: want {want:?}, got {got:?} ({})",
                detail(&q)
            ));
        }
    }
    let total: usize = counts.values().sum();
    eprintln!("conformance cases: {total} {counts:?}");
    assert!(total >= 500, "table has only {total} cases");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The project's own tables neither repeat themselves nor repeat Tempo's corpus.
#[test]
fn table_has_no_duplicates() {
    let mut seen = std::collections::HashSet::new();
    for (table, q, _) in all_cases() {
        assert!(seen.insert(q.clone()), "[{table}] duplicate case {q:?}");
    }
}

/// For every query that parses, printing it canonically and parsing again gives the same tree,
/// and printing is a fixed point.
#[test]
fn round_trip_through_display() {
    let mut checked = 0;
    for (table, q, want) in all_cases() {
        if want == Parse {
            continue;
        }
        let first = parse_unvalidated(&q).unwrap_or_else(|e| panic!("[{table}] {q:?}: {e}"));
        let printed = first.to_string();
        let second = parse_unvalidated(&printed)
            .unwrap_or_else(|e| panic!("[{table}] {q:?} printed as {printed:?}: {e}"));
        assert_eq!(first, second, "[{table}] {q:?} printed as {printed:?}");
        assert_eq!(
            printed,
            second.to_string(),
            "[{table}] printing is not stable"
        );
        // Validation outcome survives the round trip too.
        assert_eq!(
            outcome(&printed, want),
            want,
            "[{table}] {q:?} printed as {printed:?}"
        );
        checked += 1;
    }
    assert!(checked > 350);
}

/// The metrics grammar of newer Tempo parsers beyond the stored corpus: duration thresholds,
/// chains of second stages, a lone parenthesised query, second stages after arithmetic,
/// `compare()`'s argument checks, unfolded constants. `true`: the query must be refused.
const NEWER_METRICS_GRAMMAR: &[(&str, bool)] = &[
    (
        "{} | sum_over_time(span.http.request.size) by (name, resource.service.name)",
        false,
    ),
    ("{} | quantile_over_time(duration, 0, 1)", false),
    ("{ .a } | by(name) | rate()", false),
    ("{ .a } && { .b } | count_over_time()", false),
    ("{} | quantile_over_time(duration, 0.9) >= 100ms", false),
    ("{} | rate() != 0.5", false),
    ("{} | rate() > 10 | topk(3) < 100 | bottomk(2)", false),
    ("{ .a } | compare({ status = error })", false),
    ("{} | compare({}, 25)", false),
    ("{} | compare({}, 25, 1000, 2000)", false),
    ("{} | compare()", true),
    ("{} | compare({}, 10, 1000)", true),
    ("{} | compare({}, 10, 1000, 2000, 3000)", true),
    ("{} | compare({}, 0)", true),
    ("{} | compare({}, -1)", true),
    ("{} | compare({}, 1001)", true),
    ("{} | compare({}, 2147483648)", true),
    ("{} | compare({}, 10, 2000, 1000)", true),
    ("{} | compare({}, 10, 0, 2000)", true),
    ("{} | compare({}, 10, 1000, 0)", true),
    ("{} | compare({}, 10, -1000, 2000)", true),
    ("{} | compare({}) | topk(10)", true),
    ("{} | compare({}) > 10", true),
    ("({} | compare({})) / ({} | rate())", true),
    ("({} | compare({})) * 2", true),
    ("{} | compare(.a)", true),
    ("{} | compare({} | rate())", true),
    ("({ status = error } | rate()) / ({} | rate())", false),
    ("({} | rate())", false),
    ("({} | rate()) * 100", false),
    ("2 - ({} | rate())", false),
    ("({} | rate()) + ({} | rate()) * 2", false),
    ("(({} | rate()) + ({} | rate())) / ({} | rate())", false),
    ("({} | rate()) / ({} | rate()) | topk(10)", false),
    ("({} | rate() | topk(10)) - ({} | rate())", false),
    ("({ .a } && { .b }) | rate()", false),
    ("({ .a }) | rate()", false),
    ("({ .a }) && { .b }", false),
    ("{} | rate() + {} | rate()", true),
    ("({} | rate()) + {} | rate()", true),
    ("({} | rate()) * 10s", true),
    ("({} | rate()) * (2 * 3)", true),
    ("({} | rate()) % ({} | rate())", true),
    ("({} | rate()) ^ 2", true),
    ("({} | rate()) /", true),
    ("({} | rate()) / ()", true),
    ("({} | rate()", true),
    ("({} | rate()) / ({} | rate()", true),
    ("2 * 2", true),
    ("{} | rate(duration)", true),
    ("{} | count_over_time(duration)", true),
    ("{} | min_over_time()", true),
    ("{} | histogram_over_time()", true),
    ("{} | sum_over_time(duration, 0.9)", true),
    ("{} | quantile_over_time(duration)", true),
    ("{} | quantile_over_time(duration, 1.5)", true),
    ("{} | quantile_over_time(duration, -1)", true),
    ("| rate()", true),
    ("rate()", true),
    ("{} | rate", true),
    ("{} | rate() by ()", true),
    ("{} | rate() by (name,)", true),
    ("{} | rate() | rate()", true),
    ("{} | rate() by (1)", true),
    ("{} | topk(5)", true),
    ("{} | rate() | topk(0)", true),
    ("{} | rate() | topk(1.5)", true),
    ("{} | rate() | topk(10) topk(5)", true),
    ("{} | rate() | count_over_time()", true),
    ("{} | rate() =~ 10", true),
    ("{} | rate() > 10 > ", true),
];

#[test]
fn newer_metrics_grammar() {
    let wrong: Vec<String> = NEWER_METRICS_GRAMMAR
        .iter()
        .filter(|(q, refused)| parse(q).is_err() != *refused)
        .map(|(q, refused)| format!("{q:?}: want refused={refused}, got {:?}", parse(q).err()))
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // What they mean: a duration threshold is in seconds; stages chain; stages follow
    // arithmetic; a lone parenthesised query is that query.
    let q = parse("{} | quantile_over_time(duration, 0.9) >= 100ms").unwrap();
    let m = q.metrics_queries()[0];
    assert_eq!(m.filters().next().unwrap().threshold(), 0.1);
    let q = parse("{} | rate() > 10 | topk(3) < 100 | bottomk(2)").unwrap();
    assert_eq!(q.metrics_queries()[0].second_stages.len(), 4);
    let q = parse("({} | rate()) / ({} | rate()) | topk(10)").unwrap();
    assert_eq!(q.metrics_math().unwrap().stages.len(), 1);
    assert_eq!(
        parse("({} | rate())").unwrap(),
        parse("{} | rate()").unwrap()
    );
}
