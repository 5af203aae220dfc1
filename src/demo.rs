//! The demo dataset: a Bookinfo-shaped microservice application on a three-node Kubernetes
//! cluster, recorded as DeepFlow's agents would record it, with the tree every request must
//! assemble into.
//!
//! Owns the generator (`generate`), its ground truth (`Request::spans`), the name tables of the
//! simulated cluster and the `demo` command's loading and summary helpers. It only produces rows
//! and hands them to a `FlowStore`; it must not touch the auto-tracing engine, the HTTP layer or
//! the stores' internals.
//!
//! One request: load generator (fortio) → istio-ingressgateway (Envoy; injects X-Request-ID or
//! passes the client's) → productpage (Python, Envoy sidecar; a DNS lookup, a Redis call, then
//! details and reviews) → details (Ruby, sidecar) and reviews (Java, OpenTelemetry-instrumented,
//! no sidecar) → ratings (Node.js, sidecar) → MySQL. Every hop is a TCP call seen by eBPF at the
//! client (`c-p`) and server (`s-p`) process, and by packet capture at the pod NICs (`c`, `s`)
//! and, across nodes, at the node NICs (`c-nd`, `s-nd`), all sharing the call's TCP sequences.
//! A server thread's outgoing calls chain its syscall trace ids; the gateway handles the
//! upstream call on another thread, joined by X-Request-ID. Reviews emits OTel spans whose
//! client span id travels in `traceparent` and is seen on the rows of its call to ratings.
//! Some requests fail (ratings 500, details 503) and some are slow (a slow MySQL query).

use crate::store::model::OrgId;
use crate::store::model::{
    device_type, make_id, DeviceName, IdName, Ip4, L7FlowLogRow, NameTables, PodName, VtapPortName,
};
use crate::store::{FlowStore, StoreResult};
use crate::synth::Rng;
use std::net::Ipv4Addr;

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    /// Seed of every random choice.
    pub seed: u64,
    /// Requests are spread over the `minutes` minutes that end at `end_us`.
    pub minutes: u32,
    /// Mean requests per second (the rate swings ±50 % over a ten-minute cycle).
    pub rate: f64,
    /// End of the generated period, unix µs.
    pub end_us: i64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            seed: 1,
            minutes: 15,
            rate: 2.0,
            end_us: 1_700_000_000_000_000,
        }
    }
}

/// One span the trace of a request must contain: the `_id`s of its rows (several when rows
/// merge into one flow, as DNS request and response syscalls do) and the first `_id` of its
/// parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruthSpan {
    pub ids: Vec<u64>,
    pub parent: Option<u64>,
}

/// A generated request and its ground truth.
#[derive(Debug, Clone)]
pub struct Request {
    /// `_id` of the root row (the load generator's `c-p`).
    pub entry_id: u64,
    /// The OpenTelemetry trace id the reviews service gave the request.
    pub trace_id: String,
    pub start_us: i64,
    pub duration_us: i64,
    /// The entry call answered 5xx.
    pub failed: bool,
    /// Some call in the request failed (the entry may still have succeeded).
    pub has_error: bool,
    pub slow: bool,
    pub spans: Vec<TruthSpan>,
}

/// The generated rows, names and requests.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    pub rows: Vec<L7FlowLogRow>,
    pub names: NameTables,
    pub requests: Vec<Request>,
}

// ---------------------------------------------------------------- the simulated cluster

struct Node {
    id: u32,
    name: &'static str,
    agent: u16,
    ip: [u8; 4],
}

const NODES: [Node; 3] = [
    Node {
        id: 1,
        name: "node-1",
        agent: 1,
        ip: [192, 168, 10, 11],
    },
    Node {
        id: 2,
        name: "node-2",
        agent: 2,
        ip: [192, 168, 10, 12],
    },
    Node {
        id: 3,
        name: "node-3",
        agent: 3,
        ip: [192, 168, 10, 13],
    },
];

struct Proc {
    pid: i32,
    kname: &'static str,
    gprocess: u32,
}

struct Pod {
    id: u32,
    name: &'static str,
    workload_id: u32,
    workload_type: u8,
    workload: &'static str,
    ns: u16,
    node: usize,
    ip: [u8; 4],
    /// The application process, then the Envoy sidecar when the pod has one.
    procs: &'static [Proc],
}

const LOADGEN: usize = 0;
const GATEWAY: usize = 1;
const PRODUCTPAGE: usize = 2;
const DETAILS: usize = 3;
const REVIEWS: usize = 4;
const RATINGS: usize = 5;
const MYSQL: usize = 6;
const REDIS: usize = 7;
const COREDNS: usize = 8;

const NS_BOOKINFO: u16 = 1;
const NS_ISTIO: u16 = 2;
const NS_KUBE: u16 = 3;

const fn proc_(pid: i32, kname: &'static str, gprocess: u32) -> Proc {
    Proc {
        pid,
        kname,
        gprocess,
    }
}

