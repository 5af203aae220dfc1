//! A `FlowStore` wrapper that counts and times every operation of the store it wraps (kind,
//! outcome, latency) into [`crate::metrics`]. It forwards every call unchanged: it must not
//! alter queries, answers or errors, and holds no state of its own.

use super::model::{FlowMeta, FlowRecord, L7FlowLogRow, NameTables, OrgId};
use super::{
    Facet, FlowQuery, FlowStore, SchemaOptions, SharedStore, StoreError, StoreKind, StoreResult,
};
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Instant;

/// The store, metered.
pub struct MeteredStore {
    inner: SharedStore,
}

impl MeteredStore {
    /// `store`, with every operation recorded.
    pub fn wrap(store: SharedStore) -> SharedStore {
        Arc::new(MeteredStore { inner: store })
    }
}

/// The `outcome` label of a result.
fn outcome<T>(r: &StoreResult<T>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(StoreError::Unavailable(_)) => "unavailable",
        Err(StoreError::Timeout(_)) => "timeout",
        Err(StoreError::Query(_)) => "failed",
        Err(StoreError::Invalid(_)) => "invalid",
        Err(StoreError::NotFound(_)) => "not_found",
        Err(StoreError::Overloaded(_)) => "overloaded",
    }
}

/// Run `fut`, record it under `kind`, return its result.
async fn metered<T>(
    kind: &'static str,
    fut: impl std::future::Future<Output = StoreResult<T>>,
) -> StoreResult<T> {
    let started = Instant::now();
    let r = fut.await;
    crate::metrics::metrics().store_query(kind, outcome(&r), started.elapsed());
    r
}

#[async_trait]
impl FlowStore for MeteredStore {
    fn kind(&self) -> StoreKind {
        self.inner.kind()
    }

    fn max_rows(&self) -> u64 {
        self.inner.max_rows()
    }

    async fn ping(&self) -> StoreResult<()> {
        metered("ping", self.inner.ping()).await
    }

    async fn select_meta(&self, org: OrgId, query: &FlowQuery) -> StoreResult<Vec<FlowMeta>> {
        metered("meta", self.inner.select_meta(org, query)).await
    }

    async fn select_records(&self, org: OrgId, query: &FlowQuery) -> StoreResult<Vec<FlowRecord>> {
        metered("records", self.inner.select_records(org, query)).await
    }

    async fn insert_rows(&self, org: OrgId, rows: &[L7FlowLogRow]) -> StoreResult<()> {
        metered("insert_rows", self.inner.insert_rows(org, rows)).await
    }

    async fn insert_names(&self, org: OrgId, names: &NameTables) -> StoreResult<()> {
        metered("insert_names", self.inner.insert_names(org, names)).await
    }

    async fn apply_schema(&self, org: OrgId, options: SchemaOptions) -> StoreResult<()> {
        metered("apply_schema", self.inner.apply_schema(org, options)).await
    }

    fn schema_ddl(&self, org: OrgId) -> Vec<String> {
        self.inner.schema_ddl(org)
    }

    async fn aggregate(
        &self,
        org: OrgId,
        agg: &crate::store::Aggregation,
    ) -> StoreResult<Vec<crate::store::AggregateRow>> {
        metered("aggregate", self.inner.aggregate(org, agg)).await
    }

    async fn distinct_values(
        &self,
        org: OrgId,
        query: &FlowQuery,
        facet: &Facet,
    ) -> StoreResult<Vec<String>> {
        metered("distinct", self.inner.distinct_values(org, query, facet)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_name_every_error() {
        assert_eq!(outcome(&Ok(())), "ok");
        assert_eq!(
            outcome::<()>(&Err(StoreError::Unavailable("x".into()))),
            "unavailable"
        );
        assert_eq!(outcome::<()>(&Err(StoreError::Timeout(1))), "timeout");
        assert_eq!(outcome::<()>(&Err(StoreError::Query("x".into()))), "failed");
        assert_eq!(
            outcome::<()>(&Err(StoreError::Invalid("x".into()))),
            "invalid"
        );
    }
}
