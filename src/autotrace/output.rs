//! OUTPUT (spec §7): deepflow span ids, depth-first ordering, pruning of unrelated trees,
//! related_ids, selftime, services, render times, final fixes, and the result types with their
//! DeepFlow JSON renderings (L7FlowTracing `DATA` and the tracing-completion variant).
//!
//! Owns the result shape. It must not change the tree built by `sort` beyond the output fixes
//! of §7.8. Policy (§9): deterministic sys-span ids from the first `_id` (O-4), literal `None`
//! NSS prefix (O-3), zero-duration children skipped in selftime (O-1), services iterated in
//! process-set order without de-duplication (O-2).

use super::flow::Flow;
use super::relate::names;
use super::sort::Tree;
use super::Detail;
use super::IndexMap;
use crate::store::model::FlowRecord;
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// One span of the result, in output (depth-first) order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutSpan {
    /// Flow index `_index`.
    pub id: usize,
    /// `_id`s of the merged rows.
    pub ids: Vec<u64>,
    /// Parent flow index (`parent_id`, −1 in JSON when `None`).
    pub parent_id: Option<usize>,
    /// Child flow indices in attachment order.
    pub childs: Vec<usize>,
    pub related_ids: Vec<String>,
    pub selftime: i64,
    /// Why the parent link was made (`set_parent_info`).
    pub set_parent_info: Option<String>,
    /// The parent link was inferred (`infer`), not found by DeepFlow's evidence.
    pub inferred: bool,
    pub deepflow_span_id: String,
    pub deepflow_parent_span_id: String,
    pub render_start_time_us: i64,
    pub render_end_time_us: i64,
    pub service_uid: Option<String>,
    pub service_uname: Option<String>,
    /// Unified service fields (PSS for sys/app spans, NSS for net spans).
    pub auto_service_id: Option<u32>,
    pub auto_service: Option<String>,
    pub auto_service_type: Option<u8>,
    /// Unified sys-span fields (`None` for other spans).
    pub process_id: Option<i32>,
    pub subnet: Option<String>,
    pub ip: Option<String>,
    pub process_kname: Option<String>,
    pub gprocess: Option<String>,
    /// The original trace id string (`"a, b"`).
    pub trace_id: String,
    /// Sorted distinct trace ids.
    pub trace_ids: Vec<String>,
    /// The merged record (times, type and duration are post-merge). Boxed: spans move
    /// between the assembly and the encoders, and a record is large.
    pub record: Box<FlowRecord>,
}

impl OutSpan {
    pub fn tap_side(&self) -> &str {
        &self.record.observation_point
    }
    /// `duration`: `response_duration` after merging.
    pub fn duration(&self) -> u64 {
        self.record.response_duration
    }
    fn side(&self) -> u8 {
        self.record.observed_side()
    }
    /// Output `auto_instance` (name; IP string for IP-like types).
    pub fn auto_instance(&self) -> &str {
        self.record.auto_instance(self.side())
    }
    pub fn auto_instance_id(&self) -> u32 {
        self.record.auto_instance_id(self.side())
    }
    pub fn auto_instance_type(&self) -> u8 {
        if self.side() == 0 {
            self.record.auto_instance_type_0
        } else {
            self.record.auto_instance_type_1
        }
    }
}

/// One entry of `services`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceStat {
    pub service_uid: String,
    pub service_uname: String,
    pub duration: i64,
    /// `"%.2f"` percentage; `None` when the total is 0 (rendered as the integer `0`).
    pub duration_ratio: Option<String>,
}

/// The assembled trace.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TraceResult {
    /// Spans in depth-first output order, pruned.
    pub spans: Vec<OutSpan>,
    pub services: Vec<ServiceStat>,
    /// Agent id → µs to add to that agent's span times.
    pub host_clock_correction: BTreeMap<u16, i64>,
    /// The `_id` used as pruning anchor.
    pub entry_id: Option<u64>,
}

fn opt_str(v: &Option<String>) -> Value {
    v.as_ref().map_or(Value::Null, |s| Value::String(s.clone()))
}

