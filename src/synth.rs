//! Synthetic DeepFlow data: zero-code traces as DeepFlow's agents record them, with the tree
//! each one must assemble into. Used by benchmarks and tests; deterministic for a seed.
//!
//! One call from service A to service B is four rows sharing the call's TCP sequences: the
//! client process (`c-p`, eBPF, A's node), the client NIC (`c`, packet, A's node), the server
//! NIC (`s`, packet, B's node) and the server process (`s-p`, eBPF, B's node). The calls a
//! server makes while handling a request are `c-p` rows of the same process whose syscall trace
//! id equals the `s-p`'s, inside its time range. Owns no IO.

use crate::store::model::{make_id, L7FlowLogRow};

/// Shape of a generated trace.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Number of calls (each is four rows).
    pub calls: usize,
    /// Most downstream calls one server makes.
    pub fanout: usize,
    /// Distinct services (each on its own node and pod).
    pub services: u32,
}

/// A generated trace and its ground truth: for every row, the `_id` of its expected parent.
#[derive(Debug, Clone)]
pub struct SynthTrace {
    pub rows: Vec<L7FlowLogRow>,
    pub parent: Vec<(u64, Option<u64>)>,
    /// `_id` of the root row (the first client process).
    pub entry_id: u64,
}

/// Deterministic xorshift generator (no external state).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
}

/// Allocates row `_id`s and per-call keys that never repeat within one generator.
#[derive(Debug, Clone)]
pub struct Keys {
    counter: u32,
    seq: u32,
    syscall: u64,
}

impl Keys {
    pub fn new(start: u32) -> Self {
        Keys {
            counter: start,
            seq: 1000 + start,
            syscall: 1_000_000 + start as u64 * 16,
        }
    }
    fn id(&mut self, end_us: i64) -> u64 {
        self.counter = self.counter.wrapping_add(1);
        make_id((end_us / 1_000_000) as u32, 1, self.counter)
    }
}

struct Call {
    client_svc: u32,
    server_svc: u32,
    start: i64,
    end: i64,
    parent_sp: Option<(u64, u64)>, // (s-p _id, its syscall id)
}