const PODS: [Pod; 9] = [
    Pod {
        id: 1001,
        name: "fortio-loadgen-7d9c5b8f4-x2lqp",
        workload_id: 2001,
        workload_type: 130,
        workload: "fortio-loadgen",
        ns: NS_BOOKINFO,
        node: 2,
        ip: [10, 244, 2, 15],
        procs: &[proc_(3101, "fortio", 501)],
    },
    Pod {
        id: 1002,
        name: "istio-ingressgateway-5c8f9d7b6-kq4zt",
        workload_id: 2002,
        workload_type: 130,
        workload: "istio-ingressgateway",
        ns: NS_ISTIO,
        node: 0,
        ip: [10, 244, 0, 21],
        procs: &[proc_(3201, "envoy", 502)],
    },
    Pod {
        id: 1003,
        name: "productpage-v1-6b746f74dc-9stvs",
        workload_id: 2003,
        workload_type: 130,
        workload: "productpage-v1",
        ns: NS_BOOKINFO,
        node: 0,
        ip: [10, 244, 0, 33],
        procs: &[proc_(3301, "python3", 503), proc_(3302, "envoy", 504)],
    },
    Pod {
        id: 1004,
        name: "details-v1-79f774bdb9-t6qxh",
        workload_id: 2004,
        workload_type: 130,
        workload: "details-v1",
        ns: NS_BOOKINFO,
        node: 1,
        ip: [10, 244, 1, 17],
        procs: &[proc_(3401, "ruby", 505), proc_(3402, "envoy", 506)],
    },
    Pod {
        id: 1005,
        name: "reviews-v3-84779c7bbc-qq5k8",
        workload_id: 2005,
        workload_type: 130,
        workload: "reviews-v3",
        ns: NS_BOOKINFO,
        node: 1,
        ip: [10, 244, 1, 24],
        procs: &[proc_(3501, "java", 507)],
    },
    Pod {
        id: 1006,
        name: "ratings-v2-mysql-6f8b9c7d5-zm2wx",
        workload_id: 2006,
        workload_type: 130,
        workload: "ratings-v2-mysql",
        ns: NS_BOOKINFO,
        node: 2,
        ip: [10, 244, 2, 31],
        procs: &[proc_(3601, "node", 508), proc_(3602, "envoy", 509)],
    },
    Pod {
        id: 1007,
        name: "mysqldb-v1-6d8c4f9b7-jx8vq",
        workload_id: 2007,
        workload_type: 130,
        workload: "mysqldb-v1",
        ns: NS_BOOKINFO,
        node: 2,
        ip: [10, 244, 2, 40],
        procs: &[proc_(3701, "mysqld", 510)],
    },
    Pod {
        id: 1008,
        name: "redis-0",
        workload_id: 2008,
        workload_type: 131,
        workload: "redis",
        ns: NS_BOOKINFO,
        node: 1,
        ip: [10, 244, 1, 45],
        procs: &[proc_(3801, "redis-server", 511)],
    },
    Pod {
        id: 1009,
        name: "coredns-5d78c9869d-7hx2m",
        workload_id: 2009,
        workload_type: 130,
        workload: "coredns",
        ns: NS_KUBE,
        node: 0,
        ip: [10, 244, 0, 2],
        procs: &[proc_(3901, "coredns", 512)],
    },
];

/// The OTel service name of the instrumented reviews service.
pub const REVIEWS_APP_SERVICE: &str = "reviews";

/// Pod NIC (`veth`) and node NIC port numbers in `vtap_port_map`.
fn pod_nic(pod: usize) -> u32 {
    0x1000 + pod as u32
}
const NODE_NIC: u32 = 0x10;

/// The name tables of the simulated cluster (`flow_tag` dictionaries).
pub fn name_tables() -> NameTables {
    let mut n = NameTables::default();
    let dev = |t: u64, id: u64, name: &str, ip: String| DeviceName {
        devicetype: t,
        deviceid: id,
        name: name.to_string(),
        ip,
        ..Default::default()
    };
    for node in &NODES {
        let ip = Ipv4Addr::from(node.ip).to_string();
        n.devices.push(dev(
            device_type::POD_NODE,
            node.id as u64,
            node.name,
            ip.clone(),
        ));
        n.devices.push(dev(
            device_type::HOST,
            node.id as u64,
            node.name,
            ip.clone(),
        ));
        n.vtap_ports.push(VtapPortName {
            vtap_id: node.agent as u64,
            tap_port: NODE_NIC as u64,
            name: "eth0".into(),
            host_id: node.id as i64,
            host_name: node.name.into(),
            pod_node_id: node.id as i64,
            pod_node_name: node.name.into(),
            device_type: device_type::POD_NODE,
            device_id: node.id as u64,
            device_name: node.name.into(),
            ..Default::default()
        });
    }
    for (i, pod) in PODS.iter().enumerate() {
        let ip = Ipv4Addr::from(pod.ip).to_string();
        let node = &NODES[pod.node];
        n.devices
            .push(dev(device_type::POD, pod.id as u64, pod.name, ip.clone()));
        n.devices.push(dev(
            pod.workload_type as u64,
            pod.workload_id as u64,
            pod.workload,
            String::new(),
        ));
        n.pods.push(PodName {
            id: pod.id as u64,
            name: pod.name.into(),
            pod_cluster_id: 1,
            pod_ns_id: pod.ns as u64,
            pod_node_id: node.id as u64,
            pod_group_id: pod.workload_id as u64,
            ..Default::default()
        });
        n.vtap_ports.push(VtapPortName {
            vtap_id: node.agent as u64,
            tap_port: pod_nic(i) as u64,
            name: format!("cali{:08x}", pod.id.wrapping_mul(0x9e37_79b9)),
            host_id: node.id as i64,
            host_name: node.name.into(),
            pod_node_id: node.id as i64,
            pod_node_name: node.name.into(),
            device_type: device_type::POD,
            device_id: pod.id as u64,
            device_name: pod.name.into(),
            ..Default::default()
        });
        for p in pod.procs {
            n.gprocesses.push(IdName {
                id: p.gprocess as u64,
                name: p.kname.into(),
            });
        }
    }
    n.subnets.push(IdName {
        id: 1,
        name: "pod-network".into(),
    });
    n
}

