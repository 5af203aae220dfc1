//! Relations between flows (spec §4): hash indexes over a universe of flows, per-subject
//! evaluation in strong (search) or weak (sort) TCP mode, optional fast mode, the strong TCP
//! relation `is_relate` and `flow_field_conflict`.
//!
//! Owns only relation evaluation; it must not mutate flows or build trees. Relation lists are
//! returned in ascending flow-index order (allowed by the spec), so results are deterministic.

use super::flow::Flow;
use crate::store::model::l7_protocol as l7;
use std::collections::HashMap;

pub const TCP_SEQ: u8 = 1;
pub const X_REQUEST_ID: u8 = 2;
pub const SYSCALL_TRACE_ID: u8 = 4;
pub const SPAN_ID: u8 = 8;
pub const DNS_REQUEST_ID: u8 = 16;

/// The `related_ids` name of a bit combination (§4), e.g. `network,app`.
pub fn names(bits: u8) -> String {
    const N: [(u8, &str); 5] = [
        (TCP_SEQ, "network"),
        (X_REQUEST_ID, "xrequestid"),
        (SYSCALL_TRACE_ID, "syscall"),
        (SPAN_ID, "app"),
        (DNS_REQUEST_ID, "request_id"),
    ];
    let mut out = String::new();
    for (b, n) in N {
        if bits & b != 0 {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(n);
        }
    }
    out
}

/// Tolerances and switches of the relation evaluation.
#[derive(Debug, Clone, Copy)]
pub struct RelCtx {
    pub network_delay_us: i64,
    pub host_clock_offset_us: i64,
    pub dns: bool,
}

impl RelCtx {
    /// `dev(a, b)`: the time tolerance between two flows.
    #[inline]
    pub fn dev(&self, a: &Flow, b: &Flow) -> i64 {
        if a.agent() == b.agent() {
            self.network_delay_us
        } else {
            self.network_delay_us + self.host_clock_offset_us
        }
    }
}

/// Candidate indexes of §4.1 over a universe of flows.
pub struct Index<'a> {
    tcp: HashMap<u32, Vec<usize>>,
    /// The zero-seq TCP flows (strong mode only), by start (`req_tcp_seq == 0`, not a
    /// response) and by end (`resp_tcp_seq == 0`, not a request), so a zero-seq subject only
    /// visits flows inside the time tolerance instead of the whole bucket.
    zero_req_by_start: Vec<(i64, usize)>,
    zero_resp_by_end: Vec<(i64, usize)>,
    /// The zero-seq bucket as the weak rule can use it: flows indexed under 0 through a zero
    /// `req_tcp_seq`, by their `resp_tcp_seq`, and through a zero `resp_tcp_seq`, by their
    /// `req_tcp_seq` (only a truthy seq of the other side can match).
    zero_req_by_resp: HashMap<u32, Vec<usize>>,
    zero_resp_by_req: HashMap<u32, Vec<usize>>,
    span: HashMap<&'a str, Vec<usize>>,
    xreq: HashMap<&'a str, Vec<usize>>,
    sys: HashMap<u64, Vec<usize>>,
    dns: HashMap<u64, Vec<usize>>,
}

fn push<K: std::hash::Hash + Eq>(m: &mut HashMap<K, Vec<usize>>, k: K, i: usize) {
    let v = m.entry(k).or_default();
    if v.last() != Some(&i) {
        v.push(i);
    }
}

