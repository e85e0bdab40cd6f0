//! The memtable's hash table for keys read and written one at a time (the outbox entries,
//! the transfer and hold records): byte keys to small `Copy` values, in open addressing
//! with linear probing.
//!
//! Owns: its slots and a copy of each key's bytes. Must never: reorder or lose a key, or
//! pause the commit thread for a rehash of the whole table (it is split into [`SHARDS`]
//! that double one at a time).
//!
//! Why not `std`'s `HashMap<MemKey, _>`: on the 2-core VM a random memory access costs
//! 160–190 ns, and a memtable of a million transfer records spans far more than the caches.
//! A slot here is 32 bytes (the key is elsewhere, behind its 64-bit hash) against 64 in the
//! `HashMap`, a growth moves slots without reading their keys, and a lookup of an absent
//! key (every new transfer id) reads one slot line. Measured in a scratch program (1 M
//! transfer ids inserted in the benchmark's order, groups of 20,000): per insert 55–160 ns
//! here against 420–500 ns for the `HashMap` and 680–850 ns for the memtable's B-tree; per
//! absent lookup 25–60 ns against 40–65 and 440–530 ns. Keys are hashed with a seed chosen
//! per table (foldhash's random state): client-chosen ids cannot be crafted to collide.

use std::hash::BuildHasher;

use super::chunks::Chunks;

/// Shards per table; each grows on its own, so a growth moves at most 1/`SHARDS` of the
/// entries at once (about 16,000 slots at a million entries: well under a millisecond).
pub(crate) const SHARDS: usize = 64;

/// Slots a shard starts with.
const SHARD_SLOTS_MIN: usize = 16;

/// Chunk size of the key arena (a longer key gets a chunk of its own).
const KEY_CHUNK_BYTES: usize = 1 << 20;

/// A key's place in the table's key arena (8 bytes, so that a slot is 32).
#[derive(Debug, Clone, Copy)]
struct KeyRef {
    offset: u32,
    chunk: u16,
    /// Keys are at most 10 kB ([`crate::store::limits::KEY_BYTES_MAX`]).
    len: u16,
}

/// An occupied slot (a shard holds `None` in its empty ones).
#[derive(Debug, Clone, Copy)]
struct Slot<V> {
    hash: u64,
    key: KeyRef,
    value: V,
}

#[derive(Debug)]
struct Shard<V> {
    /// A power of two in length; at most 10/16 full (see [`grow_at_sixteenths`]).
    slots: Vec<Option<Slot<V>>>,
    len: usize,
}

impl<V: Copy> Shard<V> {
    fn new() -> Self {
        Shard {
            slots: vec![None; SHARD_SLOTS_MIN],
            len: 0,
        }
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// Doubles the slots, placing each entry by its stored hash (its key is not read).
    fn grow(&mut self) {
        let doubled = vec![None; self.slots.len() * 2];
        let old = std::mem::replace(&mut self.slots, doubled);
        let mask = self.mask();
        for slot in old.into_iter().flatten() {
            let mut at = home(slot.hash) & mask;
            while self.slots[at].is_some() {
                at = (at + 1) & mask;
            }
            self.slots[at] = Some(slot);
        }
    }
}

/// The slot an entry of hash `hash` would like (within a shard, before the mask).
fn home(hash: u64) -> usize {
    // The top bits choose the shard, the low bit is always set: use the bits between.
    (hash >> 1) as usize
}

/// The load (in sixteenths) at which shard `index` doubles: 6/16 to 10/16 by shard. Keys
/// spread evenly over the shards, so with one threshold all of them would double within the
/// same few thousand inserts, a pause as long as one rehash of the whole table.
fn grow_at_sixteenths(index: usize) -> usize {
    6 + index % 5
}

fn shard_of(hash: u64) -> usize {
    (hash >> 58) as usize % SHARDS
}

/// A key of a [`PointTable`], by where its bytes lie: valid for the table's life (a growth
/// and the removal of other keys move slots, not keys), unlike a slot's index.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyId(KeyRef);

/// Byte keys to `V`, unordered.
#[derive(Debug)]
pub(crate) struct PointTable<V> {
    shards: Vec<Shard<V>>,
    /// Every inserted key's bytes, appended; a removed key's stay until the table is dropped
    /// (a memtable's life).
    keys: Chunks,
    len: usize,
    hasher: foldhash::fast::RandomState,
}

impl<V: Copy> Default for PointTable<V> {
    fn default() -> Self {
        PointTable {
            shards: (0..SHARDS).map(|_| Shard::new()).collect(),
            keys: Chunks::new(KEY_CHUNK_BYTES),
            len: 0,
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl<V: Copy> PointTable<V> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `key`'s hash in this table, for the `_hashed` operations (a caller that works on
    /// one key several times hashes it once).
    pub(crate) fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key) | 1
    }

    fn key(&self, at: KeyRef) -> &[u8] {
        self.keys
            .get(at.chunk as usize, at.offset as usize, at.len as usize)
    }