// ---------------------------------------------------------------- request plans

/// A process: pod and index into its `procs` (0 the application, 1 the sidecar).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ep {
    pod: usize,
    proc_: usize,
}

const fn app(pod: usize) -> Ep {
    Ep { pod, proc_: 0 }
}
const fn envoy(pod: usize) -> Ep {
    Ep { pod, proc_: 1 }
}

fn has_sidecar(pod: usize) -> bool {
    PODS[pod].procs.len() > 1
}

/// The application-layer fields of one call, the same at every observation point.
#[derive(Debug, Clone)]
struct L7 {
    l7_protocol: u8,
    biz: &'static str,
    version: &'static str,
    request_type: String,
    domain: String,
    resource: String,
    endpoint: String,
    code: Option<i32>,
    status: u8,
    exception: String,
    port: u16,
    /// Carries X-Request-ID and `traceparent` (HTTP).
    http: bool,
}

fn http(method: &str, domain: &str, resource: String, endpoint: &str, code: i32) -> L7 {
    let status = match code {
        500..=599 => 3,
        400..=499 => 4,
        _ => 0,
    };
    L7 {
        l7_protocol: 20,
        biz: "HTTP",
        version: "1.1",
        request_type: method.into(),
        domain: domain.into(),
        resource,
        endpoint: endpoint.into(),
        code: Some(code),
        status,
        exception: match code {
            500 => "Internal Server Error".into(),
            503 => "Service Unavailable".into(),
            _ => String::new(),
        },
        port: 9080,
        http: true,
    }
}

/// How a server links its incoming request to the calls it makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Threading {
    /// One thread: each outgoing call continues the syscall trace id chain of the request.
    Same,
    /// The upstream call runs on another thread; X-Request-ID joins them (Envoy gateway).
    Gateway,
}

#[derive(Debug, Clone)]
enum Step {
    /// Time the server spends on its own, µs.
    Gap(i64),
    /// A DNS lookup of `name` taking `us`, answered in two response syscalls.
    Dns {
        name: &'static str,
        us: i64,
    },
    Call(Box<Call>),
    App(Box<AppSpan>),
}

#[derive(Debug, Clone)]
struct Call {
    client: Ep,
    server: Ep,
    l7: L7,
    /// Wire time between the two nodes (cross-node calls), µs.
    net_us: i64,
    threading: Threading,
    work: Vec<Step>,
}

