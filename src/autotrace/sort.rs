//! SORT (spec §6): span nodes, ProcessSpanSets built from app spans and sys spans, sys-span
//! attachment, NetworkSpanSets with their internal ordering and chaining, root/leaf marking and
//! the connection scenarios 1–8, with host clock accumulation on every link.
//!
//! Owns the parent/child tree of the flows. It must not change flow data (unified service
//! fields live in the nodes) and it must not produce output records (that is `output`).
//! Project policy (§9): unique PSS identities (P-2), real union-find sibling groups (P-4),
//! NSS rotation restricted to the net group (N-2), `(auto_instance, app_service)` sub-grouping
//! (P-1), first-success attachment (P-3), no stale-variable check in scenario 2 (C-1),
//! `has_parent` re-check when applying `M` (C-3), scenario 4 stops at its first match (C-4).

use super::clock::{ClockCorrection, LinkEnd};
use super::flow::{sorted_intersect, Flow, InstKey};
use super::relate::{is_relate, RelCtx, DNS_REQUEST_ID, SPAN_ID, TCP_SEQ, X_REQUEST_ID};
use crate::store::model::{l7_protocol as l7, signal_source};
use indexmap::IndexMap;
use std::collections::{HashMap, HashSet};

/// Unified service fields (§6.6 / §6.7.2).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SvcVals {
    pub auto_service_id: Option<u32>,
    pub auto_service: Option<String>,
    pub auto_service_type: Option<u8>,
    pub auto_instance_type: Option<u8>,
}

/// Unified extra fields of sys spans (§6.6 `unify_sys_extra`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SysExtra {
    pub subnet_id: Option<u16>,
    pub subnet: Option<String>,
    pub ip: Option<String>,
    pub process_kname: Option<String>,
    pub process_id: Option<i32>,
    pub gprocess: Option<String>,
}

/// Tree state of one flow.
#[derive(Debug, Clone)]
pub struct Node {
    pub inst: InstKey,
    pub inst_type: u8,
    pub process_id: i32,
    pub parent: Option<usize>,
    pub childs: Vec<usize>,
    pub children_count: i64,
    pub reason: Option<String>,
    pub is_ps_root: bool,
    pub is_ps_leaf: bool,
    pub is_net_root: bool,
    pub is_net_leaf: bool,
    pub pss: Option<usize>,
    pub nss: Option<usize>,
    pub agent_rank: u8,
    pub svc: Option<SvcVals>,
    pub extra: Option<SysExtra>,
}

/// A ProcessSpanSet (§6.2). Identity is its position in `Tree::pss` (P-2 fixed).
#[derive(Debug, Clone, Default)]
pub struct Pss {
    pub spans: Vec<usize>,
    /// The `s-p` members, in `spans` order.
    sps: Vec<usize>,
    pub app_roots: Vec<usize>,
    pub app_leafs: Vec<usize>,
    leaf_sys_req: HashSet<u64>,
    leaf_sys_resp: HashSet<u64>,
    leaf_xreq: HashMap<String, Vec<usize>>,
    g_trace: HashSet<String>,
    pub svc: SvcVals,
    pub extra: SysExtra,
    pub app_service: Option<String>,
}

/// A NetworkSpanSet (§6.7). `spans` is in chain order after sorting.
#[derive(Debug, Clone, Default)]
pub struct Nss {
    pub spans: Vec<usize>,
    pub span_id: Option<String>,
    asid: [Option<u32>; 2],
    asn: [Option<String>; 2],
    ast: [Option<u8>; 2],
    ait: [Option<u8>; 2],
}

/// Result of the sort phase.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    pub nodes: Vec<Node>,
    pub pss: Vec<Pss>,
    /// PSS ids in `process_span_list` order.
    pub process_list: Vec<usize>,
    pub nss: Vec<Nss>,
    pub clock: ClockCorrection,
    /// Sys-span instance name → agent, for rendering OTel spans (§6.1, §7.7).
    pub instance_to_agent: HashMap<String, u16>,
}

/// Which weak connection strategies are on.
#[derive(Debug, Clone, Copy, Default)]
pub struct SortOpts {
    pub net_c_to_s_via_trace_id: bool,
    pub sys_s_to_c_via_trace_id: bool,
    /// Use the spec's linear scans instead of the candidate indexes (for differential tests).
    #[doc(hidden)]
    pub exhaustive: bool,
}

fn ip_like(v: Option<u8>) -> bool {
    matches!(v, Some(0) | Some(255))
}

fn truthy_u32(v: Option<u32>) -> bool {
    v.is_some_and(|x| x != 0)
}
fn truthy_str(v: &Option<String>) -> bool {
    v.as_ref().is_some_and(|x| !x.is_empty())
}
fn truthy_u8(v: Option<u8>) -> bool {
    v.is_some_and(|x| x != 0)
}

fn cover(a: &Flow, b: &Flow) -> bool {
    a.start() <= b.start() && a.end() >= b.end()
}
fn cover_lost_resp(a: &Flow, b: &Flow) -> bool {
    cover(a, b) || (a.start() <= b.start() && a.rd() == 0)
}
fn full_before_lost_resp(a: &Flow, b: &Flow) -> bool {
    (a.start() <= b.start() && a.end() < b.end()) || (a.start() <= b.start() && a.rd() == 0)
}

