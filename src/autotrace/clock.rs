//! Host clock correction (spec §6.10): accumulation of per-agent offset ranges from every
//! cross-agent parent link, and resolution (`tidy`) into an `agent → µs` map.
//!
//! Owns only the offset bookkeeping; it never changes span times (rendering applies the map).

use super::flow::InstKey;
use super::{IndexMap, IndexSet};
use std::collections::BTreeMap;

#[derive(Debug, Default, Clone)]
pub struct ClockCorrection {
    relations: IndexMap<u16, IndexSet<u16>>,
    ranges: IndexMap<u16, (i64, i64)>,
}

/// Round toward zero to whole milliseconds (in µs).
fn to_ms(v: i64) -> i64 {
    (v / 1000) * 1000
}

/// What the accumulation needs to know about one end of a link.
pub struct LinkEnd<'a> {
    pub agent: u16,
    pub start: i64,
    pub end: i64,
    pub signal_source: u16,
    pub tap_side: &'a str,
    /// The grouping key `auto_instance` (compared as rendered strings, and only when the
    /// link joins an app span to another signal, so it is rendered only then).
    pub auto_instance: &'a InstKey,
}

impl ClockCorrection {
    /// The callback run inside every `set_parent`.
    pub fn on_link(&mut self, child: &LinkEnd<'_>, parent: &LinkEnd<'_>) {
        if child.agent == parent.agent {
            return;
        }
        let mut sd = parent.start - child.start;
        let mut ed = parent.end - child.end;
        if child.signal_source != parent.signal_source
            && (child.signal_source == 4 || parent.signal_source == 4)
        {
            if child.tap_side == "app" || parent.tap_side == "app" {
                return;
            }
            let parent_instance = parent.auto_instance.render();
            if !parent_instance.is_empty()
                && parent_instance != "0"
                && parent_instance == child.auto_instance.render()
            {
                return;
            }
            sd = to_ms(sd);
            ed = to_ms(ed);
        }
        self.record(parent.agent, child.agent, sd, ed);
    }

    pub fn record(&mut self, parent: u16, child: u16, sd: i64, ed: i64) {
        let (mut parent, mut child, mut sd, mut ed) = (parent, child, sd, ed);
        if self
            .relations
            .get(&child)
            .is_some_and(|s| s.contains(&parent))
        {
            std::mem::swap(&mut parent, &mut child);
            sd = -sd;
            ed = -ed;
        }
        let (lo, hi) = (sd.min(ed), sd.max(ed));
        self.relations.entry(parent).or_default().insert(child);
        match self.ranges.get_mut(&child) {
            None => {
                self.ranges.insert(child, (lo, hi));
            }
            Some(r) => {
                let (mn, mx) = (r.0.max(lo), r.1.min(hi));
                if mn <= mx {
                    *r = (mn, mx);
                }
            }
        }
    }

    /// Resolve the accumulated ranges; only non-zero corrections are returned.
    pub fn tidy(&self) -> BTreeMap<u16, i64> {
        let mut result: IndexMap<u16, i64> = IndexMap::default();
        fn merge(result: &mut IndexMap<u16, i64>, h: u16, v: i64) {
            match result.get_mut(&h) {
                None => {
                    result.insert(h, v);
                }
                Some(old) => {
                    *old = if *old < 0 && v < 0 {
                        (*old).max(v)
                    } else if *old > 0 && v > 0 {
                        (*old).min(v)
                    } else {
                        0
                    };
                }
            }
        }
        for (&base, subs) in &self.relations {
            if self.ranges.contains_key(&base) {
                continue;
            }
            merge(&mut result, base, 0);
            let mut stack: Vec<(u16, i64)> = subs.iter().rev().map(|&c| (c, 0)).collect();
            let mut steps = 0usize;
            while let Some((h, pv)) = stack.pop() {
                steps += 1;
                if steps > 1_000_000 {
                    break;
                }
                let (mn, mx) = self.ranges.get(&h).copied().unwrap_or((0, 0));
                let mut v = mn.min(mx);
                if mn < 0 && mx < 0 {
                    v = mx;
                }
                if (mn as i128) * (mx as i128) <= 0 {
                    v = 0;
                }
                v += pv;
                merge(&mut result, h, v);
                if let Some(next) = self.relations.get(&h) {
                    for &c in next.iter().rev() {
                        if !result.contains_key(&c) {
                            stack.push((c, v));
                        }
                    }
                }
            }
        }
        result.into_iter().filter(|(_, v)| *v != 0).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_skew_takes_the_max() {
        let mut c = ClockCorrection::default();
        c.record(1, 2, -3200, -2800);
        assert_eq!(c.tidy(), BTreeMap::from([(2, -2800)]));
    }

    #[test]
    fn range_containing_zero_needs_no_shift() {
        let mut c = ClockCorrection::default();
        c.record(1, 9, -200, 200);
        c.record(9, 1, 200, -200);
        assert!(c.tidy().is_empty());
    }

    #[test]
    fn positive_skew_and_chain() {
        let mut c = ClockCorrection::default();
        c.record(1, 2, 1000, 3000);
        c.record(2, 3, 500, 700);
        assert_eq!(c.tidy(), BTreeMap::from([(2, 1000), (3, 1500)]));
    }
}