impl<'a> Index<'a> {
    pub fn build(flows: &'a [Flow], ctx: &RelCtx) -> Self {
        let mut ix = Index {
            tcp: HashMap::new(),
            zero_req_by_start: Vec::new(),
            zero_resp_by_end: Vec::new(),
            zero_req_by_resp: HashMap::new(),
            zero_resp_by_req: HashMap::new(),
            span: HashMap::new(),
            xreq: HashMap::new(),
            sys: HashMap::new(),
            dns: HashMap::new(),
        };
        for (i, f) in flows.iter().enumerate() {
            let r = &f.rec;
            if !f.is_app() && r.protocol == 6 {
                if r.r#type != 1 {
                    if r.req_tcp_seq == 0 {
                        ix.zero_req_by_start.push((f.start(), i));
                        if r.resp_tcp_seq != 0 {
                            push(&mut ix.zero_req_by_resp, r.resp_tcp_seq, i);
                        }
                    } else {
                        push(&mut ix.tcp, r.req_tcp_seq, i);
                    }
                }
                if r.r#type != 0 {
                    if r.resp_tcp_seq == 0 {
                        ix.zero_resp_by_end.push((f.end(), i));
                        if r.req_tcp_seq != 0 {
                            push(&mut ix.zero_resp_by_req, r.req_tcp_seq, i);
                        }
                    } else {
                        push(&mut ix.tcp, r.resp_tcp_seq, i);
                    }
                }
            }
            if !r.span_id.is_empty() {
                push(&mut ix.span, r.span_id.as_str(), i);
            }
            if !r.parent_span_id.is_empty() {
                push(&mut ix.span, r.parent_span_id.as_str(), i);
            }
            if !r.x_request_id_0.is_empty() {
                push(&mut ix.xreq, r.x_request_id_0.as_str(), i);
            }
            if !r.x_request_id_1.is_empty() {
                push(&mut ix.xreq, r.x_request_id_1.as_str(), i);
            }
            if r.syscall_trace_id_request != 0 {
                push(&mut ix.sys, r.syscall_trace_id_request, i);
            }
            if r.syscall_trace_id_response != 0 {
                push(&mut ix.sys, r.syscall_trace_id_response, i);
            }
            if ctx.dns && r.l7_protocol == l7::DNS {
                if let Some(id) = f.request_id_truthy() {
                    push(&mut ix.dns, id, i);
                }
            }
        }
        ix.zero_req_by_start.sort_unstable();
        ix.zero_resp_by_end.sort_unstable();
        ix
    }

    /// Zero-seq candidates of a subject (strong mode): not-response flows with `req == 0`
    /// starting within `d` of `a`, or not-request flows with `resp == 0` ending within `d`.
    fn zero_window(&self, by_start: bool, t: i64, d: i64) -> &[(i64, usize)] {
        let v = if by_start {
            &self.zero_req_by_start
        } else {
            &self.zero_resp_by_end
        };
        let lo = v.partition_point(|e| e.0 < t - d);
        let hi = v.partition_point(|e| e.0 <= t + d);
        &v[lo..hi]
    }
}

const EMPTY: &[usize] = &[];

fn get<'m, K: std::hash::Hash + Eq>(m: &'m HashMap<K, Vec<usize>>, k: &K) -> &'m [usize] {
    m.get(k).map(|v| v.as_slice()).unwrap_or(EMPTY)
}