/// ClickHouse `toJSONString(CAST((names, values), 'Map(String, String)'))`.
fn attribute_json(r: &FlowRecord) -> String {
    let mut out = String::from("{");
    for (k, (name, value)) in r.attributes().enumerate() {
        if k > 0 {
            out.push(',');
        }
        out.push_str(&Value::String(name.to_string()).to_string());
        out.push(':');
        out.push_str(&Value::String(value.to_string()).to_string());
    }
    out.push('}');
    out
}

impl TraceResult {
    /// The L7FlowTracing `DATA` object: `{"tracing", "services", "host_clock_correction"}`,
    /// or `{}` when nothing was found.
    pub fn to_deepflow_json(&self, has_attributes: bool) -> Value {
        if self.spans.is_empty() {
            return json!({});
        }
        let tracing: Vec<Value> = self
            .spans
            .iter()
            .map(|s| Value::Object(span_json(s, has_attributes)))
            .collect();
        let services: Vec<Value> = self
            .services
            .iter()
            .map(|s| {
                json!({
                    "service_uid": s.service_uid,
                    "service_uname": s.service_uname,
                    "duration": s.duration,
                    "duration_ratio": s.duration_ratio.as_ref().map_or(json!(0), |r| json!(r)),
                })
            })
            .collect();
        json!({
            "tracing": tracing,
            "services": services,
            "host_clock_correction": self.clock_json(),
        })
    }

    /// The tracing-completion `DATA` object (§8.1 step 7): no `services`, and each span without
    /// the tree/service/display fields.
    pub fn to_completion_json(&self) -> Value {
        if self.spans.is_empty() {
            return json!({});
        }
        const DROP: [&str; 12] = [
            "selftime",
            "Enum(tap_side)",
            "id",
            "parent_id",
            "childs",
            "service_uid",
            "service_uname",
            "tap_port",
            "tap_port_name",
            "resource_from_vtap",
            "set_parent_info",
            "auto_instance",
        ];
        let tracing: Vec<Value> = self
            .spans
            .iter()
            .map(|s| {
                let mut m = span_json(s, false);
                for k in DROP {
                    m.remove(k);
                }
                Value::Object(m)
            })
            .collect();
        json!({"tracing": tracing, "host_clock_correction": self.clock_json()})
    }

    fn clock_json(&self) -> Value {
        let m: Map<String, Value> = self
            .host_clock_correction
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        Value::Object(m)
    }
}

