//! The inference stage against generated ground truth (`deepflow_tempo::blindspots`): thread
//! pools, DNS over UDP, uninstrumented calls inside application spans, a second trace id, and
//! one busy process at over 50 requests per second. Prints the figures with inference off
//! (DeepFlow's answer) and on, and checks the thresholds:
//!
//! `cargo test --test autotrace_inference -- --nocapture`

mod common;

use deepflow_tempo::autotrace::{TraceParams, TraceResult};
use deepflow_tempo::blindspots::{self, Dataset, Kind, Options};
use deepflow_tempo::query::trace::TraceService;
use std::collections::{BTreeMap, HashMap, HashSet};

const END_US: i64 = 1_700_000_000_000_000;

/// Placement of the ground truth's spans in the assembled traces.
#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    spans: usize,
    /// Under their true parent (or a root that is one).
    exact: usize,
    /// Under one of their true ancestors (less specific, not wrong).
    ancestor: usize,
    /// Under a span that is not an ancestor, or spans of another request in the trace.
    wrong: usize,
    /// A root that should have a parent.
    unparented: usize,
    /// Not in the trace (or only part of its rows).
    missing: usize,
    /// Spans whose whole path rests on evidence, and how many of them are exact.
    evidence: usize,
    evidence_exact: usize,
}

impl Figures {
    fn add(&mut self, o: &Figures) {
        self.spans += o.spans;
        self.exact += o.exact;
        self.ancestor += o.ancestor;
        self.wrong += o.wrong;
        self.unparented += o.unparented;
        self.missing += o.missing;
        self.evidence += o.evidence;
        self.evidence_exact += o.evidence_exact;
    }
    fn pct(&self, n: usize) -> f64 {
        100.0 * n as f64 / self.spans.max(1) as f64
    }
    fn line(&self, what: &str) -> String {
        format!(
            "| {what} | {} | {:.1} % | {:.1} % | {:.1} % | {:.1} % | {:.1} % | {}/{} |",
            self.spans,
            self.pct(self.exact),
            self.pct(self.ancestor),
            self.pct(self.wrong),
            self.pct(self.unparented),
            self.pct(self.missing),
            self.evidence_exact,
            self.evidence
        )
    }
}

fn key(ids: &[u64]) -> Vec<u64> {
    let mut v = ids.to_vec();
    v.sort();
    v
}

fn measure(
    req: &blindspots::Request,
    owner: &HashMap<u64, usize>,
    me: usize,
    r: &TraceResult,
) -> Figures {
    let first: HashMap<u64, Vec<u64>> = req.spans.iter().map(|s| (s.ids[0], key(&s.ids))).collect();
    let truth: BTreeMap<Vec<u64>, Option<Vec<u64>>> = req
        .spans
        .iter()
        .map(|s| (key(&s.ids), s.parent.map(|p| first[&p].clone())))
        .collect();
    let by_index: HashMap<usize, Vec<u64>> = r.spans.iter().map(|s| (s.id, key(&s.ids))).collect();
    let got: HashMap<Vec<u64>, Option<Vec<u64>>> = r
        .spans
        .iter()
        .map(|s| (key(&s.ids), s.parent_id.map(|p| by_index[&p].clone())))
        .collect();
    let mut f = Figures::default();
    for s in &req.spans {
        let k = key(&s.ids);
        f.spans += 1;
        if s.evidence {
            f.evidence += 1;
        }
        let want = &truth[&k];
        let exact = match got.get(&k) {
            None => {
                f.missing += 1;
                false
            }
            Some(None) if want.is_none() => true,
            Some(None) => {
                f.unparented += 1;
                false
            }
            Some(Some(p)) if Some(p) == want.as_ref() => true,
            Some(Some(p)) => {
                // Is `p` an ancestor in the truth?
                let mut a = want.clone();
                let mut is_ancestor = false;
                while let Some(x) = a {
                    if &x == p {
                        is_ancestor = true;
                        break;
                    }
                    a = truth.get(&x).cloned().flatten();
                }
                if is_ancestor {
                    f.ancestor += 1;
                } else {
                    f.wrong += 1;
                }
                false
            }
        };
        if exact {
            f.exact += 1;
            if s.evidence {
                f.evidence_exact += 1;
            }
        }
    }
    // Rows of another request in this trace: each such span is a wrong placement.
    for s in &r.spans {
        if s.ids
            .iter()
            .any(|id| owner.get(id).is_some_and(|&o| o != me))
        {
            f.wrong += 1;
        }
    }
    f
}

