//! Shared test helpers: a row builder over `FlowRecord::default()` with the spec's §10 "default
//! row", lookups on a `TraceResult` by input `_id`, and an in-memory evaluator of search queries.
#![allow(dead_code)]

use deepflow_tempo::autotrace::{SearchQuery, TraceResult};
use deepflow_tempo::store::model::{id_time_s, FlowMeta, FlowRecord};

pub const TCP: &str = "trace mounted due to tcp_seq";

/// A row builder. `row(...)` starts from the §10 default row.
#[derive(Clone, Debug)]
pub struct R(pub FlowRecord, bool);

pub fn row(id: u64, sig: u16, tap: &str, ag: u16, start: i64, end: i64) -> R {
    R(
        FlowRecord {
            _id: id,
            signal_source: sig,
            observation_point: tap.to_string(),
            agent_id: ag,
            start_time_us: start,
            end_time_us: end,
            r#type: 2,
            protocol: 6,
            l7_protocol: 20,
            biz_protocol: "HTTP".into(),
            version: "1.1".into(),
            request_type: "GET".into(),
            request_resource: "/api".into(),
            endpoint: "/api".into(),
            response_code: Some(200),
            server_port: 80,
            auto_instance_type_0: 10,
            auto_instance_type_1: 10,
            auto_service_type_0: 130,
            auto_service_type_1: 130,

            time: (end.max(0) / 1_000_000) as u32,
            ..FlowRecord::default()
        },
        false,
    )
}

impl R {
    pub fn seq(mut self, req: u32, resp: u32) -> Self {
        self.0.req_tcp_seq = req;
        self.0.resp_tcp_seq = resp;
        self
    }
    pub fn sys(mut self, req: u64, resp: u64) -> Self {
        self.0.syscall_trace_id_request = req;
        self.0.syscall_trace_id_response = resp;
        self
    }
    pub fn cap(mut self, c0: u32, c1: u32) -> Self {
        self.0.syscall_cap_seq_0 = c0;
        self.0.syscall_cap_seq_1 = c1;
        self
    }
    /// `process_id_0` for `c-*` rows and `process_id_1` for `s-*` rows.
    pub fn pid(mut self, pid: i32) -> Self {
        if self.0.observation_point.starts_with('c') {
            self.0.process_id_0 = pid;
        } else {
            self.0.process_id_1 = pid;
        }
        self
    }
    pub fn svc0(mut self, id: u32, name: &str, inst: u32) -> Self {
        self.0.auto_service_id_0 = id;
        self.0.auto_service_name_0 = name.into();
        self.0.auto_instance_id_0 = inst;
        self
    }
    pub fn svc1(mut self, id: u32, name: &str, inst: u32) -> Self {
        self.0.auto_service_id_1 = id;
        self.0.auto_service_name_1 = name.into();
        self.0.auto_instance_id_1 = inst;
        self
    }
    pub fn inst0(mut self, inst: u32) -> Self {
        self.0.auto_instance_id_0 = inst;
        self
    }
    pub fn inst1(mut self, inst: u32) -> Self {
        self.0.auto_instance_id_1 = inst;
        self
    }
    pub fn kname0(mut self, k: &str) -> Self {
        self.0.process_kname_0 = k.into();
        self
    }
    pub fn kname1(mut self, k: &str) -> Self {
        self.0.process_kname_1 = k.into();
        self
    }
    /// `trace_id`; `"a,b"` puts the second id into `_trace_id_2`.
    pub fn tr(mut self, t: &str) -> Self {
        match t.split_once(',') {
            Some((a, b)) => {
                self.0.trace_id = a.trim().into();
                self.0._trace_id_2 = b.trim().into();
            }
            None => self.0.trace_id = t.into(),
        }
        self
    }
    pub fn sp(mut self, s: &str) -> Self {
        self.0.span_id = s.into();
        self
    }
    pub fn psp(mut self, s: &str) -> Self {
        self.0.parent_span_id = s.into();
        self
    }
    pub fn x0(mut self, x: &str) -> Self {
        self.0.x_request_id_0 = x.into();
        self
    }
    pub fn x1(mut self, x: &str) -> Self {
        self.0.x_request_id_1 = x.into();
        self
    }
    pub fn ty(mut self, t: u8) -> Self {
        self.0.r#type = t;
        self
    }
    pub fn flow(mut self, f: u64) -> Self {
        self.0.flow_id = f;
        self
    }
    pub fn rd(mut self, rd: u64) -> Self {
        self.0.response_duration = rd;
        self.1 = true;
        self
    }
    pub fn l7(mut self, p: u8, name: &str) -> Self {
        self.0.l7_protocol = p;
        self.0.biz_protocol = name.into();
        self
    }
    pub fn proto(mut self, p: u8) -> Self {
        self.0.protocol = p;
        self
    }
    pub fn req_id(mut self, id: Option<u64>) -> Self {
        self.0.request_id = id;
        self
    }
    pub fn app(mut self, svc: &str) -> Self {
        self.0.app_service = svc.into();
        self
    }
    pub fn with(mut self, f: impl FnOnce(&mut FlowRecord)) -> Self {
        f(&mut self.0);
        self
    }
    /// Finish: `response_duration = end − start` unless set explicitly.
    pub fn b(mut self) -> FlowRecord {
        if !self.1 {
            self.0.response_duration = (self.0.end_time_us - self.0.start_time_us).max(0) as u64;
        }
        self.0
    }
}

