//! The bounded, expiring map behind the request path's caches (verified tokens, decisions, assertions).
//!
//! Each of those is read on every request and written once per new token or caller, and each entry has a
//! hard expiry. A general-purpose cache spends its time on what these do not need (frequency sketches,
//! access-order lists, a write log replayed by housekeeping); here a lookup is one lock of one shard and
//! one hash probe, an insert the same. Upkeep happens on insert: a shard is swept every [`SWEEP_EVERY`]
//! inserts, and at most once a second once its entries have started to expire, but never while nothing in
//! it can have expired. A full shard first drops what has expired, then an arbitrary sixty-fourth of
//! itself: every entry can be recomputed, so which one goes matters little.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

const SHARDS: usize = 8;
/// Inserts into a shard between two sweeps of its expired entries, so memory follows the live entries.
pub const SWEEP_EVERY: u32 = 256;
/// A shard whose entries have started to expire is swept at its next insert once this long has passed.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// A key that names its own shard, so finding the shard costs no second hash of the key.
pub trait ShardKey {
    /// Any byte of the key that varies between keys (the keys here start with a SHA-256 digest).
    fn shard_byte(&self) -> u8;
}

impl ShardKey for [u8; 32] {
    fn shard_byte(&self) -> u8 {
        self[0]
    }
}

impl ShardKey for ([u8; 32], usize) {
    fn shard_byte(&self) -> u8 {
        self.0[0]
    }
}

/// A concurrent map with a capacity and a deadline per entry.
pub struct ExpiringCache<K, V, S> {
    shards: [Mutex<Shard<K, V, S>>; SHARDS],
    shard_capacity: usize,
}

struct Shard<K, V, S> {
    entries: HashMap<K, (V, Instant), S>,
    inserts: u32,
    /// No entry expires before this: a sweep before it would find nothing.
    earliest: Option<Instant>,
    /// When this shard was last swept.
    swept: Option<Instant>,
}

impl<K, V, S> Shard<K, V, S> {
    /// Drops what has expired, if anything can have.
    fn sweep(&mut self, now: Instant) {
        if self.earliest.is_some_and(|earliest| earliest <= now) {
            self.entries.retain(|_, (_, until)| *until > now);
            self.earliest = self.entries.values().map(|(_, until)| *until).min();
            self.swept = Some(now);
        }
    }

    /// Whether expired entries have lingered long enough to be worth a sweep: at most once a second.
    fn sweep_due(&self, now: Instant) -> bool {
        self.earliest.is_some_and(|earliest| earliest <= now)
            && self.swept.is_none_or(|swept| now.duration_since(swept) >= SWEEP_INTERVAL)
    }
}

impl<K, V, S> std::fmt::Debug for ExpiringCache<K, V, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpiringCache").field("capacity", &(self.shard_capacity * SHARDS)).finish()
    }
}

impl<K: Hash + Eq + Clone + ShardKey, V: Clone, S: BuildHasher + Clone> ExpiringCache<K, V, S> {
    /// A cache of at most about `capacity` entries.
    pub fn new(capacity: usize, hasher: S) -> Self {
        let shard_capacity = capacity.div_ceil(SHARDS).max(1);
        ExpiringCache {
            shards: std::array::from_fn(|_| {
                Mutex::new(Shard {
                    entries: HashMap::with_hasher(hasher.clone()),
                    inserts: 0,
                    earliest: None,
                    swept: None,
                })
            }),
            shard_capacity,
        }
    }

    fn shard(&self, key: &K) -> MutexGuard<'_, Shard<K, V, S>> {
        let index = usize::from(key.shard_byte()) % SHARDS;
        // Entries are plain data, consistent even if a holder panicked: keep going.
        self.shards[index].lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The value, unless it has expired.
    pub fn get(&self, key: &K) -> Option<V> {
        let now = Instant::now();
        let shard = self.shard(key);
        shard.entries.get(key).filter(|(_, expires)| *expires > now).map(|(value, _)| value.clone())
    }

    /// Stores `value` until `ttl` from now (replacing any earlier value).
    pub fn insert(&self, key: K, value: V, ttl: Duration) {
        let now = Instant::now();
        let expires = now.checked_add(ttl).unwrap_or(now + Duration::from_secs(86_400 * 365));
        let mut shard = self.shard(&key);
        shard.inserts = shard.inserts.wrapping_add(1);
        if shard.inserts.is_multiple_of(SWEEP_EVERY) || shard.sweep_due(now) {
            shard.sweep(now);
        }
        if shard.entries.len() >= self.shard_capacity && !shard.entries.contains_key(&key) {
            shard.sweep(now);
            if shard.entries.len() >= self.shard_capacity {
                // A sixty-fourth at a time, found without visiting the rest: evicting is a short pause.
                let evict = (self.shard_capacity / 64).max(1);
                let victims: Vec<K> = shard.entries.keys().take(evict).cloned().collect();
                for victim in &victims {
                    shard.entries.remove(victim);
                }
            }
        }
        shard.earliest = Some(shard.earliest.map_or(expires, |earliest| earliest.min(expires)));
        shard.entries.insert(key, (value, expires));
    }

    pub fn remove(&self, key: &K) {
        self.shard(key).entries.remove(key);
    }

    /// Entries held, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).entries.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::hash_map::RandomState;

    impl ShardKey for u32 {
        fn shard_byte(&self) -> u8 {
            self.to_le_bytes()[0]
        }
    }

    #[test]
    fn values_expire() {
        let cache = ExpiringCache::new(100, RandomState::new());
        cache.insert(1, "one", Duration::from_secs(60));
        cache.insert(2, "two", Duration::ZERO);
        assert_eq!(cache.get(&1), Some("one"));
        assert_eq!(cache.get(&2), None, "an expired entry is never returned");
        cache.remove(&1);
        assert_eq!(cache.get(&1), None);
    }

    #[test]
    fn the_capacity_holds_and_recent_entries_survive_eviction() {
        let cache = ExpiringCache::new(1_000, RandomState::new());
        for n in 0..10_000u32 {
            cache.insert(n, n, Duration::from_secs(60));
            assert_eq!(cache.get(&n), Some(n), "the entry just inserted is there");
        }
        assert!(cache.len() <= 1_000 + SHARDS, "{} entries for a capacity of 1,000", cache.len());
        assert!(cache.len() >= 900, "eviction takes a little at a time, not everything: {}", cache.len());
    }

    #[test]
    fn expired_entries_are_swept_without_filling_up() {
        let cache = ExpiringCache::new(1_000_000, RandomState::new());
        for n in 0..(SWEEP_EVERY * SHARDS as u32 * 8) {
            cache.insert(n, n, Duration::ZERO);
        }
        // Each shard swept at least once in its last SWEEP_EVERY inserts: what is left is less than that.
        assert!(cache.len() < (SWEEP_EVERY as usize) * SHARDS, "{} expired entries kept", cache.len());
    }

    #[test]
    fn replacing_a_value_in_a_full_cache_evicts_nothing() {
        let cache = ExpiringCache::new(SHARDS, RandomState::new());
        for n in 0..SHARDS as u32 * 4 {
            cache.insert(n, 0, Duration::from_secs(60));
        }
        let held: Vec<u32> = (0..SHARDS as u32 * 4).filter(|n| cache.get(n).is_some()).collect();
        let before = cache.len();
        for n in &held {
            cache.insert(*n, 1, Duration::from_secs(60));
        }
        assert_eq!(cache.len(), before);
        assert!(held.iter().all(|n| cache.get(n) == Some(1)));
    }
}