/// An OpenTelemetry span of the reviews service.
#[derive(Debug, Clone)]
struct AppSpan {
    kind: u8,
    name: String,
    l7: Option<L7>,
    /// Time before and after the children, µs.
    pad: i64,
    children: Vec<Step>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Locality {
    Loopback,
    SameNode,
    CrossNode,
}

fn locality(c: &Call) -> Locality {
    if c.client.pod == c.server.pod {
        Locality::Loopback
    } else if PODS[c.client.pod].node == PODS[c.server.pod].node {
        Locality::SameNode
    } else {
        Locality::CrossNode
    }
}

/// Observation points of a call in client-to-server order, each with its time inset from the
/// client process's interval (µs, applied at both ends).
fn points(c: &Call) -> Vec<(&'static str, i64)> {
    match locality(c) {
        Locality::Loopback => vec![("c-p", 0), ("s-p", 30)],
        Locality::SameNode => vec![("c-p", 0), ("c", 12), ("s", 27), ("s-p", 38)],
        Locality::CrossNode => vec![
            ("c-p", 0),
            ("c", 12),
            ("c-nd", 26),
            ("s-nd", 26 + c.net_us),
            ("s", 40 + c.net_us),
            ("s-p", 52 + c.net_us),
        ],
    }
}

fn work_us(steps: &[Step]) -> i64 {
    steps.iter().map(step_us).sum()
}

fn step_us(s: &Step) -> i64 {
    match s {
        Step::Gap(g) => *g,
        Step::Dns { us, .. } => *us,
        Step::Call(c) => call_us(c),
        Step::App(a) => 2 * a.pad + work_us(&a.children),
    }
}

/// Duration of a call at the client process.
fn call_us(c: &Call) -> i64 {
    let inset = points(c).last().map(|p| p.1).unwrap_or(0);
    2 * inset + work_us(&c.work)
}

/// A call from `client`'s application to `server`'s application through the Envoy sidecars
/// of the pods that have one (each sidecar hop is its own TCP connection).
fn mesh_call(rng: &mut Rng, client: usize, server: usize, l7: L7, work: Vec<Step>) -> Call {
    let envoy_us = |rng: &mut Rng| 60 + rng.below(120) as i64;
    let mut inner_server = app(server);
    let mut call_work = work;
    if has_sidecar(server) {
        // Sidecar (inbound) → application on the loopback.
        let hop = Call {
            client: envoy(server),
            server: app(server),
            l7: l7.clone(),
            net_us: 0,
            threading: Threading::Same,
            work: call_work,
        };
        call_work = vec![
            Step::Gap(envoy_us(rng)),
            Step::Call(Box::new(hop)),
            Step::Gap(envoy_us(rng)),
        ];
        inner_server = envoy(server);
    }
    let client_ep = if has_sidecar(client) {
        envoy(client)
    } else {
        app(client)
    };
    let wire = Call {
        client: client_ep,
        server: inner_server,
        l7: l7.clone(),
        net_us: 150 + rng.below(250) as i64,
        threading: Threading::Same,
        work: call_work,
    };
    if !has_sidecar(client) {
        return wire;
    }
    // Application → sidecar (outbound) on the loopback.
    Call {
        client: app(client),
        server: envoy(client),
        l7,
        net_us: 0,
        threading: Threading::Same,
        work: vec![
            Step::Gap(envoy_us(rng)),
            Step::Call(Box::new(wire)),
            Step::Gap(envoy_us(rng)),
        ],
    }
}

struct Plan {
    root: Call,
    failed: bool,
    has_error: bool,
    slow: bool,
}

fn plan_request(rng: &mut Rng) -> Plan {
    let product = rng.below(6);
    let slow = rng.below(100) < 5;
    let ratings_fail = rng.below(100) < 4;
    let details_fail = rng.below(100) < 2;
    let ms = |rng: &mut Rng, lo: u64, hi: u64| (lo + rng.below(hi - lo)) as i64;

    // ratings → MySQL (same node).
    let query_us = if slow {
        ms(rng, 300_000, 1_200_000)
    } else {
        ms(rng, 300, 1_500)
    };
    let mysql = Call {
        client: app(RATINGS),
        server: app(MYSQL),
        l7: L7 {
            l7_protocol: 60,
            biz: "MySQL",
            version: "",
            request_type: "COM_QUERY".into(),
            domain: String::new(),
            resource: format!("SELECT Rating FROM ratings WHERE ReviewID = {product}"),
            endpoint: String::new(),
            code: None,
            status: 0,
            exception: String::new(),
            port: 3306,
            http: false,
        },
        net_us: 0,
        threading: Threading::Same,
        work: vec![Step::Gap(query_us)],
    };
    let ratings_work = if ratings_fail {
        vec![Step::Gap(ms(rng, 200, 900))]
    } else {
        vec![
            Step::Gap(ms(rng, 150, 400)),
            Step::Call(Box::new(mysql)),
            Step::Gap(ms(rng, 80, 300)),
        ]
    };
    let ratings_l7 = http(
        "GET",
        "ratings:9080",
        format!("/ratings/{product}"),
        "/ratings/{productId}",
        if ratings_fail { 500 } else { 200 },
    );
    let ratings_call = mesh_call(rng, REVIEWS, RATINGS, ratings_l7.clone(), ratings_work);

    // reviews: OTel server span → internal span → client span (the call to ratings).
    let client_span = AppSpan {
        kind: 3,
        name: "GET".into(),
        l7: Some(ratings_l7),
        pad: ms(rng, 20, 60),
        children: vec![Step::Call(Box::new(ratings_call))],
    };
    let internal = AppSpan {
        kind: 1,
        name: "LibertyRestEndpoint.bookReviewsById".into(),
        l7: None,
        pad: ms(rng, 300, 1_500),
        children: vec![Step::App(Box::new(client_span))],
    };
    let reviews_l7 = http(
        "GET",
        "reviews:9080",
        format!("/reviews/{product}"),
        "/reviews/{productId}",
        200,
    );
    let server_span = AppSpan {
        kind: 2,
        name: "GET /reviews/{productId}".into(),
        l7: Some(reviews_l7.clone()),
        pad: ms(rng, 100, 400),
        children: vec![Step::App(Box::new(internal))],
    };
    let reviews_call = mesh_call(
        rng,
        PRODUCTPAGE,
        REVIEWS,
        reviews_l7,
        vec![
            Step::Gap(40),
            Step::App(Box::new(server_span)),
            Step::Gap(40),
        ],
    );

    let details_us = ms(rng, 400, 2_500);
    let details_call = mesh_call(
        rng,
        PRODUCTPAGE,
        DETAILS,
        http(
            "GET",
            "details:9080",
            format!("/details/{product}"),
            "/details/{id}",
            if details_fail { 503 } else { 200 },
        ),
        vec![Step::Gap(details_us)],
    );

    let redis = Call {
        client: app(PRODUCTPAGE),
        server: app(REDIS),
        l7: L7 {
            l7_protocol: 80,
            biz: "Redis",
            version: "",
            request_type: "GET".into(),
            domain: String::new(),
            resource: format!("GET session:{:012x}", rng.next_u64() & 0xffff_ffff_ffff),
            endpoint: String::new(),
            code: None,
            status: 0,
            exception: String::new(),
            port: 6379,
            http: false,
        },
        net_us: 150 + rng.below(200) as i64,
        threading: Threading::Same,
        work: vec![Step::Gap(ms(rng, 30, 200))],
    };

    let page_code = if details_fail { 500 } else { 200 };
    let productpage_work = vec![
        Step::Gap(ms(rng, 300, 900)),
        Step::Dns {
            name: "details.bookinfo.svc.cluster.local",
            us: ms(rng, 300, 1_200),
        },
        Step::Gap(ms(rng, 50, 200)),
        Step::Call(Box::new(redis)),
        Step::Gap(ms(rng, 100, 400)),
        Step::Call(Box::new(details_call)),
        Step::Gap(ms(rng, 100, 400)),
        Step::Call(Box::new(reviews_call)),
        Step::Gap(ms(rng, 1_000, 4_000)),
    ];
    let page_l7 = |domain: &str| {
        http(
            "GET",
            domain,
            format!("/productpage?u=normal&product={product}"),
            "/productpage",
            page_code,
        )
    };
    // gateway → productpage (same node; productpage's sidecar receives it).
    let gw_to_page = mesh_call(
        rng,
        GATEWAY,
        PRODUCTPAGE,
        page_l7("productpage.bookinfo.svc.cluster.local:9080"),
        productpage_work,
    );
    let root = Call {
        client: app(LOADGEN),
        server: app(GATEWAY),
        l7: {
            let mut l = page_l7("bookinfo.example.com");
            l.port = 8080;
            l
        },
        net_us: 150 + rng.below(250) as i64,
        threading: Threading::Gateway,
        work: vec![
            Step::Gap(ms(rng, 80, 250)),
            Step::Call(Box::new(gw_to_page)),
            Step::Gap(ms(rng, 60, 200)),
        ],
    };
    Plan {
        root,
        failed: details_fail,
        has_error: details_fail || ratings_fail,
        slow,
    }
}

// ---------------------------------------------------------------- rows

/// Header context a request carries into a call.
#[derive(Debug, Clone, Default)]
struct Headers {
    /// X-Request-ID in the request.
    x0: String,
    /// X-Request-ID echoed in the response.
    x1: String,
    /// `traceparent`: trace id and parent span id.
    trace: Option<(String, String)>,
}

struct Gen {
    rng: Rng,
    counter: u32,
    seq: u32,
    syscall: u64,
    flow: u64,
    rows: Vec<L7FlowLogRow>,
    spans: Vec<TruthSpan>,
    trace_id: String,
}

impl Gen {
    fn id(&mut self, end_us: i64) -> u64 {
        self.counter = self.counter.wrapping_add(1) & 0x3f_ffff;
        make_id((end_us / 1_000_000) as u32, 1, self.counter)
    }

