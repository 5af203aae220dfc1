//! MERGE (spec §5): stable ordering by start time, `merge_flow` (request/response sessions, DNS
//! sys-span multi-response, gRPC/HTTP2 frames) and `merge_async_flow` (WebSphereMQ, ISO8583).
//!
//! Owns only the rows → flows step. Candidate lookups use hash indexes keyed by the fields the
//! merge rules require to be equal, so the backward scans of the spec cost O(matches), not O(N).
//! It must not evaluate relations or build trees.

use super::flow::{sorted_intersect, Flow};
use crate::store::model::l7_protocol as l7;
use foldhash::{HashMap, HashMapExt};

type Key = (u16, u64, Option<u64>);

fn key(f: &Flow) -> Key {
    (f.rec.agent_id, f.rec.flow_id, f.rec.request_id)
}

fn async_eligible(f: &Flow) -> bool {
    matches!(f.rec.l7_protocol, l7::WEBSPHEREMQ | l7::ISO8583)
        && f.rec.is_async != 0
        && !f.trace_ids.is_empty()
}

struct Merger {
    flows: Vec<Flow>,
    by_key: HashMap<Key, Vec<usize>>,
    /// Flows that are still requests (type 0, not async), by key.
    req_by_key: HashMap<Key, Vec<usize>>,
    by_async: HashMap<(u8, String), Vec<usize>>,
}

impl Merger {
    fn merge_flow(&mut self, f: &Flow) -> bool {
        let r = &f.rec;
        if !(r.r#type == 1 || matches!(r.l7_protocol, l7::HTTP2 | l7::GRPC)) || r.is_async != 0 {
            return false;
        }
        let is_sys = matches!(f.tap_side(), "c-p" | "s-p");
        let is_dns_sys = r.l7_protocol == l7::DNS && is_sys;
        let is_grpc_frame =
            matches!(r.l7_protocol, l7::HTTP2 | l7::GRPC) && r.response_duration == 0;
        let allow_any_type = is_dns_sys || is_grpc_frame;
        // Only requests can take a regular response: scan the (smaller) request list then.
        let index = if allow_any_type {
            &self.by_key
        } else {
            &self.req_by_key
        };
        let Some(cands) = index.get(&key(f)) else {
            return false;
        };
        let mut target = None;
        for &i in cands.iter().rev() {
            let t = &self.flows[i].rec;
            if t.r#type != 0 && !allow_any_type {
                continue;
            }
            if t.is_async != 0 {
                continue;
            }
            if t.l7_protocol != r.l7_protocol && !is_grpc_frame {
                return false;
            }
            if is_dns_sys {
                let prev = if t.r#type == 0 {
                    t.syscall_cap_seq_0
                } else {
                    t.syscall_cap_seq_1
                };
                if prev.wrapping_add(1) != r.syscall_cap_seq_1 {
                    continue;
                }
            } else {
                if t.r#type != 0 {
                    return false;
                }
                if is_sys && t.syscall_cap_seq_0.wrapping_add(1) != r.syscall_cap_seq_1 {
                    continue;
                }
            }
            target = Some(i);
            break;
        }
        let Some(i) = target else {
            return false;
        };
        let t = &mut self.flows[i];
        if t.rec.r#type == 0 {
            t.rec.r#type = 2;
            if let Some(v) = self.req_by_key.get_mut(&key(t)) {
                if let Some(p) = v.iter().rposition(|&x| x == i) {
                    v.remove(p);
                }
            }
        }
        t.ids.extend_from_slice(&f.ids);
        t.fill_falsy_from(f);
        if t.rec.end_time_us < r.end_time_us {
            t.rec.end_time_us = r.end_time_us;
            t.rec.response_duration = (t.rec.end_time_us - t.rec.start_time_us).max(0) as u64;
        }
        if !is_grpc_frame {
            t.rec.resp_tcp_seq = r.resp_tcp_seq;
            t.rec.syscall_cap_seq_1 = r.syscall_cap_seq_1;
        }
        true
    }

    fn merge_async_flow(&mut self, f: &Flow) -> bool {
        if f.rec.r#type != 1 || !async_eligible(f) {
            return false;
        }
        let k = (f.rec.l7_protocol, f.tap_side().to_string());
        let Some(cands) = self.by_async.get(&k) else {
            return false;
        };
        let mut target = None;
        for &i in cands.iter().rev() {
            let t = &self.flows[i];
            if t.rec.r#type != 0 || !async_eligible(t) {
                continue;
            }
            if !sorted_intersect(&t.trace_ids, &f.trace_ids) {
                continue;
            }
            if (!t.rec.span_id.is_empty() || !f.rec.span_id.is_empty())
                && t.rec.span_id != f.rec.span_id
            {
                continue;
            }
            target = Some(i);
            break;
        }
        let Some(i) = target else {
            return false;
        };
        let old_key = key(&self.flows[i]);
        let t = &mut self.flows[i];
        t.rec.r#type = 2;
        t.ids.extend_from_slice(&f.ids);
        let mut union = t.trace_ids.clone();
        union.extend(f.trace_ids.iter().cloned());
        union.sort();
        union.dedup();
        t.fill_falsy_from(f);
        t.trace_ids = union;
        if t.rec.end_time_us < f.rec.end_time_us {
            t.rec.end_time_us = f.rec.end_time_us;
            t.rec.resp_tcp_seq = f.rec.resp_tcp_seq;
            t.rec.syscall_cap_seq_1 = f.rec.syscall_cap_seq_1;
            t.rec.response_duration = (t.rec.end_time_us - t.rec.start_time_us).max(0) as u64;
        }
        // Filling falsy fields may have changed the (agent, flow_id, request_id) key.
        let new_key = key(&self.flows[i]);
        if new_key != old_key {
            if let Some(v) = self.by_key.get_mut(&old_key) {
                v.retain(|&x| x != i);
            }
            let v = self.by_key.entry(new_key).or_default();
            let pos = v.partition_point(|&x| x < i);
            v.insert(pos, i);
        }
        true
    }

    fn push(&mut self, f: Flow) {
        let i = self.flows.len();
        self.by_key.entry(key(&f)).or_default().push(i);
        if f.rec.r#type == 0 && f.rec.is_async == 0 {
            self.req_by_key.entry(key(&f)).or_default().push(i);
        }
        if f.rec.r#type == 0 && async_eligible(&f) {
            self.by_async
                .entry((f.rec.l7_protocol, f.tap_side().to_string()))
                .or_default()
                .push(i);
        }
        self.flows.push(f);
    }
}

