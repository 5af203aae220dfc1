//! Generated traffic where DeepFlow's evidence runs out, with the tree every request really
//! has: the measure of the inference stage (`autotrace::infer`).
//!
//! A load generator calls `api` (one busy process every request goes through); `api` calls
//! `backend` and MySQL, and looks up names over UDP. Each request is one of:
//!
//! - [`Kind::Sync`]: every call on the thread that read the request (all evidence);
//! - [`Kind::Pool`]: `api` hands the request to a worker thread, which makes the calls (the
//!   syscall trace id chain breaks);
//! - [`Kind::Dns`]: a DNS lookup over UDP whose response rows carry no syscall trace id, made
//!   on the request thread or on a resolver thread, then a call on the request thread;
//! - [`Kind::App`]: `api` is OpenTelemetry-instrumented; uninstrumented MySQL calls and lookups
//!   are made inside its internal spans (sometimes two concurrent ones), its HTTP client span
//!   propagates its span id;
//! - [`Kind::SecondTrace`]: as `App`, and `backend` is instrumented by another tracer that
//!   starts a second trace id.
//!
//! Each span of the ground truth says whether its whole path from the root rests on evidence
//! DeepFlow uses. Deterministic for a seed; owns no IO.

use crate::store::model::{make_id, Ip4, L7FlowLogRow};
use crate::synth::Rng;
use std::net::Ipv4Addr;

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub seed: u64,
    /// Requests per second (Poisson arrivals).
    pub rate: f64,
    pub seconds: u32,
    /// End of the generated period, unix µs.
    pub end_us: i64,
    /// Only this kind of request (`None`: an even mix).
    pub only: Option<Kind>,
}

/// How a request's work is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Sync,
    Pool,
    Dns,
    App,
    SecondTrace,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Sync,
        Kind::Pool,
        Kind::Dns,
        Kind::App,
        Kind::SecondTrace,
    ];
}

/// A span of the ground truth: its rows, its parent's first row, and whether its whole path
/// from the root rests on evidence DeepFlow uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruthSpan {
    pub ids: Vec<u64>,
    pub parent: Option<u64>,
    pub evidence: bool,
}

#[derive(Debug, Clone)]
pub struct Request {
    pub kind: Kind,
    /// `_id` of the load generator's `c-p` row.
    pub entry_id: u64,
    pub spans: Vec<TruthSpan>,
}

#[derive(Debug, Clone, Default)]
pub struct Dataset {
    pub rows: Vec<L7FlowLogRow>,
    pub requests: Vec<Request>,
}

#[derive(Debug, Clone, Copy)]
struct Proc {
    pid: i32,
    gprocess: u32,
    kname: &'static str,
    pod: u32,
    agent: u16,
    ip: [u8; 4],
}

const LOADGEN: Proc = Proc {
    pid: 100,
    gprocess: 1100,
    kname: "loadgen",
    pod: 11,
    agent: 1,
    ip: [10, 0, 1, 10],
};
const API: Proc = Proc {
    pid: 200,
    gprocess: 1200,
    kname: "api",
    pod: 12,
    agent: 2,
    ip: [10, 0, 2, 20],
};
const BACKEND: Proc = Proc {
    pid: 300,
    gprocess: 1300,
    kname: "backend",
    pod: 13,
    agent: 3,
    ip: [10, 0, 3, 30],
};
const MYSQL: Proc = Proc {
    pid: 400,
    gprocess: 1400,
    kname: "mysqld",
    pod: 14,
    agent: 3,
    ip: [10, 0, 3, 40],
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Http,
    Mysql,
}

struct Gen {
    rng: Rng,
    counter: u32,
    seq: u32,
    thread: u64,
    flow: u64,
    rows: Vec<L7FlowLogRow>,
    spans: Vec<TruthSpan>,
}

fn row(start: i64, end: i64) -> L7FlowLogRow {
    L7FlowLogRow {
        start_time: start,
        end_time: end,
        time: (end / 1_000_000) as u32,
        response_duration: (end - start) as u64,
        r#type: 2,
        is_ipv4: 1,
        capture_network_type_id: 3,
        ..Default::default()
    }
}

