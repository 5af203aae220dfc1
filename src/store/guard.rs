//! Query slots: a [`FlowStore`] wrapper that bounds the store queries in flight over all
//! requests (`limits.max_concurrent_queries`). A query waits at most `limits.queue_timeout_ms`
//! for a free slot, else fails with [`StoreError::Overloaded`] (HTTP 429).
//!
//! It owns the semaphore and nothing else: it does not look into queries, build SQL, time
//! queries (the store's own timeout does) or count them (metrics belong elsewhere). A query
//! holds its slot exactly as long as its future lives, so a cancelled request (timeout, client
//! gone) gives its slots back at once.
//!
//! `ping` takes no slot: `/ready` tells whether the store answers, and a store that is merely
//! busy must not be reported as down, nor its probe wait behind user queries.

use super::model::{FlowMeta, FlowRecord, L7FlowLogRow, NameTables, OrgId};
use super::{
    Facet, FlowQuery, FlowStore, SchemaOptions, SharedStore, StoreError, StoreKind, StoreResult,
};
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};

/// A store whose queries share a fixed number of slots.
pub struct QuerySlots {
    inner: SharedStore,
    slots: Semaphore,
    max: usize,
    queue_timeout: Duration,
}

impl QuerySlots {
    /// `max` slots (at least 1); a query waits up to `queue_timeout` for one.
    pub fn new(inner: SharedStore, max: usize, queue_timeout: Duration) -> Self {
        let max = max.max(1);
        QuerySlots {
            inner,
            slots: Semaphore::new(max),
            max,
            queue_timeout,
        }
    }

    /// `inner` behind the slots the limits configure.
    pub fn wrap(inner: SharedStore, limits: &crate::config::LimitsConfig) -> SharedStore {
        Arc::new(QuerySlots::new(
            inner,
            limits.max_concurrent_queries,
            Duration::from_millis(limits.queue_timeout_ms),
        ))
    }

    /// Wait for a free slot, at most the queue timeout.
    async fn slot(&self) -> StoreResult<SemaphorePermit<'_>> {
        match tokio::time::timeout(self.queue_timeout, self.slots.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; answer as a busy store if it ever is.
            Ok(Err(_)) | Err(_) => {
                let waited_ms = self.queue_timeout.as_millis() as u64;
                tracing::warn!(
                    slots = self.max,
                    waited_ms,
                    "no store query slot became free"
                );
                Err(StoreError::Overloaded(format!(
                    "no store query slot became free within {waited_ms} ms \
                     (limits.queue_timeout_ms): all {} are busy (limits.max_concurrent_queries); \
                     retry later",
                    self.max
                )))
            }
        }
    }
}

#[async_trait]
impl FlowStore for QuerySlots {
    fn kind(&self) -> StoreKind {
        self.inner.kind()
    }