    fn hex(&mut self, bytes: usize) -> String {
        let mut s = String::with_capacity(bytes * 2);
        while s.len() < bytes * 2 {
            s.push_str(&format!("{:016x}", self.rng.next_u64()));
        }
        s.truncate(bytes * 2);
        s
    }

    fn new_thread(&mut self) -> u64 {
        self.syscall += 1 + self.rng.below(8);
        let t = self.syscall;
        self.syscall += 64;
        t
    }

    /// A row with the fields every row of a call shares, for process `ep` on `side`.
    fn base_row(&self, c: &Call, start: i64, end: i64) -> L7FlowLogRow {
        let (cp, sp) = (&PODS[c.client.pod], &PODS[c.server.pod]);
        let loopback = c.client.pod == c.server.pod;
        let (ip0, ip1) = if loopback {
            ([127, 0, 0, 6], [127, 0, 0, 1])
        } else {
            (cp.ip, sp.ip)
        };
        L7FlowLogRow {
            start_time: start,
            end_time: end,
            time: (end / 1_000_000) as u32,
            response_duration: (end - start) as u64,
            pod_node_id_0: NODES[cp.node].id,
            pod_node_id_1: NODES[sp.node].id,
            host_id_0: NODES[cp.node].id as u16,
            host_id_1: NODES[sp.node].id as u16,
            pod_ns_id_0: cp.ns,
            pod_ns_id_1: sp.ns,
            pod_group_id_0: cp.workload_id,
            pod_group_id_1: sp.workload_id,
            pod_id_0: cp.id,
            pod_id_1: sp.id,
            pod_cluster_id_0: 1,
            pod_cluster_id_1: 1,
            l3_epc_id_0: 1,
            l3_epc_id_1: 1,
            epc_id_0: 1,
            epc_id_1: 1,
            subnet_id_0: 1,
            subnet_id_1: 1,
            auto_instance_id_0: cp.id,
            auto_instance_type_0: 10,
            auto_service_id_0: cp.workload_id,
            auto_service_type_0: cp.workload_type,
            auto_instance_id_1: sp.id,
            auto_instance_type_1: 10,
            auto_service_id_1: sp.workload_id,
            auto_service_type_1: sp.workload_type,
            ip4_0: Ip4(Ipv4Addr::from(ip0)),
            ip4_1: Ip4(Ipv4Addr::from(ip1)),
            is_ipv4: 1,
            protocol: 6,
            server_port: if loopback && c.client.proc_ == 0 {
                15001
            } else {
                c.l7.port
            },
            l7_protocol: c.l7.l7_protocol,
            biz_protocol: c.l7.biz.into(),
            version: c.l7.version.into(),
            r#type: 2,
            request_type: c.l7.request_type.clone(),
            request_domain: c.l7.domain.clone(),
            request_resource: c.l7.resource.clone(),
            endpoint: c.l7.endpoint.clone(),
            response_status: c.l7.status,
            response_code: c.l7.code,
            response_exception: c.l7.exception.clone(),
            capture_network_type_id: 3,
            ..Default::default()
        }
    }