/// Generate one zero-code trace starting at `start_us`.
pub fn zero_code_trace(seed: u64, start_us: i64, shape: Shape, keys: &mut Keys) -> SynthTrace {
    let mut rng = Rng::new(seed);
    let services = shape.services.max(2);
    let fanout = shape.fanout.max(1);
    let mut rows = Vec::with_capacity(shape.calls * 4);
    let mut parent = Vec::with_capacity(shape.calls * 4);
    // Breadth-first: each call's server makes up to `fanout` calls inside its own time range.
    let total_us = 1_000 * shape.calls.max(1) as i64 * 4;
    let mut queue = std::collections::VecDeque::new();
    queue.push_back(Call {
        client_svc: 0,
        server_svc: 1,
        start: start_us,
        end: start_us + total_us,
        parent_sp: None,
    });
    let mut made = 0usize;
    let mut entry_id = 0;
    while let Some(call) = queue.pop_front() {
        if made == shape.calls {
            break;
        }
        made += 1;
        keys.seq = keys.seq.wrapping_add(2);
        let (req_seq, resp_seq) = (keys.seq, keys.seq.wrapping_add(1));
        keys.syscall += 2;
        let sp_sys = keys.syscall;
        // Observation points of one call are microseconds apart, as on real hosts (DeepFlow
        // relates them only within tens of milliseconds).
        let d = ((call.end - call.start) / 40).min(150);
        // c-p ⊃ c ⊃ s ⊃ s-p, each a little inside the previous.
        let spans = [
            ("c-p", 3u16, call.client_svc, call.start, call.end),
            ("c", 0, call.client_svc, call.start + d, call.end - d),
            (
                "s",
                0,
                call.server_svc,
                call.start + 2 * d,
                call.end - 2 * d,
            ),
            (
                "s-p",
                3,
                call.server_svc,
                call.start + 3 * d,
                call.end - 3 * d,
            ),
        ];
        let mut prev: Option<u64> = call.parent_sp.map(|p| p.0);
        let mut sp_id = 0;
        for (tap, sig, svc, s, e) in spans {
            let id = keys.id(e);
            let server_side = tap.starts_with('s');
            let mut r = L7FlowLogRow {
                _id: id,
                time: (e / 1_000_000) as u32,
                start_time: s,
                end_time: e,
                response_duration: (e - s) as u64,
                observation_point: tap.into(),
                signal_source: sig,
                agent_id: (svc % 64 + 1) as u16,
                protocol: 6,
                l7_protocol: 20,
                biz_protocol: "HTTP".into(),
                version: "1.1".into(),
                r#type: 2,
                req_tcp_seq: req_seq,
                resp_tcp_seq: resp_seq,
                flow_id: id,
                request_type: "GET".into(),
                request_domain: format!("svc-{}", call.server_svc),
                request_resource: format!("/api/v1/op{}", call.server_svc),
                endpoint: format!("/api/v1/op{}", call.server_svc),
                response_code: Some(200),
                server_port: 8080,
                is_ipv4: 1,
                auto_instance_type_0: 10,
                auto_instance_id_0: 100 + call.client_svc,
                auto_service_type_0: 130,
                auto_service_id_0: 200 + call.client_svc,
                auto_instance_type_1: 10,
                auto_instance_id_1: 100 + call.server_svc,
                auto_service_type_1: 130,
                auto_service_id_1: 200 + call.server_svc,
                pod_id_0: 100 + call.client_svc,
                pod_id_1: 100 + call.server_svc,
                ..Default::default()
            };
            if sig == 3 {
                if server_side {
                    r.process_id_1 = 1000 + svc as i32;
                    r.syscall_trace_id_request = sp_sys;
                    r.syscall_trace_id_response = sp_sys + 1;
                } else {
                    r.process_id_0 = 1000 + svc as i32;
                    let sys = call.parent_sp.map(|p| p.1).unwrap_or_else(|| {
                        keys.syscall += 2;
                        keys.syscall
                    });
                    r.syscall_trace_id_request = sys;
                    r.syscall_trace_id_response = sys + 1;
                }
            }
            if tap == "s-p" {
                sp_id = id;
            }
            if entry_id == 0 {
                entry_id = id;
            }
            parent.push((id, prev));
            prev = Some(id);
            rows.push(r);
        }
        let n = 1 + rng.below(fanout as u64) as usize;
        let inner_start = call.start + 4 * d;
        let inner = (call.end - 4 * d) - inner_start;
        let slot = inner / n as i64;
        for k in 0..n {
            let s = inner_start + slot * k as i64 + slot / 10;
            let e = s + slot * 8 / 10;
            if e - s < 40 {
                break;
            }
            queue.push_back(Call {
                client_svc: call.server_svc,
                server_svc: 1 + rng.below(services as u64 - 1) as u32,
                start: s,
                end: e,
                parent_sp: Some((sp_id, sp_sys)),
            });
        }
    }
    SynthTrace {
        rows,
        parent,
        entry_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_and_determinism() {
        let shape = Shape {
            calls: 50,
            fanout: 3,
            services: 8,
        };
        let a = zero_code_trace(7, 1_700_000_000_000_000, shape, &mut Keys::new(0));
        let b = zero_code_trace(7, 1_700_000_000_000_000, shape, &mut Keys::new(0));
        assert_eq!(a.rows, b.rows);
        assert_eq!(a.rows.len(), 200);
        assert_eq!(a.parent.iter().filter(|p| p.1.is_none()).count(), 1);
        let ids: std::collections::HashSet<u64> = a.rows.iter().map(|r| r._id).collect();
        assert_eq!(ids.len(), a.rows.len());
        for r in &a.rows {
            assert!(r.start_time < r.end_time);
        }
    }
}
