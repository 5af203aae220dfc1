//! Candidate indexes of the sort phase. They return exactly the candidates the spec's linear
//! scans would accept (checked by differential tests against `SortOpts::exhaustive`), so
//! large traces stay near-linear: §6.4.4 parents by process identity and s-p start time,
//! §6.4.3 sibling groups by process, and §6.9 gRPC stream roots by `(request_id, l7)`.
//!
//! Owns only lookup structures; it never links spans.

use super::connect::Marks;
use super::{Dsu, Sorter};
use crate::autotrace::flow::{Flow, InstKey};
use foldhash::{HashMap, HashMapExt};

/// One candidate set of §6.4.4, keyed by the start time of its only s-p.
#[derive(Clone)]
pub(super) struct CandEntry {
    pub(super) start: i64,
    pub(super) end: i64,
    pub(super) pos: usize,
    pub(super) pss: usize,
    pub(super) sp: usize,
}

/// The best candidate so far: largest s-p start, ties to the smaller list position.
pub(super) struct Best {
    pub(super) sp: usize,
    pub(super) why: &'static str,
    pub(super) start: i64,
    pub(super) pos: usize,
}

impl Best {
    pub(super) fn offer(best: &mut Option<Best>, r: (usize, &'static str), e: &CandEntry) {
        if best
            .as_ref()
            .is_none_or(|b| e.start > b.start || (e.start == b.start && e.pos < b.pos))
        {
            *best = Some(Best {
                sp: r.0,
                why: r.1,
                start: e.start,
                pos: e.pos,
            });
        }
    }
}

/// Candidate sets of one process identity, sorted by (s-p start, list position).
#[derive(Default)]
pub(super) struct SubIndex {
    pub(super) normal: Vec<CandEntry>,
    /// Prefix maxima of `end` over `normal`.
    pub(super) max_end: Vec<i64>,
    /// Sets whose s-p lost its response (`rd == 0`).
    pub(super) zero: Vec<CandEntry>,
    /// Positions in `zero` by the s-p's syscall ids, x_request_id_0 and x_request_id_1, and
    /// by set id.
    pub(super) zero_by_sys: HashMap<u64, Vec<usize>>,
    pub(super) zero_by_x0: HashMap<String, Vec<usize>>,
    pub(super) zero_by_x1: HashMap<String, Vec<usize>>,
    pub(super) zero_of: HashMap<usize, usize>,
    /// Sets whose s-p is a unix-socket span (`server_port == 1`).
    pub(super) unix: Vec<CandEntry>,
}

impl SubIndex {
    pub(super) fn finish(&mut self, flows: &[Flow]) {
        self.normal.sort_by_key(|e| (e.start, e.pos));
        self.zero.sort_by_key(|e| (e.start, e.pos));
        self.unix.sort_by_key(|e| (e.start, e.pos));
        for (k, e) in self.zero.iter().enumerate() {
            let r = &flows[e.sp].rec;
            self.zero_by_sys
                .entry(r.syscall_trace_id_request)
                .or_default()
                .push(k);
            if r.syscall_trace_id_response != r.syscall_trace_id_request {
                self.zero_by_sys
                    .entry(r.syscall_trace_id_response)
                    .or_default()
                    .push(k);
            }
            if !r.x_request_id_0.is_empty() {
                self.zero_by_x0
                    .entry(r.x_request_id_0.clone())
                    .or_default()
                    .push(k);
            }
            if !r.x_request_id_1.is_empty() {
                self.zero_by_x1
                    .entry(r.x_request_id_1.clone())
                    .or_default()
                    .push(k);
            }
            self.zero_of.insert(e.pss, k);
        }
        let mut me = i64::MIN;
        self.max_end = self
            .normal
            .iter()
            .map(|e| {
                me = me.max(e.end);
                me
            })
            .collect();
    }
}

/// A §6.4.4 candidate list `L`, indexed by the process identities `process_matched` accepts
/// (agent + pid, or agent + pod instance) and by s-p start time.
pub(super) struct CandIndex {
    pub(super) list: Vec<usize>,
    /// Exhaustive mode: the linear scan of the spec over `list`.
    pub(super) multi_sp: bool,
    /// Sets holding several s-p, checked linearly: (list position, set).
    pub(super) multi: Vec<(usize, usize)>,
    pub(super) entries: Vec<CandEntry>,
    pub(super) entry_of: HashMap<usize, usize>,
    pub(super) by_pid: HashMap<(u16, i32), SubIndex>,
    pub(super) by_pod: HashMap<(u16, InstKey), SubIndex>,
}

impl CandIndex {
    pub(super) fn build(s: &Sorter<'_>, list: Vec<usize>) -> CandIndex {
        let mut ci = CandIndex {
            list: Vec::new(),
            multi_sp: false,
            multi: Vec::new(),
            entries: Vec::new(),
            entry_of: HashMap::new(),
            by_pid: HashMap::new(),
            by_pod: HashMap::new(),
        };
        for (pos, &p) in list.iter().enumerate() {
            let mut sps = s.t.pss[p].sps.iter().copied();
            let Some(sp) = sps.next() else {
                continue;
            };
            if sps.next().is_some() {
                // several s-p: a later one may be chosen; check this set linearly
                ci.multi.push((pos, p));
                continue;
            }
            let f = s.f(sp);
            let e = CandEntry {
                start: f.start(),
                end: f.end(),
                pos,
                pss: p,
                sp,
            };
            let n = &s.t.nodes[sp];
            let put = |sub: &mut SubIndex| {
                if f.rec.server_port == 1 {
                    sub.unix.push(e.clone());
                }
                if f.rd() == 0 {
                    sub.zero.push(e.clone());
                } else {
                    sub.normal.push(e.clone());
                }
            };
            if n.process_id != 0 {
                put(ci.by_pid.entry((f.agent(), n.process_id)).or_default());
            }
            if n.inst_type == 10 && n.inst != InstKey::Id(0) {
                put(ci.by_pod.entry((f.agent(), n.inst.clone())).or_default());
            }
            ci.entry_of.insert(p, ci.entries.len());
            ci.entries.push(e);
        }
        for sub in ci.by_pid.values_mut().chain(ci.by_pod.values_mut()) {
            sub.finish(s.flows);
        }
        ci.list = list;
        ci
    }

