//! Process span sets (spec §6.3–§6.4): building them from app spans, attaching sys spans to
//! them, and choosing the s-p parent of client sys spans through the candidate indexes.
//!
//! Owns only PSS membership and the links §6.3/§6.4 make; it must not touch NSS or the
//! connection scenarios.

use super::index::{Best, CandEntry, CandIndex, SubIndex};
use super::{cover, cover_lost_resp, full_before_lost_resp, Pss, Sorter, SvcVals};
use crate::autotrace::flow::{Flow, InstKey};
use crate::autotrace::IndexMap;
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

impl<'a> Sorter<'a> {
    /// Best parent by `attach_via_sys` over the candidate sets of `ci` (largest s-p start,
    /// ties to the first set in list order).
    pub(super) fn best_via_sys(&self, ci: &CandIndex, c: usize) -> Option<(usize, &'static str)> {
        let fc = self.f(c);
        if ci.multi_sp {
            let mut best: Option<(usize, &'static str)> = None;
            for &x in &ci.list {
                if let Some((sp, why)) = self.attach_via_sys(x, c) {
                    if best.is_none_or(|(b, _)| self.f(sp).start() > self.f(b).start()) {
                        best = Some((sp, why));
                    }
                }
            }
            return best;
        }
        let mut best: Option<Best> = None;
        for &(pos, x) in &ci.multi {
            if let Some(r) = self.attach_via_sys(x, c) {
                let e = CandEntry {
                    start: self.f(r.0).start(),
                    end: 0,
                    pos,
                    pss: x,
                    sp: r.0,
                };
                Best::offer(&mut best, r, &e);
            }
        }
        for sub in ci.subs_for(self, c) {
            // s-p with a response: must cover c; the prefix maxima of `end` bound the scan
            let j = sub.normal.partition_point(|e| e.start <= fc.start());
            for k in (0..j).rev() {
                let e = &sub.normal[k];
                if best.as_ref().is_some_and(|b| e.start < b.start) || sub.max_end[k] < fc.end() {
                    break;
                }
                if e.end >= fc.end() {
                    if let Some(r) = self.attach_via_sys(e.pss, c) {
                        Best::offer(&mut best, r, e);
                    }
                }
            }
            // s-p that lost its response cover everything after their start: look them up by
            // the keys the match predicates need, or scan back when the lookups are large
            let j = sub.zero.partition_point(|e| e.start <= fc.start());
            if let Some(ks) = self.zero_candidates(sub, c, j) {
                for k in ks {
                    let e = &sub.zero[k];
                    if let Some(r) = self.attach_via_sys(e.pss, c) {
                        Best::offer(&mut best, r, e);
                    }
                }
                continue;
            }
            for k in (0..j).rev() {
                let e = &sub.zero[k];
                if best.as_ref().is_some_and(|b| e.start < b.start) {
                    break;
                }
                if let Some(r) = self.attach_via_sys(e.pss, c) {
                    Best::offer(&mut best, r, e);
                }
            }
        }
        best.map(|b| (b.sp, b.why))
    }

    /// Zero-`rd` candidates of `sub` (positions below `j`) that can satisfy one of the match
    /// predicates of `attach_via_sys`, or `None` when the lookups are too large to pay off.
    pub(super) fn zero_candidates(&self, sub: &SubIndex, c: usize, j: usize) -> Option<Vec<usize>> {
        if sub.zero.is_empty() || j == 0 {
            return Some(Vec::new());
        }
        let r = &self.f(c).rec;
        let mut budget: usize = 64;
        let mut ks: Vec<usize> = Vec::new();
        let mut take = |v: Option<&Vec<usize>>, ks: &mut Vec<usize>| -> bool {
            let Some(v) = v else { return true };
            if v.len() > budget {
                return false;
            }
            budget -= v.len();
            ks.extend(v.iter().copied());
            true
        };
        let (q, p) = (r.syscall_trace_id_request, r.syscall_trace_id_response);
        let mut ok = take(sub.zero_by_sys.get(&q), &mut ks);
        if p != q {
            ok &= take(sub.zero_by_sys.get(&p), &mut ks);
        }
        if !r.x_request_id_0.is_empty() {
            ok &= take(sub.zero_by_x0.get(&r.x_request_id_0), &mut ks);
            ok &= take(sub.zero_by_x1.get(&r.x_request_id_0), &mut ks);
        }
        if !r.x_request_id_1.is_empty() {
            ok &= take(sub.zero_by_x1.get(&r.x_request_id_1), &mut ks);
        }
        if !ok {
            return None;
        }
        let mut sets: Vec<usize> = Vec::new();
        let mut dynamic = |v: Option<&Vec<usize>>| -> bool {
            let Some(v) = v else { return true };
            if v.len() > budget {
                return false;
            }
            budget -= v.len();
            sets.extend(v.iter().copied());
            true
        };
        let mut ok = true;
        if q != 0 {
            ok &= dynamic(self.leaf_resp_sets.get(&q));
        }
        if p != 0 {
            ok &= dynamic(self.leaf_req_sets.get(&p));
        }
        for t in &self.f(c).trace_ids {
            ok &= dynamic(self.trace_sets.get(t.as_str()));
        }
        if !ok {
            return None;
        }
        ks.extend(sets.iter().filter_map(|x| sub.zero_of.get(x).copied()));
        ks.retain(|&k| k < j);
        ks.sort_unstable();
        ks.dedup();
        Some(ks)
    }

    /// Reverse (unix socket) child by `append_via_unix`: smallest s-p start, ties to list order.
    pub(super) fn best_via_unix(&self, ci: &CandIndex, c: usize) -> Option<(usize, &'static str)> {
        let fc = self.f(c);
        let mut best: Option<Best> = None;
        let offer = |best: &mut Option<Best>, r: (usize, &'static str), start: i64, pos: usize| {
            if best
                .as_ref()
                .is_none_or(|b| start < b.start || (start == b.start && pos < b.pos))
            {
                *best = Some(Best {
                    sp: r.0,
                    why: r.1,
                    start,
                    pos,
                });
            }
        };
        if ci.multi_sp {
            for (pos, &x) in ci.list.iter().enumerate() {
                if let Some(r) = self.append_via_unix(x, c) {
                    offer(&mut best, r, self.f(r.0).start(), pos);
                }
            }
            return best.map(|b| (b.sp, b.why));
        }
        for &(pos, x) in &ci.multi {
            if let Some(r) = self.append_via_unix(x, c) {
                offer(&mut best, r, self.f(r.0).start(), pos);
            }
        }
        // a single unix s-p must lie inside c: c.start ≤ s.start ≤ c.end
        for sub in ci.subs_for(self, c) {
            let lo = sub.unix.partition_point(|e| e.start < fc.start());
            for e in &sub.unix[lo..] {
                if e.start > fc.end() {
                    break;
                }
                if let Some(r) = self.append_via_unix(e.pss, c) {
                    offer(&mut best, r, e.start, e.pos);
                }
            }
        }
        best.map(|b| (b.sp, b.why))
    }

    /// Best parent by `attach_via_preceding` (largest s-p start, ties to list order).
    pub(super) fn best_via_preceding(
        &self,
        ci: &CandIndex,
        c: usize,
    ) -> Option<(usize, &'static str)> {
        let fc = self.f(c);
        if ci.multi_sp {
            let mut best: Option<(usize, &'static str)> = None;
            for &x in &ci.list {
                if let Some((sp, why)) = self.attach_via_preceding(x, c) {
                    if best.is_none_or(|(b, _)| self.f(sp).start() > self.f(b).start()) {
                        best = Some((sp, why));
                    }
                }
            }
            return best;
        }
        // Few sets share c's trace ids: try exactly those (the trace test is required).
        let by_trace: usize = fc
            .trace_ids
            .iter()
            .map(|t| self.trace_sets.get(t.as_str()).map_or(0, Vec::len))
            .sum();
        let mut best: Option<Best> = None;
        for &(pos, x) in &ci.multi {
            if let Some(r) = self.attach_via_preceding(x, c) {
                let e = CandEntry {
                    start: self.f(r.0).start(),
                    end: 0,
                    pos,
                    pss: x,
                    sp: r.0,
                };
                Best::offer(&mut best, r, &e);
            }
        }
        if by_trace <= 64 {
            for t in &fc.trace_ids {
                for &x in self.trace_sets.get(t.as_str()).into_iter().flatten() {
                    let Some(e) = ci.entry_of.get(&x).map(|&k| &ci.entries[k]) else {
                        continue;
                    };
                    if e.start > fc.start() {
                        continue;
                    }
                    if let Some(r) = self.attach_via_preceding(x, c) {
                        Best::offer(&mut best, r, e);
                    }
                }
            }
            return best.map(|b| (b.sp, b.why));
        }
        for sub in ci.subs_for(self, c) {
            for list in [&sub.normal, &sub.zero] {
                let j = list.partition_point(|e| e.start <= fc.start());
                for k in (0..j).rev() {
                    let e = &list[k];
                    if best.as_ref().is_some_and(|b| e.start < b.start) {
                        break;
                    }
                    if let Some(r) = self.attach_via_preceding(e.pss, c) {
                        Best::offer(&mut best, r, e);
                    }
                }
            }
        }
        best.map(|b| (b.sp, b.why))
    }

    pub(super) fn build_app_pss(
        &mut self,
        app: &[usize],
        process_map: &mut IndexMap<InstKey, Vec<usize>>,
    ) {
        if app.is_empty() {
            return;
        }
        // (a) grouping, P-1: sub-groups keyed by (auto_instance, app_service)
        let mut svc_index: HashMap<(InstKey, String), usize> = HashMap::new();
        for &a in app {
            let key = self.t.nodes[a].inst.clone();
            let svc = self.f(a).rec.app_service.clone();
            let split = self.t.nodes[a].inst_type != 10 && !svc.is_empty();
            if !process_map.contains_key(&key) {
                let p = self.new_pss();
                process_map.insert(key.clone(), vec![p]);
                if split {
                    svc_index.insert((key.clone(), svc.clone()), 0);
                }
            }
            let list = process_map.get_mut(&key).expect("key inserted above");
            let pos = if split {
                let k = (key.clone(), svc);
                match svc_index.get(&k) {
                    Some(&pos) => pos,
                    None => {
                        self.t.pss.push(Pss::default());
                        let p = self.t.pss.len() - 1;
                        list.push(p);
                        svc_index.insert(k, list.len() - 1);
                        list.len() - 1
                    }
                }
            } else {
                0
            };
            let p = list[pos];
            self.append_app_span(p, a);
        }

        // (b) intra-process tree and (c) split by subtree
        let keys: Vec<InstKey> = process_map.keys().cloned().collect();
        for key in keys {
            let old_list = process_map[&key].clone();
            let mut new_list = Vec::new();
            for p in old_list {
                let spans = self.t.pss[p].spans.clone();
                let mut by_span_id: HashMap<&str, usize> = HashMap::new();
                for &s in &spans {
                    let sid = self.f(s).rec.span_id.as_str();
                    if !sid.is_empty() {
                        by_span_id.insert(sid, s);
                    }
                }
                for &s in &spans {
                    let psp = self.f(s).rec.parent_span_id.as_str();
                    if psp.is_empty() {
                        continue;
                    }
                    if let Some(&par) = by_span_id.get(psp) {
                        self.set_parent(s, par, "app_span mounted due to parent_span_id");
                    }
                }
                let mut splits: IndexMap<String, usize> = IndexMap::default();
                let mut seen_roots: HashSet<usize> = HashSet::new();
                let mut root_memo: HashMap<usize, usize> = HashMap::new();
                for &s in &spans {
                    let mut path = Vec::new();
                    let mut x = s;
                    let r = loop {
                        if let Some(&r) = root_memo.get(&x) {
                            break r;
                        }
                        path.push(x);
                        match self.t.nodes[x].parent {
                            Some(par) if path.len() <= spans.len() => x = par,
                            _ => break x,
                        }
                    };
                    for y in path {
                        root_memo.insert(y, r);
                    }
                    let psp = &self.f(r).rec.parent_span_id;
                    let k = if psp.is_empty() {
                        "root".to_string()
                    } else {
                        psp.clone()
                    };
                    let q = match splits.get(&k) {
                        Some(&q) => q,
                        None => {
                            let src = &self.t.pss[p];
                            let q_val = Pss {
                                svc: SvcVals {
                                    auto_instance_type: None,
                                    ..src.svc.clone()
                                },
                                extra: src.extra.clone(),
                                app_service: src.app_service.clone(),
                                ..Pss::default()
                            };
                            self.t.pss.push(q_val);
                            let q = self.t.pss.len() - 1;
                            splits.insert(k, q);
                            q
                        }
                    };
                    self.t.pss[q].spans.push(s);
                    self.t.nodes[s].pss = Some(q);
                    if seen_roots.insert(r) {
                        self.t.pss[q].app_roots.push(r);
                    }
                }
                for &q in splits.values() {
                    let members = self.t.pss[q].spans.clone();
                    let parents: HashSet<usize> = members
                        .iter()
                        .filter_map(|&s| self.t.nodes[s].parent)
                        .collect();
                    self.t.pss[q].app_leafs = members
                        .into_iter()
                        .filter(|s| !parents.contains(s))
                        .collect();
                    new_list.push(q);
                }
                // the pre-split set is dropped; its spans now belong to the split sets (P-2)
                self.t.pss[p].spans.clear();
            }
            process_map.insert(key, new_list);
        }
    }

    pub(super) fn attach_client(&mut self, p: usize, s: usize) -> bool {
        let sid = &self.f(s).rec.span_id;
        if sid.is_empty() {
            return false;
        }
        let leaf = self.t.pss[p]
            .app_leafs
            .iter()
            .copied()
            .find(|&l| self.f(l).rec.span_id == *sid);
        if let Some(leaf) = leaf {
            self.append_sys_span(p, s);
            self.set_parent(s, leaf, "c-p sys_span mounted due to same span_id as child");
            return true;
        }
        false
    }

    pub(super) fn attach_server(&mut self, p: usize, s: usize) -> bool {
        let fs = self.f(s);
        let r = &fs.rec;
        if !r.span_id.is_empty() {
            // every root of a split set has the set's key as parent_span_id (§6.3 c), so the
            // first root decides
            let root = self.t.pss[p]
                .app_roots
                .first()
                .copied()
                .filter(|&x| self.f(x).rec.parent_span_id == r.span_id);
            if let Some(root) = root {
                const WHY: &str = "s-p sys_span mounted due to same span_id as parent";
                match self.t.nodes[root].parent {
                    None => {
                        self.append_sys_span(p, s);
                        self.set_parent(root, s, WHY);
                    }
                    Some(old) => {
                        let fr = self.f(root);
                        let delta = |x: &Flow| {
                            if cover(x, fr) {
                                0
                            } else {
                                (x.start() - fr.start())
                                    .abs()
                                    .min((x.end() - fr.end()).abs())
                            }
                        };
                        if delta(fs) < delta(self.f(old)) {
                            self.t.pss[p].spans.retain(|&x| x != old);
                            self.t.pss[p].sps.retain(|&x| x != old);
                            self.t.nodes[old].pss = None;
                            self.detach(root);
                            self.t.nodes[root].parent = None;
                            self.append_sys_span(p, s);
                            self.set_parent(root, s, WHY);
                        }
                    }
                }
                return true;
            }
        }
        let (q, rp) = (r.syscall_trace_id_request, r.syscall_trace_id_response);
        if q != 0 || rp != 0 {
            let ps = &self.t.pss[p];
            if ps.leaf_sys_req.contains(&q) || ps.leaf_sys_resp.contains(&rp) {
                if let Some(root) = self.first_free_root(p) {
                    self.append_sys_span(p, s);
                    self.set_parent(
                        root,
                        s,
                        "s-p sys_span mounted due to syscall_trace_id matched c-p",
                    );
                    return true;
                }
            }
        }
        if !r.x_request_id_0.is_empty() || !r.x_request_id_1.is_empty() {
            let ps = &self.t.pss[p];
            let covered = |x: &str| {
                !x.is_empty()
                    && ps
                        .leaf_xreq
                        .get(x)
                        .is_some_and(|v| v.iter().any(|&c| cover(fs, self.f(c))))
            };
            if covered(&r.x_request_id_0) || covered(&r.x_request_id_1) {
                if let Some(root) = self.first_free_root(p) {
                    self.append_sys_span(p, s);
                    self.set_parent(
                        root,
                        s,
                        "s-p sys_span mounted due to x_request_id matched c-p",
                    );
                    return true;
                }
            }
        }
        false
    }

    /// The first root without a parent. Roots only ever gain parents, so a cursor skips the
    /// ones already taken.
    pub(super) fn first_free_root(&mut self, p: usize) -> Option<usize> {
        let ps = &self.t.pss[p];
        let mut k = ps.free_root_cursor;
        while k < ps.app_roots.len() && self.t.nodes[ps.app_roots[k]].parent.is_some() {
            k += 1;
        }
        self.t.pss[p].free_root_cursor = k;
        self.t.pss[p].app_roots.get(k).copied()
    }

    pub(super) fn attach_via_sys(&self, x: usize, c: usize) -> Option<(usize, &'static str)> {
        let fc = self.f(c);
        let rc = &fc.rec;
        let ps = &self.t.pss[x];
        let csm = ps.leaf_sys_resp.contains(&rc.syscall_trace_id_request)
            || ps.leaf_sys_req.contains(&rc.syscall_trace_id_response);
        for &s in &ps.sps {
            let fsp = self.f(s);
            if !(self.process_matched(s, c) && cover_lost_resp(fsp, fc)) {
                return None;
            }
            if csm {
                return Some((
                    s,
                    "c-p sys-span mounted due to syscall_trace_id matched to c-p child",
                ));
            }
            let rs = &fsp.rec;
            let sys_match = rs.syscall_trace_id_request == rc.syscall_trace_id_request
                || rs.syscall_trace_id_response == rc.syscall_trace_id_response
                || rs.syscall_trace_id_request == rc.syscall_trace_id_response
                || rs.syscall_trace_id_response == rc.syscall_trace_id_request;
            if sys_match {
                return Some((
                    s,
                    "c-p sys-span mounted due to syscall_trace_id matched to s-p root",
                ));
            }
            if self.x_match(s, c) {
                return Some((
                    s,
                    "c-p sys-span mounted due to x_request_id matched to s-p root",
                ));
            }
            if self.g_trace_hits(x, c) {
                return Some((
                    s,
                    "c-p sys-span mounted due to same process/trace_id and time cover by s-p root",
                ));
            }
        }
        None
    }

    pub(super) fn attach_via_preceding(&self, x: usize, c: usize) -> Option<(usize, &'static str)> {
        let s = *self.t.pss[x].sps.first()?;
        if !(self.process_matched(s, c) && full_before_lost_resp(self.f(s), self.f(c))) {
            return None;
        }
        if self.g_trace_hits(x, c) {
            return Some((s, "c-p sys-span mounted due to preceding c-p as async span after s-p root by same process/trace_id"));
        }
        None
    }

    pub(super) fn append_via_unix(&self, x: usize, c: usize) -> Option<(usize, &'static str)> {
        let fc = self.f(c);
        if fc.rec.server_port != 1 {
            return None;
        }
        for &s in &self.t.pss[x].sps {
            let fsp = self.f(s);
            if fsp.rec.server_port != 1 || self.has_parent(s) {
                continue;
            }
            if !(self.process_matched(s, c) && cover(fc, fsp)) {
                return None;
            }
            if self.x_match(s, c) {
                return Some((
                    s,
                    "s-p sys-span mounted due to x_request_id matched to c-p root",
                ));
            }
            if self.g_trace_hits(x, c) {
                return Some((
                    s,
                    "s-p sys-span mounted due to same process/trace_id and time cover by c-p root",
                ));
            }
        }
        None
    }

    pub(super) fn indirect_attach(&mut self, sp: usize, cj: usize) {
        if self.has_parent(cj) || self.t.nodes[cj].pss.is_some() {
            return;
        }
        if !(self.process_matched(sp, cj) && cover_lost_resp(self.f(sp), self.f(cj))) {
            return;
        }
        if let Some(p) = self.t.nodes[sp].pss {
            self.append_sys_span(p, cj);
            self.set_parent(cj, sp, "c-p sys-span mounted due to brother c-p");
        }
    }

    // ----- NSS -------------------------------------------------------------------------------
}
