//! The in-memory flow of the tracing engine (spec §2.5): one fetched row, or several rows merged
//! into one session, plus the normalised trace id list. Also the completion of external app
//! spans into flows (§8.2) and the grouping key `InstKey` (§6.1).
//!
//! Owns only data shapes and pure accessors; it must not hold tree-building state (that lives in
//! `sort`) and must not change the store model.

use crate::store::model::{
    observation_point, signal_source, split_trace_id_pair, FlowMeta, FlowRecord,
};
use serde::{Deserialize, Serialize};

/// A merged flow (a "span" of the spec).
#[derive(Debug, Clone, Default)]
pub struct Flow {
    /// All merged columns. `start_time_us`, `end_time_us`, `type`, `response_duration` and the
    /// other merged fields are the post-merge values. Boxed: flows move between the phases and
    /// a record is large.
    pub rec: Box<FlowRecord>,
    /// `_id`s of the merged rows, first row first.
    pub ids: Vec<u64>,
    /// Sorted, distinct, trimmed, non-empty trace ids.
    pub trace_ids: Vec<String>,
    /// The querier's `trace_id` string as fetched (`"a, b"`), restored in the output.
    pub origin_trace_id: String,
}

impl Flow {
    pub fn from_record(rec: FlowRecord) -> Self {
        let origin_trace_id = rec.joined_trace_id();
        let trace_ids = split_trace_id_pair(&rec.trace_id, &rec._trace_id_2);
        Flow {
            ids: vec![rec._id],
            trace_ids,
            origin_trace_id,
            rec: Box::new(rec),
        }
    }

    /// A flow of the FLOWMETA columns only, everything else absent (empty / zero / NULL), which
    /// is how the relation checks must see a search row (§4.4, R-2 fixed). The search itself
    /// uses the lighter [`MetaFlow`]; the two relate alike.
    pub fn from_meta(m: &FlowMeta) -> Self {
        let rec = FlowRecord {
            _id: m._id,
            r#type: m.r#type,
            signal_source: m.signal_source,
            req_tcp_seq: m.req_tcp_seq,
            resp_tcp_seq: m.resp_tcp_seq,
            start_time_us: m.start_time_us,
            end_time_us: m.end_time_us,
            agent_id: m.agent_id,
            protocol: m.protocol,
            syscall_trace_id_request: m.syscall_trace_id_request,
            syscall_trace_id_response: m.syscall_trace_id_response,
            span_id: m.span_id.clone(),
            parent_span_id: m.parent_span_id.clone(),
            request_id: m.request_id,
            l7_protocol: m.l7_protocol,
            trace_id: m.trace_id.clone(),
            _trace_id_2: m._trace_id_2.clone(),
            x_request_id_0: m.x_request_id_0.clone(),
            x_request_id_1: m.x_request_id_1.clone(),
            observation_point: m.observation_point.clone(),
            ..FlowRecord::default()
        };
        Flow::from_record(rec)
    }

    #[inline]
    pub fn tap_side(&self) -> &str {
        &self.rec.observation_point
    }
    #[inline]
    pub fn start(&self) -> i64 {
        self.rec.start_time_us
    }
    #[inline]
    pub fn end(&self) -> i64 {
        self.rec.end_time_us
    }
    /// `rd(x)`: `response_duration` in µs.
    #[inline]
    pub fn rd(&self) -> i64 {
        self.rec.response_duration as i64
    }
    #[inline]
    pub fn agent(&self) -> u16 {
        self.rec.agent_id
    }
    #[inline]
    pub fn is_sys(&self) -> bool {
        self.rec.signal_source == signal_source::EBPF
    }
    #[inline]
    pub fn is_app(&self) -> bool {
        self.rec.signal_source == signal_source::OTEL
    }
    #[inline]
    pub fn is_net(&self) -> bool {
        self.rec.signal_source == signal_source::PACKET
    }
    #[inline]
    pub fn starts_with_c(&self) -> bool {
        self.tap_side().starts_with('c')
    }
    #[inline]
    pub fn starts_with_s(&self) -> bool {
        self.tap_side().starts_with('s')
    }
    /// Non-empty intersection of the (sorted) trace id lists.
    pub fn traces_intersect(&self, other: &Flow) -> bool {
        sorted_intersect(&self.trace_ids, &other.trace_ids)
    }
    /// `request_id` as a truthy value (NULL and 0 are absent).
    #[inline]
    pub fn request_id_truthy(&self) -> Option<u64> {
        self.rec.request_id.filter(|v| *v != 0)
    }
    /// The side the output's `auto_instance*` fields use: 0 for client tap sides, else 1.
    #[inline]
    pub fn output_side(&self) -> u8 {
        if self.starts_with_c() {
            0
        } else {
            1
        }
    }