    /// The sub-indexes whose sets can be `process_matched` with client span `c`.
    pub(super) fn subs_for<'c>(
        &'c self,
        s: &Sorter<'_>,
        c: usize,
    ) -> impl Iterator<Item = &'c SubIndex> {
        let n = &s.t.nodes[c];
        let ag = s.f(c).agent();
        let a = if n.process_id != 0 {
            self.by_pid.get(&(ag, n.process_id))
        } else {
            None
        };
        let b = if n.inst_type == 10 {
            self.by_pod.get(&(ag, n.inst.clone()))
        } else {
            None
        };
        a.into_iter().chain(b)
    }
}

/// The §6.4.3 sibling groups (P-4: connected components), bucketed by the process identity
/// `indirect_attach` requires, so attaching one member only visits members that could match.
pub(super) struct Brothers {
    pub(super) exhaustive: bool,
    pub(super) all: HashMap<usize, Vec<usize>>,
    pub(super) comp: Vec<usize>,
    pub(super) by_pid: HashMap<(usize, u16, i32), Vec<usize>>,
    pub(super) by_pod: HashMap<(usize, u16, InstKey), Vec<usize>>,
}

impl Brothers {
    pub(super) fn new(s: &Sorter<'_>, client_sys: &[usize], dsu: &mut Dsu) -> Brothers {
        let mut b = Brothers {
            exhaustive: s.opts.exhaustive,
            all: HashMap::new(),
            comp: Vec::with_capacity(client_sys.len()),
            by_pid: HashMap::new(),
            by_pod: HashMap::new(),
        };
        for (pos, &c) in client_sys.iter().enumerate() {
            let root = dsu.find(pos);
            b.comp.push(root);
            b.all.entry(root).or_default().push(c);
            let n = &s.t.nodes[c];
            let ag = s.f(c).agent();
            if n.process_id != 0 {
                b.by_pid
                    .entry((root, ag, n.process_id))
                    .or_default()
                    .push(c);
            }
            if n.inst_type == 10 {
                b.by_pod
                    .entry((root, ag, n.inst.clone()))
                    .or_default()
                    .push(c);
            }
        }
        b
    }

