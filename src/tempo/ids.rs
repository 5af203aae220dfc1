//! Trace and span IDs as Tempo and Grafana see them, and the zero-code trace IDs this server
//! gives DeepFlow requests that carry no application trace id.
//!
//! A zero-code trace ID is the 8 ASCII bytes `deepflow` (`64656570666c6f77`) followed by the
//! entry row's `_id` as a big-endian u64: 32 hex characters. `_id >> 32` is the row's time,
//! so such an ID needs no time range to be opened.

/// The ASCII bytes `deepflow`: the first half of every zero-code trace ID.
pub const ZERO_CODE_PREFIX: [u8; 8] = *b"deepflow";

/// A 16-byte trace ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(pub [u8; 16]);

impl TraceId {
    /// Parse as Tempo does: 1–32 hex characters, case-insensitive; an odd length gets a
    /// leading `0`; shorter IDs are left-padded with zero bytes to 16.
    pub fn parse(s: &str) -> Result<TraceId, String> {
        if s.is_empty() {
            return Err("trace id is empty".into());
        }
        if s.len() > 32 {
            return Err(format!("trace id {s:?} is longer than 32 hex characters"));
        }
        if let Some(bad) = s.chars().find(|c| !c.is_ascii_hexdigit()) {
            return Err(format!("trace id {s:?} has a non-hex character {bad:?}"));
        }
        let padded = if s.len() % 2 == 1 {
            format!("0{s}")
        } else {
            s.to_string()
        };
        let bytes = hex::decode(padded).map_err(|e| format!("trace id {s:?}: {e}"))?;
        let mut out = [0u8; 16];
        out[16 - bytes.len()..].copy_from_slice(&bytes);
        Ok(TraceId(out))
    }

    /// The zero-code trace ID of an entry row.
    pub fn zero_code(row_id: u64) -> TraceId {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&ZERO_CODE_PREFIX);
        out[8..].copy_from_slice(&row_id.to_be_bytes());
        TraceId(out)
    }

    /// The entry `_id` when this is a zero-code trace ID.
    pub fn as_zero_code(&self) -> Option<u64> {
        if self.0[..8] == ZERO_CODE_PREFIX {
            Some(u64::from_be_bytes(self.0[8..].try_into().ok()?))
        } else {
            None
        }
    }

    /// 32 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Hex with leading zeros trimmed, as Tempo prints IDs in search results.
    pub fn to_trimmed_hex(&self) -> String {
        let h = self.to_hex();
        let t = h.trim_start_matches('0');
        if t.is_empty() {
            "0".into()
        } else {
            t.to_string()
        }
    }

    /// The strings an application trace id with these bytes may be stored as in DeepFlow's
    /// `trace_id` column: 32 hex characters, and 16 when the high half is zero (64-bit IDs).
    pub fn stored_forms(&self) -> Vec<String> {
        let full = self.to_hex();
        let mut v = vec![full.clone()];
        if self.0[..8] == [0; 8] {
            v.push(full[16..].to_string());
        }
        v
    }

    /// The trace ID an application trace id string maps to, when it is hex of at most 32
    /// characters (OpenTelemetry, Jaeger, Zipkin). Other formats (e.g. SkyWalking segment ids)
    /// have none and are opened by zero-code ID.
    pub fn from_app_trace_id(s: &str) -> Option<TraceId> {
        let s = s.trim();
        if s.is_empty() || s.len() > 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        TraceId::parse(s).ok()
    }
}

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// An 8-byte span ID.
pub type SpanId = [u8; 8];

/// The span ID of an application span id string: its bytes when it is 16 hex characters,
/// else a stable hash of the string (so parents and children still agree).
pub fn app_span_id(s: &str) -> SpanId {
    if s.len() == 16 {
        if let Ok(b) = hex::decode(s) {
            if let Ok(id) = <[u8; 8]>::try_from(b.as_slice()) {
                if id != [0; 8] {
                    return id;
                }
            }
        }
    }
    nonzero(fnv1a(s.as_bytes()).to_be_bytes())
}

/// A deterministic span ID for an eBPF or network span, from its first row `_id`: the same
/// on every request and every replica.
pub fn row_span_id(row_id: u64) -> SpanId {
    nonzero(splitmix64(row_id ^ 0x6465_6570_666c_6f77).to_be_bytes())
}

fn nonzero(mut id: SpanId) -> SpanId {
    if id == [0; 8] {
        id[7] = 1;
    }
    id
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_like_tempo() {
        let full = "0af7651916cd43dd8448eb211c80319c";
        assert_eq!(TraceId::parse(full).unwrap().to_hex(), full);
        assert_eq!(TraceId::parse(&full.to_uppercase()).unwrap().to_hex(), full);
        // Odd length gets a leading 0; short IDs are left-padded.
        assert_eq!(
            TraceId::parse("abc").unwrap().to_hex(),
            format!("{}0abc", "0".repeat(28))
        );
        assert_eq!(TraceId::parse("1").unwrap().to_trimmed_hex(), "1");
        let trimmed = "af7651916cd43dd8448eb211c80319c";
        assert_eq!(TraceId::parse(trimmed).unwrap().to_hex(), full);
        assert_eq!(TraceId::parse(full).unwrap().to_trimmed_hex(), trimmed);
        for bad in ["", "xyz", "0af7651916cd43dd8448eb211c80319c0", "12 3", "-1"] {
            assert!(TraceId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn zero_code_ids() {
        let id = (1_700_000_000u64 << 32) | 42;
        let t = TraceId::zero_code(id);
        assert!(t.to_hex().starts_with("64656570666c6f77"));
        assert_eq!(t.to_hex().len(), 32);
        assert_eq!(
            TraceId::parse(&t.to_hex()).unwrap().as_zero_code(),
            Some(id)
        );
        assert_eq!(
            TraceId::parse(&t.to_hex().to_uppercase())
                .unwrap()
                .as_zero_code(),
            Some(id)
        );
        assert_eq!(
            TraceId::parse("0af7651916cd43dd8448eb211c80319c")
                .unwrap()
                .as_zero_code(),
            None
        );
    }

    #[test]
    fn stored_forms_and_app_ids() {
        let t = TraceId::parse("00000000000000001234567890abcdef").unwrap();
        assert_eq!(
            t.stored_forms(),
            vec!["00000000000000001234567890abcdef", "1234567890abcdef"]
        );
        assert!(TraceId::from_app_trace_id("segment-1.2.3").is_none());
        assert!(TraceId::from_app_trace_id("0af7651916cd43dd8448eb211c80319c").is_some());
        assert_eq!(
            app_span_id("00f067aa0ba902b7"),
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(app_span_id("seg.1"), app_span_id("seg.1"));
        assert_ne!(app_span_id("seg.1"), app_span_id("seg.2"));
        assert_eq!(row_span_id(7), row_span_id(7));
        assert_ne!(row_span_id(7), row_span_id(8));
    }
}
