//! Root/leaf marking (spec §6.8) and the connection scenarios 1–8 between span sets (§6.9),
//! with C-1 omitted, C-3 (`has_parent` re-check when applying `M`) and C-4 (first match).
//!
//! Owns only links between different span sets.

use super::index::GrpcRoots;
use super::{cover, Sorter};
use crate::autotrace::flow::{sorted_intersect, Flow};
use crate::autotrace::relate::{SPAN_ID, X_REQUEST_ID};
use crate::autotrace::IndexMap;
use crate::store::model::l7_protocol as l7;
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

impl<'a> Sorter<'a> {
    pub(super) fn mark_roots_and_leafs(&mut self) -> Marks {
        let mut mk = Marks::default();
        for &p in &self.t.process_list.clone() {
            let members = self.t.pss[p].spans.clone();
            let mut not_leaf = HashSet::new();
            for &m in &members {
                if let Some(par) = self.t.nodes[m].parent {
                    if self.t.nodes[par].pss == Some(p) {
                        not_leaf.insert(par);
                    }
                }
            }
            for &m in &members {
                if self.t.nodes[m].parent.is_none() {
                    self.t.nodes[m].is_ps_root = true;
                    mk.process_roots.push(m);
                }
                if !not_leaf.contains(&m) {
                    self.t.nodes[m].is_ps_leaf = true;
                    mk.process_leafs.push(m);
                }
            }
        }
        for nss in &self.t.nss {
            if let (Some(&first), Some(&last)) = (nss.spans.first(), nss.spans.last()) {
                mk.network_roots.push(first);
                mk.network_leafs.push(last);
                if let Some(rid) = self.f(first).request_id_truthy() {
                    mk.roots_by_request_id.entry(rid).or_default().push(first);
                }
            }
        }
        mk
    }