async fn run(data: &Dataset, inference: bool) -> BTreeMap<Kind, Figures> {
    let (store, org) = common::sqlite_store().await;
    store.insert_rows(org, &data.rows).await.unwrap();
    let params = TraceParams {
        inference,
        ..TraceParams::default()
    };
    let svc = TraceService::new(store, params);
    let owner: HashMap<u64, usize> = data
        .requests
        .iter()
        .enumerate()
        .flat_map(|(k, r)| {
            r.spans
                .iter()
                .flat_map(move |s| s.ids.iter().map(move |&id| (id, k)))
        })
        .collect();
    let mut out: BTreeMap<Kind, Figures> = BTreeMap::new();
    for (k, req) in data.requests.iter().enumerate() {
        let t = (req.entry_id >> 32) as i64;
        let (_, result, _) = svc
            .trace_by_id(org, req.entry_id, t - 60, t + 60)
            .await
            .unwrap();
        out.entry(req.kind)
            .or_default()
            .add(&measure(req, &owner, k, &result));
    }
    out
}

fn total(by: &BTreeMap<Kind, Figures>) -> Figures {
    let mut t = Figures::default();
    for f in by.values() {
        t.add(f);
    }
    t
}

const HEADER: &str = "| requests | spans | under true parent | under an ancestor | wrong parent | unparented | missing | evidence paths placed |\n|---|---|---|---|---|---|---|---|";

fn report(title: &str, before: &BTreeMap<Kind, Figures>, after: &BTreeMap<Kind, Figures>) {
    println!("\n{title}\n\n{HEADER}");
    for (k, f) in before {
        println!("{}", f.line(&format!("{k:?}, inference off")));
        println!("{}", after[k].line(&format!("{k:?}, inference on")));
    }
    println!("{}", total(before).line("all, inference off"));
    println!("{}", total(after).line("all, inference on"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_places_lost_spans_without_wrong_parents() {
    // A mix of every kind at 2 requests/s for a minute.
    let mixed = blindspots::generate(&Options {
        seed: 11,
        rate: 2.0,
        seconds: 60,
        end_us: END_US,
        only: None,
    });
    assert!(mixed.requests.len() >= 80, "{}", mixed.requests.len());
    let before = run(&mixed, false).await;
    let after = run(&mixed, true).await;
    report("Mixed traffic, 2 requests/s", &before, &after);
    let (b, a) = (total(&before), total(&after));
    assert_eq!(
        a.evidence_exact, a.evidence,
        "an evidence path lost its place"
    );
    assert_eq!(
        b.evidence_exact, b.evidence,
        "the generator's evidence is not DeepFlow's"
    );
    assert!(
        a.pct(a.exact) >= 85.0,
        "{:.1} % under their true parent",
        a.pct(a.exact)
    );
    assert!(
        a.pct(a.wrong) <= 1.0,
        "{:.1} % wrong parents",
        a.pct(a.wrong)
    );
    assert!(a.exact > b.exact);

    // One busy process: every request goes through `api`, at 60 requests/s.
    let busy = blindspots::generate(&Options {
        seed: 12,
        rate: 60.0,
        seconds: 4,
        end_us: END_US,
        only: None,
    });
    let before = run(&busy, false).await;
    let after = run(&busy, true).await;
    report("One busy process, 60 requests/s", &before, &after);
    let a = total(&after);
    assert_eq!(
        a.evidence_exact, a.evidence,
        "an evidence path lost its place"
    );
    assert!(
        a.pct(a.wrong) <= 2.0,
        "{:.1} % wrong parents",
        a.pct(a.wrong)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inferred_links_say_so() {
    let data = blindspots::generate(&Options {
        seed: 5,
        rate: 5.0,
        seconds: 4,
        end_us: END_US,
        only: Some(Kind::App),
    });
    let (store, org) = common::sqlite_store().await;
    store.insert_rows(org, &data.rows).await.unwrap();
    let svc = TraceService::new(store, TraceParams::default());
    let req = &data.requests[0];
    let t = (req.entry_id >> 32) as i64;
    let (_, result, _) = svc
        .trace_by_id(org, req.entry_id, t - 60, t + 60)
        .await
        .unwrap();
    let inferred: Vec<_> = result.spans.iter().filter(|s| s.inferred).collect();
    assert!(!inferred.is_empty());
    let mut reasons = HashSet::new();
    for s in &inferred {
        let why = s.set_parent_info.as_deref().unwrap();
        assert!(why.starts_with("inferred: "), "{why}");
        reasons.insert(why.to_string());
    }
    assert!(reasons.contains(deepflow_tempo::autotrace::infer::INNERMOST_APP));
    assert!(result.spans.iter().filter(|s| !s.inferred).all(|s| s
        .set_parent_info
        .as_deref()
        .is_none_or(|w| !w.starts_with("inferred"))));
}
