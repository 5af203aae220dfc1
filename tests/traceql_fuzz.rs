//! Robustness: thousands of random byte strings, token soups and mutated real queries must
//! never panic or overflow the stack, and whatever parses must round-trip through printing.

use deepflow_tempo::traceql::{parse, parse_identifier, parse_lenient_filters, parse_unvalidated};

/// splitmix64: small, deterministic, good enough to drive a fuzzer.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn exercise(q: &str) {
    let _ = parse(q);
    let _ = parse_lenient_filters(q);
    let _ = parse_identifier(q);
    if let Ok(first) = parse_unvalidated(q) {
        let printed = first.to_string();
        let second = parse_unvalidated(&printed)
            .unwrap_or_else(|e| panic!("{q:?} printed as {printed:?} does not parse: {e}"));
        assert_eq!(first, second, "{q:?} printed as {printed:?}");
    }
}

const ALPHABET: &[u8] = b"{}()[],.:|&!=~<>+-*/%^ \"`\\\n\t0123456789abcdeklmnoprstuxyz_\xc2\xb5";

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(1);
    for i in 0..6000 {
        let len = rng.below(48);
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                if i % 3 == 0 {
                    rng.next() as u8
                } else {
                    ALPHABET[rng.below(ALPHABET.len())]
                }
            })
            .collect();
        exercise(&String::from_utf8_lossy(&bytes));
    }
}

const VOCAB: &[&str] = &[
    "{",
    "}",
    "{}",
    "(",
    ")",
    ",",
    "|",
    "&&",
    "||",
    "!",
    "=",
    "!=",
    "=~",
    "!~",
    ">",
    ">=",
    "<",
    "<=",
    ">>",
    "<<",
    "~",
    "!>",
    "!<",
    "!>>",
    "!<<",
    "&>",
    "&<",
    "&>>",
    "&<<",
    "&~",
    "+",
    "-",
    "*",
    "/",
    "%",
    "^",
    "true",
    "false",
    "nil",
    "ok",
    "error",
    "unset",
    "server",
    "client",
    "1",
    "0",
    "2.5",
    ".5",
    "1s",
    "100ms",
    "2h30m",
    "\"x\"",
    "`y`",
    ".a",
    "span.b",
    "resource.service.name",
    "parent.span.c",
    "span.\"d e\"",
    "name",
    "status",
    "kind",
    "duration",
    "childCount",
    "parent",
    "span:name",
    "trace:id",
    "event:name",
    "span:",
    "count()",
    "count",
    "avg",
    "min",
    "max",
    "sum",
    "by",
    "select",
    "coalesce",
    "rate",
    "count_over_time",
    "quantile_over_time",
    "histogram_over_time",
    "compare",
    "topk",
    "bottomk",
    "with",
    "most_recent",
    "sample",
    "foo",
    "/*",
    "*/",
    "//",
];

#[test]
fn token_soup_never_panics() {
    let mut rng = Rng(2);
    for _ in 0..8000 {
        let n = 1 + rng.below(16);
        let mut q = String::new();
        for _ in 0..n {
            q.push_str(VOCAB[rng.below(VOCAB.len())]);
            if rng.below(3) > 0 {
                q.push(' ');
            }
        }
        exercise(&q);
    }
}

const SEEDS: &[&str] = &[
    "{resource.service.name=\"frontend\" && name=\"GET /api\" && status=error && duration>100ms}",
    "{ .a } && { .b } >> { .c } | by(resource.service.name) | count() > 2 | select(.x, span:id)",
    "({ true } | count() > 1 | { false }) >> ({ true } | avg(duration) > 1s)",
    "{} | quantile_over_time(duration, 0.5, 0.9) by (resource.service.name) | topk(5) with(sample=0.1)",
    "{ (-(3 / 2) * .test - parent.blerg + .other)^3 = 2 }",
    "({ .a } | count()) + ({ .b } | count()) = 1",
    "{ span.\"a b\" != nil && nil != .c } | compare({ status = error }, 5, 1, 2)",
];

#[test]
fn mutated_queries_never_panic() {
    let mut rng = Rng(3);
    for _ in 0..6000 {
        let mut chars: Vec<char> = SEEDS[rng.below(SEEDS.len())].chars().collect();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(chars.len() + 1);
            match rng.below(3) {
                0 if at < chars.len() => {
                    chars.remove(at);
                }
                1 => {
                    let c = ALPHABET[rng.below(ALPHABET.len())] as char;
                    chars.insert(at, c);
                }
                _ if at < chars.len() => {
                    let j = rng.below(chars.len());
                    chars.swap(at, j);
                }
                _ => {}
            }
        }
        exercise(&chars.iter().collect::<String>());
    }
}

#[test]
fn deep_and_long_inputs_are_bounded() {
    let deep_parens = format!("{}{{ true }}{}", "(".repeat(5000), ")".repeat(5000));
    assert!(parse(&deep_parens).is_err());
    let deep_in_filter = format!("{{ {}.a{} }}", "(".repeat(5000), ")".repeat(5000));
    assert!(parse(&deep_in_filter).is_err());
    let nots = format!("{{ {}true }}", "!".repeat(100_000));
    assert!(parse(&nots).is_err());
    let negs = format!("{{ {}1 = 1 }}", "-".repeat(100_000));
    assert!(parse(&negs).is_err());
    // A long flat conjunction, as Grafana builds from multi-value filters, is fine…
    let values: Vec<String> = (0..300)
        .map(|i| format!("resource.service.name=\"svc{i}\""))
        .collect();
    let wide = format!("{{({})}}", values.join(" || "));
    let q = parse(&wide).expect("300-way OR parses");
    assert_eq!(parse(&q.to_string()).unwrap(), q);
    // …but an absurdly long one is refused rather than risking the stack.
    let chain = format!("{{ {} }}", vec![".a = 1"; 20_000].join(" && "));
    assert!(parse(&chain).is_err());
    let pipes = vec!["{ .a }"; 20_000].join(" | ");
    let _ = parse(&pipes);
    let _ = parse_lenient_filters(&chain);
    let _ = parse(&"{".repeat(100_000));
    let _ = parse(&"\"".repeat(100_001));
}