fn place(r: &mut L7FlowLogRow, client: &Proc, server: &Proc) {
    r.pod_id_0 = client.pod;
    r.pod_id_1 = server.pod;
    r.auto_instance_id_0 = client.pod;
    r.auto_instance_type_0 = 10;
    r.auto_instance_id_1 = server.pod;
    r.auto_instance_type_1 = 10;
    r.auto_service_id_0 = client.pod + 100;
    r.auto_service_type_0 = 130;
    r.auto_service_id_1 = server.pod + 100;
    r.auto_service_type_1 = 130;
    r.pod_node_id_0 = client.agent as u32;
    r.pod_node_id_1 = server.agent as u32;
    r.ip4_0 = Ip4(Ipv4Addr::from(client.ip));
    r.ip4_1 = Ip4(Ipv4Addr::from(server.ip));
}

/// Header context of a call.
#[derive(Debug, Clone, Default)]
struct Ctx {
    trace_id: String,
    span_id: String,
}

impl Gen {
    fn id(&mut self, end_us: i64) -> u64 {
        self.counter = self.counter.wrapping_add(1) & 0x3f_ffff;
        make_id((end_us / 1_000_000) as u32, 2, self.counter)
    }

    fn thread(&mut self) -> u64 {
        self.thread += 1 + self.rng.below(16);
        let t = self.thread;
        self.thread += 64;
        t
    }

    fn hex(&mut self, bytes: usize) -> String {
        let mut s = String::new();
        while s.len() < bytes * 2 {
            s.push_str(&format!("{:016x}", self.rng.next_u64()));
        }
        s.truncate(bytes * 2);
        s
    }

    fn push(&mut self, r: L7FlowLogRow, parent: Option<u64>, evidence: bool) -> u64 {
        let id = r._id;
        self.rows.push(r);
        self.spans.push(TruthSpan {
            ids: vec![id],
            parent,
            evidence,
        });
        id
    }

    /// One call seen at the client (`c-p`) and server (`s-p`) processes. Returns the first
    /// `_id` of both; the server's response syscall id is set by the caller through the
    /// returned row index.
    #[allow(clippy::too_many_arguments)]
    fn call(
        &mut self,
        client: &Proc,
        server: &Proc,
        proto: Proto,
        start: i64,
        end: i64,
        client_sys: (u64, u64),
        server_sys: (u64, u64),
        ctx: &Ctx,
        parent: Option<u64>,
        evidence: bool,
    ) -> (u64, u64) {
        self.seq = self.seq.wrapping_add(1 + self.rng.below(3000) as u32);
        let req_seq = self.seq;
        self.seq = self.seq.wrapping_add(1 + self.rng.below(3000) as u32);
        let resp_seq = self.seq;
        self.flow += 1;
        let mut ids = (0, 0);
        for (k, (tap, s, e)) in [("c-p", start, end), ("s-p", start + 40, end - 40)]
            .into_iter()
            .enumerate()
        {
            let mut r = row(s, e);
            place(&mut r, client, server);
            r.observation_point = tap.into();
            r.signal_source = 3;
            r.protocol = 6;
            r.req_tcp_seq = req_seq;
            r.resp_tcp_seq = resp_seq;
            r.flow_id = self.flow;
            r.client_port = 20000 + (self.flow % 40000) as u16;
            r.syscall_cap_seq_0 = 1;
            r.syscall_cap_seq_1 = 2;
            match proto {
                Proto::Http => {
                    r.l7_protocol = 20;
                    r.biz_protocol = "HTTP".into();
                    r.version = "1.1".into();
                    r.request_type = "GET".into();
                    r.request_domain = format!("{}:8080", server.kname);
                    r.request_resource = "/work".into();
                    r.endpoint = "/work".into();
                    r.response_code = Some(200);
                    r.server_port = 8080;
                    r.trace_id = ctx.trace_id.clone();
                    r.span_id = ctx.span_id.clone();
                }
                Proto::Mysql => {
                    r.l7_protocol = 60;
                    r.biz_protocol = "MySQL".into();
                    r.request_type = "COM_QUERY".into();
                    r.request_resource = "SELECT 1".into();
                    r.server_port = 3306;
                }
            }
            if tap == "c-p" {
                r.agent_id = client.agent;
                r.process_id_0 = client.pid;
                r.gprocess_id_0 = client.gprocess;
                r.process_kname_0 = client.kname.into();
                r.syscall_trace_id_request = client_sys.0;
                r.syscall_trace_id_response = client_sys.1;
            } else {
                r.agent_id = server.agent;
                r.process_id_1 = server.pid;
                r.gprocess_id_1 = server.gprocess;
                r.process_kname_1 = server.kname.into();
                r.syscall_trace_id_request = server_sys.0;
                r.syscall_trace_id_response = server_sys.1;
            }
            r._id = self.id(e);
            if k == 0 {
                ids.0 = self.push(r, parent, evidence);
            } else {
                ids.1 = self.push(r, Some(ids.0), evidence);
            }
        }
        ids
    }

