//! Relations between flows (spec §4): hash indexes over a universe of flows (built at once, or
//! grown as the universe grows), per-subject evaluation in strong (search) or weak (sort) TCP
//! mode, optional fast mode, the strong TCP relation `is_relate` and `flow_field_conflict`.
//! The rules read flows through `Relatable`, so the search's FLOWMETA rows and the assembly's
//! merged flows share them.
//!
//! Owns only relation evaluation; it must not mutate flows or build trees. Relation lists are
//! returned in ascending flow-index order (allowed by the spec), so results are deterministic.

use super::flow::{sorted_intersect, Flow, MetaFlow};
use crate::store::model::{l7_protocol as l7, signal_source, FlowRecord};
use foldhash::HashMap;
use std::collections::hash_map::Entry;
use std::hash::BuildHasher;

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

/// The columns the relation rules read, so the search can relate its FLOWMETA rows (a
/// [`MetaFlow`]) and the assembly its merged flows ([`Flow`]) with the same code. Columns a
/// FLOWMETA row lacks read as absent (empty / zero / NULL), which is how §4.4 must see a search
/// row (R-2 fixed): they are reachable only through `detail`, which such rows do not have.
pub trait Relatable {
    fn kind(&self) -> u8;
    fn signal_source(&self) -> u16;
    fn protocol(&self) -> u8;
    fn l7_protocol(&self) -> u8;
    fn req_tcp_seq(&self) -> u32;
    fn resp_tcp_seq(&self) -> u32;
    fn start(&self) -> i64;
    fn end(&self) -> i64;
    fn agent(&self) -> u16;
    fn syscall_trace_id_request(&self) -> u64;
    fn syscall_trace_id_response(&self) -> u64;
    fn span_id(&self) -> &str;
    fn parent_span_id(&self) -> &str;
    fn x_request_id_0(&self) -> &str;
    fn x_request_id_1(&self) -> &str;
    fn request_id(&self) -> Option<u64>;
    fn tap_side(&self) -> &str;
    /// Sorted, distinct, trimmed, non-empty trace ids.
    fn trace_ids(&self) -> &[String];
    /// The full record, when the flow has more than the FLOWMETA columns.
    fn detail(&self) -> Option<&FlowRecord>;

    #[inline]
    fn is_app(&self) -> bool {
        self.signal_source() == signal_source::OTEL
    }
    /// `request_id` as a truthy value (NULL and 0 are absent).
    #[inline]
    fn request_id_truthy(&self) -> Option<u64> {
        self.request_id().filter(|v| *v != 0)
    }
    /// Non-empty intersection of the (sorted) trace id lists.
    #[inline]
    fn traces_intersect(&self, other: &Self) -> bool {
        sorted_intersect(self.trace_ids(), other.trace_ids())
    }
}

/// `Relatable` over a type holding the FLOWMETA columns under their store names in `$cols`.
macro_rules! relatable {
    ($t:ty, $cols:ident, |$s:ident| $detail:expr) => {
        impl Relatable for $t {
            #[inline]
            fn kind(&self) -> u8 {
                self.$cols.r#type
            }
            #[inline]
            fn signal_source(&self) -> u16 {
                self.$cols.signal_source
            }
            #[inline]
            fn protocol(&self) -> u8 {
                self.$cols.protocol
            }
            #[inline]
            fn l7_protocol(&self) -> u8 {
                self.$cols.l7_protocol
            }
            #[inline]
            fn req_tcp_seq(&self) -> u32 {
                self.$cols.req_tcp_seq
            }
            #[inline]
            fn resp_tcp_seq(&self) -> u32 {
                self.$cols.resp_tcp_seq
            }
            #[inline]
            fn start(&self) -> i64 {
                self.$cols.start_time_us
            }
            #[inline]
            fn end(&self) -> i64 {
                self.$cols.end_time_us
            }
            #[inline]
            fn agent(&self) -> u16 {
                self.$cols.agent_id
            }
            #[inline]
            fn syscall_trace_id_request(&self) -> u64 {
                self.$cols.syscall_trace_id_request
            }
            #[inline]
            fn syscall_trace_id_response(&self) -> u64 {
                self.$cols.syscall_trace_id_response
            }
            #[inline]
            fn span_id(&self) -> &str {
                &self.$cols.span_id
            }
            #[inline]
            fn parent_span_id(&self) -> &str {
                &self.$cols.parent_span_id
            }
            #[inline]
            fn x_request_id_0(&self) -> &str {
                &self.$cols.x_request_id_0
            }
            #[inline]
            fn x_request_id_1(&self) -> &str {
                &self.$cols.x_request_id_1
            }
            #[inline]
            fn request_id(&self) -> Option<u64> {
                self.$cols.request_id
            }
            #[inline]
            fn tap_side(&self) -> &str {
                &self.$cols.observation_point
            }
            #[inline]
            fn trace_ids(&self) -> &[String] {
                &self.trace_ids
            }
            #[inline]
            fn detail(&self) -> Option<&FlowRecord> {
                let $s = self;
                $detail
            }
        }
    };
}