    /// Members of `i`'s group (other than `i`) that `process_matched(sp, ·)` can accept, in
    /// flow-index order.
    pub(super) fn candidates(&mut self, s: &Sorter<'_>, i: usize, sp: usize) -> Vec<usize> {
        let root = self.comp[i];
        if self.exhaustive {
            // every member; `indirect_attach` skips the ones already placed (including `i`)
            return self.all[&root].clone();
        }
        let n = &s.t.nodes[sp];
        let ag = s.f(sp).agent();
        let mut out: Vec<usize> = Vec::new();
        if n.process_id != 0 {
            if let Some(v) = self.by_pid.get_mut(&(root, ag, n.process_id)) {
                v.retain(|&x| s.t.nodes[x].pss.is_none());
                out.extend(v.iter().copied());
            }
        }
        if n.inst_type == 10 && n.inst != InstKey::Id(0) {
            if let Some(v) = self.by_pod.get_mut(&(root, ag, n.inst.clone())) {
                v.retain(|&x| s.t.nodes[x].pss.is_none());
                out.extend(v.iter().copied());
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// NSS roots of the gRPC stream rule (§6.9 scenario 5 part 2), bucketed by
/// `(request_id, l7_protocol)` and sorted by `rd`, so a leaf only visits the roots it can take:
/// unparented roots with `rd(N) ≤ rd(L)`, linked in NSS order.
pub(super) struct GrpcRoots {
    /// `(rd, NSS order, span)` sorted; entries before `done` are parented or in `leftover`.
    pub(super) sorted: Vec<(i64, usize, usize)>,
    pub(super) done: usize,
    pub(super) leftover: Vec<(i64, usize, usize)>,
}

impl GrpcRoots {
    pub(super) fn build(s: &Sorter<'_>, mk: &Marks) -> HashMap<(u64, u8), GrpcRoots> {
        let mut out: HashMap<(u64, u8), GrpcRoots> = HashMap::new();
        for (&rid, roots) in &mk.roots_by_request_id {
            for &n in roots {
                let f = s.f(n);
                out.entry((rid, f.rec.l7_protocol))
                    .or_insert_with(|| GrpcRoots {
                        sorted: Vec::new(),
                        done: 0,
                        leftover: Vec::new(),
                    })
                    .sorted
                    .push((f.rd(), s.nss_pos(n), n));
            }
        }
        for b in out.values_mut() {
            b.sorted.sort_unstable();
        }
        out
    }

    /// The roots leaf `l` links, in NSS order. Roots it cannot take stay in `leftover`.
    pub(super) fn take(&mut self, s: &Sorter<'_>, l: usize) -> Vec<(i64, usize, usize)> {
        let rd = s.f(l).rd();
        let cut = self.sorted.partition_point(|e| e.0 <= rd).max(self.done);
        let mut cand = Vec::new();
        let mut keep = Vec::new();
        for &e in self
            .leftover
            .iter()
            .chain(self.sorted[self.done..cut].iter())
        {
            if s.has_parent(e.2) {
                continue;
            }
            if e.0 <= rd && e.2 != l && !s.same_set(l, e.2) {
                cand.push(e);
            } else {
                keep.push(e);
            }
        }
        self.leftover = keep;
        self.done = cut;
        cand.sort_unstable_by_key(|e| e.1);
        cand
    }
}
