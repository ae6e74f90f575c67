//! Both exported suites (`durably::testing::contract` and `durably::testing::behaviour`) on
//! `durably::testing::MemoryStore`: a new backend is "implement `Store`, call the suites".

use std::sync::Arc;

use durably::Store;
use durably::testing::MemoryStore;

/// A fresh, migrated in-memory store with default options.
async fn fresh() -> ((), Arc<dyn Store>) {
    let store = MemoryStore::new();
    store.migrate().await.expect("migrate");
    ((), Arc::new(store))
}

durably::store_contract_tests!(fresh);
durably::store_behaviour_tests!(fresh);