fn tap_rank(tap: &str) -> u8 {
    match tap {
        "c-p" => 1,
        "c" => 2,
        "c-nd" => 3,
        "c-hv" => 4,
        "c-gw-hv" => 5,
        "c-gw" => 6,
        "s-gw" => 7,
        "s-gw-hv" => 8,
        "s-hv" => 9,
        "s-nd" => 10,
        "s" => 11,
        "s-p" => 12,
        "rest" | "local" => 13,
        _ => 14,
    }
}

fn is_server_side(tap: &str) -> bool {
    matches!(tap, "s-gw" | "s-gw-hv" | "s-hv" | "s-nd" | "s" | "s-p")
}

/// Simple union-find with path halving.
struct Dsu(Vec<usize>);
impl Dsu {
    fn find(&mut self, mut x: usize) -> usize {
        while self.0[x] != x {
            self.0[x] = self.0[self.0[x]];
            x = self.0[x];
        }
        x
    }
    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.0[ra] = rb;
        }
    }
}

struct Sorter<'a> {
    flows: &'a [Flow],
    /// Trace id → PSS whose `g_trace` holds it (for the async fallback of §6.4.4).
    trace_sets: HashMap<&'a str, Vec<usize>>,
    /// Syscall id → PSS whose `leaf_syscall_req` / `leaf_syscall_resp` holds it.
    leaf_req_sets: HashMap<u64, Vec<usize>>,
    leaf_resp_sets: HashMap<u64, Vec<usize>>,
    rel: &'a [Vec<(usize, u8)>],
    ctx: RelCtx,
    opts: SortOpts,
    t: Tree,
}

/// Run the sort phase over merged flows and their relation map.
pub fn build_tree(flows: &[Flow], rel: &[Vec<(usize, u8)>], ctx: &RelCtx, opts: SortOpts) -> Tree {
    let nodes = flows
        .iter()
        .map(|f| {
            let side = if f.starts_with_c() { 0 } else { 1 };
            let r = &f.rec;
            Node {
                inst: InstKey::of(f),
                inst_type: if side == 0 {
                    r.auto_instance_type_0
                } else {
                    r.auto_instance_type_1
                },
                process_id: match f.tap_side() {
                    "s-p" => r.process_id_1,
                    "c-p" => r.process_id_0,
                    _ => 0,
                },
                parent: None,
                childs: Vec::new(),
                children_count: 0,
                reason: None,
                is_ps_root: false,
                is_ps_leaf: false,
                is_net_root: false,
                is_net_leaf: false,
                pss: None,
                nss: None,
                agent_rank: 0,
                svc: None,
                extra: None,
            }
        })
        .collect();
    let mut s = Sorter {
        flows,
        trace_sets: HashMap::new(),
        leaf_req_sets: HashMap::new(),
        leaf_resp_sets: HashMap::new(),
        rel,
        ctx: *ctx,
        opts,
        t: Tree {
            nodes,
            ..Tree::default()
        },
    };
    s.run();
    s.t
}