relatable!(Flow, rec, |f| Some(&*f.rec));
relatable!(MetaFlow, meta, |_f| None);

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
    pub fn dev<F: Relatable>(&self, a: &F, b: &F) -> i64 {
        if a.agent() == b.agent() {
            self.network_delay_us
        } else {
            self.network_delay_us + self.host_clock_offset_us
        }
    }
}

/// Candidate indexes of §4.1 over a universe of flows (positions in a slice). Built at once
/// (`build`) or grown as the slice grows (`extend`).
#[derive(Debug, Default)]
pub struct Index {
    /// The zero-seq TCP flows (strong mode only), by start (`req_tcp_seq == 0`, not a
    /// response) and by end (`resp_tcp_seq == 0`, not a request), so a zero-seq subject only
    /// visits flows inside the time tolerance instead of the whole bucket.
    zero_req_by_start: Vec<(i64, usize)>,
    zero_resp_by_end: Vec<(i64, usize)>,
    /// The zero-seq bucket as the weak rule can use it: flows indexed under 0 through a zero
    /// `req_tcp_seq`, by their `resp_tcp_seq`, and through a zero `resp_tcp_seq`, by their
    /// `req_tcp_seq` (only a truthy seq of the other side can match).
    zero_req_by_resp: HashMap<u32, u32>,
    zero_resp_by_req: HashMap<u32, u32>,
    /// Each map gives a key's newest link in `links`; a key's flows form a chain of links
    /// `(flow, next link)`, newest first (no vector per key).
    tcp: HashMap<u32, u32>,
    span: HashMap<u64, u32>,
    xreq: HashMap<u64, u32>,
    sys: HashMap<u64, u32>,
    dns: HashMap<u64, u32>,
    links: Vec<(u32, u32)>,
    /// Hashes the string columns into the keys of `span` and `xreq`, so the index owns its
    /// keys and can outlive a borrow of its flows (the search keeps one across iterations).
    /// Every candidate is checked against the real strings: a collision costs a comparison.
    keys: foldhash::quality::RandomState,
    /// Flows indexed so far: `flows[..len]`.
    len: usize,
}

/// The end of a chain of links.
const END: u32 = u32::MAX;

/// Add flow `i` to the chain of key `k` (once, when a flow has the key twice).
fn push<K: std::hash::Hash + Eq>(
    heads: &mut HashMap<K, u32>,
    links: &mut Vec<(u32, u32)>,
    k: K,
    i: usize,
) {
    let (i, n) = (i as u32, links.len() as u32);
    match heads.entry(k) {
        Entry::Occupied(mut e) => {
            let head = *e.get();
            if links[head as usize].0 != i {
                links.push((i, head));
                e.insert(n);
            }
        }
        Entry::Vacant(e) => {
            e.insert(n);
            links.push((i, END));
        }
    }
}

/// The flows of one key, newest first.
#[derive(Clone)]
struct Chain<'a> {
    links: &'a [(u32, u32)],
    at: u32,
}

impl Iterator for Chain<'_> {
    type Item = usize;
    #[inline]
    fn next(&mut self) -> Option<usize> {
        if self.at == END {
            return None;
        }
        let (i, next) = self.links[self.at as usize];
        self.at = next;
        Some(i as usize)
    }
}

/// TCP candidates: a chain, or the zero-seq flows in a time window.
enum Cands<'a> {
    Chain(Chain<'a>),
    List(std::slice::Iter<'a, usize>),
}

impl Iterator for Cands<'_> {
    type Item = usize;
    #[inline]
    fn next(&mut self) -> Option<usize> {
        match self {
            Cands::Chain(c) => c.next(),
            Cands::List(l) => l.next().copied(),
        }
    }
}