    pub(super) fn connect(&mut self, mk: Marks) {
        let rel = self.rel;
        // Scenario 1: PSS leaf → NSS root, same span_id
        for &p in &mk.process_leafs {
            let fp = self.f(p);
            if fp.starts_with_c() && self.t.nodes[p].children_count > 0 {
                continue;
            }
            for &(n, bits) in &rel[p] {
                if bits & SPAN_ID == 0 {
                    continue;
                }
                let fnn = self.f(n);
                if !self.t.nodes[n].is_net_root || self.has_parent(n) || self.same_set(p, n) {
                    continue;
                }
                if !fp.is_app()
                    && ((fnn.agent() == fp.agent() && !cover(fp, fnn))
                        || (fnn.rd() > 0 && fp.rd() < fnn.rd()))
                {
                    continue;
                }
                if !fp.rec.span_id.is_empty() && fp.rec.span_id == fnn.rec.span_id {
                    self.set_parent(n, p, "net_span mounted due to same span_id");
                }
            }
        }
        // Scenario 2: NSS leaf → PSS root (C-1 check omitted)
        for &l in &mk.network_leafs {
            let fl = self.f(l);
            if fl.starts_with_s() && self.t.nodes[l].children_count > 0 {
                continue;
            }
            for &(r, bits) in &rel[l] {
                if bits & SPAN_ID == 0 {
                    continue;
                }
                let fr = self.f(r);
                if !self.t.nodes[r].is_ps_root || self.has_parent(r) || self.same_set(l, r) {
                    continue;
                }
                if !fr.is_app()
                    && ((fr.agent() == fl.agent() && !cover(fl, fr))
                        || (fl.rd() > 0 && fl.rd() < fr.rd()))
                {
                    continue;
                }
                let lsid = &fl.rec.span_id;
                if !lsid.is_empty() && fr.rec.span_id == *lsid && !fr.is_app() {
                    self.set_parent(
                        r,
                        l,
                        format!("{} mounted due to same span_id", fr.tap_side()),
                    );
                } else if !lsid.is_empty() && fr.rec.parent_span_id == *lsid {
                    self.set_parent(
                        r,
                        l,
                        format!("{} mounted due to parent_span_id", fr.tap_side()),
                    );
                }
            }
        }
        // Scenario 3: PSS leaf → PSS root
        for &p in &mk.process_leafs {
            let fp = self.f(p);
            for &(r, bits) in &rel[p] {
                if bits & SPAN_ID == 0 {
                    continue;
                }
                let fr = self.f(r);
                if !self.t.nodes[r].is_ps_root || self.has_parent(r) || self.same_set(p, r) {
                    continue;
                }
                if !fp.is_app()
                    && !fr.is_app()
                    && ((fp.agent() == fr.agent() && !cover(fp, fr))
                        || (fp.rd() > 0 && fp.rd() < fr.rd()))
                {
                    continue;
                }
                let psid = &fp.rec.span_id;
                if *psid == fr.rec.span_id && !fr.is_app() {
                    self.set_parent(
                        r,
                        p,
                        format!("{} mounted due to same span_id", fr.tap_side()),
                    );
                } else if !psid.is_empty() && fr.rec.parent_span_id == *psid {
                    self.set_parent(
                        r,
                        p,
                        format!("{} mounted due to parent_span_id", fr.tap_side()),
                    );
                }
            }
        }
        // Scenario 4: PSS root → OTel span of another PSS (C-4: first match)
        for &r in &mk.process_roots {
            let fr = self.f(r);
            if self.has_parent(r) || fr.rec.parent_span_id.is_empty() {
                continue;
            }
            for &(a, bits) in &rel[r] {
                if bits & SPAN_ID == 0 {
                    continue;
                }
                let fa = self.f(a);
                if !fa.is_app() || self.same_set(r, a) || !cover(fa, fr) {
                    continue;
                }
                if fr.rec.parent_span_id == fa.rec.span_id
                    && self.set_parent(
                        r,
                        a,
                        format!("{} mounted due to same span_id", fr.tap_side()),
                    )
                {
                    break;
                }
            }
        }
        // Scenario 5: NSS leaf → NSS root
        let mut m: IndexMap<usize, (usize, String)> = IndexMap::default();
        let mut grpc = GrpcRoots::build(self, &mk);
        for &l in &mk.network_leafs {
            let fl = self.f(l);
            let rl = &fl.rec;
            for &(n, bits) in &rel[l] {
                if bits & (SPAN_ID | X_REQUEST_ID) == 0 {
                    continue;
                }
                let fnn = self.f(n);
                let rn = &fnn.rec;
                if !self.t.nodes[n].is_net_root || self.has_parent(n) || self.same_set(l, n) {
                    continue;
                }
                if !fl.is_app()
                    && !fnn.is_app()
                    && fl.agent() == fnn.agent()
                    && fl.start() > fnn.start()
                {
                    continue;
                }
                let mut reason = String::from("net_span mounted due to");
                let mut matched = false;
                if !rl.x_request_id_1.is_empty() && rl.x_request_id_1 == rn.x_request_id_0 {
                    matched = true;
                    reason.push_str(" x_request_id 1->0");
                }
                if !rl.x_request_id_0.is_empty() && rl.x_request_id_0 == rn.x_request_id_0 {
                    matched = true;
                    reason.push_str(" x_request_id 0->0");
                }
                if !rl.x_request_id_1.is_empty() && rl.x_request_id_1 == rn.x_request_id_1 {
                    matched = true;
                    reason.push_str(" x_request_id 1->1");
                }
                if !rl.span_id.is_empty() && rl.span_id == rn.span_id {
                    matched = true;
                    reason = " same span_id".to_string();
                }
                if matched && fl.rd() >= fnn.rd() {
                    match m.get_mut(&n) {
                        None => {
                            m.insert(n, (l, reason));
                        }
                        Some(e) => {
                            if self.f(e.0).rd() > fl.rd() {
                                *e = (l, reason);
                            }
                        }
                    }
                }
            }
            if let Some(rid) = fl.request_id_truthy().filter(|_| self.opts.exhaustive) {
                // the spec's scan, kept for differential tests
                for &n in mk.roots_by_request_id.get(&rid).into_iter().flatten() {
                    let fnn = self.f(n);
                    if n == l || self.has_parent(n) || self.same_set(l, n) {
                        continue;
                    }
                    if !matches!(rl.l7_protocol, l7::HTTP2 | l7::GRPC)
                        || fnn.rec.l7_protocol != rl.l7_protocol
                        || fnn.rd() > fl.rd()
                    {
                        continue;
                    }
                    self.set_parent(n, l, "net_span mounted due to grpc request_id");
                }
            } else if let Some(rid) = fl.request_id_truthy() {
                if matches!(rl.l7_protocol, l7::HTTP2 | l7::GRPC) {
                    let key = (rid, rl.l7_protocol);
                    if let Some(b) = grpc.get_mut(&key) {
                        for e in b.take(self, l) {
                            if !self.set_parent(e.2, l, "net_span mounted due to grpc request_id") {
                                b.leftover.push(e);
                            }
                        }
                    }
                }
            }
        }
        // Scenario 6: async WebSphereMQ
        {
            let mq = |f: &Flow| f.rec.l7_protocol == l7::WEBSPHEREMQ && f.rec.is_async != 0;
            let leafs: Vec<usize> = mk
                .network_leafs
                .iter()
                .copied()
                .filter(|&l| {
                    let f = self.f(l);
                    mq(f)
                        && self.t.nodes[l].children_count == 0
                        && f.starts_with_c()
                        && !f.trace_ids.is_empty()
                })
                .collect();
            let roots: Vec<usize> = mk
                .network_roots
                .iter()
                .copied()
                .filter(|&n| {
                    let f = self.f(n);
                    mq(f) && self.t.nodes[n].is_net_root && !self.has_parent(n) && f.starts_with_s()
                })
                .collect();
            for &l in &leafs {
                let fl = self.f(l);
                for &n in &roots {
                    let fnn = self.f(n);
                    if n == l || self.same_set(l, n) || !fl.traces_intersect(fnn) {
                        continue;
                    }
                    if !fl.is_app()
                        && !fnn.is_app()
                        && fl.agent() == fnn.agent()
                        && fl.start() > fnn.start()
                    {
                        continue;
                    }
                    match m.get_mut(&n) {
                        None => {
                            m.insert(
                                n,
                                (
                                    l,
                                    "net_span mounted due to webspheremq async trace_id".into(),
                                ),
                            );
                        }
                        Some(e) => {
                            if self.f(e.0).start() < fl.start() {
                                e.0 = l;
                            }
                        }
                    }
                }
            }
        }
        // Apply M (C-3: re-check has_parent)
        for (n, (l, reason)) in m {
            if !self.has_parent(n) {
                self.set_parent(n, l, reason);
            }
        }
        // Scenarios 7 and 8 (opt-in)
        let mut w: IndexMap<usize, (usize, &'static str)> = IndexMap::default();
        let mut wc: HashMap<usize, usize> = HashMap::new();
        if self.opts.net_c_to_s_via_trace_id {
            let mut by_trace: HashMap<&str, Vec<usize>> = HashMap::new();
            for (pos, &n) in mk.network_roots.iter().enumerate() {
                for t in &self.f(n).trace_ids {
                    by_trace.entry(t.as_str()).or_default().push(pos);
                }
            }
            for &l in &mk.network_leafs {
                let fl = self.f(l);
                if self.t.nodes[l].children_count != 0
                    || !fl.starts_with_c()
                    || fl.trace_ids.is_empty()
                {
                    continue;
                }
                let mut cands: Vec<usize> = fl
                    .trace_ids
                    .iter()
                    .filter_map(|t| by_trace.get(t.as_str()))
                    .flatten()
                    .copied()
                    .collect();
                cands.sort_unstable();
                cands.dedup();
                for pos in cands {
                    let n = mk.network_roots[pos];
                    let fnn = self.f(n);
                    if !self.t.nodes[n].is_net_root
                        || n == l
                        || fnn.rec.l7_protocol != fl.rec.l7_protocol
                        || self.has_parent(n)
                        || !fnn.starts_with_s()
                        || self.same_set(l, n)
                    {
                        continue;
                    }
                    if !fl.is_app()
                        && !fnn.is_app()
                        && fl.agent() == fnn.agent()
                        && fl.start() > fnn.start()
                    {
                        continue;
                    }
                    if (fl.rec.req_tcp_seq != 0 && fl.rec.req_tcp_seq == fnn.rec.req_tcp_seq)
                        || (fl.rec.resp_tcp_seq != 0 && fl.rec.resp_tcp_seq == fnn.rec.resp_tcp_seq)
                    {
                        continue;
                    }
                    if fl.rd() < fnn.rd() {
                        continue;
                    }
                    match w.get_mut(&n) {
                        None => {
                            w.insert(n, (l, "net_span c->s weakly mounted due to trace_id"));
                        }
                        Some(e) => {
                            if self.f(e.0).rd() > fl.rd() {
                                *e = (l, "net_span c->s weakly mounted due to trace_id");
                            }
                        }
                    }
                    match wc.get_mut(&l) {
                        None => {
                            wc.insert(l, n);
                        }
                        Some(e) => {
                            if self.f(*e).rd() < fnn.rd() {
                                *e = n;
                            }
                        }
                    }
                }
            }
        }
        if self.opts.sys_s_to_c_via_trace_id {
            let mut by_trace: HashMap<&str, Vec<usize>> = HashMap::new();
            for (pos, &r) in mk.process_roots.iter().enumerate() {
                for t in &self.f(r).trace_ids {
                    by_trace.entry(t.as_str()).or_default().push(pos);
                }
            }
            for &p in &mk.process_leafs {
                let fp = self.f(p);
                let np = &self.t.nodes[p];
                if !fp.starts_with_s()
                    || fp.is_net()
                    || !matches!(np.inst_type, 1 | 14)
                    || fp.trace_ids.is_empty()
                {
                    continue;
                }
                let mut cands: Vec<usize> = fp
                    .trace_ids
                    .iter()
                    .filter_map(|t| by_trace.get(t.as_str()))
                    .flatten()
                    .copied()
                    .collect();
                cands.sort_unstable();
                cands.dedup();
                for pos in cands {
                    let r = mk.process_roots[pos];
                    let fr = self.f(r);
                    let nr = &self.t.nodes[r];
                    if !nr.is_ps_root
                        || r == p
                        || nr.inst != np.inst
                        || nr.inst_type != np.inst_type
                        || (fp.agent() == fr.agent() && !cover(fp, fr))
                        || self.has_parent(r)
                        || !fr.starts_with_c()
                        || self.same_set(p, r)
                        || !sorted_intersect(&fp.trace_ids, &fr.trace_ids)
                    {
                        continue;
                    }
                    match w.get_mut(&r) {
                        None => {
                            w.insert(r, (p, "sys_span s->c weakly mounted due to trace_id"));
                        }
                        Some(e) => {
                            if self.f(e.0).rd() > fp.rd() {
                                *e = (p, "sys_span s->c weakly mounted due to trace_id");
                            }
                        }
                    }
                }
            }
        }
        for (child, (parent, reason)) in w {
            if wc.get(&parent).is_some_and(|&c| c != child) || self.has_parent(child) {
                continue;
            }
            self.set_parent(child, parent, reason);
        }
    }
}

#[derive(Default)]
pub(super) struct Marks {
    pub(super) process_roots: Vec<usize>,
    pub(super) process_leafs: Vec<usize>,
    pub(super) network_roots: Vec<usize>,
    pub(super) network_leafs: Vec<usize>,
    pub(super) roots_by_request_id: HashMap<u64, Vec<usize>>,
}