    /// A DNS lookup by `at`: a request row (`sys` its syscall trace id) and two response rows
    /// without syscall trace ids; one span.
    fn dns(&mut self, at: &Proc, start: i64, us: i64, sys: u64, parent: u64, evidence: bool) {
        self.flow += 1;
        let txid = 1 + self.rng.below(65_000);
        let mut ids = Vec::new();
        for (k, (ty, t)) in [(0u8, start), (1, start + us * 9 / 10), (1, start + us)]
            .into_iter()
            .enumerate()
        {
            let mut r = row(t, t);
            place(&mut r, at, at);
            r.ip4_1 = Ip4(Ipv4Addr::from([10, 96, 0, 10]));
            r.observation_point = "c-p".into();
            r.signal_source = 3;
            r.agent_id = at.agent;
            r.protocol = 17;
            r.l7_protocol = 120;
            r.biz_protocol = "DNS".into();
            r.r#type = ty;
            r.request_type = if ty == 0 { "A".into() } else { String::new() };
            r.request_resource = if ty == 0 {
                "backend.svc.cluster.local".into()
            } else {
                String::new()
            };
            r.request_id = Some(txid);
            r.response_code = if ty == 0 { None } else { Some(0) };
            r.flow_id = self.flow;
            r.server_port = 53;
            r.client_port = 40000 + (self.flow % 20000) as u16;
            r.process_id_0 = at.pid;
            r.gprocess_id_0 = at.gprocess;
            r.process_kname_0 = at.kname.into();
            r.syscall_trace_id_request = if ty == 0 { sys } else { 0 };
            r.syscall_cap_seq_0 = if ty == 0 { 2 } else { 0 };
            r.syscall_cap_seq_1 = if ty == 0 { 0 } else { 2 + k as u32 };
            r._id = self.id(t);
            ids.push(r._id);
            self.rows.push(r);
        }
        self.spans.push(TruthSpan {
            ids,
            parent: Some(parent),
            evidence,
        });
    }

    /// An OpenTelemetry span of `at` (kind 1 internal, 2 server, 3 client).
    #[allow(clippy::too_many_arguments)]
    fn app(
        &mut self,
        at: &Proc,
        service: &str,
        kind: u8,
        start: i64,
        end: i64,
        trace_id: &str,
        parent_span: &str,
        parent: u64,
        evidence: bool,
    ) -> (u64, String) {
        let span_id = self.hex(8);
        let mut r = row(start, end);
        place(&mut r, at, at);
        r.signal_source = 4;
        r.observation_point = crate::store::model::observation_point::from_span_kind(kind).into();
        r.agent_id = at.agent;
        r.trace_id = trace_id.into();
        r.span_id = span_id.clone();
        r.parent_span_id = parent_span.into();
        r.span_kind = Some(kind);
        r.app_service = service.into();
        r.app_instance = format!("{service}-0");
        r.endpoint = match kind {
            2 => "GET /work".into(),
            3 => "GET".into(),
            _ => "handler.step".into(),
        };
        r._id = self.id(end);
        (self.push(r, Some(parent), evidence), span_id)
    }

    /// `backend`'s work for a call received at `[s, e]`: one MySQL call on the thread
    /// (`thread`), inside its own OpenTelemetry spans of trace `second` when given.
    fn backend(&mut self, s: i64, e: i64, sp: u64, thread: u64, second: Option<&str>) {
        let (mut parent, mut ctx) = (sp, Ctx::default());
        let mut evidence = true;
        if let Some(t) = second {
            let (a, span) = self.app(&BACKEND, "backend", 2, s + 20, e - 20, t, "", sp, false);
            let (c, cspan) = self.app(&BACKEND, "backend", 3, s + 60, e - 60, t, &span, a, false);
            parent = c;
            ctx = Ctx {
                trace_id: t.into(),
                span_id: cspan,
            };
            evidence = false;
        }
        let (cs, ce) = (s + 100, e - 100);
        let db = self.thread();
        let (cp, _) = self.call(
            &BACKEND,
            &MYSQL,
            Proto::Mysql,
            cs,
            ce,
            (thread, thread + 1),
            (db, db + 1),
            &ctx,
            Some(parent),
            evidence,
        );
        if second.is_some() {
            // The client row carries the second trace's context.
            let k = self
                .rows
                .iter()
                .rposition(|r| r._id == cp)
                .expect("just pushed");
            self.rows[k].trace_id = ctx.trace_id.clone();
            self.rows[k].span_id = ctx.span_id.clone();
        }
    }