    /// `key`'s shard and slot if present (`Ok`), else its shard and the empty slot where
    /// the search stopped (`Err`): where an insert puts it, unless the shard grows first.
    fn search(&self, key: &[u8], hash: u64) -> Result<(usize, usize), (usize, usize)> {
        let shard_index = shard_of(hash);
        let shard = &self.shards[shard_index];
        let mask = shard.mask();
        let mut at = home(hash) & mask;
        loop {
            match &shard.slots[at] {
                None => return Err((shard_index, at)),
                Some(slot) if slot.hash == hash && self.key(slot.key) == key => {
                    return Ok((shard_index, at))
                }
                Some(_) => at = (at + 1) & mask,
            }
        }
    }

    /// The index of `key`'s slot in its shard, if present.
    fn find(&self, key: &[u8], hash: u64) -> Option<(usize, usize)> {
        self.search(key, hash).ok()
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<&V> {
        let (shard, at) = self.find(key, self.hash(key))?;
        self.shards[shard].slots[at]
            .as_ref()
            .map(|slot| &slot.value)
    }

    /// Asks the CPU to start loading the slot where `key`'s search begins, so that a lookup
    /// or insert of it shortly after does not wait the full memory latency.
    pub(crate) fn prefetch(&self, key: &[u8]) {
        self.prefetch_hashed(self.hash(key));
    }

    /// [`PointTable::prefetch`] of the key whose [`PointTable::hash`] is `hash`.
    pub(crate) fn prefetch_hashed(&self, hash: u64) {
        let shard = &self.shards[shard_of(hash)];
        let at = home(hash) & shard.mask();
        let slot: *const Option<Slot<V>> = &shard.slots[at];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `slot` points into a live slice; a prefetch reads nothing architecturally
        // and cannot fault.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(slot.cast());
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = slot;
    }

    /// [`PointTable::upsert_hashed`], hashing `key` itself (tests).
    #[cfg(test)]
    pub(crate) fn upsert(
        &mut self,
        key: &[u8],
        vacant: impl FnOnce() -> V,
    ) -> (&mut V, Option<KeyId>) {
        self.upsert_hashed(key, self.hash(key), vacant)
    }

    /// The value of `key` (whose [`PointTable::hash`] is `hash`), inserted as `vacant()` if
    /// absent; and, if it was inserted, the new key's id.
    pub(crate) fn upsert_hashed(
        &mut self,
        key: &[u8],
        hash: u64,
        vacant: impl FnOnce() -> V,
    ) -> (&mut V, Option<KeyId>) {
        debug_assert_eq!(
            hash,
            self.hash(key),
            "the hash is this table's, of this key"
        );
        let (shard_index, mut at) = match self.search(key, hash) {
            Ok((shard, at)) => {
                let slot = self.shards[shard].slots[at].as_mut().expect("found");
                return (&mut slot.value, None);
            }
            Err(empty) => empty,
        };
        let key_ref = self.store_key(key);
        let shard = &mut self.shards[shard_index];
        if (shard.len + 1) * 16 > shard.slots.len() * grow_at_sixteenths(shard_index) {
            // The slots moved: search the grown shard for an empty one (the key is absent).
            shard.grow();
            let mask = shard.mask();
            at = home(hash) & mask;
            while shard.slots[at].is_some() {
                at = (at + 1) & mask;
            }
        }
        shard.len += 1;
        self.len += 1;
        let slot = shard.slots[at].insert(Slot {
            hash,
            key: key_ref,
            value: vacant(),
        });
        (&mut slot.value, Some(KeyId(key_ref)))
    }

    fn store_key(&mut self, key: &[u8]) -> KeyRef {
        let (chunk, offset) = self.keys.append(key);
        KeyRef {
            offset: u32::try_from(offset).expect("chunk offsets fit u32"),
            // 65,536 chunks of at least 1 MiB: more keys than a memtable's size limit allows.
            chunk: u16::try_from(chunk).expect("key chunks fit u16"),
            len: u16::try_from(key.len()).expect("keys are at most 10 kB"),
        }
    }

    /// [`PointTable::remove_hashed`], hashing `key` itself (tests).
    #[cfg(test)]
    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<V> {
        self.remove_hashed(key, self.hash(key))
    }

    /// Removes `key` (whose [`PointTable::hash`] is `hash`); returns its value if it was
    /// present. The entries after it in its probe run move back (no deletion markers: a
    /// later search stops at the first empty slot as if the key had never been inserted).
    pub(crate) fn remove_hashed(&mut self, key: &[u8], hash: u64) -> Option<V> {
        debug_assert_eq!(
            hash,
            self.hash(key),
            "the hash is this table's, of this key"
        );
        let (shard_index, found) = self.find(key, hash)?;
        let shard = &mut self.shards[shard_index];
        let mask = shard.mask();
        let removed = shard.slots[found].take().expect("found");
        let mut hole = found;
        let mut at = (found + 1) & mask;
        while let Some(slot) = shard.slots[at] {
            // The entry may fill the hole unless its home lies cyclically after the hole
            // (then a search for it starts past the hole and would not find it there).
            let from_home = at.wrapping_sub(home(slot.hash)) & mask;
            let from_hole = at.wrapping_sub(hole) & mask;
            if from_home >= from_hole {
                shard.slots[hole] = shard.slots[at].take();
                hole = at;
            }
            at = (at + 1) & mask;
        }
        shard.len -= 1;
        self.len -= 1;
        Some(removed.value)
    }

    /// The id of every key present, in no particular order (see [`KeyId`]).
    pub(crate) fn key_ids(&self) -> Vec<KeyId> {
        let mut ids = Vec::with_capacity(self.len);
        ids.extend(
            self.shards
                .iter()
                .flat_map(|shard| shard.slots.iter().flatten())
                .map(|slot| KeyId(slot.key)),
        );
        ids
    }

    /// The id of `key`, if present (tests: the memtable takes ids from `upsert`).
    #[cfg(test)]
    pub(crate) fn key_id(&self, key: &[u8]) -> Option<KeyId> {
        let (shard, at) = self.find(key, self.hash(key))?;
        self.shards[shard].slots[at]
            .as_ref()
            .map(|slot| KeyId(slot.key))
    }

    /// The bytes of the key `id` names.
    pub(crate) fn key_of(&self, id: KeyId) -> &[u8] {
        self.key(id.0)
    }

    /// Every entry, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &V)> {
        self.shards
            .iter()
            .flat_map(|shard| shard.slots.iter().flatten())
            .map(|slot| (self.key(slot.key), &slot.value))
    }
}

#[cfg(test)]
mod tests {
    use super::PointTable;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn a_memtable_slot_is_half_a_cache_line() {
        type MemtableSlot = Option<super::Slot<Option<[u32; 3]>>>;
        assert_eq!(std::mem::size_of::<MemtableSlot>(), 32);
    }