/// Order rows by start time (stable) and merge them into flows (§5.1). The position of a flow in
/// the result is its flow index.
pub fn merge_rows(rows: Vec<Flow>) -> Vec<Flow> {
    // stable order by start time; sort positions, not the (large) flows themselves
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| rows[i].start());
    let mut slots: Vec<Option<Flow>> = rows.into_iter().map(Some).collect();
    let mut m = Merger {
        flows: Vec::with_capacity(slots.len()),
        by_key: HashMap::new(),
        req_by_key: HashMap::new(),
        by_async: HashMap::new(),
    };
    for i in order {
        let f = slots[i].take().expect("each row is visited once");
        if m.merge_flow(&f) || m.merge_async_flow(&f) {
            continue;
        }
        m.push(f);
    }
    m.flows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::model::FlowRecord;

    fn row(id: u64, ty: u8, start: i64, end: i64) -> FlowRecord {
        FlowRecord {
            _id: id,
            r#type: ty,
            protocol: 6,
            l7_protocol: 20,
            agent_id: 1,
            flow_id: 9,
            observation_point: "c".into(),
            start_time_us: start,
            end_time_us: end,
            response_duration: (end - start) as u64,
            ..Default::default()
        }
    }

    #[test]
    fn response_merges_into_latest_request() {
        let rows = vec![
            Flow::from_record(row(2, 1, 900, 900)),
            Flow::from_record(row(1, 0, 100, 100)),
        ];
        let flows = merge_rows(rows);
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[0].ids, vec![1, 2]);
        assert_eq!(flows[0].rec.r#type, 2);
        assert_eq!(flows[0].rec.response_duration, 800);
    }

    #[test]
    fn grpc_frame_merges_only_into_a_request() {
        let mut a = row(1, 2, 100, 500);
        a.l7_protocol = 41;
        let mut b = row(2, 0, 600, 600);
        b.l7_protocol = 21;
        let flows = merge_rows(vec![Flow::from_record(a), Flow::from_record(b)]);
        assert_eq!(flows.len(), 2);
        let mut a = row(1, 0, 100, 100);
        a.l7_protocol = 41;
        let mut b = row(2, 0, 600, 600);
        b.l7_protocol = 21;
        let flows = merge_rows(vec![Flow::from_record(a), Flow::from_record(b)]);
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[0].rec.end_time_us, 600);
    }

    #[test]
    fn async_mq_merges_by_trace_id() {
        let mut a = row(1, 0, 100, 100);
        a.l7_protocol = 108;
        a.is_async = 1;
        a.trace_id = "t".into();
        a.flow_id = 1;
        let mut b = row(2, 1, 700, 700);
        b.l7_protocol = 108;
        b.is_async = 1;
        b.trace_id = "t".into();
        b.flow_id = 2;
        let flows = merge_rows(vec![Flow::from_record(a), Flow::from_record(b)]);
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[0].rec.response_duration, 600);
    }
}