fn span_json(s: &OutSpan, has_attributes: bool) -> Map<String, Value> {
    let r = &s.record;
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    put("id", json!(s.id));
    put(
        "_ids",
        json!(s.ids.iter().map(|i| i.to_string()).collect::<Vec<_>>()),
    );
    put("related_ids", json!(s.related_ids));
    put("signal_source", json!(r.signal_source));
    put("type", json!(r.r#type));
    put("start_time_us", json!(r.start_time_us));
    put("end_time_us", json!(r.end_time_us));
    put("duration", json!(r.response_duration));
    put("selftime", json!(s.selftime));
    put("tap_side", json!(r.observation_point));
    put("Enum(tap_side)", json!(r.observation_point_name()));
    put("l7_protocol", json!(r.l7_protocol));
    put("Enum(l7_protocol)", json!(r.l7_protocol_name()));
    put("l7_protocol_str", json!(r.biz_protocol));
    put("endpoint", json!(r.endpoint));
    put("request_type", json!(r.request_type));
    put("request_resource", json!(r.request_resource));
    put("response_status", json!(r.response_status));
    put("response_exception", json!(r.response_exception));
    put("biz_response_code", json!(r.biz_response_code));
    put("response_code", json!(r.response_code));
    put("flow_id", json!(r.flow_id.to_string()));
    put("request_id", json!(r.request_id));
    put("x_request_id_0", json!(r.x_request_id_0));
    put("x_request_id_1", json!(r.x_request_id_1));
    put("span_id", json!(r.span_id));
    put("parent_span_id", json!(r.parent_span_id));
    put("req_tcp_seq", json!(r.req_tcp_seq));
    put("resp_tcp_seq", json!(r.resp_tcp_seq));
    put("syscall_cap_seq_0", json!(r.syscall_cap_seq_0));
    put("syscall_cap_seq_1", json!(r.syscall_cap_seq_1));
    put(
        "syscall_trace_id_request",
        json!(r.syscall_trace_id_request.to_string()),
    );
    put(
        "syscall_trace_id_response",
        json!(r.syscall_trace_id_response.to_string()),
    );
    put("trace_id", json!(s.trace_id));
    put(
        "attribute",
        if has_attributes {
            json!(attribute_json(r))
        } else {
            Value::Null
        },
    );
    put("parent_id", json!(s.parent_id.map_or(-1i64, |p| p as i64)));
    put("childs", json!(s.childs));
    put("process_id", json!(s.process_id));
    put("vtap_id", json!(r.agent_id));
    put("service_uid", opt_str(&s.service_uid));
    put("service_uname", opt_str(&s.service_uname));
    put("app_service", json!(r.app_service));
    put("app_instance", json!(r.app_instance));
    put("tap_port", json!(r.capture_nic));
    put("tap_port_name", json!(r.capture_nic_name));
    put(
        "resource_from_vtap",
        if r.vtap_device_type != 0 {
            json!(r.vtap_device_name)
        } else {
            Value::Null
        },
    );
    put("set_parent_info", opt_str(&s.set_parent_info));
    if s.inferred {
        put("inferred", json!(true));
    }
    put("auto_instance", json!(s.auto_instance()));
    put("auto_instance_id", json!(s.auto_instance_id()));
    put("auto_instance_type", json!(s.auto_instance_type()));
    put("tap_id", json!(r.capture_network_type_id));
    put("tap", json!(r.tap));
    put("_querier_region", Value::Null);
    put("is_tls", json!(r.is_tls));
    put("is_async", json!(r.is_async));
    put("subnet", opt_str(&s.subnet));
    put("ip", opt_str(&s.ip));
    put("process_kname", opt_str(&s.process_kname));
    put("gprocess", opt_str(&s.gprocess));
    put("auto_service", opt_str(&s.auto_service));
    put("auto_service_id", json!(s.auto_service_id));
    put("auto_service_type", json!(s.auto_service_type));
    put("deepflow_span_id", json!(s.deepflow_span_id));
    put("deepflow_parent_span_id", json!(s.deepflow_parent_span_id));
    put("render_start_time_us", json!(s.render_start_time_us));
    put("render_end_time_us", json!(s.render_end_time_us));
    m
}

/// `{j}-{names(bits)}-{id}`, one entry of `related_ids`.
#[cfg(test)]
fn related_id(j: usize, bits: u8, id: u64) -> String {
    let mut id0 = vec![0; j + 1];
    id0[j] = id;
    RelatedIds::new(&id0, &[j]).render(j, bits)
}

/// Renders `related_ids` entries from the decimal forms of each related flow's index and
/// first `_id`, written once per flow rather than once per relation.
struct RelatedIds {
    /// The decimal forms, and where each flow's are in them (`j`'s, then the `_id`'s).
    digits: String,
    at: Vec<(u32, u8, u8)>,
    names: Vec<String>,
}

impl RelatedIds {
    /// For flows whose first `_id`s are `id0`; only `flows` can be rendered.
    fn new(id0: &[u64], flows: &[usize]) -> Self {
        let mut digits = String::with_capacity(flows.len() * 24);
        let mut at = vec![(0, 0, 0); id0.len()];
        for &j in flows {
            let start = digits.len();
            push_decimal(&mut digits, j as u64);
            let mid = digits.len();
            push_decimal(&mut digits, id0[j]);
            at[j] = (
                start as u32,
                (mid - start) as u8,
                (digits.len() - mid) as u8,
            );
        }
        let names = (0..32u8).map(names).collect();
        RelatedIds { digits, at, names }
    }

    fn render(&self, j: usize, bits: u8) -> String {
        let (start, jl, il) = self.at[j];
        let (start, jl, il) = (start as usize, jl as usize, il as usize);
        let name = &self.names[bits as usize & 31];
        let mut out = String::with_capacity(jl + il + name.len() + 2);
        out.push_str(&self.digits[start..start + jl]);
        out.push('-');
        out.push_str(name);
        out.push('-');
        out.push_str(&self.digits[start + jl..start + jl + il]);
        out
    }
}

/// `.{tap}.{s}`, the tail of a generated deepflow span id.
fn push_dotted(out: &mut String, tap: &str, s: usize) {
    out.push('.');
    out.push_str(tap);
    out.push('.');
    push_decimal(out, s as u64);
}

/// Append `v` in decimal (what `format!("{v}")` writes, without the formatting machinery).
pub(crate) fn push_decimal(out: &mut String, mut v: u64) {
    const PAIRS: [u8; 200] = {
        let mut t = [0u8; 200];
        let mut k = 0;
        while k < 100 {
            t[2 * k] = b'0' + (k / 10) as u8;
            t[2 * k + 1] = b'0' + (k % 10) as u8;
            k += 1;
        }
        t
    };
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    // Four digits per 64-bit division, then two at a time.
    while v >= 10_000 {
        let r = (v % 10_000) as usize;
        v /= 10_000;
        let (hi, lo) = (r / 100 * 2, r % 100 * 2);
        i -= 4;
        buf[i..i + 2].copy_from_slice(&PAIRS[hi..hi + 2]);
        buf[i + 2..i + 4].copy_from_slice(&PAIRS[lo..lo + 2]);
    }
    if v >= 100 {
        let r = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&PAIRS[r..r + 2]);
    }
    if v >= 10 {
        let r = v as usize * 2;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&PAIRS[r..r + 2]);
    } else {
        i -= 1;
        buf[i] = b'0' + v as u8;
    }
    out.push_str(std::str::from_utf8(&buf[i..]).expect("ascii digits"));
}