pub fn meta_of(r: &FlowRecord) -> FlowMeta {
    FlowMeta {
        _id: r._id,
        r#type: r.r#type,
        signal_source: r.signal_source,
        req_tcp_seq: r.req_tcp_seq,
        resp_tcp_seq: r.resp_tcp_seq,
        start_time_us: r.start_time_us,
        end_time_us: r.end_time_us,
        agent_id: r.agent_id,
        protocol: r.protocol,
        syscall_trace_id_request: r.syscall_trace_id_request,
        syscall_trace_id_response: r.syscall_trace_id_response,
        span_id: r.span_id.clone(),
        parent_span_id: r.parent_span_id.clone(),
        request_id: r.request_id,
        l7_protocol: r.l7_protocol,
        trace_id: r.trace_id.clone(),
        _trace_id_2: r._trace_id_2.clone(),
        x_request_id_0: r.x_request_id_0.clone(),
        x_request_id_1: r.x_request_id_1.clone(),
        observation_point: r.observation_point.clone(),
        time: r.time,
    }
}

/// A tiny in-memory querier: evaluates each `SearchQuery` over `rows` (insertion order),
/// honouring windows on `time` (`_id >> 32` for the single-search queries, the `time` column
/// for the batched entry queries; the two agree on DeepFlow's rows), the OR of clauses and the
/// limit.
pub struct Evaluator {
    pub rows: Vec<FlowRecord>,
}

impl Evaluator {
    fn time(r: &FlowRecord) -> i64 {
        id_time_s(r._id) as i64
    }

    pub fn meta(&self, q: &SearchQuery) -> Vec<FlowMeta> {
        let has_trace = |r: &FlowRecord, t: &str| r.trace_id == t || r._trace_id_2 == t;
        let (hits, limit): (Vec<&FlowRecord>, usize) = match q {
            SearchQuery::EntryByTraceId {
                trace_id,
                window,
                otel_only,
                limit,
            } => (
                self.rows
                    .iter()
                    .filter(|r| {
                        window.contains(Self::time(r))
                            && has_trace(r, trace_id)
                            && (!otel_only || r.signal_source == 4)
                    })
                    .collect(),
                *limit,
            ),
            SearchQuery::EntryById {
                id,
                otel_only,
                limit,
            } => (
                self.rows
                    .iter()
                    .filter(|r| r._id == *id && (!otel_only || r.signal_source == 4))
                    .collect(),
                *limit,
            ),
            SearchQuery::ByTraceIds {
                trace_ids,
                window,
                otel_only,
                limit,
            } => (
                self.rows
                    .iter()
                    .filter(|r| {
                        window.contains(Self::time(r))
                            && trace_ids.iter().any(|t| has_trace(r, t))
                            && (!otel_only || r.signal_source == 4)
                    })
                    .collect(),
                *limit,
            ),
            SearchQuery::Associate {
                req_tcp_seqs,
                resp_tcp_seqs,
                syscall_ids,
                x_request_ids,
                dns_request_ids,
                window,
                limit,
            } => (
                self.rows
                    .iter()
                    .filter(|r| {
                        window.contains(Self::time(r))
                            && (req_tcp_seqs.contains(&r.req_tcp_seq)
                                || resp_tcp_seqs.contains(&r.resp_tcp_seq)
                                || syscall_ids.contains(&r.syscall_trace_id_request)
                                || syscall_ids.contains(&r.syscall_trace_id_response)
                                || x_request_ids.contains(&r.x_request_id_0)
                                || x_request_ids.contains(&r.x_request_id_1)
                                || (r.l7_protocol == 120
                                    && r.request_id.is_some_and(|d| dns_request_ids.contains(&d))))
                    })
                    .collect(),
                *limit,
            ),
            SearchQuery::EntryByIds {
                ids,
                otel_only,
                limit,
            } => (
                self.rows
                    .iter()
                    .filter(|r| ids.contains(&r._id) && (!otel_only || r.signal_source == 4))
                    .collect(),
                *limit,
            ),
            SearchQuery::EntryByTraceIds {
                trace_ids,
                window,
                otel_only,
                limit,
            } => (
                self.rows
                    .iter()
                    .filter(|r| {
                        window.contains(r.time as i64)
                            && trace_ids.iter().any(|t| has_trace(r, t))
                            && (!otel_only || r.signal_source == 4)
                    })
                    .collect(),
                *limit,
            ),
            SearchQuery::Fetch { .. } => panic!("fetch returns records"),
        };
        hits.into_iter().take(limit).map(meta_of).collect()
    }