/// Add the `(time, i)` entries of `new` (ascending `i`, all above those of `v`) to sorted `v`.
fn merge_sorted(v: &mut Vec<(i64, usize)>, mut new: Vec<(i64, usize)>) {
    if new.is_empty() {
        return;
    }
    new.sort_unstable();
    if v.last().is_none_or(|l| *l <= new[0]) {
        v.extend(new);
        return;
    }
    // Two sorted runs: the stable sort merges them in linear time.
    v.extend(new);
    v.sort();
}

impl Index {
    pub fn build<F: Relatable>(flows: &[F], ctx: &RelCtx) -> Self {
        let mut ix = Index::default();
        ix.extend(flows, ctx);
        ix
    }

    fn str_key(&self, s: &str) -> u64 {
        self.keys.hash_one(s)
    }

    /// How many flows are indexed (`flows[..len()]`).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Index the flows of `flows` beyond the ones already indexed. `flows` must start with the
    /// flows indexed so far, unchanged, and `ctx` must be the one the index was built with.
    pub fn extend<F: Relatable>(&mut self, flows: &[F], ctx: &RelCtx) {
        let from = self.len.min(flows.len());
        assert!(flows.len() < END as usize, "too many flows for one index");
        // Room for the new flows' TCP and syscall keys (at most two each) without rehashing.
        let new = flows.len() - from;
        self.tcp.reserve(new);
        self.sys.reserve(new);
        let links = &mut self.links;
        let (mut by_start, mut by_end) = (Vec::new(), Vec::new());
        for (i, f) in flows.iter().enumerate().skip(from) {
            let (req, resp, ty) = (f.req_tcp_seq(), f.resp_tcp_seq(), f.kind());
            if !f.is_app() && f.protocol() == 6 {
                if ty != 1 {
                    if req == 0 {
                        by_start.push((f.start(), i));
                        if resp != 0 {
                            push(&mut self.zero_req_by_resp, links, resp, i);
                        }
                    } else {
                        push(&mut self.tcp, links, req, i);
                    }
                }
                if ty != 0 {
                    if resp == 0 {
                        by_end.push((f.end(), i));
                        if req != 0 {
                            push(&mut self.zero_resp_by_req, links, req, i);
                        }
                    } else {
                        push(&mut self.tcp, links, resp, i);
                    }
                }
            }
            for s in [f.span_id(), f.parent_span_id()] {
                if !s.is_empty() {
                    push(&mut self.span, links, self.keys.hash_one(s), i);
                }
            }
            for s in [f.x_request_id_0(), f.x_request_id_1()] {
                if !s.is_empty() {
                    push(&mut self.xreq, links, self.keys.hash_one(s), i);
                }
            }
            for id in [f.syscall_trace_id_request(), f.syscall_trace_id_response()] {
                if id != 0 {
                    push(&mut self.sys, links, id, i);
                }
            }
            if ctx.dns && f.l7_protocol() == l7::DNS {
                if let Some(id) = f.request_id_truthy() {
                    push(&mut self.dns, links, id, i);
                }
            }
        }
        merge_sorted(&mut self.zero_req_by_start, by_start);
        merge_sorted(&mut self.zero_resp_by_end, by_end);
        self.len = flows.len();
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

impl Index {
    /// The flows indexed under `k` in `heads`.
    #[inline]
    fn get<K: std::hash::Hash + Eq>(&self, heads: &HashMap<K, u32>, k: &K) -> Chain<'_> {
        Chain {
            links: &self.links,
            at: heads.get(k).copied().unwrap_or(END),
        }
    }

    #[inline]
    fn none(&self) -> Chain<'_> {
        Chain {
            links: &self.links,
            at: END,
        }
    }
}