    fn max_rows(&self) -> u64 {
        self.inner.max_rows()
    }

    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }

    async fn select_meta(&self, org: OrgId, q: &FlowQuery) -> StoreResult<Vec<FlowMeta>> {
        let _slot = self.slot().await?;
        self.inner.select_meta(org, q).await
    }

    async fn select_records(&self, org: OrgId, q: &FlowQuery) -> StoreResult<Vec<FlowRecord>> {
        let _slot = self.slot().await?;
        self.inner.select_records(org, q).await
    }

    async fn insert_rows(&self, org: OrgId, rows: &[L7FlowLogRow]) -> StoreResult<()> {
        let _slot = self.slot().await?;
        self.inner.insert_rows(org, rows).await
    }

    async fn insert_names(&self, org: OrgId, names: &NameTables) -> StoreResult<()> {
        let _slot = self.slot().await?;
        self.inner.insert_names(org, names).await
    }

    async fn apply_schema(&self, org: OrgId, options: SchemaOptions) -> StoreResult<()> {
        let _slot = self.slot().await?;
        self.inner.apply_schema(org, options).await
    }

    fn schema_ddl(&self, org: OrgId) -> Vec<String> {
        self.inner.schema_ddl(org)
    }

    async fn aggregate(
        &self,
        org: OrgId,
        agg: &crate::store::Aggregation,
    ) -> StoreResult<Vec<crate::store::AggregateRow>> {
        let _slot = self.slot().await?;
        self.inner.aggregate(org, agg).await
    }

    async fn distinct_values(
        &self,
        org: OrgId,
        q: &FlowQuery,
        facet: &Facet,
    ) -> StoreResult<Vec<String>> {
        let _slot = self.slot().await?;
        self.inner.distinct_values(org, q, facet).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Filter;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Notify;

    /// `select_meta` blocks until released; everything else answers at once.
    #[derive(Default)]
    struct Blocking {
        release: Notify,
        /// `select_meta` calls that reached the store.
        entered: AtomicUsize,
    }

    #[async_trait]
    impl FlowStore for Blocking {
        fn kind(&self) -> StoreKind {
            StoreKind::Embedded
        }
        async fn ping(&self) -> StoreResult<()> {
            Ok(())
        }
        async fn select_meta(&self, _: OrgId, _: &FlowQuery) -> StoreResult<Vec<FlowMeta>> {
            self.entered.fetch_add(1, Ordering::SeqCst);
            self.release.notified().await;
            Ok(vec![])
        }
        async fn select_records(&self, _: OrgId, _: &FlowQuery) -> StoreResult<Vec<FlowRecord>> {
            Ok(vec![])
        }
        async fn insert_rows(&self, _: OrgId, _: &[L7FlowLogRow]) -> StoreResult<()> {
            Ok(())
        }
        async fn insert_names(&self, _: OrgId, _: &NameTables) -> StoreResult<()> {
            Ok(())
        }
        async fn apply_schema(&self, _: OrgId, _: SchemaOptions) -> StoreResult<()> {
            Ok(())
        }
        fn schema_ddl(&self, _: OrgId) -> Vec<String> {
            vec![]
        }
        async fn distinct_values(
            &self,
            _: OrgId,
            _: &FlowQuery,
            _: &Facet,
        ) -> StoreResult<Vec<String>> {
            Ok(vec![])
        }
    }

    async fn until_entered(inner: &Blocking, n: usize) {
        while inner.entered.load(Ordering::SeqCst) < n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_query_without_a_free_slot_is_overloaded_and_ping_is_never_queued() {
        let inner = Arc::new(Blocking::default());
        let slots = Arc::new(QuerySlots::new(inner.clone(), 1, Duration::from_millis(20)));
        let q = FlowQuery::new(Filter::True);
        let first = tokio::spawn({
            let (slots, q) = (slots.clone(), q.clone());
            async move { slots.select_meta(OrgId::DEFAULT, &q).await }
        });
        until_entered(&inner, 1).await;

        let err = slots.select_meta(OrgId::DEFAULT, &q).await.unwrap_err();
        assert!(matches!(err, StoreError::Overloaded(_)), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("limits.max_concurrent_queries"), "{msg}");
        assert!(msg.contains("20 ms"), "{msg}");
        slots.ping().await.expect("ping takes no slot");

        inner.release.notify_waiters();
        first.await.unwrap().unwrap();
        slots.select_records(OrgId::DEFAULT, &q).await.unwrap();
    }

    #[tokio::test]
    async fn a_cancelled_query_gives_its_slot_back() {
        let inner = Arc::new(Blocking::default());
        let slots = Arc::new(QuerySlots::new(inner.clone(), 1, Duration::from_secs(30)));
        let q = FlowQuery::new(Filter::True);
        let first = tokio::spawn({
            let (slots, q) = (slots.clone(), q.clone());
            async move { slots.select_meta(OrgId::DEFAULT, &q).await }
        });
        until_entered(&inner, 1).await;
        let waiting = tokio::spawn({
            let (slots, q) = (slots.clone(), q.clone());
            async move { slots.select_meta(OrgId::DEFAULT, &q).await }
        });
        tokio::task::yield_now().await;
        assert_eq!(inner.entered.load(Ordering::SeqCst), 1, "the slot is taken");
        first.abort();
        // The waiting query gets the freed slot and reaches the store.
        until_entered(&inner, 2).await;
        inner.release.notify_waiters();
        waiting.await.unwrap().unwrap();
    }
}