    /// Merge helper of §5.2/§5.3: copy every column of `f` whose value in `self` is falsy.
    pub fn fill_falsy_from(&mut self, f: &Flow) {
        fill_falsy(&mut self.rec, &f.rec);
        if self.trace_ids.is_empty() {
            self.trace_ids = f.trace_ids.clone();
        }
        if self.origin_trace_id.is_empty() {
            self.origin_trace_id = f.origin_trace_id.clone();
        }
    }
}

/// A search-phase flow: one FLOWMETA row and its trace ids. The relation checks see every
/// column it lacks as absent (empty / zero / NULL), as §4.4 requires of search rows (R-2 fixed);
/// it relates exactly like `Flow::from_meta` of the same row, without carrying a full record.
#[derive(Debug, Clone, Default)]
pub struct MetaFlow {
    pub meta: FlowMeta,
    /// Sorted, distinct, trimmed, non-empty trace ids (`meta_trace_ids`).
    pub trace_ids: Vec<String>,
}

impl MetaFlow {
    pub fn new(meta: FlowMeta) -> Self {
        let trace_ids = meta_trace_ids(&meta);
        MetaFlow { meta, trace_ids }
    }
}

/// Intersection test of two sorted string lists.
pub fn sorted_intersect(a: &[String], b: &[String]) -> bool {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => return true,
        }
    }
    false
}

macro_rules! fill_fields {
    ($dst:ident, $src:ident; num: $($n:ident),*; str: $($s:ident),*; opt: $($o:ident),*) => {
        $( if $dst.$n == 0 { $dst.$n = $src.$n; } )*
        $( if $dst.$s.is_empty() && !$src.$s.is_empty() { $dst.$s = $src.$s.clone(); } )*
        $( if $dst.$o.map_or(true, |v| v == 0) && $src.$o.is_some() { $dst.$o = $src.$o; } )*
    };
}

fn fill_falsy(d: &mut FlowRecord, s: &FlowRecord) {
    fill_fields!(d, s;
        num: time, signal_source, l7_protocol, r#type, req_tcp_seq, resp_tcp_seq, start_time_us,
            end_time_us, agent_id, capture_nic, capture_nic_type, vtap_device_type,
            syscall_trace_id_request, syscall_trace_id_response, syscall_cap_seq_0,
            syscall_cap_seq_1, flow_id, protocol, process_id_0, process_id_1,
            client_port, server_port, subnet_id_0, subnet_id_1, auto_instance_type_0,
            auto_instance_type_1, auto_instance_id_0, auto_instance_id_1, auto_service_type_0,
            auto_service_type_1, auto_service_id_0, auto_service_id_1, gprocess_id_0,
            gprocess_id_1, pod_id_0, pod_id_1, pod_ns_id_0, pod_ns_id_1, pod_node_id_0,
            pod_node_id_1, host_id_0, host_id_1, capture_network_type_id, is_tls, is_async,
            response_status, response_duration;
        str: biz_protocol, capture_nic_name, vtap_device_name, vtap_host_name,
            vtap_pod_node_name, trace_id, _trace_id_2, span_id, parent_span_id, x_request_id_0,
            x_request_id_1, version, observation_point, ip_0, ip_1, subnet_0,
            subnet_1, auto_instance_name_0, auto_instance_name_1, auto_service_name_0,
            auto_service_name_1, process_kname_0, process_kname_1, gprocess_0, gprocess_1, pod_0,
            pod_1, pod_node_0, pod_node_1, host_0, host_1, app_service, app_instance, tap,
            biz_response_code, response_exception, response_result, request_type, request_domain,
            request_resource, http_proxy_client, endpoint, events;
        opt: span_kind, response_code, request_id);
    if d.attribute_names.is_empty() && !s.attribute_names.is_empty() {
        d.attribute_names = s.attribute_names.clone();
        d.attribute_values = s.attribute_values.clone();
    }
}

/// The process-set grouping key `auto_instance` of §6.1: a numeric (querier-translated) id, a
/// name, or empty. Numbers and strings never compare equal; id 0 is a legitimate key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InstKey {
    Id(u64),
    Name(String),
    Empty,
}

impl InstKey {
    fn name(s: &str) -> InstKey {
        if s.is_empty() {
            InstKey::Empty
        } else {
            InstKey::Name(s.to_string())
        }
    }

    /// The grouping key of a flow (§6.1).
    pub fn of(f: &Flow) -> InstKey {
        let r = &f.rec;
        let app_side = |side: u8| -> Option<InstKey> {
            let id = r.auto_instance_id(side);
            if id != 0 {
                return Some(InstKey::Id(id as u64));
            }
            let name = r.auto_instance(side);
            if !name.is_empty() {
                return Some(InstKey::Name(name.to_string()));
            }
            None
        };
        match f.tap_side() {
            "s-p" => InstKey::Id(r.auto_instance_id(1) as u64),
            "c-p" => InstKey::Id(r.auto_instance_id(0) as u64),
            "s-app" => app_side(1).unwrap_or_else(|| InstKey::name(&r.app_instance)),
            "c-app" => app_side(0).unwrap_or_else(|| InstKey::name(&r.app_instance)),
            "app" => app_side(1)
                .or_else(|| app_side(0))
                .unwrap_or_else(|| InstKey::name(&r.app_instance)),
            _ => InstKey::Empty,
        }
    }