/// Evaluate the relations of subject `a` against the indexed universe (§4.2). Pushes
/// `(j, bit)` pairs (unsorted, possibly repeated) into `out`. Returns true if anything was found.
/// `strong` selects the strong TCP rule; `fast` stops at the first relation.
pub fn relate_subject(
    flows: &[Flow],
    ix: &Index<'_>,
    a_i: usize,
    strong: bool,
    fast: bool,
    ctx: &RelCtx,
    out: &mut Vec<(usize, u8)>,
) -> bool {
    let a = &flows[a_i];
    let r = &a.rec;
    let mut found = false;

    // 1. TCP
    if !a.is_app() {
        let mut keys: [Option<u32>; 2] = [None, None];
        if r.r#type != 1 {
            keys[0] = Some(r.req_tcp_seq);
        }
        if r.r#type != 0 && Some(r.resp_tcp_seq) != keys[0] {
            keys[1] = Some(r.resp_tcp_seq);
        }
        let dmax = ctx.network_delay_us + ctx.host_clock_offset_us;
        let mut zero: Vec<usize> = Vec::new();
        for (side, k) in keys.into_iter().enumerate() {
            let Some(k) = k else { continue };
            let cands: &[usize] = if k != 0 {
                get(&ix.tcp, &k)
            } else if strong {
                // is_relate needs equal (zero) seqs and the start (request side) or end
                // (response side) within the tolerance
                let by_start = side == 0 && r.req_tcp_seq == 0;
                let t = if by_start { a.start() } else { a.end() };
                zero.clear();
                zero.extend(ix.zero_window(by_start, t, dmax).iter().map(|e| e.1));
                if r.req_tcp_seq == 0 && r.resp_tcp_seq == 0 && r.r#type == 2 {
                    zero.extend(ix.zero_window(false, a.end(), dmax).iter().map(|e| e.1));
                }
                &zero
            } else if side == 0 && r.req_tcp_seq == 0 && r.resp_tcp_seq != 0 {
                // weak rule through the zero bucket: only `resp == a.resp` can hold
                get(&ix.zero_req_by_resp, &r.resp_tcp_seq)
            } else if side == 1 && r.req_tcp_seq != 0 {
                // weak rule through the zero bucket: only `req == a.req` can hold
                get(&ix.zero_resp_by_req, &r.req_tcp_seq)
            } else {
                continue;
            };
            for &j in cands {
                if j == a_i {
                    continue;
                }
                let b = &flows[j];
                let rel = if strong {
                    is_relate(a, b, ctx)
                } else {
                    let d = ctx.dev(a, b);
                    (r.req_tcp_seq != 0
                        && r.req_tcp_seq == b.rec.req_tcp_seq
                        && (a.start() - b.start()).abs() <= d)
                        || (r.resp_tcp_seq != 0
                            && r.resp_tcp_seq == b.rec.resp_tcp_seq
                            && (a.end() - b.end()).abs() <= d)
                };
                if rel {
                    out.push((j, TCP_SEQ));
                    found = true;
                    if fast {
                        return true;
                    }
                }
            }
        }
    }

    // 2. SPAN_ID
    if !a.trace_ids.is_empty() && !r.span_id.is_empty() {
        let c1 = get(&ix.span, &r.span_id.as_str());
        let c2 = if r.parent_span_id.is_empty() || r.parent_span_id == r.span_id {
            EMPTY
        } else {
            get(&ix.span, &r.parent_span_id.as_str())
        };
        for &j in c1.iter().chain(c2.iter()) {
            if j == a_i {
                continue;
            }
            let b = &flows[j];
            if !a.traces_intersect(b) {
                continue;
            }
            if r.span_id == b.rec.span_id
                || r.span_id == b.rec.parent_span_id
                || (!r.parent_span_id.is_empty() && r.parent_span_id == b.rec.span_id)
            {
                out.push((j, SPAN_ID));
                found = true;
                if fast {
                    return true;
                }
            }
        }
    }

    // 3. X_REQUEST_ID
    {
        let c1 = if r.x_request_id_0.is_empty() {
            EMPTY
        } else {
            get(&ix.xreq, &r.x_request_id_0.as_str())
        };
        let c2 = if r.x_request_id_1.is_empty() || r.x_request_id_1 == r.x_request_id_0 {
            EMPTY
        } else {
            get(&ix.xreq, &r.x_request_id_1.as_str())
        };
        for &j in c1.iter().chain(c2.iter()) {
            if j == a_i {
                continue;
            }
            let b = &flows[j].rec;
            if (!r.x_request_id_0.is_empty() && r.x_request_id_0 == b.x_request_id_1)
                || (!r.x_request_id_1.is_empty() && r.x_request_id_1 == b.x_request_id_0)
            {
                out.push((j, X_REQUEST_ID));
                found = true;
                if fast {
                    return true;
                }
            }
        }
    }

    // 4. SYSCALL
    if r.syscall_trace_id_request != r.syscall_trace_id_response {
        let (q, p) = (r.syscall_trace_id_request, r.syscall_trace_id_response);
        let c1 = if q == 0 { EMPTY } else { get(&ix.sys, &q) };
        let c2 = if p == 0 { EMPTY } else { get(&ix.sys, &p) };
        for &j in c1.iter().chain(c2.iter()) {
            if j == a_i {
                continue;
            }
            let bf = &flows[j];
            let b = &bf.rec;
            if b.agent_id != r.agent_id
                || b.syscall_trace_id_request == b.syscall_trace_id_response
                || (a.tap_side() == "s-p" && bf.tap_side() == "s-p")
            {
                continue;
            }
            let bs = [b.syscall_trace_id_request, b.syscall_trace_id_response];
            if (q != 0 && bs.contains(&q)) || (p != 0 && bs.contains(&p)) {
                out.push((j, SYSCALL_TRACE_ID));
                found = true;
                if fast {
                    return true;
                }
            }
        }
    }

    // 5. DNS
    if ctx.dns {
        if let Some(id) = a.request_id_truthy() {
            for &j in get(&ix.dns, &id) {
                if j == a_i {
                    continue;
                }
                let b = &flows[j];
                if b.rec.request_id == r.request_id
                    && (a.start() - b.start()).abs() <= ctx.dev(a, b)
                    && !dns_field_conflict(a, b)
                {
                    out.push((j, DNS_REQUEST_ID));
                    found = true;
                    if fast {
                        return true;
                    }
                }
            }
        }
    }
    found
}