    /// One request of `kind` starting at `t`.
    fn request(&mut self, kind: Kind, t: i64) -> u64 {
        let ms = |g: &mut Gen, lo: i64, hi: i64| lo + g.rng.below((hi - lo) as u64) as i64;
        let db_us = ms(self, 800, 3_000);
        let be_us = ms(self, 2_000, 6_000);
        let gap = ms(self, 300, 1_500);
        let dns_us = ms(self, 300, 900);
        // The api server span's length covers its work plus gaps.
        let work = gap + db_us + gap + be_us + gap + dns_us + gap;
        let total = work + 2_000;
        let lg = self.thread();
        let api_t = self.thread();
        let (entry, sp) = self.call(
            &LOADGEN,
            &API,
            Proto::Http,
            t,
            t + total,
            (lg, lg + 1),
            (api_t, api_t + 1),
            &Ctx::default(),
            None,
            true,
        );
        let sp_row = self.rows.len() - 1;
        let (s, e) = (t + 40, t + total - 40);
        let mut cur = s + 500;
        match kind {
            Kind::Sync | Kind::Pool => {
                let pool = kind == Kind::Pool;
                let th = if pool { self.thread() } else { api_t };
                let db = self.thread();
                self.call(
                    &API,
                    &MYSQL,
                    Proto::Mysql,
                    cur,
                    cur + db_us,
                    (th, th + 1),
                    (db, db + 1),
                    &Ctx::default(),
                    Some(sp),
                    !pool,
                );
                cur += db_us + gap;
                let b = self.thread();
                let (_, bsp) = self.call(
                    &API,
                    &BACKEND,
                    Proto::Http,
                    cur,
                    cur + be_us,
                    (th + 1, th + 2),
                    (b, b + 1),
                    &Ctx::default(),
                    Some(sp),
                    !pool,
                );
                self.backend(cur + 40, cur + be_us - 40, bsp, b, None);
                if pool {
                    self.mark_from(bsp, false);
                }
                self.rows[sp_row].syscall_trace_id_response = if pool { api_t + 1 } else { th + 2 };
            }
            Kind::Dns => {
                let resolver = self.rng.below(2) == 0;
                let sys = if resolver { self.thread() } else { api_t };
                // The request row is found by syscall only on the request thread; the response
                // rows never are.
                self.dns(&API, cur, dns_us, sys, sp, false);
                cur += dns_us + gap;
                let b = self.thread();
                let (_, bsp) = self.call(
                    &API,
                    &BACKEND,
                    Proto::Http,
                    cur,
                    cur + be_us,
                    (api_t, api_t + 1),
                    (b, b + 1),
                    &Ctx::default(),
                    Some(sp),
                    true,
                );
                self.backend(cur + 40, cur + be_us - 40, bsp, b, None);
                self.rows[sp_row].syscall_trace_id_response = api_t + 1;
            }
            Kind::App | Kind::SecondTrace => {
                let trace = self.hex(16);
                let (a, aspan) = self.app(&API, "api", 2, s + 100, e - 100, &trace, "", sp, true);
                // Internal span 1: a MySQL call and, sometimes, a lookup (uninstrumented).
                let i1_end = cur + gap + db_us + dns_us + 200;
                let (i1, _) = self.app(&API, "api", 1, cur, i1_end, &trace, &aspan, a, true);
                let db = self.thread();
                self.call(
                    &API,
                    &MYSQL,
                    Proto::Mysql,
                    cur + 100,
                    cur + 100 + db_us,
                    (api_t, api_t + 1),
                    (db, db + 1),
                    &Ctx::default(),
                    Some(i1),
                    false,
                );
                self.dns(&API, cur + 150 + db_us, dns_us, api_t + 1, i1, false);
                cur = i1_end + 100;
                let mut chain = api_t + 1;
                if self.rng.below(4) == 0 {
                    // Two concurrent internal spans; a call in each, one where both run.
                    let (i2, _) = self.app(&API, "api", 1, cur, cur + 800, &trace, &aspan, a, true);
                    let (i3, _) = self.app(
                        &API,
                        "api",
                        1,
                        cur + 400,
                        cur + 1_200,
                        &trace,
                        &aspan,
                        a,
                        true,
                    );
                    for (at, parent) in [(cur + 50, i2), (cur + 500, i3)] {
                        let db = self.thread();
                        self.call(
                            &API,
                            &MYSQL,
                            Proto::Mysql,
                            at,
                            at + 200,
                            (chain, chain + 1),
                            (db, db + 1),
                            &Ctx::default(),
                            Some(parent),
                            false,
                        );
                        chain += 1;
                    }
                    cur += 1_300;
                }
                // The HTTP client span propagates its span id; its call ends the thread's chain.
                let (c, cspan) = self.app(
                    &API,
                    "api",
                    3,
                    cur,
                    cur + be_us + 200,
                    &trace,
                    &aspan,
                    a,
                    true,
                );
                let b = self.thread();
                let ctx = Ctx {
                    trace_id: trace.clone(),
                    span_id: cspan,
                };
                let (_, bsp) = self.call(
                    &API,
                    &BACKEND,
                    Proto::Http,
                    cur + 100,
                    cur + 100 + be_us,
                    (chain, chain + 1),
                    (b, b + 1),
                    &ctx,
                    Some(c),
                    true,
                );
                let second = (kind == Kind::SecondTrace).then(|| self.hex(16));
                self.backend(cur + 140, cur + 60 + be_us, bsp, b, second.as_deref());
                self.rows[sp_row].syscall_trace_id_response = chain + 1;
            }
        }
        entry
    }