    /// Truthiness as the reference sees it (`0` and `""` are false).
    pub fn truthy(&self) -> bool {
        match self {
            InstKey::Id(v) => *v != 0,
            InstKey::Name(_) => true,
            InstKey::Empty => false,
        }
    }

    /// The string form (`str(auto_instance)`).
    pub fn render(&self) -> String {
        match self {
            InstKey::Id(v) => v.to_string(),
            InstKey::Name(s) => s.clone(),
            InstKey::Empty => String::new(),
        }
    }
}

/// An application span handed in by the completion API or an external APM (§1.2, §8.2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalAppSpan {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    /// OTel span kind 0..=5.
    pub span_kind: u8,
    pub start_time_us: i64,
    pub end_time_us: i64,
    /// The row id; when absent a deterministic id is derived from trace id and span id.
    #[serde(default, rename = "_id", skip_serializing_if = "Option::is_none")]
    pub _id: Option<u64>,
}

impl ExternalAppSpan {
    /// The `_id` this span uses: the given one, else a stable 48-bit hash (FNV-1a) of
    /// `trace_id`, `span_id`, `parent_span_id` and the times, never random.
    pub fn effective_id(&self) -> u64 {
        if let Some(id) = self._id {
            return id;
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                h ^= *b as u64;
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
            h ^= 0xff;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        };
        eat(self.trace_id.as_bytes());
        eat(self.span_id.as_bytes());
        eat(self.parent_span_id.as_bytes());
        eat(&self.start_time_us.to_le_bytes());
        eat(&self.end_time_us.to_le_bytes());
        let v = h & 0xffff_ffff_ffff;
        if v == 0 {
            1
        } else {
            v
        }
    }

    /// Complete the span into a full record (§8.2): tap side from the span kind, signal source
    /// 4, every other column at its zero/empty default, `response_duration = end − start`.
    pub fn to_record(&self) -> FlowRecord {
        let mut rec = FlowRecord {
            _id: self.effective_id(),
            signal_source: signal_source::OTEL,
            observation_point: observation_point::from_span_kind(self.span_kind).to_string(),
            trace_id: self.trace_id.clone(),
            span_id: self.span_id.clone(),
            parent_span_id: self.parent_span_id.clone(),
            start_time_us: self.start_time_us,
            end_time_us: self.end_time_us,
            response_code: Some(0),
            request_id: Some(0),
            ..FlowRecord::default()
        };
        if self.start_time_us != 0 && self.end_time_us != 0 {
            rec.response_duration = (self.end_time_us - self.start_time_us).max(0) as u64;
        }
        rec.time = (self.end_time_us.max(0) / 1_000_000) as u32;
        rec
    }
}

/// Trace ids as the search sees a row: sorted, trimmed, non-empty parts.
pub fn meta_trace_ids(m: &FlowMeta) -> Vec<String> {
    split_trace_id_pair(&m.trace_id, &m._trace_id_2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inst_keys_follow_tap_side_rules() {
        let mut f = Flow::from_record(FlowRecord {
            observation_point: "s-app".into(),
            auto_instance_type_1: 10,
            app_instance: "inst-a".into(),
            ..Default::default()
        });
        assert_eq!(InstKey::of(&f), InstKey::Name("inst-a".into()));
        f.rec.auto_instance_id_1 = 7;
        assert_eq!(InstKey::of(&f), InstKey::Id(7));
        f.rec.observation_point = "c-p".into();
        assert_eq!(InstKey::of(&f), InstKey::Id(0));
        f.rec.observation_point = "c".into();
        assert_eq!(InstKey::of(&f), InstKey::Empty);
    }

    #[test]
    fn external_ids_are_deterministic() {
        let s = ExternalAppSpan {
            trace_id: "t".into(),
            span_id: "a".into(),
            span_kind: 2,
            start_time_us: 10,
            end_time_us: 30,
            ..Default::default()
        };
        assert_eq!(s.effective_id(), s.clone().effective_id());
        let r = s.to_record();
        assert_eq!(r.observation_point, "s-app");
        assert_eq!(r.response_duration, 20);
        assert_eq!(r.signal_source, 4);
    }

    #[test]
    fn fill_copies_only_falsy() {
        let mut a = Flow::from_record(FlowRecord {
            request_type: "GET".into(),
            response_code: None,
            ..Default::default()
        });
        let b = Flow::from_record(FlowRecord {
            request_type: "".into(),
            response_code: Some(200),
            endpoint: "/x".into(),
            ..Default::default()
        });
        a.fill_falsy_from(&b);
        assert_eq!(a.rec.request_type, "GET");
        assert_eq!(a.rec.response_code, Some(200));
        assert_eq!(a.rec.endpoint, "/x");
    }
}