/// Append `v` in lower-case hexadecimal without leading zeros (`format!("{v:x}")`).
fn push_hex(out: &mut String, v: u64) {
    let digits = (64 - v.leading_zeros()).div_ceil(4).max(1);
    for k in (0..digits).rev() {
        out.push(char::from_digit(((v >> (4 * k)) & 0xf) as u32, 16).expect("a hex digit"));
    }
}

fn find(uf: &mut [usize], mut x: usize) -> usize {
    while uf[x] != x {
        uf[x] = uf[uf[x]];
        x = uf[x];
    }
    x
}

/// Run §7 over the sorted tree.
pub fn build_output(
    flows: Vec<Flow>,
    rel: &[Vec<(usize, u8)>],
    mut tree: Tree,
    entry_id: Option<u64>,
    host_clock_offset_us: i64,
    detail: Detail,
) -> TraceResult {
    let n = flows.len();
    let nodes = &tree.nodes;

    // §7.1 records and deepflow_span_id
    let mut dsid: Vec<Option<String>> = vec![None; n];
    let mut records: Vec<usize> = Vec::new();
    for &p in &tree.process_list {
        for &s in &tree.pss[p].spans {
            if dsid[s].is_some() {
                continue;
            }
            let f = &flows[s];
            let id = if f.is_sys() {
                let sid = &f.rec.span_id;
                let mut id = String::with_capacity(sid.len().max(18) + f.tap_side().len() + 8);
                if sid.chars().count() >= 16 {
                    id.push_str(sid);
                } else {
                    id.push_str("0x");
                    push_hex(&mut id, f.ids[0]);
                }
                push_dotted(&mut id, f.tap_side(), s);
                id
            } else {
                f.rec.span_id.clone()
            };
            dsid[s] = Some(id);
            records.push(s);
        }
    }
    for nss in &tree.nss {
        let head = nss.span_id.as_deref().unwrap_or("None");
        for &s in &nss.spans {
            if flows[s].is_sys() || dsid[s].is_some() {
                continue;
            }
            let tap = flows[s].tap_side();
            let mut id = String::with_capacity(head.len() + tap.len() + 8);
            id.push_str(head);
            push_dotted(&mut id, tap, s);
            dsid[s] = Some(id);
            records.push(s);
        }
    }
    let has_rec: Vec<bool> = dsid.iter().map(Option::is_some).collect();

    // §7.2 depth-first order
    records.sort_by_key(|&s| flows[s].start());
    let mut stack: Vec<usize> = records
        .iter()
        .copied()
        .filter(|&s| nodes[s].parent.is_none_or(|p| !has_rec[p]))
        .collect();
    let mut emitted = vec![false; n];
    let mut order: Vec<usize> = Vec::with_capacity(records.len());
    while let Some(s) = stack.pop() {
        if emitted[s] {
            continue;
        }
        emitted[s] = true;
        order.push(s);
        for &c in &nodes[s].childs {
            if has_rec[c] && !emitted[c] && nodes[c].parent == Some(s) {
                stack.push(c);
            }
        }
    }

    // §7.3 pruning
    let mut tree_of = vec![usize::MAX; n];
    let mut trees: Vec<(i64, i64, Vec<usize>)> = Vec::new(); // (min_start, max_end, members)
    for &s in &order {
        let t = match nodes[s].parent {
            Some(p) if emitted[p] && tree_of[p] != usize::MAX => tree_of[p],
            _ => {
                trees.push((i64::MAX, i64::MIN, Vec::new()));
                trees.len() - 1
            }
        };
        tree_of[s] = t;
        let e = &mut trees[t];
        e.0 = e.0.min(flows[s].start());
        e.1 = e.1.max(flows[s].end());
        e.2.push(s);
    }
    let initial = entry_id.and_then(|id| {
        order
            .iter()
            .find(|&&s| flows[s].ids.contains(&id))
            .map(|&s| tree_of[s])
    });
    let mut keep_tree = vec![true; trees.len()];
    if let (Some(init), true) = (initial, trees.len() > 1) {
        let mut tid: HashMap<&str, usize> = HashMap::new();
        for &s in &order {
            for t in &flows[s].trace_ids {
                let k = tid.len();
                tid.entry(t.as_str()).or_insert(k);
            }
        }
        let mut uf: Vec<usize> = (0..tid.len()).collect();
        for &s in &order {
            let ts = &flows[s].trace_ids;
            for w in ts.windows(2) {
                let (a, b) = (
                    find(&mut uf, tid[w[0].as_str()]),
                    find(&mut uf, tid[w[1].as_str()]),
                );
                if a != b {
                    uf[a] = b;
                }
            }
        }
        let comps_of = |t: usize, uf: &mut Vec<usize>| -> HashSet<usize> {
            let mut out = HashSet::new();
            for &s in &trees[t].2 {
                for x in &flows[s].trace_ids {
                    out.insert(find(uf, tid[x.as_str()]));
                }
            }
            out
        };
        let init_comps = comps_of(init, &mut uf);
        let (imin, imax) = (trees[init].0, trees[init].1);
        for t in 0..trees.len() {
            if t == init {
                continue;
            }
            let h = host_clock_offset_us;
            // Saturating: client spans may end at i64::MAX.
            let overlap =
                trees[t].1.saturating_add(h) >= imin && imax.saturating_add(h) >= trees[t].0;
            let shares = !init_comps.is_empty()
                && comps_of(t, &mut uf).iter().any(|c| init_comps.contains(c));
            keep_tree[t] = overlap || shares;
        }
    }
    let kept_order: Vec<usize> = order
        .into_iter()
        .filter(|&s| keep_tree[tree_of[s]])
        .collect();
    let mut kept = vec![false; n];
    for &s in &kept_order {
        kept[s] = true;
    }

    // §7.5 selftime (O-1 fixed: zero-duration children are skipped)
    let mut selftime: Vec<i64> = flows.iter().map(|f| f.rd()).collect();
    for &p in &kept_order {
        if flows[p].end() - flows[p].start() == 0 {
            continue;
        }
        for &c in &nodes[p].childs {
            if !kept[c] {
                continue;
            }
            let cd = flows[c].end() - flows[c].start();
            if cd <= 0 {
                continue;
            }
            if cd <= selftime[p] {
                selftime[p] -= cd;
            } else {
                selftime[p] = 0;
            }
        }
    }

    // §7.6 services (O-2 fixed)
    let mut present_pairs: HashSet<(u32, String)> = HashSet::new();
    let mut present_apps: HashSet<&str> = HashSet::new();
    for &s in &kept_order {
        if let Some(svc) = &nodes[s].svc {
            if let Some(name) = svc.auto_service.as_ref().filter(|x| !x.is_empty()) {
                present_pairs.insert((svc.auto_service_id.unwrap_or(0), name.clone()));
            }
        }
        let app = flows[s].rec.app_service.as_str();
        if !app.is_empty() {
            present_apps.insert(app);
        }
    }
    let kept_pss: Vec<usize> = tree
        .process_list
        .iter()
        .copied()
        .filter(|&p| {
            let ps = &tree.pss[p];
            let pair = (
                ps.svc.auto_service_id.unwrap_or(0),
                ps.svc.auto_service.clone().unwrap_or_default(),
            );
            present_pairs.contains(&pair)
                || ps
                    .app_service
                    .as_deref()
                    .is_some_and(|a| !a.is_empty() && present_apps.contains(a))
        })
        .collect();
    let g_of = |p: usize| -> Option<String> {
        let e = &tree.pss[p].extra;
        e.gprocess
            .clone()
            .filter(|g| !g.is_empty())
            .or_else(|| e.process_kname.clone().filter(|k| !k.is_empty()))
    };
    let mut subproc: HashMap<u32, HashSet<String>> = HashMap::new();
    for &p in &kept_pss {
        if let Some(g) = g_of(p) {
            subproc
                .entry(tree.pss[p].svc.auto_service_id.unwrap_or(0))
                .or_default()
                .insert(g);
        }
    }
    let mut metrics: IndexMap<String, (String, i64)> = IndexMap::default();
    // Each kept PSS's (service_uid, service_uname), and which of them each span has.
    let mut service_names: Vec<(String, String)> = Vec::with_capacity(kept_pss.len());
    let mut service_of: Vec<Option<usize>> = vec![None; n];
    for &p in &kept_pss {
        let ps = &tree.pss[p];
        let asid = ps.svc.auto_service_id.unwrap_or(0);
        let ip = ps.extra.ip.clone().unwrap_or_default();
        let app = ps.app_service.clone().unwrap_or_default();
        let (mut uid, mut uname) = if asid != 0 {
            let name = ps
                .svc
                .auto_service
                .clone()
                .filter(|x| !x.is_empty())
                .unwrap_or_else(|| ip.clone());
            (format!("{asid}-"), name)
        } else if !app.is_empty() {
            (format!("-{app}"), app.clone())
        } else if !ip.is_empty() {
            (format!("{ip}-"), ip.clone())
        } else {
            ("unknown-".to_string(), "unknown service".to_string())
        };
        if subproc.get(&asid).is_some_and(|s| s.len() > 1)
            && matches!(ps.svc.auto_instance_type, Some(1) | Some(14) | Some(10))
        {
            let g = g_of(p).unwrap_or_default();
            uid.push_str(&g);
            uname.push(':');
            uname.push_str(&g);
        }
        let dur: i64 = ps
            .spans
            .iter()
            .filter(|&&s| kept[s])
            .map(|&s| selftime[s])
            .sum();
        let e = metrics
            .entry(uid.clone())
            .or_insert_with(|| (uname.clone(), 0));
        e.1 += dur;
        if e.0.is_empty() {
            e.0 = uname.clone();
        }
        for &s in &ps.spans {
            service_of[s] = Some(service_names.len());
        }
        service_names.push((uid, uname));
    }
    let total: i64 = metrics.values().map(|v| v.1).sum();
    let mut services: Vec<ServiceStat> = metrics
        .into_iter()
        .map(|(uid, (uname, d))| ServiceStat {
            service_uid: uid,
            service_uname: uname,
            duration: d,
            duration_ratio: if total == 0 {
                None
            } else {
                Some(format!("{:.2}", d as f64 / total as f64 * 100.0))
            },
        })
        .collect();
    services.sort_by_key(|s| std::cmp::Reverse(s.duration));

    // §7.7 render times
    let corr = tree.clock.tidy();

    // §7.1 parent ids (a parent's span id stays when some kept span has it) and §7.8 final
    // fixes
    let full = detail == Detail::Full;
    let parents: Vec<(Option<usize>, String)> = {
        let kept_ids: HashSet<&str> = kept_order
            .iter()
            .filter_map(|&s| dsid[s].as_deref())
            .collect();
        kept_order
            .iter()
            .map(|&s| {
                let parent = tree.nodes[s].parent;
                let parent_dsid = parent.and_then(|p| dsid[p].as_deref()).unwrap_or("");
                let parent_id = parent.filter(|&p| has_rec[p]);
                if !parent_dsid.is_empty() && !kept_ids.contains(parent_dsid) {
                    (None, String::new())
                } else if full {
                    (parent_id, parent_dsid.to_string())
                } else {
                    (parent_id, String::new())
                }
            })
            .collect()
    };
    // §7.4 related_ids (independent per span: on two threads for large traces)
    let id0: Vec<u64> = flows.iter().map(|f| f.ids[0]).collect();
    let related = RelatedIds::new(&id0, if full { &kept_order } else { &[] });
    let parallel = full && kept_order.len() >= super::PARALLEL_FLOWS;
    let related_ids = super::in_halves(&kept_order, parallel, |_, part| {
        if !full {
            return vec![Vec::new(); part.len()];
        }
        part.iter()
            .map(|&s| {
                rel[s]
                    .iter()
                    .filter(|(j, _)| kept[*j])
                    .map(|&(j, bits)| related.render(j, bits))
                    .collect::<Vec<String>>()
            })
            .collect()
    });
    let mut spans = Vec::with_capacity(kept_order.len());
    let mut flows: Vec<Option<Flow>> = flows.into_iter().map(Some).collect();
    let nodes = &mut tree.nodes;
    for ((&s, (parent_id, parent_dsid)), related_ids) in
        kept_order.iter().zip(parents).zip(related_ids)
    {
        let node = &mut nodes[s];
        let f = flows[s].take().expect("each record is output once");
        let agent = if f.is_app() {
            let name = f.rec.auto_instance(f.output_side());
            tree.instance_to_agent
                .get(name)
                .copied()
                .unwrap_or(f.agent())
        } else {
            f.agent()
        };
        let shift = corr.get(&agent).copied().unwrap_or(0);
        let (uid, uname) = match service_of[s].filter(|_| full) {
            Some(k) => (
                Some(service_names[k].0.clone()),
                Some(service_names[k].1.clone()),
            ),
            None => (None, None),
        };
        // Each node is output once: its fields move into the span.
        let svc = node.svc.take();
        let extra = node.extra.take().unwrap_or_default();
        let (start, end) = (f.start(), f.end());
        spans.push(OutSpan {
            id: s,
            ids: f.ids,
            parent_id,
            childs: std::mem::take(&mut node.childs),
            related_ids,
            selftime: selftime[s],
            set_parent_info: node.reason.take(),
            inferred: false,
            deepflow_span_id: dsid[s].take().unwrap_or_default(),
            deepflow_parent_span_id: parent_dsid,
            render_start_time_us: start.saturating_add(shift),
            render_end_time_us: end.saturating_add(shift),
            service_uid: uid,
            service_uname: uname,
            auto_service_id: svc.as_ref().and_then(|v| v.auto_service_id),
            auto_service_type: svc.as_ref().and_then(|v| v.auto_service_type),
            auto_service: svc.and_then(|v| v.auto_service),
            process_id: extra.process_id,
            subnet: extra.subnet,
            ip: extra.ip,
            process_kname: extra.process_kname,
            gprocess: extra.gprocess,
            trace_id: f.origin_trace_id,
            trace_ids: f.trace_ids,
            record: f.rec,
        });
    }
    TraceResult {
        spans,
        services,
        host_clock_correction: corr,
        entry_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_rendering_matches_format() {
        for v in [
            0u64,
            1,
            9,
            10,
            15,
            16,
            99,
            100,
            255,
            9_999,
            10_000,
            10_001,
            123_456,
            1000,
            4096,
            123_456_789,
            u32::MAX as u64,
            7_301_444_403_200_000_001,
            u64::MAX,
        ] {
            let (mut d, mut h) = (String::new(), String::new());
            push_decimal(&mut d, v);
            push_hex(&mut h, v);
            assert_eq!(d, v.to_string());
            assert_eq!(h, format!("{v:x}"));
        }
        assert_eq!(related_id(3, 1 | 8, 77), "3-network,app-77");
        let mut t = String::from("0x1");
        push_dotted(&mut t, "c-p", 12);
        assert_eq!(t, "0x1.c-p.12");
    }
}
