//! The per-input checks of the fuzz targets (`fuzz/fuzz_targets/`), shared with the suite's
//! corpus replay (`tests/fuzz_corpus.rs`): one function per target, taking arbitrary bytes and
//! panicking only when a property breaks. Pure: no I/O, no store, no server. It must not hold
//! behaviour of its own; it calls the parsers and validators the handlers use.

use crate::api::deepflow;
use crate::api::tempo::{parse_range, RangeParams};
use crate::autotrace::TraceParams;
use crate::store::model::OrgId;
use crate::tempo::ids::{app_span_id, TraceId};
use crate::traceql::{self, eval::Evaluator, plan};

/// One target's check of one input.
pub type Check = fn(&[u8]);

/// The fuzz targets, by the name of their corpus directory (`fuzz/corpus/<name>/`).
pub const TARGETS: &[(&str, Check)] = &[
    ("traceql", traceql),
    ("trace_id", trace_id),
    ("deepflow_body", deepflow_body),
];

/// TraceQL text (invalid UTF-8 is replaced, as a query string decoder would): no parser may
/// panic; whatever parses prints to text that parses to the same query; a valid query stays
/// valid once printed, and planning and compiling its filters never panics.
pub fn traceql(data: &[u8]) {
    let q = String::from_utf8_lossy(data);
    let validated = traceql::parse(&q);
    for c in traceql::parse_lenient_filters(&q) {
        let _ = plan::plan_expr(&traceql::FieldExpr::Binary {
            op: c.op,
            lhs: Box::new(traceql::FieldExpr::Attribute(c.attribute)),
            rhs: Box::new(traceql::FieldExpr::Static(c.value)),
            pos: Default::default(),
        });
    }
    if let Ok(attr) = traceql::parse_identifier(&q) {
        let printed = attr.to_string();
        let again = traceql::parse_identifier(&printed)
            .unwrap_or_else(|e| panic!("identifier {q:?} printed as {printed:?} fails: {e}"));
        assert_eq!(attr, again, "identifier {q:?} printed as {printed:?}");
    }
    if let Ok(first) = traceql::parse_unvalidated(&q) {
        let printed = first.to_string();
        let second = traceql::parse_unvalidated(&printed)
            .unwrap_or_else(|e| panic!("{q:?} printed as {printed:?} does not parse: {e}"));
        assert_eq!(first, second, "{q:?} printed as {printed:?}");
    }
    if let Ok(query) = validated {
        let printed = query.to_string();
        if let Err(e) = traceql::parse(&printed) {
            panic!("valid {q:?} printed as {printed:?} is refused: {e}");
        }
        let filters = query.spanset_filters();
        let _ = plan::plan_filters(&filters).to_string();
        let _ = Evaluator::new(&filters);
    }
}

/// A trace ID, then optionally a newline and a `start`/`end` query string: parsing never
/// panics, a parsed ID survives its printed forms, and a range, when accepted, is not empty.
pub fn trace_id(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (id, query) = text.split_once('\n').unwrap_or((&text, ""));
    if let Ok(t) = TraceId::parse(id) {
        assert_eq!(TraceId::parse(&t.to_hex()), Ok(t), "{id:?}");
        assert_eq!(TraceId::parse(&t.to_trimmed_hex()), Ok(t), "{id:?} trimmed");
        for form in t.stored_forms() {
            assert_eq!(
                TraceId::from_app_trace_id(&form),
                Some(t),
                "{id:?} as {form:?}"
            );
        }
        if let Some(row) = t.as_zero_code() {
            assert_eq!(TraceId::zero_code(row), t, "{id:?}");
        }
    }
    if let Some(t) = TraceId::from_app_trace_id(id) {
        assert_eq!(TraceId::parse(id.trim()), Ok(t), "{id:?}");
    }
    assert_ne!(app_span_id(id), [0; 8], "{id:?}");
    let _ = id.parse::<OrgId>().map(|o| o.database("flow_log"));
    if let Ok(range) = actix_web::web::Query::<RangeParams>::from_query(query) {
        if let Ok(Some((start, end))) = parse_range(&range) {
            assert!(
                end > start,
                "{query:?} gives the empty range {start}..{end}"
            );
        }
    }
}

/// A request body of DeepFlow's tracing APIs, checked as both requests: validation never
/// panics, refusals are client errors with a message, and whatever reaches the engine stays
/// in the ranges validation promises (windows in the `time` column's range, times not
/// negative, tolerances positive and capped).
pub fn deepflow_body(data: &[u8]) {
    let config = TraceParams::default();
    for completion in [false, true] {
        match deepflow::dry_run(completion, data, &config) {
            Ok(run) => {
                let p = &run.params;
                if let Some((start, end)) = run.window {
                    assert!(
                        (0..=deepflow::MAX_TIME_S).contains(&start),
                        "time_start {start}"
                    );
                    assert!((0..=deepflow::MAX_TIME_S).contains(&end), "time_end {end}");
                }
                for s in &run.spans {
                    let times = [s.start_time_us, s.end_time_us];
                    assert!(times.iter().all(|t| *t >= 0), "span times {times:?}");
                    assert!(s.span_kind <= 5, "span kind {}", s.span_kind);
                }
                assert!(
                    (1..=deepflow::MAX_TOLERANCE_US).contains(&p.network_delay_us),
                    "network_delay_us {}",
                    p.network_delay_us
                );
                assert!(
                    (1..=deepflow::MAX_TOLERANCE_US).contains(&p.host_clock_offset_us),
                    "host_clock_offset_us {}",
                    p.host_clock_offset_us
                );
            }
            Err((status, description)) => {
                assert!(status.is_client_error(), "status {status}: {description}");
                assert!(!description.is_empty(), "status {status} without a message");
            }
        }
    }
}
