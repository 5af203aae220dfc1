//! Network span sets (spec §6.7): membership around a seed, service unification of packet
//! spans, internal ordering (N-2 fixed: rotation inside the net group) and chaining.
//!
//! Owns only NSS membership and the tcp_seq links inside an NSS.

use super::{
    ip_like, is_server_side, tap_rank, truthy_str, truthy_u32, truthy_u8, Nss, Sorter, SvcVals,
};
use crate::autotrace::relate::{is_relate, DNS_REQUEST_ID, TCP_SEQ};
use crate::store::model::l7_protocol as l7;

impl<'a> Sorter<'a> {
    pub(super) fn nss_append(&mut self, n: usize, s: usize) {
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

    pub(super) fn unify_nss(&mut self, n: usize, s: usize) {
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

    pub(super) fn build_nss(
        &mut self,
        network: &[usize],
        server_sys: &[usize],
        client_sys: &[usize],
    ) {
        let mut united: Vec<usize> = network
            .iter()
            .chain(server_sys.iter())
            .chain(client_sys.iter())
            .copied()
            .collect();
        united.sort_by_key(|&i| std::cmp::Reverse(self.f(i).rec.r#type));
        self.t.nss.reserve(united.len());
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

    pub(super) fn sort_and_chain_nss(&mut self, n: usize) {
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
}