    /// Emit the rows of call `c` starting at `start`; `parent` is the first `_id` of the span
    /// its client process row hangs under; `client_sys` the client thread's syscall ids.
    fn call(
        &mut self,
        c: &Call,
        start: i64,
        parent: Option<u64>,
        client_sys: (u64, u64),
        h: &Headers,
    ) -> u64 {
        let dur = call_us(c);
        let end = start + dur;
        self.seq = self.seq.wrapping_add(1 + self.rng.below(4000) as u32);
        let req_seq = self.seq;
        self.seq = self.seq.wrapping_add(1 + self.rng.below(4000) as u32);
        let resp_seq = self.seq;
        self.flow += 1;
        let flow_id = self.flow;
        let (x0, x1) = if c.l7.http {
            (h.x0.clone(), h.x1.clone())
        } else {
            (String::new(), String::new())
        };
        let (trace_id, span_id) = match (&h.trace, c.l7.http) {
            (Some((t, s)), true) => (t.clone(), s.clone()),
            _ => (String::new(), String::new()),
        };
        let pts = points(c);
        let (sp_start, sp_end) = {
            let inset = pts.last().unwrap().1;
            (start + inset, end - inset)
        };
        // The server thread's syscall ids: its request read starts the chain.
        let server_thread = self.new_thread();
        let server_proc = &PODS[c.server.pod].procs[c.server.proc_];
        let client_proc = &PODS[c.client.pod].procs[c.client.proc_];
        let mut prev = parent;
        let mut sp_index = 0;
        let mut sp_id = 0;
        for &(tap, inset) in &pts {
            let (s, e) = (start + inset, end - inset);
            let mut r = self.base_row(c, s, e);
            r._id = self.id(e);
            r.observation_point = tap.into();
            r.req_tcp_seq = req_seq;
            r.resp_tcp_seq = resp_seq;
            r.flow_id = flow_id;
            r.x_request_id_0 = x0.clone();
            r.x_request_id_1 = x1.clone();
            r.trace_id = trace_id.clone();
            r.span_id = span_id.clone();
            r.client_port = 30000 + (flow_id % 30000) as u16;
            let client_node = &NODES[PODS[c.client.pod].node];
            let server_node = &NODES[PODS[c.server.pod].node];
            match tap {
                "c-p" => {
                    r.signal_source = 3;
                    r.agent_id = client_node.agent;
                    r.process_id_0 = client_proc.pid;
                    r.process_kname_0 = client_proc.kname.into();
                    r.gprocess_id_0 = client_proc.gprocess;
                    r.syscall_trace_id_request = client_sys.0;
                    r.syscall_trace_id_response = client_sys.1;
                    r.syscall_cap_seq_0 = 1;
                    r.syscall_cap_seq_1 = 2;
                }
                "s-p" => {
                    r.signal_source = 3;
                    r.agent_id = server_node.agent;
                    r.process_id_1 = server_proc.pid;
                    r.process_kname_1 = server_proc.kname.into();
                    r.gprocess_id_1 = server_proc.gprocess;
                    // Patched below once the chain of outgoing calls is known.
                    r.syscall_trace_id_request = server_thread;
                    r.syscall_cap_seq_0 = 1;
                    r.syscall_cap_seq_1 = 2;
                }
                "c" | "c-nd" => {
                    r.signal_source = 0;
                    r.agent_id = client_node.agent;
                    r.capture_nic = if tap == "c" {
                        pod_nic(c.client.pod)
                    } else {
                        NODE_NIC
                    };
                }
                _ => {
                    r.signal_source = 0;
                    r.agent_id = server_node.agent;
                    r.capture_nic = if tap == "s" {
                        pod_nic(c.server.pod)
                    } else {
                        NODE_NIC
                    };
                }
            }
            let id = r._id;
            self.spans.push(TruthSpan {
                ids: vec![id],
                parent: prev,
            });
            prev = Some(id);
            if tap == "s-p" {
                sp_index = self.rows.len();
                sp_id = id;
            }
            self.rows.push(r);
        }
        let cp_id = self.spans[self.spans.len() - pts.len()].ids[0];
        // The server's own work, inside its s-p.
        let inner = Headers {
            x0: if c.l7.http {
                h.x0.clone()
            } else {
                String::new()
            },
            x1: String::new(),
            trace: if c.l7.http { h.trace.clone() } else { None },
        };
        let last = match c.threading {
            Threading::Same => self.work(&c.work, sp_start, sp_id, server_thread, &inner, c.server),
            Threading::Gateway => {
                // The upstream call gets the X-Request-ID the gateway injected or passed on.
                let gw = Headers {
                    x0: h.x1.clone(),
                    ..inner
                };
                let other = self.new_thread();
                self.work(&c.work, sp_start, sp_id, other, &gw, c.server);
                server_thread + 1
            }
        };
        let last = if last == server_thread {
            server_thread + 1
        } else {
            last
        };
        self.rows[sp_index].syscall_trace_id_response = last;
        debug_assert_eq!(self.rows[sp_index].end_time, sp_end);
        cp_id
    }

    /// Emit `steps` from `start` inside a span whose first `_id` is `parent`, on a thread whose
    /// syscall chain is at `sys`; returns where the chain ends.
    fn work(
        &mut self,
        steps: &[Step],
        start: i64,
        parent: u64,
        mut sys: u64,
        h: &Headers,
        at: Ep,
    ) -> u64 {
        let mut t = start;
        for s in steps {
            match s {
                Step::Gap(_) => {}
                Step::Dns { name, us } => {
                    self.dns(at, name, t, *us, parent, sys);
                    sys += 1;
                }
                Step::Call(c) => {
                    self.call(c, t, Some(parent), (sys, sys + 1), h);
                    sys += 1;
                }
                Step::App(a) => {
                    sys = self.app_span(a, t, parent, sys, h, at);
                }
            }
            t += step_us(s);
        }
        sys
    }

