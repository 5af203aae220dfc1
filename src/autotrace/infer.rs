//! INFERENCE: placing what DeepFlow's evidence loses, after the search and assembly, without
//! guessing.
//!
//! DeepFlow links spans only on hard evidence (trace and span ids, TCP sequences, syscall
//! trace ids, X-Request-IDs). Where a request's work leaves the thread that read it (thread
//! pools, async handlers, resolver threads), or where a call is made inside an application
//! span that did not propagate its span id, that evidence is missing: the subtree behind the
//! link is never searched, or the call hangs under the process span. This module decides, from
//! the columns DeepFlow ignores (the process on each side, start and end times within one
//! process), which links can be inferred, and only when exactly one candidate fits:
//!
//! - [`THREAD_HOP`]: a client call (`c-p`) of a process, not found by the search, lying
//!   wholly inside a server span (`s-p`) of the trace in that process while no other server
//!   span of the process overlaps it in a way that could hold it. Its subtree is then searched
//!   as DeepFlow searches, and hangs under that server span.
//! - [`INNERMOST_APP`]: a client call hanging under the server span of its process moves to the
//!   innermost application span of that process (below the same server span) whose interval
//!   contains it, when those candidates form one chain (concurrent candidates: no move).
//!
//! Owns the rules and the re-linking of an assembled [`TraceResult`]; pure and deterministic.
//! The service layer runs the store reads the rules ask for ([`Probe`]).

use super::output::{OutSpan, TraceResult};
use crate::store::model::{signal_source, FlowRecord};
use foldhash::{HashMap, HashSet, HashSetExt};

/// `deepflow.parent_reason` of a call found behind a thread hop.
pub const THREAD_HOP: &str =
    "inferred: the only server span of the process enclosing this call (thread hop)";
/// `deepflow.parent_reason` of a call moved under the application span that made it.
pub const INNERMOST_APP: &str =
    "inferred: innermost application span of the process enclosing this call";

/// The process a sys span was observed in: its global process id, else its pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProcessKey {
    Global(u32),
    Pid(i32),
}

impl ProcessKey {
    /// The process of side `side` (0 client, 1 server) of `r`, if the row names one.
    pub fn of(r: &FlowRecord, side: u8) -> Option<ProcessKey> {
        let (g, pid) = if side == 0 {
            (r.gprocess_id_0, r.process_id_0)
        } else {
            (r.gprocess_id_1, r.process_id_1)
        };
        if g != 0 {
            Some(ProcessKey::Global(g))
        } else if pid != 0 {
            Some(ProcessKey::Pid(pid))
        } else {
            None
        }
    }

    fn matches(&self, r: &FlowRecord, side: u8) -> bool {
        ProcessKey::of(r, side) == Some(*self)
            || match *self {
                // A row that also names the global process must name this one.
                ProcessKey::Pid(pid) => {
                    let (g, p) = if side == 0 {
                        (r.gprocess_id_0, r.process_id_0)
                    } else {
                        (r.gprocess_id_1, r.process_id_1)
                    };
                    g == 0 && p == pid
                }
                ProcessKey::Global(_) => false,
            }
    }
}

fn is_sys(r: &FlowRecord, tap: &str) -> bool {
    r.signal_source == signal_source::EBPF && r.observation_point == tap
}

/// A store read the thread-hop rule asks for: every eBPF row of `process` on `agent` whose
/// interval may overlap the server span `[start_us, end_us]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// First row `_id` of the server span.
    pub server: u64,
    /// Every row `_id` of the server span.
    pub server_ids: Vec<u64>,
    pub agent: u16,
    pub process: ProcessKey,
    pub start_us: i64,
    pub end_us: i64,
}