/// Sort `(j, bit)` pairs by `j` and OR the bits of equal `j`s together.
pub fn normalise(v: &mut Vec<(usize, u8)>) {
    v.sort_unstable_by_key(|p| p.0);
    let mut w = 0;
    for k in 0..v.len() {
        if w > 0 && v[w - 1].0 == v[k].0 {
            v[w - 1].1 |= v[k].1;
        } else {
            v[w] = v[k];
            w += 1;
        }
    }
    v.truncate(w);
}

/// The relation map of the sort phase (§5.4): weak TCP mode, not fast, every flow a subject.
/// `rel[a]` lists `(b, bits)` in ascending `b`.
pub fn relation_map(flows: &[Flow], ctx: &RelCtx) -> Vec<Vec<(usize, u8)>> {
    let ix = Index::build(flows, ctx);
    let mut out = Vec::with_capacity(flows.len());
    for a in 0..flows.len() {
        let mut v = Vec::new();
        relate_subject(flows, &ix, a, false, false, ctx, &mut v);
        normalise(&mut v);
        out.push(v);
    }
    out
}

/// The strong TCP relation of §4.3.
pub fn is_relate(a: &Flow, b: &Flow, ctx: &RelCtx) -> bool {
    let d = ctx.dev(a, b);
    let (ra, rb) = (&a.rec, &b.rec);
    let ds = (a.start() - b.start()).abs() <= d;
    let de = (a.end() - b.end()).abs() <= d;
    if ra.r#type == 2 && rb.r#type == 2 {
        ds && de
            && ra.req_tcp_seq == rb.req_tcp_seq
            && ra.resp_tcp_seq == rb.resp_tcp_seq
            && !flow_field_conflict(a, b)
    } else if ra.r#type != 1 && rb.r#type != 1 {
        ds && ra.req_tcp_seq == rb.req_tcp_seq && !flow_field_conflict(a, b)
    } else if ra.r#type != 0 && rb.r#type != 0 {
        de && ra.resp_tcp_seq == rb.resp_tcp_seq && !flow_field_conflict(a, b)
    } else {
        false
    }
}

fn truncated(s: &str) -> &str {
    match s.char_indices().nth(1024) {
        Some((pos, _)) => &s[..pos],
        None => s,
    }
}

/// `flow_field_conflict(a, b)` of §4.4 (NULLs and other falsy values are absent).
pub fn flow_field_conflict(a: &Flow, b: &Flow) -> bool {
    if !a.trace_ids.is_empty() && !b.trace_ids.is_empty() {
        if !a.traces_intersect(b) {
            return true;
        }
        if a.rec.span_id.is_empty() && b.rec.span_id.is_empty() {
            return false;
        }
        return a.rec.span_id != b.rec.span_id;
    }
    let (x, y) = (&a.rec, &b.rec);
    let mut grpc_differ = false;
    if x.l7_protocol != 0 && y.l7_protocol != 0 {
        let h2 = |p: u8| p == l7::HTTP2 || p == l7::GRPC;
        if h2(x.l7_protocol) && h2(y.l7_protocol) {
            grpc_differ = x.l7_protocol != y.l7_protocol;
        } else if x.l7_protocol != y.l7_protocol {
            return true;
        }
    }
    let s_conflict = |p: &str, q: &str| !p.is_empty() && !q.is_empty() && p != q;
    let n_conflict = |p: u64, q: u64| p != 0 && q != 0 && p != q;
    if s_conflict(&x.x_request_id_0, &y.x_request_id_0)
        || s_conflict(&x.x_request_id_1, &y.x_request_id_1)
        || s_conflict(&x.http_proxy_client, &y.http_proxy_client)
        || n_conflict(x.protocol as u64, y.protocol as u64)
        || (!grpc_differ && s_conflict(&x.biz_protocol, &y.biz_protocol))
        || s_conflict(&x.version, &y.version)
        || n_conflict(x.request_id.unwrap_or(0), y.request_id.unwrap_or(0))
        || (!grpc_differ && s_conflict(&x.endpoint, &y.endpoint))
        || s_conflict(&x.request_type, &y.request_type)
        || s_conflict(&x.request_domain, &y.request_domain)
    {
        return true;
    }
    if !grpc_differ {
        let (p, q) = (&x.request_resource, &y.request_resource);
        if !p.is_empty() && !q.is_empty() {
            let (p, q) = if p.chars().count() > 1024 && q.chars().count() > 1024 {
                (truncated(p), truncated(q))
            } else {
                (p.as_str(), q.as_str())
            };
            if p != q {
                return true;
            }
        }
    }
    let rc = |v: Option<i32>| v.unwrap_or(0);
    (rc(x.response_code) != 0 && rc(y.response_code) != 0 && x.response_code != y.response_code)
        || s_conflict(&x.response_exception, &y.response_exception)
        || s_conflict(&x.response_result, &y.response_result)
}