    /// A DNS lookup by `at`'s process: one request syscall and two response syscalls (A and
    /// AAAA answers), which auto-tracing merges into one flow.
    fn dns(&mut self, at: Ep, name: &str, start: i64, us: i64, parent: u64, sys: u64) {
        let pod = &PODS[at.pod];
        let p = &pod.procs[at.proc_];
        let dns = &PODS[COREDNS];
        self.flow += 1;
        let flow_id = self.flow;
        let txid = 1 + self.rng.below(65_534);
        let mut ids = Vec::new();
        for (k, (ty, t)) in [(0u8, start), (1, start + us * 9 / 10), (1, start + us)]
            .into_iter()
            .enumerate()
        {
            let mut r = L7FlowLogRow {
                start_time: t,
                end_time: t,
                time: (t / 1_000_000) as u32,
                signal_source: 3,
                observation_point: "c-p".into(),
                agent_id: NODES[pod.node].agent,
                protocol: 17,
                l7_protocol: 120,
                biz_protocol: "DNS".into(),
                r#type: ty,
                request_type: if ty == 0 { "A".into() } else { String::new() },
                request_resource: if ty == 0 { name.into() } else { String::new() },
                request_id: Some(txid),
                response_code: if ty == 0 { None } else { Some(0) },
                response_result: if ty == 0 {
                    String::new()
                } else {
                    Ipv4Addr::from([10, 96, 12, 7]).to_string()
                },
                flow_id,
                server_port: 53,
                client_port: 40000 + (flow_id % 20000) as u16,
                process_id_0: p.pid,
                process_kname_0: p.kname.into(),
                gprocess_id_0: p.gprocess,
                syscall_trace_id_request: if ty == 0 { sys } else { 0 },
                syscall_trace_id_response: if ty == 0 { 0 } else { sys + 1 },
                syscall_cap_seq_0: if ty == 0 { 2 } else { 0 },
                syscall_cap_seq_1: if ty == 0 { 0 } else { 2 + k as u32 },
                pod_node_id_0: NODES[pod.node].id,
                pod_node_id_1: NODES[dns.node].id,
                host_id_0: NODES[pod.node].id as u16,
                host_id_1: NODES[dns.node].id as u16,
                pod_id_0: pod.id,
                pod_id_1: dns.id,
                pod_ns_id_0: pod.ns,
                pod_ns_id_1: dns.ns,
                pod_group_id_0: pod.workload_id,
                pod_group_id_1: dns.workload_id,
                subnet_id_0: 1,
                subnet_id_1: 1,
                auto_instance_id_0: pod.id,
                auto_instance_type_0: 10,
                auto_service_id_0: pod.workload_id,
                auto_service_type_0: pod.workload_type,
                auto_instance_id_1: dns.id,
                auto_instance_type_1: 10,
                auto_service_id_1: dns.workload_id,
                auto_service_type_1: dns.workload_type,
                ip4_0: Ip4(Ipv4Addr::from(pod.ip)),
                ip4_1: Ip4(Ipv4Addr::from([10, 96, 0, 10])),
                is_ipv4: 1,
                capture_network_type_id: 3,
                ..Default::default()
            };
            r._id = self.id(t);
            ids.push(r._id);
            self.rows.push(r);
        }
        self.spans.push(TruthSpan {
            ids,
            parent: Some(parent),
        });
    }