    /// Mark every span below `root` (its own link included) as lacking evidence.
    fn mark_from(&mut self, root: u64, evidence: bool) {
        let mut below: std::collections::HashSet<u64> = [root].into();
        for s in self.spans.iter_mut() {
            if below.contains(&s.ids[0]) || s.parent.is_some_and(|p| below.contains(&p)) {
                below.insert(s.ids[0]);
                s.evidence = evidence;
            }
        }
    }
}

/// Generate the dataset.
pub fn generate(opts: &Options) -> Dataset {
    let mut g = Gen {
        rng: Rng::new(opts.seed ^ 0x5eed_b11d),
        counter: 0,
        seq: 0,
        thread: 0,
        flow: 0,
        rows: Vec::new(),
        spans: Vec::new(),
    };
    g.seq = g.rng.next_u64() as u32;
    g.thread = (g.rng.next_u64() >> 24) << 8;
    g.flow = g.rng.next_u64() >> 20;
    let begin = opts.end_us - opts.seconds.max(1) as i64 * 1_000_000;
    let rate = opts.rate.max(0.01);
    let mut t = begin as f64;
    let mut requests = Vec::new();
    loop {
        let u = (g.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        t += -(1.0 - u).ln() / rate * 1e6;
        if t as i64 + 100_000 > opts.end_us {
            break;
        }
        let kind = opts
            .only
            .unwrap_or(Kind::ALL[g.rng.below(Kind::ALL.len() as u64) as usize]);
        g.spans.clear();
        let entry_id = g.request(kind, t as i64);
        requests.push(Request {
            kind,
            entry_id,
            spans: std::mem::take(&mut g.spans),
        });
    }
    Dataset {
        rows: g.rows,
        requests,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_every_row_in_one_truth_span() {
        let o = Options {
            seed: 3,
            rate: 20.0,
            seconds: 5,
            end_us: 1_700_000_000_000_000,
            only: None,
        };
        let (a, b) = (generate(&o), generate(&o));
        assert_eq!(a.rows, b.rows);
        let n: usize = a
            .requests
            .iter()
            .flat_map(|r| &r.spans)
            .map(|s| s.ids.len())
            .sum();
        assert_eq!(n, a.rows.len());
        for k in Kind::ALL {
            assert!(a.requests.iter().any(|r| r.kind == k), "no {k:?}");
        }
        for r in &a.rows {
            assert!(r.start_time <= r.end_time);
            assert_eq!((r._id >> 32) as u32, r.time);
        }
    }
}