/// The probes of a trace: one per eBPF server span with a known process and a positive
/// duration, except those whose first row is in `done`; at most `max` of them, longest first.
pub fn probes(result: &TraceResult, done: &HashSet<u64>, max: usize) -> Vec<Probe> {
    let mut out: Vec<Probe> = result
        .spans
        .iter()
        .filter(|s| is_sys(&s.record, "s-p") && !done.contains(&s.ids[0]))
        .filter(|s| s.record.end_time_us > s.record.start_time_us)
        .filter_map(|s| {
            Some(Probe {
                server: s.ids[0],
                server_ids: s.ids.clone(),
                agent: s.record.agent_id,
                process: ProcessKey::of(&s.record, 1)?,
                start_us: s.record.start_time_us,
                end_us: s.record.end_time_us,
            })
        })
        .collect();
    out.sort_by_key(|p| (std::cmp::Reverse(p.end_us - p.start_us), p.server));
    out.truncate(max);
    out
}

/// The rows of a probe's answer that hang under its server span by [`THREAD_HOP`]: client
/// rows of the process, not in `known`, wholly inside the server span, that no other server
/// row of the process could hold. `cut` (the read hit its limit) adopts nothing: a row
/// missing from the answer could be another holder.
pub fn adopt(probe: &Probe, rows: &[FlowRecord], known: &HashSet<u64>, cut: bool) -> Vec<u64> {
    if cut {
        return Vec::new();
    }
    let mine: HashSet<u64> = probe.server_ids.iter().copied().collect();
    let servers: Vec<&FlowRecord> = rows
        .iter()
        .filter(|r| {
            r.agent_id == probe.agent
                && is_sys(r, "s-p")
                && probe.process.matches(r, 1)
                && !mine.contains(&r._id)
        })
        .collect();
    let mut out: Vec<u64> = rows
        .iter()
        .filter(|c| {
            c.agent_id == probe.agent
                && is_sys(c, "c-p")
                && probe.process.matches(c, 0)
                && !known.contains(&c._id)
                && probe.start_us <= c.start_time_us
                && c.end_time_us <= probe.end_us
                && !servers.iter().any(|s| could_hold(s, c))
        })
        .map(|c| c._id)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Whether server row `s` could be the one a call `c` was made for: a session enclosing it, a
/// request seen before it ended (response unknown), a response seen after it started.
fn could_hold(s: &FlowRecord, c: &FlowRecord) -> bool {
    match s.r#type {
        0 => s.start_time_us <= c.end_time_us,
        1 => s.end_time_us >= c.start_time_us,
        _ => s.start_time_us <= c.end_time_us && s.end_time_us >= c.start_time_us,
    }
}

/// One inferred link: span `child` (flow index) hangs under `parent` for `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub child: usize,
    pub parent: usize,
    pub reason: &'static str,
}

/// The links of the thread-hop rule once the adopted rows' subtrees are assembled into
/// `result`: each adopted row's span, when it is a root, under the span of its server row
/// (never under its own subtree).
pub fn hop_links(result: &TraceResult, adopted: &[(u64, u64)]) -> Vec<Link> {
    let by_row: HashMap<u64, usize> = result
        .spans
        .iter()
        .flat_map(|s| s.ids.iter().map(move |&id| (id, s.id)))
        .collect();
    let parent: HashMap<usize, Option<usize>> =
        result.spans.iter().map(|s| (s.id, s.parent_id)).collect();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for &(row, server) in adopted {
        let (Some(&c), Some(&p)) = (by_row.get(&row), by_row.get(&server)) else {
            continue;
        };
        if parent.get(&c).copied().flatten().is_some() || !seen.insert(c) {
            continue;
        }
        // `p` must not lie below `c`.
        let mut x = Some(p);
        let mut cycle = false;
        while let Some(v) = x {
            if v == c {
                cycle = true;
                break;
            }
            x = parent.get(&v).copied().flatten();
        }
        if !cycle {
            out.push(Link {
                child: c,
                parent: p,
                reason: THREAD_HOP,
            });
        }
    }
    out
}