impl<'a> Sorter<'a> {
    fn f(&self, i: usize) -> &'a Flow {
        &self.flows[i]
    }

    /// Creation order of the NSS holding `i`.
    fn nss_pos(&self, i: usize) -> usize {
        self.t.nodes[i].nss.unwrap_or(usize::MAX)
    }

    fn has_parent(&self, i: usize) -> bool {
        self.t.nodes[i].parent.is_some()
    }

    /// True if linking `child` under `parent` would close a cycle.
    fn would_cycle(&self, child: usize, parent: usize) -> bool {
        if child == parent {
            return true;
        }
        if self.t.nodes[child].childs.is_empty() {
            return false;
        }
        let mut p = Some(parent);
        let mut steps = 0;
        while let Some(x) = p {
            if x == child {
                return true;
            }
            steps += 1;
            if steps > self.flows.len() {
                return true;
            }
            p = self.t.nodes[x].parent;
        }
        false
    }

    fn link_end(&self, i: usize) -> LinkEnd<'a> {
        let f = self.f(i);
        LinkEnd {
            agent: f.agent(),
            start: f.start(),
            end: f.end(),
            signal_source: f.rec.signal_source,
            tap_side: f.tap_side(),
            auto_instance: self.t.nodes[i].inst.render(),
        }
    }

    /// `set_parent` of §6.1 (plus a refusal of links that would close a cycle).
    fn set_parent(&mut self, child: usize, parent: usize, reason: impl Into<String>) -> bool {
        if self.would_cycle(child, parent) {
            return false;
        }
        if self.f(child).agent() != self.f(parent).agent() {
            let (c, p) = (self.link_end(child), self.link_end(parent));
            self.t.clock.on_link(&c, &p);
        }
        let n = &mut self.t.nodes;
        n[child].parent = Some(parent);
        n[parent].children_count += 1;
        n[parent].childs.push(child);
        n[child].reason = Some(reason.into());
        true
    }

    fn detach(&mut self, child: usize) {
        if let Some(old) = self.t.nodes[child].parent {
            self.t.nodes[old].children_count -= 1;
            self.t.nodes[old].childs.retain(|&x| x != child);
        }
    }

    /// TCP evidence overrides an earlier parent (§6.7.4).
    fn relink(&mut self, child: usize, parent: usize, reason: &str) {
        if self.would_cycle(child, parent) {
            return;
        }
        if let Some(old) = self.t.nodes[child].parent {
            self.t.nodes[old].childs.retain(|&x| x != child);
        }
        self.set_parent(child, parent, reason);
    }

    fn same_set(&self, a: usize, b: usize) -> bool {
        let (x, y) = (&self.t.nodes[a], &self.t.nodes[b]);
        (x.nss.is_some() && x.nss == y.nss) || (x.pss.is_some() && x.pss == y.pss)
    }

    // ----- PSS helpers ---------------------------------------------------------------------

    fn new_pss(&mut self) -> usize {
        self.t.pss.push(Pss::default());
        self.t.pss.len() - 1
    }

    fn unify_auto_service(&mut self, p: usize, s: usize) {
        let f = self.f(s);
        let r = &f.rec;
        let tap = f.tap_side();
        let dir: u8 = if matches!(tap, "s-p" | "s-app" | "app") {
            1
        } else {
            0
        };
        let is_app_tap = tap == "app";
        let pick_u32 = |v1: u32, v0: u32| if is_app_tap && v1 == 0 { v0 } else { v1 };
        let (id_d, name_d, st_d, it_d) = if dir == 1 {
            (
                pick_u32(r.auto_service_id(1), r.auto_service_id(0)),
                if is_app_tap && r.auto_service(1).is_empty() {
                    r.auto_service(0)
                } else {
                    r.auto_service(1)
                },
                if is_app_tap && r.auto_service_type_1 == 0 {
                    r.auto_service_type_0
                } else {
                    r.auto_service_type_1
                },
                if is_app_tap && r.auto_instance_type_1 == 0 {
                    r.auto_instance_type_0
                } else {
                    r.auto_instance_type_1
                },
            )
        } else {
            (
                r.auto_service_id(0),
                r.auto_service(0),
                r.auto_service_type_0,
                r.auto_instance_type_0,
            )
        };
        let ps = &mut self.t.pss[p].svc;
        let mut out = SvcVals::default();
        let weak = |ps: &SvcVals| ip_like(ps.auto_service_type) || ip_like(ps.auto_instance_type);
        if truthy_u32(ps.auto_service_id) {
            if weak(ps) {
                ps.auto_service_id = Some(id_d);
            }
        } else {
            ps.auto_service_id = Some(id_d);
        }
        out.auto_service_id = ps.auto_service_id;
        if truthy_str(&ps.auto_service) {
            if weak(ps) {
                ps.auto_service = Some(name_d.to_string());
            }
        } else {
            ps.auto_service = Some(name_d.to_string());
        }
        out.auto_service = ps.auto_service.clone();
        if truthy_u8(ps.auto_service_type) {
            if weak(ps) {
                ps.auto_service_type = Some(st_d);
            }
        } else {
            ps.auto_service_type = Some(st_d);
        }
        out.auto_service_type = ps.auto_service_type;
        if truthy_u8(ps.auto_instance_type) {
            if weak(ps) {
                ps.auto_instance_type = Some(it_d);
            }
        } else {
            ps.auto_instance_type = Some(it_d);
        }
        out.auto_instance_type = ps.auto_instance_type;
        self.t.nodes[s].svc = Some(out);
    }

    fn unify_sys_extra(&mut self, p: usize, s: usize) {
        let f = self.f(s);
        let r = &f.rec;
        let side: u8 = if matches!(f.tap_side(), "s-p" | "s-app") {
            1
        } else {
            0
        };
        let (subnet_id, subnet, kname, pid, gp) = if side == 1 {
            (
                r.subnet_id_1,
                &r.subnet_1,
                &r.process_kname_1,
                r.process_id_1,
                &r.gprocess_1,
            )
        } else {
            (
                r.subnet_id_0,
                &r.subnet_0,
                &r.process_kname_0,
                r.process_id_0,
                &r.gprocess_0,
            )
        };
        let e = &mut self.t.pss[p].extra;
        if e.subnet_id.unwrap_or(0) == 0 {
            e.subnet_id = Some(subnet_id);
        }
        if !truthy_str(&e.subnet) {
            e.subnet = Some(subnet.clone());
        }
        if !truthy_str(&e.ip) {
            e.ip = Some(r.ip(side).to_string());
        }
        if !truthy_str(&e.process_kname) {
            e.process_kname = Some(kname.clone());
        }
        if e.process_id.unwrap_or(0) == 0 {
            e.process_id = Some(pid);
        }
        if !truthy_str(&e.gprocess) {
            e.gprocess = Some(gp.clone());
        }
        self.t.nodes[s].extra = Some(e.clone());
    }

    fn append_app_span(&mut self, p: usize, s: usize) {
        self.t.nodes[s].pss = Some(p);
        self.t.pss[p].spans.push(s);
        if self.t.pss[p].app_service.is_none() {
            self.t.pss[p].app_service = Some(self.f(s).rec.app_service.clone());
        }
        self.unify_auto_service(p, s);
    }

    fn append_sys_span(&mut self, p: usize, s: usize) {
        self.t.nodes[s].pss = Some(p);
        self.t.pss[p].spans.push(s);
        if self.f(s).tap_side() == "s-p" {
            self.t.pss[p].sps.push(s);
        }
        self.unify_sys_extra(p, s);
        self.unify_auto_service(p, s);
        let f = self.f(s);
        let r = &f.rec;
        let ps = &mut self.t.pss[p];
        if f.tap_side() == "c-p" {
            if r.syscall_trace_id_request != 0 && ps.leaf_sys_req.insert(r.syscall_trace_id_request)
            {
                self.leaf_req_sets
                    .entry(r.syscall_trace_id_request)
                    .or_default()
                    .push(p);
            }
            if r.syscall_trace_id_response != 0
                && ps.leaf_sys_resp.insert(r.syscall_trace_id_response)
            {
                self.leaf_resp_sets
                    .entry(r.syscall_trace_id_response)
                    .or_default()
                    .push(p);
            }
            if !r.x_request_id_0.is_empty() {
                ps.leaf_xreq
                    .entry(r.x_request_id_0.clone())
                    .or_default()
                    .push(s);
            }
            if !r.x_request_id_1.is_empty() && r.x_request_id_1 != r.x_request_id_0 {
                ps.leaf_xreq
                    .entry(r.x_request_id_1.clone())
                    .or_default()
                    .push(s);
            }
        }
        for t in &f.trace_ids {
            if !ps.g_trace.contains(t) {
                ps.g_trace.insert(t.clone());
                self.trace_sets.entry(t.as_str()).or_default().push(p);
            }
        }
    }

    fn g_trace_hits(&self, p: usize, c: usize) -> bool {
        let g = &self.t.pss[p].g_trace;
        self.f(c).trace_ids.iter().any(|t| g.contains(t))
    }

    fn process_matched(&self, s: usize, c: usize) -> bool {
        let (fs, fc) = (self.f(s), self.f(c));
        if fs.agent() != fc.agent() {
            return false;
        }
        let (ns, nc) = (&self.t.nodes[s], &self.t.nodes[c]);
        (ns.process_id != 0 && nc.process_id != 0 && ns.process_id == nc.process_id)
            || (ns.inst_type == 10
                && nc.inst_type == 10
                && ns.inst != InstKey::Id(0)
                && ns.inst == nc.inst)
    }

    fn x_match(&self, s: usize, c: usize) -> bool {
        let (a, b) = (&self.f(s).rec, &self.f(c).rec);
        (!a.x_request_id_0.is_empty() && a.x_request_id_0 == b.x_request_id_0)
            || (!a.x_request_id_1.is_empty()
                && (a.x_request_id_1 == b.x_request_id_1 || a.x_request_id_1 == b.x_request_id_0))
    }

    // ----- the pipeline ----------------------------------------------------------------------

    fn run(&mut self) {
        let n = self.flows.len();
        let mut server_sys = Vec::new();
        let mut client_sys = Vec::new();
        let mut network = Vec::new();
        let mut app = Vec::new();
        for i in 0..n {
            let f = self.f(i);
            match f.rec.signal_source {
                signal_source::EBPF if f.tap_side() == "s-p" => server_sys.push(i),
                signal_source::EBPF => client_sys.push(i),
                signal_source::PACKET => network.push(i),
                signal_source::OTEL => app.push(i),
                _ => {}
            }
            if f.is_sys() {
                let name = f.rec.auto_instance(if f.starts_with_c() { 0 } else { 1 });
                self.t.instance_to_agent.insert(name.to_string(), f.agent());
            }
        }

        let mut process_map: IndexMap<InstKey, Vec<usize>> = IndexMap::new();
        self.build_app_pss(&app, &mut process_map);

        // §6.4.1 attach sys spans to app PSS. Candidate PSS come from hash indexes over the
        // static leaf/root span ids and leaf keys; they are tried in `process_map` list order,
        // stopping at the first success (P-3), which is exactly the linear scan's outcome.
        if !app.is_empty() {
            let mut pos_of: HashMap<usize, usize> = HashMap::new();
            let mut by_leaf_span: HashMap<(InstKey, String), Vec<usize>> = HashMap::new();
            for (key, list) in &process_map {
                for (pos, &p) in list.iter().enumerate() {
                    pos_of.insert(p, pos);
                    for &l in &self.t.pss[p].app_leafs {
                        let sid = &self.f(l).rec.span_id;
                        if !sid.is_empty() {
                            let v = by_leaf_span.entry((key.clone(), sid.clone())).or_default();
                            if v.last() != Some(&p) {
                                v.push(p);
                            }
                        }
                    }
                }
            }
            for &s in &client_sys {
                let sid = &self.f(s).rec.span_id;
                if sid.is_empty() {
                    continue;
                }
                let key = (self.t.nodes[s].inst.clone(), sid.clone());
                let cands = if self.opts.exhaustive {
                    process_map.get(&key.0).cloned().unwrap_or_default()
                } else {
                    by_leaf_span.get(&key).cloned().unwrap_or_default()
                };
                for p in cands {
                    if self.attach_client(p, s) {
                        break;
                    }
                }
            }
            // server index, built after the client pass (leaf keys are final then)
            let mut by_root_psp: HashMap<(&InstKey, &str), Vec<usize>> = HashMap::new();
            let mut by_leaf_req: HashMap<(&InstKey, u64), Vec<usize>> = HashMap::new();
            let mut by_leaf_resp: HashMap<(&InstKey, u64), Vec<usize>> = HashMap::new();
            let mut by_leaf_x: HashMap<(&InstKey, &str), Vec<usize>> = HashMap::new();
            for (key, list) in &process_map {
                for &p in list {
                    let ps = &self.t.pss[p];
                    for &r in &ps.app_roots {
                        let psp = self.flows[r].rec.parent_span_id.as_str();
                        if !psp.is_empty() {
                            by_root_psp.entry((key, psp)).or_default().push(p);
                        }
                    }
                    for &v in &ps.leaf_sys_req {
                        by_leaf_req.entry((key, v)).or_default().push(p);
                    }
                    for &v in &ps.leaf_sys_resp {
                        by_leaf_resp.entry((key, v)).or_default().push(p);
                    }
                    for x in ps.leaf_xreq.keys() {
                        by_leaf_x.entry((key, x.as_str())).or_default().push(p);
                    }
                }
            }
            let mut server_cands: Vec<(usize, Vec<usize>)> = Vec::new();
            for &s in &server_sys {
                let key = &self.t.nodes[s].inst;
                let r = &self.flows[s].rec;
                let mut cands: Vec<usize> = Vec::new();
                let mut add = |v: Option<&Vec<usize>>| cands.extend(v.into_iter().flatten());
                if !r.span_id.is_empty() {
                    add(by_root_psp.get(&(key, r.span_id.as_str())));
                }
                add(by_leaf_req.get(&(key, r.syscall_trace_id_request)));
                add(by_leaf_resp.get(&(key, r.syscall_trace_id_response)));
                for x in [&r.x_request_id_0, &r.x_request_id_1] {
                    if !x.is_empty() {
                        add(by_leaf_x.get(&(key, x.as_str())));
                    }
                }
                cands.sort_by_key(|p| pos_of[p]);
                cands.dedup();
                if self.opts.exhaustive {
                    cands = process_map.get(key).cloned().unwrap_or_default();
                }
                server_cands.push((s, cands));
            }
            for (s, cands) in server_cands {
                for p in cands {
                    if self.attach_server(p, s) {
                        break;
                    }
                }
            }
        }

        // §6.4.2 sys-only PSS for unattached s-p
        let mut same_process_sp: HashMap<u64, InstKey> = HashMap::new();
        let uid = |f: &Flow, pid: i32| ((f.agent() as u64) << 32) | (pid as u32 as u64);
        for &s in &server_sys {
            if self.t.nodes[s].pss.is_some() {
                continue;
            }
            let u = uid(self.f(s), self.t.nodes[s].process_id);
            let inst = self.t.nodes[s].inst.clone();
            same_process_sp.entry(u).or_insert_with(|| inst.clone());
            let p = self.new_pss();
            self.append_sys_span(p, s);
            process_map.entry(inst).or_default().push(p);
        }

        // §6.4.3 sibling groups (P-4: real union-find)
        let m = client_sys.len();
        let mut dsu = Dsu((0..m).collect());
        {
            let mut req_to: HashMap<u64, Vec<usize>> = HashMap::new();
            let mut trace_to: HashMap<&str, Vec<usize>> = HashMap::new();
            for (pos, &c) in client_sys.iter().enumerate() {
                let f = self.f(c);
                if f.rec.syscall_trace_id_request > 0 {
                    req_to
                        .entry(f.rec.syscall_trace_id_request)
                        .or_default()
                        .push(pos);
                }
                for t in &f.trace_ids {
                    trace_to.entry(t.as_str()).or_default().push(pos);
                }
            }
            for (pos, &c) in client_sys.iter().enumerate() {
                let r = &self.f(c).rec;
                if r.syscall_trace_id_response > 0 {
                    if let Some(v) = req_to.get(&r.syscall_trace_id_response) {
                        for &p in v {
                            dsu.union(pos, p);
                        }
                    }
                } else if let Some(v) = req_to.get(&r.syscall_trace_id_request) {
                    for &p in v {
                        if p != pos && self.f(client_sys[p]).rec.syscall_trace_id_response != 0 {
                            dsu.union(pos, p);
                        }
                    }
                }
            }
            for v in trace_to.values() {
                for w in v.windows(2) {
                    dsu.union(w[0], w[1]);
                }
            }
        }

        // §6.4.4 attach client sys spans to an s-p. The candidate lists are static here; each
        // is indexed by the start time of its (single) s-p so the best parent is found by a
        // backward scan instead of visiting every set of the process.
        let mut brothers = Brothers::new(self, &client_sys, &mut dsu);
        let mut cand_cache: HashMap<InstKey, CandIndex> = HashMap::new();
        for (i, &c) in client_sys.iter().enumerate() {
            if self.t.nodes[c].pss.is_some() {
                continue;
            }
            let u = uid(self.f(c), self.t.nodes[c].process_id);
            let key = match same_process_sp.get(&u) {
                Some(k) if process_map.contains_key(k) => k.clone(),
                _ => self.t.nodes[c].inst.clone(),
            };
            if !cand_cache.contains_key(&key) {
                let list = process_map.get(&key).cloned().unwrap_or_default();
                let mut ci = CandIndex::build(self, list);
                ci.multi_sp |= self.opts.exhaustive;
                cand_cache.insert(key.clone(), ci);
            }
            let ci = &cand_cache[&key];
            let mut parent = self.best_via_sys(ci, c);
            let rev = if self.f(c).rec.server_port == 1 {
                self.best_via_unix(ci, c)
            } else {
                None
            };
            if parent.is_none() && !self.f(c).trace_ids.is_empty() {
                parent = self.best_via_preceding(ci, c);
            }
            if let Some((sp, why)) = parent {
                if let Some(p) = self.t.nodes[sp].pss {
                    self.append_sys_span(p, c);
                    self.set_parent(c, sp, why);
                    for cj in brothers.candidates(self, i, sp) {
                        self.indirect_attach(sp, cj);
                    }
                }
            }
            if let Some((sp2, why)) = rev {
                if self.t.nodes[c].pss.is_none() {
                    if let Some(p) = self.t.nodes[sp2].pss {
                        self.append_sys_span(p, c);
                    }
                }
                self.set_parent(sp2, c, why);
            }
        }

        // §6.4.5 remaining client sys spans
        for &c in &client_sys {
            if self.t.nodes[c].pss.is_some() {
                continue;
            }
            let u = uid(self.f(c), self.t.nodes[c].process_id);
            let inst = self.t.nodes[c].inst.clone();
            if !same_process_sp.contains_key(&u) && !process_map.contains_key(&inst) {
                same_process_sp.insert(u, inst.clone());
            }
            let p = self.new_pss();
            self.append_sys_span(p, c);
            process_map.entry(inst).or_default().push(p);
        }

        self.t.process_list = process_map.values().flatten().copied().collect();

        self.build_nss(&network, &server_sys, &client_sys);
        let marks = self.mark_roots_and_leafs();
        self.connect(marks);
    }

    /// Best parent by `attach_via_sys` over the candidate sets of `ci` (largest s-p start,
    /// ties to the first set in list order).
    fn best_via_sys(&self, ci: &CandIndex, c: usize) -> Option<(usize, &'static str)> {
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
    fn zero_candidates(&self, sub: &SubIndex, c: usize, j: usize) -> Option<Vec<usize>> {
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
    fn best_via_unix(&self, ci: &CandIndex, c: usize) -> Option<(usize, &'static str)> {
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
    fn best_via_preceding(&self, ci: &CandIndex, c: usize) -> Option<(usize, &'static str)> {
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

    fn build_app_pss(&mut self, app: &[usize], process_map: &mut IndexMap<InstKey, Vec<usize>>) {
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
                let mut splits: IndexMap<String, usize> = IndexMap::new();
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
                    if !self.t.pss[q].app_roots.contains(&r) {
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

    fn attach_client(&mut self, p: usize, s: usize) -> bool {
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

    fn attach_server(&mut self, p: usize, s: usize) -> bool {
        let fs = self.f(s);
        let r = &fs.rec;
        if !r.span_id.is_empty() {
            let root = self.t.pss[p]
                .app_roots
                .iter()
                .copied()
                .find(|&x| self.f(x).rec.parent_span_id == r.span_id);
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

    fn first_free_root(&self, p: usize) -> Option<usize> {
        self.t.pss[p]
            .app_roots
            .iter()
            .copied()
            .find(|&x| !self.has_parent(x))
    }

    fn attach_via_sys(&self, x: usize, c: usize) -> Option<(usize, &'static str)> {
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

    fn attach_via_preceding(&self, x: usize, c: usize) -> Option<(usize, &'static str)> {
        let s = *self.t.pss[x].sps.first()?;
        if !(self.process_matched(s, c) && full_before_lost_resp(self.f(s), self.f(c))) {
            return None;
        }
        if self.g_trace_hits(x, c) {
            return Some((s, "c-p sys-span mounted due to preceding c-p as async span after s-p root by same process/trace_id"));
        }
        None
    }

    fn append_via_unix(&self, x: usize, c: usize) -> Option<(usize, &'static str)> {
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

    fn indirect_attach(&mut self, sp: usize, cj: usize) {
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

    fn nss_append(&mut self, n: usize, s: usize) {
        let f = self.f(s);
        if self.t.nss[n].span_id.is_none() && !f.rec.span_id.is_empty() {
            self.t.nss[n].span_id = Some(f.rec.span_id.clone());
        }
        self.t.nodes[s].nss = Some(n);
        if f.is_net() {
            self.unify_nss(n, s);
        }
        self.t.nss[n].spans.push(s);
    }

    fn unify_nss(&mut self, n: usize, s: usize) {
        let f = self.f(s);
        let r = &f.rec;
        let dir = if f.starts_with_s() { 1usize } else { 0 };
        let ns = &mut self.t.nss[n];
        let weak =
            |ns: &Nss| ns.ast.iter().any(|v| ip_like(*v)) || ns.ait.iter().any(|v| ip_like(*v));
        let mut out = SvcVals::default();
        // auto_service_id
        let ids = [r.auto_service_id(0), r.auto_service_id(1)];
        let d = if ids[dir] != 0 { dir } else { 0 };
        if truthy_u32(ns.asid[d]) {
            if weak(ns) {
                ns.asid[d] = Some(ids[d]);
            }
        } else {
            ns.asid[d] = Some(ids[d]);
        }
        out.auto_service_id = ns.asid[d];
        // auto_service
        let names = [r.auto_service(0), r.auto_service(1)];
        let d = if !names[dir].is_empty() { dir } else { 0 };
        if truthy_str(&ns.asn[d]) {
            if weak(ns) {
                ns.asn[d] = Some(names[d].to_string());
            }
        } else {
            ns.asn[d] = Some(names[d].to_string());
        }
        out.auto_service = ns.asn[d].clone();
        // auto_service_type
        let sts = [r.auto_service_type_0, r.auto_service_type_1];
        let d = if sts[dir] != 0 { dir } else { 0 };
        if truthy_u8(ns.ast[d]) {
            if weak(ns) {
                ns.ast[d] = Some(sts[d]);
            }
        } else {
            ns.ast[d] = Some(sts[d]);
        }
        out.auto_service_type = ns.ast[d];
        // auto_instance_type
        let its = [r.auto_instance_type_0, r.auto_instance_type_1];
        let d = if its[dir] != 0 { dir } else { 0 };
        if truthy_u8(ns.ait[d]) {
            if weak(ns) {
                ns.ait[d] = Some(its[d]);
            }
        } else {
            ns.ait[d] = Some(its[d]);
        }
        out.auto_instance_type = ns.ait[d];
        self.t.nodes[s].svc = Some(out);
    }

    fn build_nss(&mut self, network: &[usize], server_sys: &[usize], client_sys: &[usize]) {
        let mut united: Vec<usize> = network
            .iter()
            .chain(server_sys.iter())
            .chain(client_sys.iter())
            .copied()
            .collect();
        united.sort_by_key(|&i| std::cmp::Reverse(self.f(i).rec.r#type));
        let mut aggregated = vec![false; self.flows.len()];
        for &x in &united {
            if aggregated[x] {
                continue;
            }
            self.t.nss.push(Nss::default());
            let n = self.t.nss.len() - 1;
            self.nss_append(n, x);
            aggregated[x] = true;
            for &(j, bits) in &self.rel[x] {
                if aggregated[j] || self.f(j).is_app() {
                    continue;
                }
                let take = if bits & TCP_SEQ != 0 {
                    is_relate(self.f(x), self.f(j), &self.ctx)
                } else {
                    bits & DNS_REQUEST_ID != 0
                };
                if take {
                    self.nss_append(n, j);
                    aggregated[j] = true;
                }
            }
        }
        for n in 0..self.t.nss.len() {
            self.sort_and_chain_nss(n);
        }
    }

    fn sort_and_chain_nss(&mut self, n: usize) {
        let mut pre = self.t.nss[n].spans.clone();
        pre.sort_by(|&a, &b| {
            let (ta, tb) = (self.f(a).tap_side(), self.f(b).tap_side());
            (tap_rank(ta), ta).cmp(&(tap_rank(tb), tb))
        });
        let ingress = pre
            .iter()
            .find(|&&i| matches!(self.f(i).tap_side(), "c-p" | "c" | "c-nd"))
            .map(|&i| self.f(i).agent());
        let mut egress = pre
            .iter()
            .rev()
            .find(|&&i| matches!(self.f(i).tap_side(), "s-p" | "s" | "s-nd"))
            .map(|&i| self.f(i).agent());
        let mut ingress_rank = 0u8;
        if let Some(&first) = pre.first() {
            let r = &self.f(first).rec;
            if matches!(r.l7_protocol, l7::GRPC | l7::HTTP2) && r.req_tcp_seq == 0 && r.r#type == 2
            {
                ingress_rank = 2;
                egress = Some(0);
            }
        }
        for &i in &pre {
            let a = Some(self.f(i).agent());
            self.t.nodes[i].agent_rank = if a == ingress {
                ingress_rank
            } else if a == egress {
                2
            } else {
                1
            };
        }
        let key = |s: &Self, i: usize| {
            let f = s.f(i);
            (
                s.t.nodes[i].agent_rank,
                std::cmp::Reverse(f.rd()),
                f.start(),
                std::cmp::Reverse(f.end()),
            )
        };
        let mut cp: Vec<usize> = Vec::new();
        let mut sp: Vec<usize> = Vec::new();
        let mut net: Vec<usize> = Vec::new();
        for &i in &pre {
            match self.f(i).tap_side() {
                "c-p" => cp.push(i),
                "s-p" => sp.push(i),
                _ => net.push(i),
            }
        }
        cp.sort_by_key(|&i| key(self, i));
        sp.sort_by_key(|&i| key(self, i));
        net.sort_by_key(|&i| key(self, i));
        // N-2 fixed: rotate inside the net group only
        if ingress == egress {
            let fs = net
                .iter()
                .position(|&i| is_server_side(self.f(i).tap_side()));
            if let Some(fs) = fs {
                let dp = net[fs..]
                    .iter()
                    .position(|&i| self.t.nodes[i].agent_rank != 0)
                    .map(|p| p + fs);
                if let Some(dp) = dp {
                    let mut rotated = net[..fs].to_vec();
                    rotated.extend_from_slice(&net[dp..]);
                    rotated.extend_from_slice(&net[fs..dp]);
                    net = rotated;
                }
            }
        }
        let mut order = cp;
        order.extend(net);
        order.extend(sp);
        if let (Some(&first), Some(&last)) = (order.first(), order.last()) {
            self.t.nodes[first].is_net_root = true;
            self.t.nodes[last].is_net_leaf = true;
        }
        let d = self.ctx.host_clock_offset_us + self.ctx.network_delay_us;
        for k in 1..order.len() {
            let (c, p) = (order[k], order[k - 1]);
            let (fc, fp) = (self.f(c), self.f(p));
            if fc.agent() != fp.agent()
                && !(fc.end() + d >= fp.start() && fp.end() + d >= fc.start())
            {
                continue;
            }
            if fc.is_sys() && fp.is_sys() {
                if fc.tap_side() == "s-p" && fp.tap_side() == "c-p" {
                    self.relink(c, p, "trace mounted due to tcp_seq");
                }
                continue;
            }
            self.relink(c, p, "trace mounted due to tcp_seq");
        }
        self.t.nss[n].spans = order;
    }

    // ----- roots, leafs and connections ----------------------------------------------------

    fn mark_roots_and_leafs(&mut self) -> Marks {
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

    fn connect(&mut self, mk: Marks) {
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
        let mut m: IndexMap<usize, (usize, String)> = IndexMap::new();
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
        let mut w: IndexMap<usize, (usize, &'static str)> = IndexMap::new();
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
struct Marks {
    process_roots: Vec<usize>,
    process_leafs: Vec<usize>,
    network_roots: Vec<usize>,
    network_leafs: Vec<usize>,
    roots_by_request_id: HashMap<u64, Vec<usize>>,
}

/// One candidate set of §6.4.4, keyed by the start time of its only s-p.
#[derive(Clone)]
struct CandEntry {
    start: i64,
    end: i64,
    pos: usize,
    pss: usize,
    sp: usize,
}

/// The best candidate so far: largest s-p start, ties to the smaller list position.
struct Best {
    sp: usize,
    why: &'static str,
    start: i64,
    pos: usize,
}

impl Best {
    fn offer(best: &mut Option<Best>, r: (usize, &'static str), e: &CandEntry) {
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
struct SubIndex {
    normal: Vec<CandEntry>,
    /// Prefix maxima of `end` over `normal`.
    max_end: Vec<i64>,
    /// Sets whose s-p lost its response (`rd == 0`).
    zero: Vec<CandEntry>,
    /// Positions in `zero` by the s-p's syscall ids, x_request_id_0 and x_request_id_1, and
    /// by set id.
    zero_by_sys: HashMap<u64, Vec<usize>>,
    zero_by_x0: HashMap<String, Vec<usize>>,
    zero_by_x1: HashMap<String, Vec<usize>>,
    zero_of: HashMap<usize, usize>,
    /// Sets whose s-p is a unix-socket span (`server_port == 1`).
    unix: Vec<CandEntry>,
}

impl SubIndex {
    fn finish(&mut self, flows: &[Flow]) {
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
struct CandIndex {
    list: Vec<usize>,
    /// Exhaustive mode: the linear scan of the spec over `list`.
    multi_sp: bool,
    /// Sets holding several s-p, checked linearly: (list position, set).
    multi: Vec<(usize, usize)>,
    entries: Vec<CandEntry>,
    entry_of: HashMap<usize, usize>,
    by_pid: HashMap<(u16, i32), SubIndex>,
    by_pod: HashMap<(u16, InstKey), SubIndex>,
}

impl CandIndex {
    fn build(s: &Sorter<'_>, list: Vec<usize>) -> CandIndex {
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
    fn subs_for<'c>(&'c self, s: &Sorter<'_>, c: usize) -> impl Iterator<Item = &'c SubIndex> {
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
struct Brothers {
    exhaustive: bool,
    all: HashMap<usize, Vec<usize>>,
    comp: Vec<usize>,
    by_pid: HashMap<(usize, u16, i32), Vec<usize>>,
    by_pod: HashMap<(usize, u16, InstKey), Vec<usize>>,
}

impl Brothers {
    fn new(s: &Sorter<'_>, client_sys: &[usize], dsu: &mut Dsu) -> Brothers {
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
    fn candidates(&mut self, s: &Sorter<'_>, i: usize, sp: usize) -> Vec<usize> {
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
struct GrpcRoots {
    /// `(rd, NSS order, span)` sorted; entries before `done` are parented or in `leftover`.
    sorted: Vec<(i64, usize, usize)>,
    done: usize,
    leftover: Vec<(i64, usize, usize)>,
}

impl GrpcRoots {
    fn build(s: &Sorter<'_>, mk: &Marks) -> HashMap<(u64, u8), GrpcRoots> {
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
    fn take(&mut self, s: &Sorter<'_>, l: usize) -> Vec<(i64, usize, usize)> {
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