    #[test]
    fn inserts_overwrites_and_removes_read_back() {
        let mut table: PointTable<u32> = PointTable::default();
        assert!(table.is_empty());
        for n in 0..10_000u32 {
            let (value, inserted) = table.upsert(format!("t-{n}").as_bytes(), || n);
            assert!(inserted.is_some());
            assert_eq!(*value, n);
        }
        assert_eq!(table.len(), 10_000);
        let (value, inserted) = table.upsert(b"t-7", || 0);
        assert!(inserted.is_none(), "an existing key is not inserted again");
        *value = 70;
        assert_eq!(table.get(b"t-7"), Some(&70));
        for n in (0..10_000u32).step_by(2) {
            assert!(table.remove(format!("t-{n}").as_bytes()).is_some());
        }
        assert_eq!(table.remove(b"t-0"), None, "removed once");
        assert_eq!(table.len(), 5_000);
        for n in 0..10_000u32 {
            let expected = match n {
                7 => Some(70),
                n if n % 2 == 0 => None,
                n => Some(n),
            };
            assert_eq!(table.get(format!("t-{n}").as_bytes()).copied(), expected);
        }
        assert_eq!(table.iter().count(), 5_000);
        assert_eq!(table.key_ids().len(), 5_000);
        assert!(table.key_id(b"t-0").is_none());
        let id = table.key_id(b"t-1").expect("present");
        for n in 10_000..20_000u32 {
            table.upsert(format!("t-{n}").as_bytes(), || n);
        }
        table.remove(b"t-3");
        assert_eq!(
            table.key_of(id),
            b"t-1",
            "an id outlives growth and removals"
        );
        table.prefetch(b"t-1");
        table.prefetch(b"absent");
    }

    proptest! {
        /// Any sequence of upserts, overwrites and removes over a small key space (so that
        /// probe runs collide, wrap and shift back) reads back as a `HashMap` model says,
        /// by lookup and by iteration.
        #[test]
        fn matches_a_hash_map(
            ops in proptest::collection::vec((0u8..3, 0u16..400, any::<u32>()), 1..2_000),
        ) {
            let mut table: PointTable<u32> = PointTable::default();
            let mut model: HashMap<Vec<u8>, u32> = HashMap::new();
            for (op, key, value) in ops {
                let key = format!("k{key}").into_bytes();
                match op {
                    0 => {
                        let (slot, inserted) = table.upsert(&key, || value);
                        prop_assert_eq!(inserted.is_some(), !model.contains_key(&key));
                        *slot = value;
                        model.insert(key, value);
                    }
                    1 => prop_assert_eq!(table.remove(&key), model.remove(&key)),
                    _ => prop_assert_eq!(table.get(&key).copied(), model.get(&key).copied()),
                }
                prop_assert_eq!(table.len(), model.len());
            }
            for (key, value) in &model {
                prop_assert_eq!(table.get(key), Some(value));
            }
            let mut all: Vec<(Vec<u8>, u32)> =
                table.iter().map(|(key, value)| (key.to_vec(), *value)).collect();
            all.sort();
            let mut expected: Vec<(Vec<u8>, u32)> = model.into_iter().collect();
            expected.sort();
            prop_assert_eq!(all, expected);
        }
    }
}
