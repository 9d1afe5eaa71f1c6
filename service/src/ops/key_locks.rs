//! One writer at a time per key, through this process.
//!
//! A write is more than one storage call when it must be made visible whole (a `split`
//! record is a staged payload, a metadata document and a move; see [`crate::ops::split`]), and
//! every write ends by updating the cache. Two writes of one key interleaving those steps
//! would leave one's payload under the other's document, or the cache holding the older of
//! two acknowledged writes. Writes (Put, PutStream's commit, Delete) of a key therefore
//! hold its lock from their first storage call to their cache update; reads take no lock.
//!
//! The table is a fixed number of mutexes chosen by the key's hash, not a map of keys:
//! memory stays constant however many keys are written, at the price of two writes of
//! different keys sometimes waiting for each other (with [`STRIPES`] stripes and the
//! admission limit's few hundred calls in flight, rarely). Writers in other processes
//! (another replica, Prefect itself) are not held back: what they can do to a split
//! record is detected by its digest on read (see [`crate::ops::split`]).

use std::hash::BuildHasher;

use tokio::sync::{Mutex, MutexGuard};

/// Mutexes in the table.
pub const STRIPES: usize = 1024;

/// Per-key write locks (see the module docs).
pub struct KeyLocks {
    stripes: Box<[Mutex<()>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for KeyLocks {
    fn default() -> Self {
        KeyLocks { stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(), hasher: Default::default() }
    }
}

impl KeyLocks {
    /// Waits for, and holds until dropped, the lock of `key` in `block`.
    pub async fn lock(&self, block: &str, key: &str) -> MutexGuard<'_, ()> {
        let hash = self.hasher.hash_one((block, key));
        // The modulo keeps the index below the table's length.
        let stripe = (hash % self.stripes.len() as u64) as usize;
        self.stripes[stripe].lock().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_has_one_writer_at_a_time() {
        let locks = KeyLocks::default();
        let held = locks.lock("memory/default", "a").await;
        let again = tokio::time::timeout(std::time::Duration::from_millis(50), locks.lock("memory/default", "a"));
        assert!(again.await.is_err(), "a second writer of the key got in");
        drop(held);
        let _ = locks.lock("memory/default", "a").await;
    }
}