/// The links of the innermost-application-span rule over `result` with `links` applied
/// first: every eBPF client span hanging under a server span of its own process moves to the
/// innermost application span below that server span (through application spans only) that
/// contains it in time, when the containing ones form one chain.
pub fn app_links(result: &TraceResult, links: &[Link]) -> Vec<Link> {
    let pos: HashMap<usize, usize> = result
        .spans
        .iter()
        .enumerate()
        .map(|(k, s)| (s.id, k))
        .collect();
    let mut parent: Vec<Option<usize>> = result
        .spans
        .iter()
        .map(|s| s.parent_id.and_then(|p| pos.get(&p).copied()))
        .collect();
    for l in links {
        if let (Some(&c), Some(&p)) = (pos.get(&l.child), pos.get(&l.parent)) {
            parent[c] = Some(p);
        }
    }
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); result.spans.len()];
    for (k, p) in parent.iter().enumerate() {
        if let Some(p) = p {
            children[*p].push(k);
        }
    }
    let spans = &result.spans;
    let mut out = Vec::new();
    for (k, c) in spans.iter().enumerate() {
        let Some(p) = parent[k] else { continue };
        let (cr, pr) = (&c.record, &spans[p].record);
        if !is_sys(cr, "c-p") || !is_sys(pr, "s-p") || cr.agent_id != pr.agent_id {
            continue;
        }
        let Some(process) = ProcessKey::of(pr, 1) else {
            continue;
        };
        if !process.matches(cr, 0) {
            continue;
        }
        // Application spans below the server span, reached through application spans only,
        // that contain the call; with their depth below the server span.
        let mut found: Vec<(usize, usize)> = Vec::new();
        let mut stack: Vec<(usize, usize)> = children[p]
            .iter()
            .filter(|&&a| spans[a].record.signal_source == signal_source::OTEL)
            .map(|&a| (a, 1))
            .collect();
        while let Some((a, depth)) = stack.pop() {
            let ar = &spans[a].record;
            if ar.start_time_us <= cr.start_time_us && cr.end_time_us <= ar.end_time_us {
                found.push((a, depth));
            }
            stack.extend(
                children[a]
                    .iter()
                    .filter(|&&x| spans[x].record.signal_source == signal_source::OTEL)
                    .map(|&x| (x, depth + 1)),
            );
        }
        let Some(&(deepest, _)) = found.iter().max_by_key(|(_, d)| *d) else {
            continue;
        };
        // Every other candidate must be an ancestor of the deepest one.
        let mut chain = HashSet::new();
        let mut x = Some(deepest);
        while let Some(v) = x {
            if v == p {
                break;
            }
            chain.insert(v);
            x = parent[v];
        }
        if found.iter().all(|(a, _)| chain.contains(a)) {
            out.push(Link {
                child: c.id,
                parent: spans[deepest].id,
                reason: INNERMOST_APP,
            });
        }
    }
    out
}

/// The whole rule set over an assembled trace: the thread-hop links of the `adopted` rows
/// (`(row, server row)`, from [`adopt`]), then the innermost-application-span links, applied
/// with [`relink`]. With nothing adopted (every row already in the trace, or a search that
/// does not probe), only the innermost-application-span rule can change the tree.
pub fn apply(result: &mut TraceResult, adopted: &[(u64, u64)], full: bool) {
    let mut links = hop_links(result, adopted);
    let app = app_links(result, &links);
    links.extend(app);
    relink(result, &links, full);
}

/// Apply `links` to `result`: parents, reasons, the inferred mark, children, parent span ids
/// (when `full`), self times of the parents involved, and the depth-first order (each moved
/// subtree takes its place among its new siblings by its former position).
pub fn relink(result: &mut TraceResult, links: &[Link], full: bool) {
    if links.is_empty() {
        return;
    }
    let pos: HashMap<usize, usize> = result
        .spans
        .iter()
        .enumerate()
        .map(|(k, s)| (s.id, k))
        .collect();
    let mut touched: HashSet<usize> = HashSet::new();
    for l in links {
        let (Some(&c), Some(&p)) = (pos.get(&l.child), pos.get(&l.parent)) else {
            continue;
        };
        if let Some(old) = result.spans[c].parent_id {
            if let Some(&o) = pos.get(&old) {
                result.spans[o].childs.retain(|&x| x != l.child);
                touched.insert(o);
            }
        }
        let parent_dsid = if full {
            result.spans[p].deepflow_span_id.clone()
        } else {
            String::new()
        };
        let span = &mut result.spans[c];
        span.parent_id = Some(l.parent);
        span.set_parent_info = Some(l.reason.to_string());
        span.inferred = true;
        span.deepflow_parent_span_id = parent_dsid;
        result.spans[p].childs.push(l.child);
        touched.insert(p);
    }
    for &k in &touched {
        let childs = result.spans[k].childs.clone();
        result.spans[k].selftime = selftime(&result.spans[k], &childs, &result.spans, &pos);
    }
    reorder(result, &pos);
}