    /// An OTel span of the reviews service (and, below a client span, the call it makes).
    fn app_span(
        &mut self,
        a: &AppSpan,
        start: i64,
        parent: u64,
        sys: u64,
        h: &Headers,
        at: Ep,
    ) -> u64 {
        let dur = step_us(&Step::App(Box::new(a.clone())));
        let end = start + dur;
        let pod = &PODS[at.pod];
        let node = &NODES[pod.node];
        let span_id = self.hex(8);
        let parent_span = match &h.trace {
            Some((_, s)) => s.clone(),
            None => String::new(),
        };
        let tap = crate::store::model::observation_point::from_span_kind(a.kind);
        let mut r = L7FlowLogRow {
            start_time: start,
            end_time: end,
            time: (end / 1_000_000) as u32,
            response_duration: dur as u64,
            signal_source: 4,
            observation_point: tap.into(),
            agent_id: node.agent,
            protocol: 0,
            r#type: 2,
            trace_id: self.trace_id.clone(),
            span_id: span_id.clone(),
            parent_span_id: parent_span,
            span_kind: Some(a.kind),
            app_service: REVIEWS_APP_SERVICE.into(),
            app_instance: pod.name.into(),
            endpoint: a.name.clone(),
            pod_node_id_0: node.id,
            pod_node_id_1: node.id,
            host_id_0: node.id as u16,
            host_id_1: node.id as u16,
            pod_id_0: pod.id,
            pod_id_1: pod.id,
            pod_ns_id_0: pod.ns,
            pod_ns_id_1: pod.ns,
            pod_group_id_0: pod.workload_id,
            pod_group_id_1: pod.workload_id,
            subnet_id_0: 1,
            subnet_id_1: 1,
            auto_instance_id_0: pod.id,
            auto_instance_type_0: 10,
            auto_service_id_0: pod.workload_id,
            auto_service_type_0: pod.workload_type,
            auto_instance_id_1: pod.id,
            auto_instance_type_1: 10,
            auto_service_id_1: pod.workload_id,
            auto_service_type_1: pod.workload_type,
            ip4_0: Ip4(Ipv4Addr::from(pod.ip)),
            ip4_1: Ip4(Ipv4Addr::from(pod.ip)),
            is_ipv4: 1,
            attribute_names: vec!["telemetry.sdk.language".into(), "telemetry.sdk.name".into()],
            attribute_values: vec!["java".into(), "opentelemetry".into()],
            ..Default::default()
        };
        if let Some(l7) = &a.l7 {
            r.l7_protocol = l7.l7_protocol;
            r.biz_protocol = l7.biz.into();
            r.version = l7.version.into();
            r.request_type = l7.request_type.clone();
            r.request_domain = l7.domain.clone();
            r.request_resource = l7.resource.clone();
            r.response_code = l7.code;
            r.response_status = l7.status;
            r.response_exception = l7.exception.clone();
            r.server_port = l7.port;
            for (k, v) in [
                ("http.method", l7.request_type.clone()),
                ("http.url", format!("http://{}{}", l7.domain, l7.resource)),
                ("http.status_code", l7.code.unwrap_or(0).to_string()),
            ] {
                r.attribute_names.push(k.into());
                r.attribute_values.push(v);
            }
        }
        r._id = self.id(end);
        let id = r._id;
        self.rows.push(r);
        self.spans.push(TruthSpan {
            ids: vec![id],
            parent: Some(parent),
        });
        let inner = Headers {
            trace: Some((self.trace_id.clone(), span_id)),
            ..h.clone()
        };
        self.work(&a.children, start + a.pad, id, sys, &inner, at)
    }
}

/// Generate the dataset: requests arriving over `minutes` minutes ending at `end_us`.
pub fn generate(opts: &DemoOptions) -> Dataset {
    // Keys (sequences, syscall ids, X-Request-IDs, trace ids) depend on the period too, so two
    // demo runs into one store never share them.
    let period = (opts.end_us / 60_000_000) as u64;
    let mut g = Gen {
        rng: Rng::new(opts.seed ^ period.wrapping_mul(0x2545_f491_4f6c_dd1d)),
        counter: 0,
        seq: 0,
        syscall: 0,
        flow: 0,
        rows: Vec::new(),
        spans: Vec::new(),
        trace_id: String::new(),
    };
    g.seq = g.rng.next_u64() as u32;
    g.syscall = (g.rng.next_u64() >> 20) << 8;
    g.flow = g.rng.next_u64() >> 16;
    let mut plan_rng = Rng::new(opts.seed);
    let span_us = opts.minutes.max(1) as i64 * 60_000_000;
    let begin = opts.end_us - span_us;
    let mut requests = Vec::new();
    let mut t = begin as f64;
    let rate = opts.rate.max(0.01);
    loop {
        // Exponential inter-arrival times around a rate that swings over ten minutes.
        let phase = ((t - begin as f64) / 600e6) * std::f64::consts::TAU;
        let r = rate * (1.0 + 0.5 * phase.sin());
        let u = (plan_rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        t += -(1.0 - u).ln() / r * 1e6;
        let plan = plan_request(&mut plan_rng);
        let dur = call_us(&plan.root);
        let start = t as i64;
        if start + dur + 5_000_000 > opts.end_us {
            break;
        }
        g.trace_id = g.hex(16);
        let loadgen_thread = g.new_thread();
        // 30 % of the load generator's requests carry their own X-Request-ID (the gateway
        // passes it on); the gateway injects one into the others.
        let xid = uuid(&mut g.rng);
        let h = Headers {
            x0: if plan_rng.below(10) < 3 {
                xid.clone()
            } else {
                String::new()
            },
            x1: xid,
            trace: None,
        };
        g.spans.clear();
        let entry_id = g.call(
            &plan.root,
            start,
            None,
            (loadgen_thread, loadgen_thread + 1),
            &h,
        );
        requests.push(Request {
            entry_id,
            trace_id: g.trace_id.clone(),
            start_us: start,
            duration_us: dur,
            failed: plan.failed,
            has_error: plan.has_error,
            slow: plan.slow,
            spans: std::mem::take(&mut g.spans),
        });
    }
    Dataset {
        rows: g.rows,
        names: name_tables(),
        requests,
    }
}

fn uuid(rng: &mut Rng) -> String {
    let a = rng.next_u64();
    let b = rng.next_u64();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

/// Write the dataset into `store` (names first, then rows in batches of `batch`).
pub async fn load(
    store: &dyn FlowStore,
    org: OrgId,
    data: &Dataset,
    batch: usize,
) -> StoreResult<()> {
    store.insert_names(org, &data.names).await?;
    for chunk in data.rows.chunks(batch.max(1)) {
        store.insert_rows(org, chunk).await?;
    }
    Ok(())
}

/// Unix µs now.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// One line on what the demo simulates.
pub const DESCRIPTION: &str = "Istio Bookinfo on a 3-node cluster: fortio → istio-ingressgateway → productpage → details, reviews (OpenTelemetry) → ratings → MySQL; plus DNS and Redis";

/// Trace IDs worth opening, most recent of each kind: (what, Tempo trace ID in hex).
pub fn featured(data: &Dataset) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let recent = |f: &dyn Fn(&Request) -> bool| data.requests.iter().rev().find(|r| f(r));
    if let Some(r) = recent(&|r| !r.has_error && !r.slow) {
        out.push((
            "app-instrumented (OpenTelemetry trace id)",
            r.trace_id.clone(),
        ));
    }
    if let Some(r) = data.requests.iter().rev().nth(1) {
        out.push((
            "zero-code (eBPF entry row)",
            crate::tempo::ids::TraceId::zero_code(r.entry_id).to_hex(),
        ));
    }
    if let Some(r) = recent(&|r| r.slow) {
        out.push((
            "slow (a slow MySQL query)",
            crate::tempo::ids::TraceId::zero_code(r.entry_id).to_hex(),
        ));
    }
    if let Some(r) = recent(&|r| r.failed) {
        out.push((
            "failed (details answered 503)",
            crate::tempo::ids::TraceId::zero_code(r.entry_id).to_hex(),
        ));
    }
    out
}