    pub fn fetch(&self, q: &SearchQuery) -> Vec<FlowRecord> {
        let SearchQuery::Fetch { ids, window } = q else {
            panic!("not a fetch");
        };
        let mut v: Vec<FlowRecord> = self
            .rows
            .iter()
            .filter(|r| window.contains(Self::time(r)) && ids.contains(&r._id))
            .cloned()
            .collect();
        // A store returns a fetch in any order (the search orders it): newest `_id` first
        // here, the opposite of the order the search wants.
        v.sort_by_key(|r| std::cmp::Reverse(r._id));
        v
    }
}

/// Output lookups by input `_id` (the first `_id` of a merged flow).
pub struct View<'a>(pub &'a TraceResult);

impl<'a> View<'a> {
    pub fn span(&self, id: u64) -> &'a deepflow_tempo::autotrace::OutSpan {
        self.0
            .spans
            .iter()
            .find(|s| s.ids.contains(&id))
            .unwrap_or_else(|| panic!("span {id} not in output {:?}", self.order()))
    }
    /// Parent as input `_id` (first `_id` of the parent flow).
    pub fn parent(&self, id: u64) -> Option<u64> {
        let s = self.span(id);
        s.parent_id.map(|p| {
            self.0
                .spans
                .iter()
                .find(|x| x.id == p)
                .expect("parent in output")
                .ids[0]
        })
    }
    pub fn why(&self, id: u64) -> Option<&'a str> {
        self.span(id).set_parent_info.as_deref()
    }
    pub fn selftime(&self, id: u64) -> i64 {
        self.span(id).selftime
    }
    pub fn order(&self) -> Vec<u64> {
        self.0.spans.iter().map(|s| s.ids[0]).collect()
    }
    /// Assert `(id, parent, why, selftime)` rows; `why = "tcp"` abbreviates the tcp reason.
    pub fn check(&self, rows: &[(u64, Option<u64>, Option<&str>, i64)]) {
        for &(id, parent, why, st) in rows {
            assert_eq!(self.parent(id), parent, "parent of {id}");
            let why = why.map(|w| if w == "tcp" { TCP } else { w });
            assert_eq!(self.why(id), why, "why of {id}");
            assert_eq!(self.selftime(id), st, "selftime of {id}");
        }
    }
    pub fn services(&self) -> Vec<(String, String, i64, Option<String>)> {
        self.0
            .services
            .iter()
            .map(|s| {
                (
                    s.service_uid.clone(),
                    s.service_uname.clone(),
                    s.duration,
                    s.duration_ratio.clone(),
                )
            })
            .collect()
    }
}

pub fn svc(uid: &str, name: &str, d: i64, ratio: &str) -> (String, String, i64, Option<String>) {
    (uid.into(), name.into(), d, Some(ratio.into()))
}