/// Evaluate the relations of subject `a` against the indexed universe `flows` (§4.2). `a_i` is
/// the subject's position in `flows`, if it is one of them (it never relates to itself). Pushes
/// `(j, bit)` pairs (unsorted, possibly repeated) into `out`. Returns true if anything was found.
/// `strong` selects the strong TCP rule; `fast` stops at the first relation.
#[allow(clippy::too_many_arguments)]
pub fn relate_subject<F: Relatable>(
    a: &F,
    a_i: Option<usize>,
    flows: &[F],
    ix: &Index,
    strong: bool,
    fast: bool,
    ctx: &RelCtx,
    out: &mut Vec<(usize, u8)>,
) -> bool {
    let a_i = a_i.unwrap_or(usize::MAX);
    let (a_req, a_resp, a_type) = (a.req_tcp_seq(), a.resp_tcp_seq(), a.kind());
    let mut found = false;

    // 1. TCP
    if !a.is_app() {
        let mut keys: [Option<u32>; 2] = [None, None];
        if a_type != 1 {
            keys[0] = Some(a_req);
        }
        if a_type != 0 && Some(a_resp) != keys[0] {
            keys[1] = Some(a_resp);
        }
        let dmax = ctx.network_delay_us + ctx.host_clock_offset_us;
        let mut zero: Vec<usize> = Vec::new();
        for (side, k) in keys.into_iter().enumerate() {
            let Some(k) = k else { continue };
            let cands = if k != 0 {
                Cands::Chain(ix.get(&ix.tcp, &k))
            } else if strong {
                // is_relate needs equal (zero) seqs and the start (request side) or end
                // (response side) within the tolerance
                let by_start = side == 0 && a_req == 0;
                let t = if by_start { a.start() } else { a.end() };
                zero.clear();
                zero.extend(ix.zero_window(by_start, t, dmax).iter().map(|e| e.1));
                if a_req == 0 && a_resp == 0 && a_type == 2 {
                    zero.extend(ix.zero_window(false, a.end(), dmax).iter().map(|e| e.1));
                }
                Cands::List(zero.iter())
            } else if side == 0 && a_req == 0 && a_resp != 0 {
                // weak rule through the zero bucket: only `resp == a.resp` can hold
                Cands::Chain(ix.get(&ix.zero_req_by_resp, &a_resp))
            } else if side == 1 && a_req != 0 {
                // weak rule through the zero bucket: only `req == a.req` can hold
                Cands::Chain(ix.get(&ix.zero_resp_by_req, &a_req))
            } else {
                continue;
            };
            for j in cands {
                if j == a_i {
                    continue;
                }
                let b = &flows[j];
                let rel = if strong {
                    is_relate(a, b, ctx)
                } else {
                    let d = ctx.dev(a, b);
                    (a_req != 0 && a_req == b.req_tcp_seq() && (a.start() - b.start()).abs() <= d)
                        || (a_resp != 0
                            && a_resp == b.resp_tcp_seq()
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
    let (span, parent) = (a.span_id(), a.parent_span_id());
    if !a.trace_ids().is_empty() && !span.is_empty() {
        let c1 = ix.get(&ix.span, &ix.str_key(span));
        let c2 = if parent.is_empty() || parent == span {
            ix.none()
        } else {
            ix.get(&ix.span, &ix.str_key(parent))
        };
        for j in c1.chain(c2) {
            if j == a_i {
                continue;
            }
            let b = &flows[j];
            if !a.traces_intersect(b) {
                continue;
            }
            if span == b.span_id()
                || span == b.parent_span_id()
                || (!parent.is_empty() && parent == b.span_id())
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
        let (x0, x1) = (a.x_request_id_0(), a.x_request_id_1());
        let c1 = if x0.is_empty() {
            ix.none()
        } else {
            ix.get(&ix.xreq, &ix.str_key(x0))
        };
        let c2 = if x1.is_empty() || x1 == x0 {
            ix.none()
        } else {
            ix.get(&ix.xreq, &ix.str_key(x1))
        };
        for j in c1.chain(c2) {
            if j == a_i {
                continue;
            }
            let b = &flows[j];
            if (!x0.is_empty() && x0 == b.x_request_id_1())
                || (!x1.is_empty() && x1 == b.x_request_id_0())
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
    let (q, p) = (a.syscall_trace_id_request(), a.syscall_trace_id_response());
    if q != p {
        let c1 = if q == 0 {
            ix.none()
        } else {
            ix.get(&ix.sys, &q)
        };
        let c2 = if p == 0 {
            ix.none()
        } else {
            ix.get(&ix.sys, &p)
        };
        for j in c1.chain(c2) {
            if j == a_i {
                continue;
            }
            let b = &flows[j];
            let bs = [b.syscall_trace_id_request(), b.syscall_trace_id_response()];
            if b.agent() != a.agent()
                || bs[0] == bs[1]
                || (a.tap_side() == "s-p" && b.tap_side() == "s-p")
            {
                continue;
            }
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
            for j in ix.get(&ix.dns, &id) {
                if j == a_i {
                    continue;
                }
                let b = &flows[j];
                if b.request_id() == a.request_id()
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
/// `rel[a]` lists `(b, bits)` in ascending `b`. Subjects are independent: from
/// `PARALLEL_FLOWS` flows on, each half of them is evaluated on its own thread.
pub fn relation_map(flows: &[Flow], ctx: &RelCtx) -> Vec<Vec<(usize, u8)>> {
    relation_map_with(flows, ctx, flows.len() >= super::PARALLEL_FLOWS)
}

pub(crate) fn relation_map_with(
    flows: &[Flow],
    ctx: &RelCtx,
    parallel: bool,
) -> Vec<Vec<(usize, u8)>> {
    let ix = Index::build(flows, ctx);
    super::in_halves(flows, parallel, |offset, part| {
        part.iter()
            .enumerate()
            .map(|(k, f)| {
                let mut v = Vec::new();
                relate_subject(f, Some(offset + k), flows, &ix, false, false, ctx, &mut v);
                normalise(&mut v);
                v
            })
            .collect()
    })
}

/// The strong TCP relation of §4.3.
pub fn is_relate<F: Relatable>(a: &F, b: &F, ctx: &RelCtx) -> bool {
    let d = ctx.dev(a, b);
    let ds = (a.start() - b.start()).abs() <= d;
    let de = (a.end() - b.end()).abs() <= d;
    let (ta, tb) = (a.kind(), b.kind());
    if ta == 2 && tb == 2 {
        ds && de
            && a.req_tcp_seq() == b.req_tcp_seq()
            && a.resp_tcp_seq() == b.resp_tcp_seq()
            && !flow_field_conflict(a, b)
    } else if ta != 1 && tb != 1 {
        ds && a.req_tcp_seq() == b.req_tcp_seq() && !flow_field_conflict(a, b)
    } else if ta != 0 && tb != 0 {
        de && a.resp_tcp_seq() == b.resp_tcp_seq() && !flow_field_conflict(a, b)
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
pub fn flow_field_conflict<F: Relatable>(a: &F, b: &F) -> bool {
    if !a.trace_ids().is_empty() && !b.trace_ids().is_empty() {
        if !a.traces_intersect(b) {
            return true;
        }
        if a.span_id().is_empty() && b.span_id().is_empty() {
            return false;
        }
        return a.span_id() != b.span_id();
    }
    let s_conflict = |p: &str, q: &str| !p.is_empty() && !q.is_empty() && p != q;
    let n_conflict = |p: u64, q: u64| p != 0 && q != 0 && p != q;
    let mut grpc_differ = false;
    let (pa, pb) = (a.l7_protocol(), b.l7_protocol());
    if pa != 0 && pb != 0 {
        let h2 = |p: u8| p == l7::HTTP2 || p == l7::GRPC;
        if h2(pa) && h2(pb) {
            grpc_differ = pa != pb;
        } else if pa != pb {
            return true;
        }
    }
    if s_conflict(a.x_request_id_0(), b.x_request_id_0())
        || s_conflict(a.x_request_id_1(), b.x_request_id_1())
        || n_conflict(a.protocol() as u64, b.protocol() as u64)
        || n_conflict(a.request_id().unwrap_or(0), b.request_id().unwrap_or(0))
    {
        return true;
    }
    // The other columns can only conflict when both flows have them.
    let (Some(x), Some(y)) = (a.detail(), b.detail()) else {
        return false;
    };
    if s_conflict(&x.http_proxy_client, &y.http_proxy_client)
        || (!grpc_differ && s_conflict(&x.biz_protocol, &y.biz_protocol))
        || s_conflict(&x.version, &y.version)
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
pub fn dns_field_conflict<F: Relatable>(a: &F, b: &F) -> bool {
    let s = |p: &str, q: &str| !p.is_empty() && !q.is_empty() && p != q;
    let n = |p: i64, q: i64| p != 0 && q != 0 && p != q;
    if n(a.protocol() as i64, b.protocol() as i64)
        || n(
            a.request_id().unwrap_or(0) as i64,
            b.request_id().unwrap_or(0) as i64,
        )
        || n(a.l7_protocol() as i64, b.l7_protocol() as i64)
    {
        return true;
    }
    let (Some(x), Some(y)) = (a.detail(), b.detail()) else {
        return false;
    };
    s(&x.endpoint, &y.endpoint)
        || s(&x.request_resource, &y.request_resource)
        || s(&x.request_type, &y.request_type)
        || n(
            x.response_code.unwrap_or(0) as i64,
            y.response_code.unwrap_or(0) as i64,
        )
        || s(&x.response_exception, &y.response_exception)
        || s(&x.response_result, &y.response_result)
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
                relate_subject(&flows[a], Some(a), &flows, &ix, true, false, &c, &mut out);
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

    fn random_meta(rng: &mut rand::rngs::StdRng, id: u64) -> crate::store::model::FlowMeta {
        use rand::Rng;
        let pick =
            |rng: &mut rand::rngs::StdRng, v: &[&str]| v[rng.random_range(0..v.len())].to_string();
        let start = rng.random_range(0..200_000);
        crate::store::model::FlowMeta {
            _id: id,
            r#type: rng.random_range(0..3),
            signal_source: [0, 3, 4][rng.random_range(0..3)],
            req_tcp_seq: rng.random_range(0..3),
            resp_tcp_seq: rng.random_range(0..3),
            start_time_us: start,
            end_time_us: start + rng.random_range(0..100_000),
            agent_id: rng.random_range(1..3),
            protocol: [6, 6, 17][rng.random_range(0..3)],
            syscall_trace_id_request: rng.random_range(0..3),
            syscall_trace_id_response: rng.random_range(0..3),
            span_id: pick(rng, &["", "s1", "s2"]),
            parent_span_id: pick(rng, &["", "s1", "s2"]),
            request_id: [None, Some(0), Some(1), Some(2)][rng.random_range(0..4)],
            l7_protocol: [0, 20, 21, 41, 120][rng.random_range(0..5)],
            trace_id: pick(rng, &["", "", "A", "B"]),
            _trace_id_2: pick(rng, &["", "", "A", "C"]),
            x_request_id_0: pick(rng, &["", "", "X", "Y"]),
            x_request_id_1: pick(rng, &["", "", "X", "Y"]),
            observation_point: pick(rng, &["c", "s", "c-p", "s-p", "app"]),
            time: (id >> 32) as u32,
        }
    }

    #[test]
    fn search_rows_relate_like_flows_of_their_flowmeta_columns() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut related = [0usize; 6];
        for round in 0..40 {
            let metas: Vec<_> = (0..50).map(|i| random_meta(&mut rng, i)).collect();
            let lean: Vec<MetaFlow> = metas.iter().cloned().map(MetaFlow::new).collect();
            let full: Vec<Flow> = metas.iter().map(Flow::from_meta).collect();
            let c = RelCtx {
                dns: round % 2 == 0,
                ..ctx()
            };
            // the lean index grown in pieces, the full one built at once
            let mut ix_lean = Index::default();
            let mut at = 0;
            while at < lean.len() {
                at = (at + rng.random_range(1..20)).min(lean.len());
                ix_lean.extend(&lean[..at], &c);
            }
            assert_eq!(ix_lean.len(), lean.len());
            let ix_full = Index::build(&full, &c);
            for strong in [true, false] {
                for a in 0..lean.len() {
                    let (mut x, mut y) = (Vec::new(), Vec::new());
                    let fx = relate_subject(
                        &lean[a],
                        Some(a),
                        &lean,
                        &ix_lean,
                        strong,
                        false,
                        &c,
                        &mut x,
                    );
                    let fy = relate_subject(
                        &full[a],
                        Some(a),
                        &full,
                        &ix_full,
                        strong,
                        false,
                        &c,
                        &mut y,
                    );
                    normalise(&mut x);
                    normalise(&mut y);
                    assert_eq!(
                        (fx, &x),
                        (fy, &y),
                        "round {round} subject {a} strong {strong}"
                    );
                    for &(_, bits) in &x {
                        for (k, n) in related.iter_mut().enumerate() {
                            *n += usize::from(bits & (1 << k) != 0);
                        }
                    }
                }
            }
            for a in 0..lean.len() {
                for b in 0..lean.len() {
                    assert_eq!(
                        is_relate(&lean[a], &lean[b], &c),
                        is_relate(&full[a], &full[b], &c)
                    );
                    assert_eq!(
                        flow_field_conflict(&lean[a], &lean[b]),
                        flow_field_conflict(&full[a], &full[b])
                    );
                    assert_eq!(
                        dns_field_conflict(&lean[a], &lean[b]),
                        dns_field_conflict(&full[a], &full[b])
                    );
                }
            }
        }
        // every relation kind occurs
        assert!(related[..5].iter().all(|&n| n > 0), "{related:?}");
    }

    #[test]
    fn relation_map_on_two_threads_equals_one() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        let flows: Vec<Flow> = (0..300)
            .map(|i| Flow::from_meta(&random_meta(&mut rng, i)))
            .collect();
        for dns in [false, true] {
            let c = RelCtx { dns, ..ctx() };
            let one = relation_map_with(&flows, &c, false);
            assert_eq!(relation_map_with(&flows, &c, true), one);
            assert!(one.iter().filter(|v| !v.is_empty()).count() > 100);
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