/// The DNS field conflict of §4.2 step 5.
pub fn dns_field_conflict(a: &Flow, b: &Flow) -> bool {
    let (x, y) = (&a.rec, &b.rec);
    let s = |p: &str, q: &str| !p.is_empty() && !q.is_empty() && p != q;
    let n = |p: i64, q: i64| p != 0 && q != 0 && p != q;
    n(x.protocol as i64, y.protocol as i64)
        || s(&x.endpoint, &y.endpoint)
        || s(&x.request_resource, &y.request_resource)
        || s(&x.request_type, &y.request_type)
        || n(
            x.request_id.unwrap_or(0) as i64,
            y.request_id.unwrap_or(0) as i64,
        )
        || n(
            x.response_code.unwrap_or(0) as i64,
            y.response_code.unwrap_or(0) as i64,
        )
        || s(&x.response_exception, &y.response_exception)
        || s(&x.response_result, &y.response_result)
        || n(x.l7_protocol as i64, y.l7_protocol as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::model::FlowRecord;

    fn ctx() -> RelCtx {
        RelCtx {
            network_delay_us: 50_000,
            host_clock_offset_us: 10_000,
            dns: false,
        }
    }

    fn f(id: u64, tap: &str, agent: u16, start: i64, end: i64, seq: (u32, u32)) -> Flow {
        Flow::from_record(FlowRecord {
            _id: id,
            r#type: 2,
            protocol: 6,
            l7_protocol: 20,
            observation_point: tap.into(),
            agent_id: agent,
            start_time_us: start,
            end_time_us: end,
            req_tcp_seq: seq.0,
            resp_tcp_seq: seq.1,
            response_duration: (end - start) as u64,
            ..Default::default()
        })
    }

    #[test]
    fn strong_tcp_candidates_match_a_brute_force_over_the_spec_index() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..50 {
            let flows: Vec<Flow> = (0..60)
                .map(|i| {
                    let s = rng.random_range(0..300_000);
                    let mut x = f(
                        i,
                        "c",
                        rng.random_range(1..3),
                        s,
                        s + rng.random_range(0..100_000),
                        (rng.random_range(0..3), rng.random_range(0..3)),
                    );
                    x.rec.r#type = rng.random_range(0..3);
                    x
                })
                .collect();
            let c = ctx();
            let ix = Index::build(&flows, &c);
            let indexed_under = |b: &Flow, k: u32| {
                (b.rec.r#type != 1 && b.rec.req_tcp_seq == k)
                    || (b.rec.r#type != 0 && b.rec.resp_tcp_seq == k)
            };
            for a in 0..flows.len() {
                let mut out = Vec::new();
                relate_subject(&flows, &ix, a, true, false, &c, &mut out);
                normalise(&mut out);
                let got: Vec<usize> = out.iter().map(|p| p.0).collect();
                let fa = &flows[a];
                let want: Vec<usize> = (0..flows.len())
                    .filter(|&b| {
                        let fb = &flows[b];
                        b != a
                            && ((fa.rec.r#type != 1 && indexed_under(fb, fa.rec.req_tcp_seq))
                                || (fa.rec.r#type != 0 && indexed_under(fb, fa.rec.resp_tcp_seq)))
                            && is_relate(fa, fb, &c)
                    })
                    .collect();
                assert_eq!(got, want, "subject {a}");
            }
        }
    }

    #[test]
    fn weak_tcp_candidates_match_a_brute_force_over_the_spec_index() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        for _ in 0..50 {
            let flows: Vec<Flow> = (0..60)
                .map(|i| {
                    let s = rng.random_range(0..300_000);
                    let mut x = f(
                        i,
                        "c",
                        rng.random_range(1..3),
                        s,
                        s + rng.random_range(0..100_000),
                        (rng.random_range(0..3), rng.random_range(0..3)),
                    );
                    x.rec.r#type = rng.random_range(0..3);
                    x
                })
                .collect();
            let c = ctx();
            let rel = relation_map(&flows, &c);
            let indexed_under = |b: &Flow, k: u32| {
                (b.rec.r#type != 1 && b.rec.req_tcp_seq == k)
                    || (b.rec.r#type != 0 && b.rec.resp_tcp_seq == k)
            };
            for (a, fa) in flows.iter().enumerate() {
                let got: Vec<usize> = rel[a].iter().map(|p| p.0).collect();
                let want: Vec<usize> = (0..flows.len())
                    .filter(|&b| {
                        let fb = &flows[b];
                        let d = c.dev(fa, fb);
                        let (ra, rb) = (&fa.rec, &fb.rec);
                        b != a
                            && ((ra.r#type != 1 && indexed_under(fb, ra.req_tcp_seq))
                                || (ra.r#type != 0 && indexed_under(fb, ra.resp_tcp_seq)))
                            && ((ra.req_tcp_seq != 0
                                && ra.req_tcp_seq == rb.req_tcp_seq
                                && (fa.start() - fb.start()).abs() <= d)
                                || (ra.resp_tcp_seq != 0
                                    && ra.resp_tcp_seq == rb.resp_tcp_seq
                                    && (fa.end() - fb.end()).abs() <= d))
                    })
                    .collect();
                assert_eq!(got, want, "subject {a}");
            }
        }
    }

    #[test]
    fn names_in_fixed_order() {
        assert_eq!(names(TCP_SEQ | SPAN_ID), "network,app");
        assert_eq!(
            names(SYSCALL_TRACE_ID | DNS_REQUEST_ID),
            "syscall,request_id"
        );
    }

    #[test]
    fn tcp_relations_respect_time_tolerance() {
        let flows = vec![
            f(1, "c", 1, 0, 10_000, (100, 200)),
            f(2, "s", 2, 300, 9_700, (100, 200)),
            f(3, "c", 1, 1_000_000, 1_005_000, (100, 999)),
        ];
        let rel = relation_map(&flows, &ctx());
        assert_eq!(rel[0], vec![(1, TCP_SEQ)]);
        assert!(rel[2].is_empty());
        assert!(is_relate(&flows[0], &flows[1], &ctx()));
        assert!(!is_relate(&flows[0], &flows[2], &ctx()));
    }

    #[test]
    fn x_request_id_needs_opposite_sides() {
        let mut a = f(1, "c", 1, 0, 10, (0, 0));
        let mut b = f(2, "c", 1, 0, 10, (0, 0));
        a.rec.x_request_id_0 = "R".into();
        b.rec.x_request_id_0 = "R".into();
        let flows = vec![a.clone(), b.clone()];
        assert!(relation_map(&flows, &ctx())[0].is_empty());
        b.rec.x_request_id_1 = "R".into();
        let flows = vec![a, b];
        assert_eq!(relation_map(&flows, &ctx())[0], vec![(1, X_REQUEST_ID)]);
    }

    #[test]
    fn conflict_rules() {
        let mut a = f(1, "c", 1, 0, 10, (1, 2));
        let mut b = f(2, "s", 1, 0, 10, (1, 2));
        assert!(!flow_field_conflict(&a, &b));
        a.rec.l7_protocol = 21;
        b.rec.l7_protocol = 41;
        a.rec.endpoint = "/a".into();
        b.rec.endpoint = "/b".into();
        assert!(!flow_field_conflict(&a, &b));
        b.rec.l7_protocol = 20;
        assert!(flow_field_conflict(&a, &b));
        a.trace_ids = vec!["t".into()];
        b.trace_ids = vec!["t".into()];
        assert!(!flow_field_conflict(&a, &b));
        a.rec.span_id = "x".into();
        assert!(flow_field_conflict(&a, &b));
    }
}
