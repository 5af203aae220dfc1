//! `load`: import JSON Lines of `l7_flow_log` rows (or a name-table document) into the store.
//!
//! Rows are parsed a batch at a time; a batch is written only when every line of it parsed,
//! so a bad line leaves no half-written batch. Errors name the line and the field.

use crate::store::model::{L7FlowLogRow, NameTables, OrgId};
use crate::store::{FlowStore, StoreError};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::BufRead;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("line {line}: field `{field}`: {message}")]
    BadLine {
        line: u64,
        field: String,
        message: String,
    },
    #[error("read error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Totals of a load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadStats {
    pub rows: u64,
    pub batches: u64,
}

/// Parse one JSON line into a row, normalising derived columns. `counter` makes generated
/// `_id`s unique.
pub fn parse_line(text: &str, line: u64, counter: u32) -> Result<L7FlowLogRow, LoadError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let mut row: L7FlowLogRow = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        LoadError::BadLine {
            line,
            field: if field == "." { "(row)".into() } else { field },
            message: e.into_inner().to_string(),
        }
    })?;
    row.normalise(counter);
    Ok(row)
}

/// Load JSON Lines from `input` in batches of `batch_size` rows.
pub async fn load_rows(
    store: &dyn FlowStore,
    org: OrgId,
    input: impl BufRead,
    batch_size: usize,
    progress: bool,
) -> Result<LoadStats, LoadError> {
    let bar = if progress {
        let b = ProgressBar::new_spinner();
        b.set_style(
            ProgressStyle::with_template("{spinner} {human_pos} rows loaded ({per_sec}) {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        Some(b)
    } else {
        None
    };
    let mut stats = LoadStats::default();
    let mut batch = Vec::with_capacity(batch_size);
    let mut counter: u32 = 0;
    for (i, line) in input.lines().enumerate() {
        let line_no = i as u64 + 1;
        let text = line?;
        if text.trim().is_empty() {
            continue;
        }
        counter = counter.wrapping_add(1);
        batch.push(parse_line(&text, line_no, counter)?);
        if batch.len() >= batch_size {
            store.insert_rows(org, &batch).await?;
            stats.rows += batch.len() as u64;
            stats.batches += 1;
            if let Some(b) = &bar {
                b.inc(batch.len() as u64);
            }
            batch.clear();
        }
    }
    if !batch.is_empty() {
        store.insert_rows(org, &batch).await?;
        stats.rows += batch.len() as u64;
        stats.batches += 1;
        if let Some(b) = &bar {
            b.inc(batch.len() as u64);
        }
    }
    if let Some(b) = bar {
        b.finish();
    }
    Ok(stats)
}

/// Load a JSON document of name tables (`{"devices": [...], "pods": [...], …}`).
pub async fn load_names(
    store: &dyn FlowStore,
    org: OrgId,
    input: impl std::io::Read,
) -> Result<usize, LoadError> {
    let mut de = serde_json::Deserializer::from_reader(input);
    let names: NameTables =
        serde_path_to_error::deserialize(&mut de).map_err(|e| LoadError::BadLine {
            line: e.inner().line() as u64,
            field: e.path().to_string(),
            message: e.into_inner().to_string(),
        })?;
    store.insert_names(org, &names).await?;
    Ok(names.devices.len()
        + names.pods.len()
        + names.subnets.len()
        + names.gprocesses.len()
        + names.vtap_ports.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_line_names_line_and_field() {
        let err = parse_line(r#"{"agent_id": "seven"}"#, 12, 1).unwrap_err();
        match err {
            LoadError::BadLine { line, field, .. } => {
                assert_eq!(line, 12);
                assert_eq!(field, "agent_id");
            }
            other => panic!("unexpected {other}"),
        }
        let err = parse_line(r#"{"start_time": "yesterday"}"#, 3, 1).unwrap_err();
        assert!(err.to_string().contains("start_time"), "{err}");
        assert!(parse_line("not json", 1, 1).is_err());
    }
}