/// §7.5's self time of `s` over its present children.
fn selftime(s: &OutSpan, childs: &[usize], spans: &[OutSpan], pos: &HashMap<usize, usize>) -> i64 {
    let own = s.record.response_duration as i64;
    if s.record.end_time_us - s.record.start_time_us == 0 {
        return own;
    }
    let mut left = own;
    for c in childs {
        let Some(&k) = pos.get(c) else { continue };
        let r = &spans[k].record;
        let d = r.end_time_us - r.start_time_us;
        if d <= 0 {
            continue;
        }
        left = if d <= left { left - d } else { 0 };
    }
    left
}

/// Depth-first order again: roots, then each span's children, by their former positions.
fn reorder(result: &mut TraceResult, pos: &HashMap<usize, usize>) {
    let n = result.spans.len();
    let mut kids: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut roots = Vec::new();
    for (k, s) in result.spans.iter().enumerate() {
        match s.parent_id.and_then(|p| pos.get(&p).copied()) {
            Some(p) if p != k => kids[p].push(k),
            _ => roots.push(k),
        }
    }
    let mut order = Vec::with_capacity(n);
    let mut seen = vec![false; n];
    let mut stack: Vec<usize> = roots.into_iter().rev().collect();
    while let Some(k) = stack.pop() {
        if std::mem::replace(&mut seen[k], true) {
            continue;
        }
        order.push(k);
        stack.extend(kids[k].iter().rev().copied());
    }
    // A cycle cannot be reached from a root: keep its spans, in their former order.
    order.extend((0..n).filter(|&k| !seen[k]));
    let mut slots: Vec<Option<OutSpan>> = std::mem::take(&mut result.spans)
        .into_iter()
        .map(Some)
        .collect();
    result.spans = order.into_iter().filter_map(|k| slots[k].take()).collect();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64, sig: u16, tap: &str, start: i64, end: i64) -> FlowRecord {
        FlowRecord {
            _id: id,
            signal_source: sig,
            observation_point: tap.into(),
            agent_id: 1,
            start_time_us: start,
            end_time_us: end,
            response_duration: (end - start) as u64,
            r#type: 2,
            ..FlowRecord::default()
        }
    }

    fn sp(id: u64, start: i64, end: i64) -> FlowRecord {
        let mut r = rec(id, 3, "s-p", start, end);
        r.gprocess_id_1 = 7;
        r
    }

    fn cp(id: u64, start: i64, end: i64) -> FlowRecord {
        let mut r = rec(id, 3, "c-p", start, end);
        r.gprocess_id_0 = 7;
        r
    }

    fn span(id: usize, parent: Option<usize>, r: FlowRecord) -> OutSpan {
        OutSpan {
            id,
            ids: vec![r._id],
            parent_id: parent,
            childs: Vec::new(),
            related_ids: Vec::new(),
            selftime: r.response_duration as i64,
            set_parent_info: None,
            inferred: false,
            deepflow_span_id: format!("s{id}"),
            deepflow_parent_span_id: String::new(),
            render_start_time_us: r.start_time_us,
            render_end_time_us: r.end_time_us,
            service_uid: None,
            service_uname: None,
            auto_service_id: None,
            auto_service: None,
            auto_service_type: None,
            process_id: None,
            subnet: None,
            ip: None,
            process_kname: None,
            gprocess: None,
            trace_id: String::new(),
            trace_ids: Vec::new(),
            record: Box::new(r),
        }
    }

    fn probe() -> Probe {
        Probe {
            server: 1,
            server_ids: vec![1],
            agent: 1,
            process: ProcessKey::Global(7),
            start_us: 100,
            end_us: 200,
        }
    }

    #[test]
    fn a_call_inside_one_server_span_only_is_adopted() {
        let rows = vec![sp(1, 100, 200), cp(2, 120, 150), cp(3, 190, 210)];
        let known = HashSet::from_iter([1]);
        assert_eq!(adopt(&probe(), &rows, &known, false), vec![2]);
        assert!(adopt(&probe(), &rows, &known, true).is_empty());
        // Another process's call is not.
        let mut other = cp(4, 120, 150);
        other.gprocess_id_0 = 8;
        assert!(adopt(&probe(), &[other], &known, false).is_empty());
    }

    #[test]
    fn a_call_two_server_spans_could_hold_is_left_alone() {
        for holder in [sp(9, 50, 160), {
            let mut r = sp(9, 140, 140);
            r.r#type = 0;
            r
        }] {
            let rows = vec![sp(1, 100, 200), cp(2, 120, 150), holder];
            assert!(adopt(&probe(), &rows, &HashSet::new(), false).is_empty());
        }
        // A server span of the process that ended before the call does not compete.
        let rows = vec![sp(1, 100, 200), cp(2, 120, 150), sp(9, 50, 110)];
        assert_eq!(adopt(&probe(), &rows, &HashSet::new(), false), vec![2]);
    }

    fn app(id: u64, start: i64, end: i64) -> FlowRecord {
        rec(id, 4, "app", start, end)
    }

    #[test]
    fn a_call_moves_to_the_innermost_enclosing_app_span_only_when_unambiguous() {
        // s-p 0 → app 1 (0..1000) → app 2 (100..500); call 3 (200..300) under s-p.
        let mut r = TraceResult {
            spans: vec![
                span(0, None, sp(10, 0, 1000)),
                span(1, Some(0), app(11, 0, 1000)),
                span(2, Some(1), app(12, 100, 500)),
                span(3, Some(0), cp(13, 200, 300)),
            ],
            ..TraceResult::default()
        };
        r.spans[0].childs = vec![1, 3];
        r.spans[1].childs = vec![2];
        let links = app_links(&r, &[]);
        assert_eq!(
            links,
            vec![Link {
                child: 3,
                parent: 2,
                reason: INNERMOST_APP
            }]
        );
        relink(&mut r, &links, true);
        let moved = r.spans.iter().find(|s| s.id == 3).unwrap();
        assert_eq!(moved.parent_id, Some(2));
        assert!(moved.inferred);
        assert_eq!(moved.deepflow_parent_span_id, "s2");
        let order: Vec<usize> = r.spans.iter().map(|s| s.id).collect();
        assert_eq!(order, vec![0, 1, 2, 3]);
        assert_eq!(r.spans[0].childs, vec![1]);
        assert_eq!(r.spans[0].selftime, 0);
        assert_eq!(r.spans[2].selftime, 300);

        // A concurrent sibling also containing the call: no move.
        let mut r2 = TraceResult {
            spans: vec![
                span(0, None, sp(10, 0, 1000)),
                span(1, Some(0), app(11, 100, 500)),
                span(2, Some(0), app(12, 150, 600)),
                span(3, Some(0), cp(13, 200, 300)),
            ],
            ..TraceResult::default()
        };
        r2.spans[0].childs = vec![1, 2, 3];
        assert!(app_links(&r2, &[]).is_empty());
    }

    #[test]
    fn hop_links_attach_roots_only() {
        let r = TraceResult {
            spans: vec![
                span(0, None, sp(10, 0, 1000)),
                span(1, None, cp(11, 100, 200)),
                span(2, Some(0), cp(12, 300, 400)),
            ],
            ..TraceResult::default()
        };
        let links = hop_links(&r, &[(11, 10), (12, 10), (99, 10)]);
        assert_eq!(
            links,
            vec![Link {
                child: 1,
                parent: 0,
                reason: THREAD_HOP
            }]
        );
    }
}
