//! The in-memory tables (active and frozen memtables, the pinned keys) and the layered view
//! that answers every read: group overlay (committer only) → pinned keys (point reads of
//! keys under the pinned prefixes, which it holds in full) → active → frozen → checkpoint.
//!
//! A memtable maps a key to `Some(value)` or to a tombstone (`None`) that hides older
//! layers. While no older layer exists, clears remove entries instead of leaving tombstones.
//! Keys under the hashed prefixes live in hash tables ([`PointTable`]) beside the ordered
//! B-tree: the transient prefixes (the outbox) in one, the point-record prefixes (transfer
//! and hold records) in another. Both kinds are set and looked up one key at a time, far
//! more often than they are range-read. Keys under the index prefixes (the accounts'
//! active-hold indexes) live in a second, small B-tree. Range reads and checkpoints merge
//! them all in key order.

use std::borrow::{Borrow, Cow};
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;

use crate::store::StoreError;

use super::checkpoint::fjall as fjall_error;
use super::chunks::Chunks;
use super::point::{KeyId, PointTable};
use super::wal::{Write, WriteBatch};

/// Bytes counted per memtable entry beyond its key and value (B-tree slot, `Vec` headers).
pub(crate) const ENTRY_OVERHEAD_BYTES: usize = 64;

/// Writes of earlier transactions of the group being validated (not durable yet). A hash
/// map: point lookups are the hot path; the rare range validation sorts what it needs.
pub(crate) type Overlay<'a> = HashMap<&'a [u8], Option<&'a [u8]>, foldhash::fast::RandomState>;

/// Key bytes ordered exactly like `[u8]`, but compared eight bytes at a time inline: the
/// memtable's B-tree compares keys with long shared prefixes (tuple-encoded), and a libc
/// `memcmp` call per comparison dominated the commit thread's profile.
#[derive(ref_cast::RefCast, PartialEq, Eq)]
#[repr(transparent)]
pub(crate) struct KeyBytes([u8]);

impl KeyBytes {
    fn new(key: &[u8]) -> &KeyBytes {
        <KeyBytes as ref_cast::RefCast>::ref_cast(key)
    }
}

impl Ord for KeyBytes {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_keys(&self.0, &other.0)
    }
}

impl PartialOrd for KeyBytes {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Lexicographic byte order (the order of `[u8]`), by big-endian 8-byte words.
#[inline]
pub(crate) fn compare_keys(a: &[u8], b: &[u8]) -> Ordering {
    let common = a.len().min(b.len());
    let mut at = 0;
    while at + 8 <= common {
        let x = u64::from_be_bytes(a[at..at + 8].try_into().expect("8 bytes"));
        let y = u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        if x != y {
            return x.cmp(&y);
        }
        at += 8;
    }
    if at < common {
        if common >= 8 {
            // The last eight bytes of the common part, read as one word: the bytes before
            // `at` in it are equal, so the word compares exactly as the tail does (and no
            // `memcmp` call is made for a tail of one to seven bytes).
            let x = u64::from_be_bytes(a[common - 8..common].try_into().expect("8 bytes"));
            let y = u64::from_be_bytes(b[common - 8..common].try_into().expect("8 bytes"));
            if x != y {
                return x.cmp(&y);
            }
        } else {
            for (x, y) in a[at..common].iter().zip(&b[at..common]) {
                if x != y {
                    return x.cmp(y);
                }
            }
        }
    }
    a.len().cmp(&b.len())
}

/// Key bytes a memtable entry keeps inline, in the B-tree node itself. Tessera's keys are
/// mostly 15–35 bytes (tuple-encoded tags, an id, a number); inline keys spare the B-tree a
/// pointer chase (a cache miss) per comparison and the heap an allocation per entry.
const KEY_INLINE_BYTES: usize = 40;

/// An owned memtable key (ordered as [`KeyBytes`]), inline up to [`KEY_INLINE_BYTES`].
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct MemKey(smallvec::SmallVec<[u8; KEY_INLINE_BYTES]>);

impl MemKey {
    pub(crate) fn new(key: &[u8]) -> MemKey {
        MemKey(smallvec::SmallVec::from_slice(key))
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

// Hashes and compares as the bytes do (the derives above hash and compare the slice).
impl Borrow<[u8]> for MemKey {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl Borrow<KeyBytes> for MemKey {
    fn borrow(&self) -> &KeyBytes {
        KeyBytes::new(&self.0)
    }
}

impl Ord for MemKey {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_keys(&self.0, &other.0)
    }
}

impl PartialOrd for MemKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Writes `value` (or a tombstone) over an existing entry; returns the bytes the memtable
/// holds beyond what it held. A value that fits where the old value lies takes its place in
/// the arena: balance records are rewritten by every commit of their account, and appending
/// each copy made them most of what a memtable held (and of the fresh memory the process
/// touched).
fn overwrite_entry(arena: &mut Arena, old: &mut Option<ValueRef>, value: Option<&[u8]>) -> usize {
    match (old.as_mut(), value) {
        (Some(at), Some(new)) if new.len() <= at.len as usize => {
            arena.overwrite(at, new);
            0
        }
        (_, value) => {
            *old = value.map(|value| arena.push(value));
            value.map_or(0, <[u8]>::len)
        }
    }
}

/// Bytes a new entry adds to a memtable.
fn new_entry_bytes(key: &[u8], value: Option<&[u8]>) -> usize {
    value.map_or(0, <[u8]>::len) + key.len() + ENTRY_OVERHEAD_BYTES
}

/// A key and a value or tombstone, borrowed from a memtable or owned from the checkpoint.
pub(crate) type Entry<'a> = (Cow<'a, [u8]>, Option<Cow<'a, [u8]>>);
/// A visible row.
pub(crate) type Row<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>);

/// Chunk size of a memtable's value arena (a larger value gets a chunk of its own).
const ARENA_CHUNK_BYTES: usize = 1 << 20;

/// Where a memtable keeps its values: appended to chunks that are never reallocated, and
/// freed together with the memtable. Values written by the million cost no allocation
/// each, and the heap is left to short-lived objects (so its pages stay reusable).
#[derive(Debug)]
struct Arena {
    chunks: Chunks,
}

impl Default for Arena {
    fn default() -> Self {
        Arena {
            chunks: Chunks::new(ARENA_CHUNK_BYTES),
        }
    }
}

/// A value's place in the [`Arena`].
#[derive(Debug, Clone, Copy)]
struct ValueRef {
    chunk: u32,
    offset: u32,
    len: u32,
}

impl Arena {
    fn push(&mut self, bytes: &[u8]) -> ValueRef {
        let (chunk, offset) = self.chunks.append(bytes);
        ValueRef {
            chunk: u32::try_from(chunk).expect("arena chunks fit u32"),
            offset: u32::try_from(offset).expect("chunk offsets fit u32"),
            len: u32::try_from(bytes.len()).expect("values are at most 100 kB"),
        }
    }

    /// Writes `bytes` over the value at `at` (which must be at least as long) and makes
    /// `at` refer to them.
    fn overwrite(&mut self, at: &mut ValueRef, bytes: &[u8]) {
        assert!(
            bytes.len() <= at.len as usize,
            "an overwrite fits its place"
        );
        self.chunks
            .get_mut(at.chunk as usize, at.offset as usize, bytes.len())
            .copy_from_slice(bytes);
        at.len = u32::try_from(bytes.len()).expect("values are at most 100 kB");
    }

    fn get(&self, at: ValueRef) -> &[u8] {
        self.chunks
            .get(at.chunk as usize, at.offset as usize, at.len as usize)
    }
}

/// The key prefixes that place a memtable's keys outside its main B-tree: in its hash
/// tables, or in its index tree.
#[derive(Debug, Clone, Default)]
pub(crate) struct TablePrefixes {
    /// The store's transient prefixes (the outbox): few entries alive at a time.
    pub(crate) transient: Arc<Prefixes>,
    /// The store's point prefixes (transfer and hold records): written once or a few
    /// times each, read by key, range-read only by audits.
    pub(crate) points: Arc<Prefixes>,
    /// The store's index prefixes (accounts' active holds): set and cleared often, few
    /// alive at a time, range-read by a short prefix. Kept in a B-tree of their own (see
    /// [`Memtable::index`]); a key under a hashed prefix too belongs to its hash table.
    pub(crate) index: Arc<Prefixes>,
}

/// How many point operations ahead of the current one a loop over many (a transaction's
/// writes, its preconditions) prefetches: enough misses in flight to overlap most of the
/// memory latency, few enough that the lines are still in L1 when used.
pub(crate) const PREFETCH_AHEAD: usize = 8;

/// Where a key lives in one memtable ([`Memtable::place`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// In the hash table `Memtable::hashed[table]`, where its hash is `hash`.
    Hashed { table: usize, hash: u64 },
    /// In the index tree.
    Index,
    /// In the big tree.
    Map,
}

/// Which hash table of a memtable holds a key (an index into `Memtable::hashed`).
const TRANSIENT: usize = 0;
const POINTS: usize = 1;

/// Most entries a memtable's transient hash table holds. A range read over the transient prefixes
/// gathers and sorts the map's entries in its range (an outbox rescan does so per page),
/// which is cheap while few entries are alive, as in normal operation. When legs pile up
/// (a peer DC down for long), the memtable moves them into its B-tree once and keeps
/// transient keys there until it is replaced, so such reads stay O(log n) per page.
///
/// The map spills when a range read gathers more than [`HASHED_RANGE_ROWS_MAX`] rows from
/// it (what a pile-up costs), or at this many entries whatever the reads. Under full load
/// the credit legs in flight alone are ~130,000 (with the tombstones of those a frozen
/// memtable holds, twice that), and spilling them made every later leg's set and clear a
/// B-tree walk: 4 % more of all CPU in `bench dcs` from then on.
const HASHED_ENTRIES_MAX: usize = if cfg!(test) { 4 } else { 1_048_576 };

/// Rows a range read may gather from a memtable's hash map before it asks the memtable to
/// spill (see [`HASHED_ENTRIES_MAX`]): one DC's outbox rescan gathers its own slots' legs,
/// about a third of those in flight at full load.
const HASHED_RANGE_ROWS_MAX: usize = if cfg!(test) { 2 } else { 131_072 };

/// Keys under some hashed prefixes, in a hash table. A hash table makes a set, a lookup and
/// a clear O(1) instead of walks down a B-tree of millions of entries; range reads, rare on
/// these prefixes, gather and sort them.
///
/// Why the point records too: on the 2-core VM a random memory access costs 160–190 ns. In
/// `bench engine --scenario uniform` a new transfer id's precondition lookup cost about
/// 1,300 cycles and its insert about 1,400 in the B-tree (the ids of 16 batches in flight
/// land all over a tree far larger than the caches), about 12 % of all CPU.
#[derive(Debug, Default)]
struct Hashed {
    prefixes: Arc<Prefixes>,
    table: PointTable<Option<ValueRef>>,
    /// Entries past which the table spills (see [`HASHED_ENTRIES_MAX`]).
    entries_max: usize,
    /// Set once the table passed `entries_max`, or a range read asked for it: every key
    /// under these prefixes is in the B-tree.
    spilled: bool,
    /// Set by a range read that gathered more than [`HASHED_RANGE_ROWS_MAX`] rows from the
    /// table (readers hold the tables shared); the next write spills.
    spill_wanted: AtomicBool,
    /// The table's keys in key order, for range reads over a large table (see
    /// [`SORT_CACHE_ENTRIES_MIN`]): built by the first such read, kept across inserts and
    /// overwrites, dropped by a removal (or a spill).
    order: parking_lot::Mutex<Option<Order>>,
    /// The keys inserted since `order` was built, in insertion order (logged only while it
    /// exists: until a large range read, inserts pay nothing for it).
    inserted: Vec<KeyId>,
}

/// A hash table's keys in key order, as sorted runs of disjoint keys: the table's keys when
/// the order was built, then one run per later range read that found new keys, merged so
/// that each run is more than twice the next (at most log2 of the entries runs).
///
/// Why not one order dropped at every write: then a busy store sorted its million transfer
/// records again for every page of an audit, under the tables' shared lock (commits
/// waited), or moved them into the B-tree (a second pause as long).
///
/// Costs 8 bytes per key in the runs, and 8 per key inserted after it was built (the log),
/// beside the table and outside the memtable's byte count: at most 16 MB for a million.
#[derive(Debug, Default)]
struct Order {
    runs: Vec<Arc<[KeyId]>>,
    /// How many of `Hashed::inserted` the runs hold.
    covered: usize,
}

impl Hashed {
    fn new(prefixes: &Arc<Prefixes>, entries_max: usize) -> Self {
        Hashed {
            prefixes: Arc::clone(prefixes),
            entries_max,
            ..Hashed::default()
        }
    }

    /// The table, for a removal or a spill: the key order no longer holds.
    fn table_mut(&mut self) -> &mut PointTable<Option<ValueRef>> {
        *self.order.get_mut() = None;
        self.inserted = Vec::new();
        &mut self.table
    }

    /// Notes the key `id` just inserted (new), for the key order if there is one.
    fn log_insert(&mut self, id: KeyId) {
        if self.order.get_mut().is_some() {
            self.inserted.push(id);
        }
    }

    /// The table's keys in key order, as sorted runs of disjoint keys (see [`Order`]).
    fn runs(&self) -> Vec<Arc<[KeyId]>> {
        let mut order = self.order.lock();
        let order = order.get_or_insert_with(|| Order {
            runs: vec![sort_keys(&self.table, self.table.key_ids())],
            covered: self.inserted.len(),
        });
        if order.covered < self.inserted.len() {
            let run = sort_keys(&self.table, self.inserted[order.covered..].to_vec());
            order.covered = self.inserted.len();
            order.runs.push(run);
            while let [.., before, last] = order.runs.as_slice() {
                if before.len() > 2 * last.len() {
                    break;
                }
                let merged = merge_runs(&self.table, before, last);
                order.runs.truncate(order.runs.len() - 2);
                order.runs.push(merged);
            }
        }
        debug_assert_eq!(
            order.runs.iter().map(|run| run.len()).sum::<usize>(),
            self.table.len(),
            "the runs hold every key once"
        );
        order.runs.clone()
    }
}

/// `ids` in the order of their keys.
///
/// Compares a 16-byte window of the keys past the prefix they all share first, so that most
/// comparisons read no key bytes: sorting a million transfer ids by their bytes alone (two
/// random memory reads a comparison) took about a second.
fn sort_keys<V: Copy>(table: &PointTable<V>, ids: Vec<KeyId>) -> Arc<[KeyId]> {
    let Some(first) = ids.first().map(|id| table.key_of(*id)) else {
        return Arc::from(ids);
    };
    let shared = ids
        .iter()
        .map(|id| common_prefix_len(first, table.key_of(*id)))
        .min()
        .unwrap_or(0);
    let mut keyed: Vec<(u128, KeyId)> = ids
        .into_iter()
        .map(|id| (key_window(table.key_of(id), shared), id))
        .collect();
    keyed.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| compare_keys(table.key_of(a.1), table.key_of(b.1)))
    });
    keyed.into_iter().map(|(_, id)| id).collect()
}

/// The 16 bytes of `key` from `skip` on, zero-padded, as a number: of keys that share
/// their first `skip` bytes, one whose window is smaller sorts first (a tie says nothing).
fn key_window(key: &[u8], skip: usize) -> u128 {
    let tail = &key[skip.min(key.len())..];
    let mut window = [0u8; 16];
    let len = tail.len().min(16);
    window[..len].copy_from_slice(&tail[..len]);
    u128::from_be_bytes(window)
}

fn common_prefix_len(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Two sorted runs of disjoint keys as one.
fn merge_runs<V: Copy>(table: &PointTable<V>, a: &[KeyId], b: &[KeyId]) -> Arc<[KeyId]> {
    let mut merged = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.iter().peekable(), b.iter().peekable());
    while let (Some(x), Some(y)) = (a.peek(), b.peek()) {
        if compare_keys(table.key_of(**x), table.key_of(**y)) == Ordering::Less {
            merged.push(**x);
            a.next();
        } else {
            merged.push(**y);
            b.next();
        }
    }
    merged.extend(a);
    merged.extend(b);
    merged.into()
}

#[derive(Debug, Default)]
pub(crate) struct Memtable {
    /// Every key not under a hashed or an index prefix (and the keys of a hash table that
    /// spilled), in order.
    map: BTreeMap<MemKey, Option<ValueRef>>,
    /// The keys under the index prefixes (not under a hashed prefix), in order: a tree of
    /// the few entries alive (and, once an older layer exists, the tombstones of those
    /// cleared), whose walks stay in cache. In the big tree, among every account record and
    /// posting block, a hold's index entry cost a walk of misses to set and another to clear:
    /// 3.4 % of all CPU in `bench engine --scenario holds` (BENCHMARKS.md).
    index: BTreeMap<MemKey, Option<ValueRef>>,
    index_prefixes: Arc<Prefixes>,
    /// The transient entries ([`TRANSIENT`]: each set once, looked up once and cleared, by
    /// the hundred thousand a second, few alive at a time) and the point records
    /// ([`POINTS`]). Kept apart so that the few live outbox entries stay in cache.
    hashed: [Hashed; 2],
    values: Arena,
    /// Bytes held: keys, entry overhead, and every value ever written (an overwritten
    /// value stays in the arena until the memtable is checkpointed and dropped).
    bytes: usize,
}

impl Memtable {
    /// An empty memtable that keeps keys under `prefixes` in its hash tables and index tree.
    pub(crate) fn new(prefixes: TablePrefixes) -> Self {
        Memtable {
            index_prefixes: prefixes.index,
            hashed: [
                Hashed::new(&prefixes.transient, HASHED_ENTRIES_MAX),
                // Bounded by the memtable's own size limit.
                Hashed::new(&prefixes.points, usize::MAX),
            ],
            ..Memtable::default()
        }
    }

    /// An empty memtable with the same prefixes (the next active one).
    pub(crate) fn successor(&self) -> Self {
        Memtable::new(TablePrefixes {
            transient: Arc::clone(&self.hashed[TRANSIENT].prefixes),
            points: Arc::clone(&self.hashed[POINTS].prefixes),
            index: Arc::clone(&self.index_prefixes),
        })
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
            + self.index.len()
            + self
                .hashed
                .iter()
                .map(|hashed| hashed.table.len())
                .sum::<usize>()
    }

    /// The hash table that holds `key`, if any. A key under both kinds of prefixes belongs
    /// to the transient table, and stays in the B-tree once that table spilled: each key
    /// has one place for a memtable's life.
    fn hashed_of(&self, key: &[u8]) -> Option<usize> {
        let index = self
            .hashed
            .iter()
            .position(|hashed| hashed.prefixes.covers(key))?;
        (!self.hashed[index].spilled).then_some(index)
    }

    /// Whether `key`, in no hash table, belongs to the index tree (else to the big one). A
    /// key under a hashed prefix never does, even once its table spilled into the big tree.
    #[inline]
    fn in_index(&self, key: &[u8]) -> bool {
        self.index_prefixes.covers(key)
            && !self.hashed.iter().any(|hashed| hashed.prefixes.covers(key))
    }

    /// Whether to look for `key` (one in no hash table) in the index tree, to read or
    /// remove it, rather than the big one. While the index tree is empty the big one will
    /// do whatever the key (an index key is in neither), which spares most lookups the
    /// prefix test.
    fn look_in_index(&self, key: &[u8]) -> bool {
        !self.index.is_empty() && self.in_index(key)
    }

    /// Asks the CPU to start loading where a lookup or write of `key` begins, if `key` lives
    /// in a hash table (a B-tree walk cannot be prefetched).
    pub(crate) fn prefetch(&self, key: &[u8]) {
        if let Some(index) = self.hashed_of(key) {
            self.hashed[index].table.prefetch(key);
        }
    }

    /// Where `key` lives in this memtable (its hash, if in a hash table), for a write of it
    /// shortly after: a transaction's writes are classified and hashed once, when they are
    /// prefetched, not again when they are applied.
    fn place(&self, key: &[u8]) -> Place {
        match self.hashed_of(key) {
            Some(table) => Place::Hashed {
                table,
                hash: self.hashed[table].table.hash(key),
            },
            None if self.in_index(key) => Place::Index,
            None => Place::Map,
        }
    }

    /// A write, with where its key lives (a range clear: nowhere in particular), once its
    /// hash-table slot is on its way into the cache.
    fn plan<'a>(&self, write: Write<'a>) -> (Write<'a>, Place) {
        let place = match write {
            Write::Set(key, _) | Write::Clear(key) => self.place(key),
            Write::ClearRange(..) => Place::Map,
        };
        self.prefetch_place(place);
        (write, place)
    }

    /// [`Memtable::prefetch`] of the key at `place`.
    fn prefetch_place(&self, place: Place) {
        if let Place::Hashed { table, hash } = place {
            self.hashed[table].table.prefetch_hashed(hash);
        }
    }

    /// `place` as it stands now: a hash table that spilled since `place` was taken holds
    /// no key any more (its keys went to the big tree, and only a spill moves a key).
    fn current(&self, place: Place) -> Place {
        match place {
            Place::Hashed { table, .. } if self.hashed[table].spilled => Place::Map,
            place => place,
        }
    }

    /// Moves one hash table's entries into the B-tree (see [`HASHED_ENTRIES_MAX`]).
    fn spill(&mut self, index: usize) {
        let hashed = &mut self.hashed[index];
        hashed.spilled = true;
        let table = std::mem::take(hashed.table_mut());
        let kind = if index == TRANSIENT {
            "transient"
        } else {
            "point"
        };
        metrics::counter!("tessera_store_memtable_hashed_spills_total", "keys" => kind)
            .increment(1);
        tracing::info!(
            entries = table.len(),
            keys = kind,
            "memtable keeps these keys in its B-tree from now on"
        );
        self.map
            .extend(table.iter().map(|(key, value)| (MemKey::new(key), *value)));
    }

    fn value(&self, value: Option<ValueRef>) -> Option<&[u8]> {
        value.map(|at| self.values.get(at))
    }

    /// Every entry in key order (the checkpoint ingests them in order).
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        let hashed = gather_in_order(
            self.hashed
                .iter()
                .flat_map(|hashed| hashed.table.iter())
                .map(|(key, value)| (key, *value)),
            |_| true,
            false,
        );
        let ordered = self.map.iter().map(|(key, value)| (key.as_slice(), *value));
        let indexed = self
            .index
            .iter()
            .map(|(key, value)| (key.as_slice(), *value));
        merge_disjoint(merge_disjoint(ordered, indexed), hashed.into_iter())
            .map(|(key, value)| (key, self.value(value)))
    }

    /// The entries whose keys start with `prefix`, a transient prefix (in no particular
    /// order): in the hash table, or in the B-tree once that spilled.
    fn with_transient_prefix<'a>(
        &'a self,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> + 'a {
        let transient = &self.hashed[TRANSIENT];
        let ordered = self
            .map
            .range::<KeyBytes, _>((Bound::Included(KeyBytes::new(prefix)), Bound::Unbounded))
            .take_while(move |(key, _)| transient.spilled && key.as_slice().starts_with(prefix))
            .map(|(key, value)| (key.as_slice(), value));
        transient
            .table
            .iter()
            .filter(move |(key, _)| key.starts_with(prefix))
            .chain(ordered)
            .map(|(key, value)| (key, self.value(*value)))
    }

    pub(crate) fn lookup(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        let value = match self.hashed_of(key) {
            Some(index) => self.hashed[index].table.get(key),
            None if self.look_in_index(key) => self.index.get(KeyBytes::new(key)),
            None => self.map.get(KeyBytes::new(key)),
        };
        value.map(|value| self.value(*value))
    }

    /// Spills a hash table if a range read asked for it (see [`HASHED_RANGE_ROWS_MAX`]).
    fn spill_if_wanted(&mut self) {
        for index in [TRANSIENT, POINTS] {
            let hashed = &mut self.hashed[index];
            if *hashed.spill_wanted.get_mut() && !hashed.spilled {
                self.spill(index);
            }
        }
    }

    /// [`Memtable::insert_at`], placing `key` itself (tests).
    #[cfg(test)]
    fn insert(&mut self, key: &[u8], value: Option<&[u8]>) {
        self.insert_at(key, self.place(key), value);
    }

    /// Sets `key` (whose [`Memtable::place`] was `place`) to `value` (`None`: a tombstone).
    fn insert_at(&mut self, key: &[u8], place: Place, value: Option<&[u8]>) {
        use std::collections::btree_map;
        let place = self.current(place);
        debug_assert_eq!(place, self.place(key), "the place is this key's");
        let values = &mut self.values;
        let added = if let Place::Hashed { table: index, hash } = place {
            let hashed = &mut self.hashed[index];
            let (old, inserted) = hashed
                .table
                .upsert_hashed(key, hash, || value.map(|value| values.push(value)));
            let added = match inserted {
                Some(id) => {
                    hashed.log_insert(id);
                    new_entry_bytes(key, value)
                }
                None => overwrite_entry(values, old, value),
            };
            if hashed.table.len() > hashed.entries_max {
                self.spill(index);
            }
            added
        } else {
            let tree = if place == Place::Index {
                &mut self.index
            } else {
                &mut self.map
            };
            match tree.entry(MemKey::new(key)) {
                btree_map::Entry::Occupied(entry) => {
                    overwrite_entry(values, entry.into_mut(), value)
                }
                btree_map::Entry::Vacant(entry) => {
                    entry.insert(value.map(|value| values.push(value)));
                    new_entry_bytes(key, value)
                }
            }
        };
        self.bytes += added;
    }

    /// [`Memtable::remove_at`], placing `key` itself (tests).
    #[cfg(test)]
    fn remove(&mut self, key: &[u8]) {
        self.remove_at(key, self.place(key));
    }

    /// Removes `key` (whose [`Memtable::place`] was `place`), value or tombstone: the older
    /// layers' value of it shows again.
    fn remove_at(&mut self, key: &[u8], place: Place) {
        let place = self.current(place);
        debug_assert_eq!(place, self.place(key), "the place is this key's");
        let removed = match place {
            Place::Hashed { table, hash } => self.hashed[table]
                .table_mut()
                .remove_hashed(key, hash)
                .is_some(),
            Place::Index => self.index.remove(KeyBytes::new(key)).is_some(),
            Place::Map => self.map.remove(KeyBytes::new(key)).is_some(),
        };
        if removed {
            self.bytes -= key.len() + ENTRY_OVERHEAD_BYTES;
        }
    }

    /// The entries of `[begin, end)`: the ordered map's and, when the range reaches a
    /// hashed prefix, the hashed ones (gathered and sorted), as two sources of disjoint keys.
    fn range_sources<'a>(&'a self, begin: &[u8], end: &[u8], reverse: bool) -> Vec<Source<'a>> {
        let bounds = (
            Bound::Included(KeyBytes::new(begin)),
            Bound::Excluded(KeyBytes::new(end)),
        );
        let range = self.map.range::<KeyBytes, _>(bounds);
        let entry = move |(key, value): (&'a [u8], Option<ValueRef>)| {
            Ok((
                Cow::Borrowed(key),
                value.map(|at| Cow::Borrowed(self.values.get(at))),
            ))
        };
        let ordered = range.map(|(key, value)| (key.as_slice(), *value));
        let mut sources: Vec<Source<'a>> = Vec::with_capacity(3);
        if reverse {
            sources.push(Box::new(ordered.rev().map(entry)));
        } else {
            sources.push(Box::new(ordered.map(entry)));
        }
        if !self.index.is_empty() {
            let indexed = self
                .index
                .range::<KeyBytes, _>(bounds)
                .map(|(key, value)| (key.as_slice(), *value));
            if reverse {
                sources.push(Box::new(indexed.rev().map(entry)));
            } else {
                sources.push(Box::new(indexed.map(entry)));
            }
        }
        for (index, hashed) in self.hashed.iter().enumerate() {
            if hashed.table.is_empty() || !hashed.prefixes.iter().any(|p| overlaps(p, begin, end)) {
                continue;
            }
            let gathered = if hashed.table.len() <= SORT_CACHE_ENTRIES_MIN {
                let rows = gather_in_order(
                    hashed.table.iter().map(|(key, value)| (key, *value)),
                    |key| key >= begin && key < end,
                    reverse,
                );
                let gathered = rows.len();
                sources.push(Box::new(rows.into_iter().map(entry)));
                gathered
            } else {
                let table = &hashed.table;
                let mut gathered = 0;
                for run in hashed.runs() {
                    let before = |bound: &[u8]| {
                        run.partition_point(|id| {
                            compare_keys(table.key_of(*id), bound) == Ordering::Less
                        })
                    };
                    let rows = before(begin)..before(end);
                    gathered += rows.len();
                    let row = move |index: usize| {
                        let key = table.key_of(run[index]);
                        let value = table
                            .get(key)
                            .expect("the key order holds present keys only");
                        (key, *value)
                    };
                    if reverse {
                        sources.push(Box::new(rows.rev().map(row).map(entry)));
                    } else {
                        sources.push(Box::new(rows.map(row).map(entry)));
                    }
                }
                gathered
            };
            // Only the transient table spills for a large read: its clears drop its key
            // order, so a pile-up's rescan would sort the same legs once per page. The
            // point records keep their order across writes.
            if index == TRANSIENT && gathered > HASHED_RANGE_ROWS_MAX {
                hashed.spill_wanted.store(true, AtomicOrdering::Relaxed);
            }
        }
        sources
    }
}

/// Entries past which a range read over a memtable's hash table uses (and keeps) the
/// table's key order ([`Order`]) instead of gathering and sorting the rows in its range.
///
/// The first such read sorts the table under the tables' shared lock, so commits wait for
/// it once per memtable: 130–210 ms for a million transfer records (`STORE_BENCH_AUDIT=1
/// cargo bench -p cells --bench store`). Later pages cost under a millisecond even while
/// commits add records between them (each read sorts only the keys new since the last). The
/// order it replaced was dropped at every write, so a busy store's audit sorted once
/// (550–560 ms), asked for a spill, and waited out the move of every record into the
/// B-tree (a page of 820–860 ms).
const SORT_CACHE_ENTRIES_MIN: usize = if cfg!(test) { 8 } else { 4_096 };

/// Two iterators of disjoint keys, each in key order, merged in key order.
fn merge_disjoint<'a, V>(
    a: impl Iterator<Item = (&'a [u8], V)>,
    b: impl Iterator<Item = (&'a [u8], V)>,
) -> impl Iterator<Item = (&'a [u8], V)> {
    let mut a = a.peekable();
    let mut b = b.peekable();
    std::iter::from_fn(move || {
        let from_b = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => compare_keys(y.0, x.0) == Ordering::Less,
            (None, Some(_)) => true,
            _ => false,
        };
        if from_b {
            b.next()
        } else {
            a.next()
        }
    })
}

/// The rows of a hash map (the group overlay, a memtable's transient keys) whose keys pass
/// `keep`, gathered and sorted by key (reversed when `reverse`).
fn gather_in_order<'a, V>(
    rows: impl Iterator<Item = (&'a [u8], V)>,
    keep: impl Fn(&[u8]) -> bool,
    reverse: bool,
) -> Vec<(&'a [u8], V)> {
    let mut rows: Vec<(&'a [u8], V)> = rows.filter(|(key, _)| keep(key)).collect();
    rows.sort_unstable_by(|a, b| compare_keys(a.0, b.0));
    if reverse {
        rows.reverse();
    }
    rows
}

/// A set of key prefixes (the hashed, transient and pinned sets), tested without a call
/// per prefix: a prefix of at most eight bytes is compared as one masked word against the
/// key's first eight bytes. Every store operation asks which sets cover its key (to pick
/// its table, for the pins, for a clear), up to eight prefixes each time; with a libc
/// `memcmp` call per prefix that was about 2 % of the samples in `bench engine --scenario
/// holds` (`memcmp` fell from 6.7 to 4.5 %; what is left compares keys and values).
#[derive(Debug, Clone, Default)]
pub(crate) struct Prefixes {
    list: Vec<Vec<u8>>,
    /// Per prefix of at most eight bytes: its bytes as a big-endian word (zero-padded), the
    /// mask of its length, and its length.
    words: Vec<(u64, u64, usize)>,
    /// The longer prefixes.
    long: Vec<Vec<u8>>,
}

impl Prefixes {
    pub(crate) fn new(list: Vec<Vec<u8>>) -> Self {
        let mut words = Vec::new();
        let mut long = Vec::new();
        for prefix in &list {
            if prefix.len() <= 8 {
                let mask = match prefix.len() {
                    0 => 0,
                    len => u64::MAX << (64 - 8 * len),
                };
                words.push((head_word(prefix), mask, prefix.len()));
            } else {
                long.push(prefix.clone());
            }
        }
        Prefixes { list, words, long }
    }

    /// Whether `key` starts with one of the prefixes.
    #[inline]
    pub(crate) fn covers(&self, key: &[u8]) -> bool {
        if !self.words.is_empty() {
            let head = head_word(key);
            let short = self
                .words
                .iter()
                .any(|&(word, mask, len)| key.len() >= len && head & mask == word);
            if short {
                return true;
            }
        }
        self.long.iter().any(|prefix| key.starts_with(prefix))
    }

    pub(crate) fn iter(&self) -> std::slice::Iter<'_, Vec<u8>> {
        self.list.iter()
    }
}

/// The first eight bytes of `bytes` as a big-endian word, zero-padded when shorter.
#[inline]
fn head_word(bytes: &[u8]) -> u64 {
    match bytes.first_chunk::<8>() {
        Some(head) => u64::from_be_bytes(*head),
        // A key or prefix shorter than a word: the top half of its zero-padded window.
        None => (key_window(bytes, 0) >> 64) as u64,
    }
}

/// Whether keys starting with `prefix` can fall in `[begin, end)`.
/// (An over-approximation is harmless: the gathered rows are filtered by the range.)
fn overlaps(prefix: &[u8], begin: &[u8], end: &[u8]) -> bool {
    // Keys under `prefix` lie in `[prefix, prefix_end(prefix))`; a prefix of 0xff bytes
    // only has no such end.
    prefix < end
        && (prefix.iter().all(|byte| *byte == 0xff)
            || begin < crate::store::prefix_end(prefix).as_slice())
}

/// Most transient keys [`Transient`] tracks in the checkpoint; beyond it the store stops
/// tracking them (until it is reopened) and every clear of a transient key leaves a
/// tombstone, as any other clear does. Live transient entries are few (an outbox holds the
/// credit legs in flight), so this is only reached when legs pile up, e.g. for a DC that is
/// down.
pub(crate) const TRANSIENT_TRACKED_MAX: usize = 262_144;

/// Keys under the transient prefixes ([`super::EmbeddedOptions::transient_prefixes`]): set
/// once and cleared soon after. Reported as `tessera_store_transient_keys_in_checkpoint`
/// (gauge) and `tessera_store_transient_tracking_stopped_total`. A clear of such a key that no older layer holds removes it
/// from the active memtable instead of leaving a tombstone, so short-lived entries leave no
/// trace in memtables, checkpoints or range reads once cleared.
#[derive(Debug, Default)]
pub(crate) struct Transient {
    prefixes: Prefixes,
    /// The transient keys the checkpoint holds a value for; `None` when not tracked (more
    /// than [`TRANSIENT_TRACKED_MAX`]).
    in_checkpoint: Option<HashSet<Vec<u8>, foldhash::fast::RandomState>>,
}

impl Transient {
    /// Reads the transient keys the checkpoint holds.
    pub(crate) fn load(
        prefixes: Vec<Vec<u8>>,
        checkpoint: &fjall::Keyspace,
    ) -> Result<Transient, StoreError> {
        let mut keys = HashSet::default();
        for prefix in &prefixes {
            for guard in checkpoint.prefix(prefix) {
                let key = guard.key().map_err(fjall_error)?;
                if keys.len() >= TRANSIENT_TRACKED_MAX {
                    metrics::counter!("tessera_store_transient_tracking_stopped_total")
                        .increment(1);
                    tracing::warn!(
                        max = TRANSIENT_TRACKED_MAX,
                        "checkpoint holds too many transient keys to track; their clears leave tombstones"
                    );
                    return Ok(Transient {
                        prefixes: Prefixes::new(prefixes),
                        in_checkpoint: None,
                    });
                }
                keys.insert(key.to_vec());
            }
        }
        metrics::gauge!("tessera_store_transient_keys_in_checkpoint").set(keys.len() as f64);
        Ok(Transient {
            prefixes: Prefixes::new(prefixes),
            in_checkpoint: Some(keys),
        })
    }

    fn covers(&self, key: &[u8]) -> bool {
        self.prefixes.covers(key)
    }

    /// The checkpoint now also holds `memtable`: its transient values are in it, and its
    /// transient tombstones took theirs out. Computed from the immutable frozen memtable
    /// (outside the tables' lock); see [`Tables::checkpointed`].
    pub(crate) fn changes(&self, memtable: &Memtable) -> TransientChanges {
        let mut changes = TransientChanges::default();
        if self.in_checkpoint.is_none() {
            return changes;
        }
        for prefix in self.prefixes.iter() {
            for (key, value) in memtable.with_transient_prefix(prefix) {
                match value {
                    Some(_) => changes.added.push(key.to_vec()),
                    None => changes.removed.push(key.to_vec()),
                }
            }
        }
        changes
    }
}

/// Most keys [`Pinned`] keeps (about 13 MB of small records); past it the store stops
/// pinning (until it is reopened) and reads of those keys go through the layers like any
/// other. Tessera pins at most one key per slot (65,536) plus the whitelist (at most
/// [`crate::ownership::WHITELIST_USERS_MAX`] users).
pub(crate) const PINNED_KEYS_MAX: usize = if cfg!(test) { 16 } else { 131_072 };

/// Every visible key under the pinned prefixes ([`super::EmbeddedOptions::pinned_prefixes`])
/// with its value: loaded from the checkpoint at open, then changed by every applied write
/// (the log's replay included), so it always equals what the layers below the group overlay
/// say for those keys. A point read of a pinned key (present or absent) is answered here.
/// Reported as `tessera_store_pinned_keys` (gauge) and `tessera_store_pinning_stopped_total`.
#[derive(Debug, Default)]
pub(crate) struct Pinned {
    prefixes: Prefixes,
    rows: HashMap<Vec<u8>, Vec<u8>, foldhash::fast::RandomState>,
}

impl Pinned {
    /// Reads the pinned keys the checkpoint holds; `None` when nothing is pinned (no
    /// prefixes, or more than [`PINNED_KEYS_MAX`] keys).
    pub(crate) fn load(
        prefixes: Vec<Vec<u8>>,
        checkpoint: &fjall::Keyspace,
    ) -> Result<Option<Pinned>, StoreError> {
        if prefixes.is_empty() {
            return Ok(None);
        }
        let mut rows = HashMap::default();
        for prefix in &prefixes {
            for guard in checkpoint.prefix(prefix) {
                let (key, value) = guard.into_inner().map_err(fjall_error)?;
                rows.insert(key.to_vec(), value.to_vec());
                if rows.len() > PINNED_KEYS_MAX {
                    stop_pinning();
                    return Ok(None);
                }
            }
        }
        metrics::gauge!("tessera_store_pinned_keys").set(rows.len() as f64);
        Ok(Some(Pinned {
            prefixes: Prefixes::new(prefixes),
            rows,
        }))
    }

    fn covers(&self, key: &[u8]) -> bool {
        self.prefixes.covers(key)
    }
}

fn stop_pinning() {
    metrics::counter!("tessera_store_pinning_stopped_total").increment(1);
    metrics::gauge!("tessera_store_pinned_keys").set(0.0);
    tracing::warn!(
        max = PINNED_KEYS_MAX,
        "more pinned keys than the store keeps in memory; their reads walk the layers until it reopens"
    );
}

/// See [`Transient::changes`].
#[derive(Debug, Default)]
pub(crate) struct TransientChanges {
    added: Vec<Vec<u8>>,
    removed: Vec<Vec<u8>>,
}

/// The memtables behind the store's lock.
#[derive(Debug)]
pub(crate) struct Tables {
    pub(crate) active: Memtable,
    /// The memtable being checkpointed, if any (at most one).
    pub(crate) frozen: Option<Arc<Memtable>>,
    /// True until the first checkpoint: reads skip fjall and clears need no tombstones.
    pub(crate) checkpoint_empty: bool,
    pub(crate) transient: Transient,
    /// The pinned keys; `None` when nothing is pinned.
    pinned: Option<Pinned>,
}

impl Tables {
    pub(crate) fn new(
        checkpoint_empty: bool,
        transient: Transient,
        pinned: Option<Pinned>,
        point_prefixes: Vec<Vec<u8>>,
        index_prefixes: Vec<Vec<u8>>,
    ) -> Self {
        let hashed = TablePrefixes {
            transient: Arc::new(transient.prefixes.clone()),
            points: Arc::new(Prefixes::new(point_prefixes)),
            index: Arc::new(Prefixes::new(index_prefixes)),
        };
        Tables {
            active: Memtable::new(hashed),
            frozen: None,
            checkpoint_empty,
            transient,
            pinned,
        }
    }

    /// Keeps the pinned keys in step with a write of `key` (`None`: a clear).
    fn pin(&mut self, key: &[u8], value: Option<&[u8]>) {
        let Some(pinned) = &mut self.pinned else {
            return;
        };
        if !pinned.covers(key) {
            return;
        }
        match value {
            Some(value) => {
                pinned.rows.insert(key.to_vec(), value.to_vec());
            }
            None => {
                pinned.rows.remove(key);
            }
        }
        if pinned.rows.len() > PINNED_KEYS_MAX {
            self.pinned = None;
            stop_pinning();
        } else {
            metrics::gauge!("tessera_store_pinned_keys").set(pinned.rows.len() as f64);
        }
    }

    /// The frozen memtable is in the checkpoint: drops it and notes its transient keys.
    pub(crate) fn checkpointed(&mut self, changes: TransientChanges) {
        self.checkpoint_empty = false;
        self.frozen = None;
        let Some(keys) = &mut self.transient.in_checkpoint else {
            return;
        };
        for key in changes.removed {
            keys.remove(&key);
        }
        keys.extend(changes.added);
        metrics::gauge!("tessera_store_transient_keys_in_checkpoint").set(keys.len() as f64);
        if keys.len() > TRANSIENT_TRACKED_MAX {
            metrics::counter!("tessera_store_transient_tracking_stopped_total").increment(1);
            tracing::warn!(
                max = TRANSIENT_TRACKED_MAX,
                "too many transient keys in the checkpoint to track; their clears leave tombstones until the store reopens"
            );
            self.transient.in_checkpoint = None;
        }
    }

    pub(crate) fn view<'a>(
        &'a self,
        checkpoint: &'a fjall::Keyspace,
        overlay: Option<&'a Overlay<'a>>,
    ) -> View<'a> {
        View {
            overlay,
            pinned: self.pinned.as_ref(),
            active: &self.active,
            frozen: self.frozen.as_deref(),
            checkpoint: (!self.checkpoint_empty).then_some(checkpoint),
        }
    }

    fn older_layers_empty(&self) -> bool {
        self.frozen.is_none() && self.checkpoint_empty
    }

    /// Applies one committed transaction's writes, in order, to the active memtable.
    pub(crate) fn apply(
        &mut self,
        checkpoint: &fjall::Keyspace,
        writes: &WriteBatch,
    ) -> Result<(), StoreError> {
        self.active.spill_if_wanted();
        // The writes a few ahead are parsed, placed and their hash-table slots loaded while
        // this one applies: each write is parsed, classified and hashed once.
        let mut writes = writes.iter();
        let mut ahead: [Option<(Write<'_>, Place)>; PREFETCH_AHEAD] = [None; PREFETCH_AHEAD];
        for slot in &mut ahead {
            *slot = writes.next().map(|write| self.active.plan(write));
        }
        let mut next = 0;
        while let Some((write, place)) = ahead[next].take() {
            ahead[next] = writes.next().map(|write| self.active.plan(write));
            next = (next + 1) % PREFETCH_AHEAD;
            match write {
                Write::Set(key, value) => {
                    self.pin(key, Some(value));
                    self.active.insert_at(key, place, Some(value));
                }
                Write::Clear(key) => self.clear(key, place),
                Write::ClearRange(begin, end) => self.clear_range(checkpoint, begin, end)?,
            }
        }
        Ok(())
    }

    /// Clears `key`, whose place in the active memtable is `place`.
    fn clear(&mut self, key: &[u8], place: Place) {
        self.pin(key, None);
        if self.older_layers_empty() || self.only_active_may_hold(key) {
            self.active.remove_at(key, place);
        } else {
            self.active.insert_at(key, place, None);
        }
    }

    /// Whether `key` is transient and neither the frozen memtable nor the checkpoint holds
    /// it (so a clear needs no tombstone to hide an older value).
    fn only_active_may_hold(&self, key: &[u8]) -> bool {
        self.transient.covers(key)
            && self
                .transient
                .in_checkpoint
                .as_ref()
                .is_some_and(|keys| !keys.contains(key))
            && self
                .frozen
                .as_ref()
                .is_none_or(|frozen| frozen.lookup(key).is_none())
    }

    /// Turns a range clear into point clears of the keys visible in the range, so that the
    /// checkpoint only ever holds point tombstones.
    fn clear_range(
        &mut self,
        checkpoint: &fjall::Keyspace,
        begin: &[u8],
        end: &[u8],
    ) -> Result<(), StoreError> {
        if begin >= end {
            return Ok(());
        }
        let visible: Vec<Vec<u8>> = self
            .view(checkpoint, None)
            .range(begin, end, false)
            .map(|row| row.map(|(key, _)| key.into_owned()))
            .collect::<Result<_, _>>()?;
        for key in visible {
            let place = self.active.place(&key);
            self.clear(&key, place);
        }
        Ok(())
    }
}

type Source<'a> = Box<dyn Iterator<Item = Result<Entry<'a>, StoreError>> + 'a>;

/// One consistent state of every layer, newest first.
pub(crate) struct View<'a> {
    overlay: Option<&'a Overlay<'a>>,
    pinned: Option<&'a Pinned>,
    active: &'a Memtable,
    frozen: Option<&'a Memtable>,
    checkpoint: Option<&'a fjall::Keyspace>,
}

impl<'a> View<'a> {
    /// Starts loading where [`View::get`] of `key` will look in the active memtable.
    pub(crate) fn prefetch(&self, key: &[u8]) {
        self.active.prefetch(key);
    }

    /// The visible value of `key`.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Cow<'a, [u8]>>, StoreError> {
        if let Some(value) = self.overlay.and_then(|overlay| overlay.get(key)) {
            return Ok(value.map(Cow::Borrowed));
        }
        if let Some(pinned) = self.pinned.filter(|pinned| pinned.covers(key)) {
            return Ok(pinned
                .rows
                .get(key)
                .map(|value| Cow::Borrowed(value.as_slice())));
        }
        for memtable in std::iter::once(self.active).chain(self.frozen) {
            if let Some(value) = memtable.lookup(key) {
                return Ok(value.map(Cow::Borrowed));
            }
        }
        match self.checkpoint {
            None => Ok(None),
            Some(keyspace) => {
                let value = keyspace.get(key).map_err(fjall_error)?;
                Ok(value.map(|value| Cow::Owned(value.to_vec())))
            }
        }
    }

    /// The visible rows of `[begin, end)` in key order (or reversed), lazily merged.
    pub(crate) fn range(&self, begin: &[u8], end: &[u8], reverse: bool) -> MergeIter<'a> {
        let mut sources: Vec<Source<'a>> = Vec::with_capacity(4);
        if begin < end {
            if let Some(overlay) = self.overlay {
                let rows = gather_in_order(
                    overlay.iter().map(|(key, value)| (*key, *value)),
                    |key| key >= begin && key < end,
                    reverse,
                );
                let rows = rows
                    .into_iter()
                    .map(|(key, value)| Ok((Cow::Borrowed(key), value.map(Cow::Borrowed))));
                sources.push(Box::new(rows));
            }
            sources.extend(self.active.range_sources(begin, end, reverse));
            if let Some(frozen) = self.frozen {
                sources.extend(frozen.range_sources(begin, end, reverse));
            }
            if let Some(keyspace) = self.checkpoint {
                sources.push(checkpoint_source(keyspace, begin, end, reverse));
            }
        }
        MergeIter::new(sources, reverse)
    }
}

fn checkpoint_source<'a>(
    keyspace: &'a fjall::Keyspace,
    begin: &[u8],
    end: &[u8],
    reverse: bool,
) -> Source<'a> {
    let range = keyspace.range::<&[u8], _>((Bound::Included(begin), Bound::Excluded(end)));
    let entry = |guard: fjall::Guard| {
        let (key, value) = guard.into_inner().map_err(fjall_error)?;
        Ok((Cow::Owned(key.to_vec()), Some(Cow::Owned(value.to_vec()))))
    };
    if reverse {
        Box::new(range.rev().map(entry))
    } else {
        Box::new(range.map(entry))
    }
}

/// Merges sources ordered newest first: for equal keys the newest wins; tombstones hide.
pub(crate) struct MergeIter<'a> {
    sources: Vec<Source<'a>>,
    heads: Vec<Option<Entry<'a>>>,
    exhausted: Vec<bool>,
    reverse: bool,
}

impl<'a> MergeIter<'a> {
    fn new(sources: Vec<Source<'a>>, reverse: bool) -> Self {
        let count = sources.len();
        MergeIter {
            sources,
            heads: (0..count).map(|_| None).collect(),
            exhausted: vec![false; count],
            reverse,
        }
    }

    fn fill_heads(&mut self) -> Result<(), StoreError> {
        for index in 0..self.sources.len() {
            if self.heads[index].is_none() && !self.exhausted[index] {
                match self.sources[index].next() {
                    None => self.exhausted[index] = true,
                    Some(entry) => self.heads[index] = Some(entry?),
                }
            }
        }
        Ok(())
    }

    /// The index of the head that comes first (the newest source on ties).
    fn first_head(&self) -> Option<usize> {
        let mut best: Option<usize> = None;
        for (index, head) in self.heads.iter().enumerate() {
            let Some((key, _)) = head else { continue };
            let better = match best.and_then(|best| self.heads[best].as_ref()) {
                None => true,
                Some((best_key, _)) => {
                    if self.reverse {
                        key > best_key
                    } else {
                        key < best_key
                    }
                }
            };
            if better {
                best = Some(index);
            }
        }
        best
    }
}

impl<'a> Iterator for MergeIter<'a> {
    type Item = Result<Row<'a>, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Err(error) = self.fill_heads() {
                self.exhausted.iter_mut().for_each(|done| *done = true);
                self.heads.iter_mut().for_each(|head| *head = None);
                return Some(Err(error));
            }
            let best = self.first_head()?;
            let (key, value) = self.heads[best].take()?;
            for head in self.heads.iter_mut() {
                if head.as_ref().is_some_and(|(other, _)| *other == key) {
                    *head = None;
                }
            }
            if let Some(value) = value {
                return Some(Ok((key, value)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{compare_keys, Memtable, PointTable, Prefixes};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// Byte strings of 0–12 bytes over a small alphabet (so that prefixes often match).
    fn short_bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![Just(0u8), Just(1), Just(0x15), Just(0xff)],
            0..12,
        )
    }

    /// A memtable whose hash tables hold the keys starting with `h` (transient) and `p`
    /// (point records), and whose index tree holds those starting with `i` (`h` is an index
    /// prefix too: its keys stay in their hash table).
    fn prefixes() -> super::TablePrefixes {
        super::TablePrefixes {
            transient: std::sync::Arc::new(Prefixes::new(vec![b"h".to_vec()])),
            points: std::sync::Arc::new(Prefixes::new(vec![b"p".to_vec()])),
            index: std::sync::Arc::new(Prefixes::new(vec![b"i".to_vec(), b"h".to_vec()])),
        }
    }

    proptest! {
        /// A prefix set covers exactly the keys that start with one of its prefixes
        /// (short and long prefixes, the empty prefix, keys shorter than a prefix).
        #[test]
        fn prefixes_cover_what_starts_with_says(
            list in proptest::collection::vec(short_bytes(), 0..5),
            keys in proptest::collection::vec(short_bytes(), 1..40),
        ) {
            let prefixes = Prefixes::new(list.clone());
            for key in &keys {
                let expected = list.iter().any(|prefix| key.starts_with(prefix));
                prop_assert_eq!(prefixes.covers(key), expected, "key {:?}", key);
            }
            for prefix in &list {
                prop_assert!(prefixes.covers(prefix));
            }
        }

        /// Overwrites in place (a value no longer than the one it replaces) and appended
        /// ones, and removals, read back exactly as a model map says, in both B-trees and
        /// both hash tables, through lookups, the ordered entries and range reads; the index
        /// tree holds exactly the keys under an index prefix and no hashed one.
        #[test]
        fn overwrites_read_back_as_written(
            ops in proptest::collection::vec(
                (
                    0usize..4,
                    0u8..6,
                    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
                ),
                1..200,
            ),
        ) {
            let mut memtable = Memtable::new(prefixes());
            let mut model: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
            for (kind, index, value) in ops {
                let key = vec![b"hpoi"[kind], index];
                if index == 5 {
                    // Some removals too.
                    memtable.remove(&key);
                    model.remove(&key);
                } else {
                    memtable.insert(&key, value.as_deref());
                    model.insert(key, value);
                }
                for (key, value) in &model {
                    prop_assert_eq!(memtable.lookup(key), Some(value.as_deref()));
                }
                prop_assert_eq!(
                    memtable.index.len(),
                    model.keys().filter(|key| key[0] == b'i').count()
                );
                prop_assert_eq!(memtable.len(), model.len());
                for (begin, end) in [(&b"a"[..], &b"z"[..]), (b"i", b"j"), (b"h\x02", b"p\x03")] {
                    for reverse in [false, true] {
                        // A merged read drops tombstones.
                        let mut rows: Vec<(Vec<u8>, Vec<u8>)> = super::MergeIter::new(
                            memtable.range_sources(begin, end, reverse),
                            reverse,
                        )
                        .map(|row| {
                            let (key, value) = row.expect("memory rows");
                            (key.into_owned(), value.into_owned())
                        })
                        .collect();
                        if reverse {
                            rows.reverse();
                        }
                        let expected: Vec<(Vec<u8>, Vec<u8>)> = model
                            .range(begin.to_vec()..end.to_vec())
                            .filter_map(|(key, value)| Some((key.clone(), value.clone()?)))
                            .collect();
                        prop_assert_eq!(rows, expected);
                    }
                }
                let entries: Vec<(Vec<u8>, Option<Vec<u8>>)> = memtable
                    .entries()
                    .map(|(key, value)| (key.to_vec(), value.map(<[u8]>::to_vec)))
                    .collect();
                let expected: Vec<(Vec<u8>, Option<Vec<u8>>)> = model.clone().into_iter().collect();
                prop_assert_eq!(entries, expected);
            }
            let held: usize = model
                .iter()
                .map(|(key, value)| key.len() + super::ENTRY_OVERHEAD_BYTES + value.as_ref().map_or(0, Vec::len))
                .sum();
            prop_assert!(memtable.bytes() >= held, "every live byte is counted");
        }
    }

    /// A range read that gathers more than `HASHED_RANGE_ROWS_MAX` rows from the transient
    /// table asks for a spill, the next write spills that table (only), and every row reads
    /// back the same (fails if range reads never spill: a pile-up would then sort the same
    /// rows once per page).
    #[test]
    fn a_large_transient_range_read_spills_that_table_at_the_next_write() {
        let (index, prefix) = (super::TRANSIENT, b'h');
        let other = 1 - index;
        let mut memtable = Memtable::new(prefixes());
        let rows = super::HASHED_RANGE_ROWS_MAX + 1;
        assert!(
            rows <= super::HASHED_ENTRIES_MAX,
            "the count alone does not spill"
        );
        for n in 0..rows as u8 {
            memtable.insert(&[prefix, n], Some(&[n]));
        }
        memtable.insert(b"o", Some(b"ordered"));
        memtable.insert(&[b"hp"[other], 0], Some(b"other table"));
        let read = |memtable: &Memtable| -> Vec<(Vec<u8>, Vec<u8>)> {
            let mut rows = Vec::new();
            for source in memtable.range_sources(b"a", b"z", false) {
                for entry in source {
                    let (key, value) = entry.expect("memory");
                    rows.push((key.into_owned(), value.expect("no tombstones").into_owned()));
                }
            }
            rows.sort();
            rows
        };
        let before = read(&memtable);
        assert_eq!(before.len(), rows + 2);
        assert!(
            !memtable.hashed[index].spilled,
            "a read alone changes nothing"
        );
        memtable.spill_if_wanted();
        assert!(memtable.hashed[index].spilled, "the read asked for a spill");
        assert!(memtable.hashed[index].table.is_empty());
        assert!(!memtable.hashed[other].spilled, "the other table stays");
        assert_eq!(memtable.hashed[other].table.len(), 1);
        assert_eq!(read(&memtable), before);
        assert_eq!(memtable.lookup(&[prefix, 0]), Some(Some(&[0u8][..])));
        memtable.insert(&[prefix, 0], Some(b"again"));
        assert!(
            memtable.hashed[index].table.is_empty(),
            "later writes go to the B-tree"
        );
        assert_eq!(memtable.lookup(&[prefix, 0]), Some(Some(&b"again"[..])));
    }

    /// The point table keeps its keys after a large range read, and its key order outlives
    /// inserts and overwrites (new keys join as a run at the next read); a removal drops it
    /// (fails if a write to the point table sorts every key again, or if a read asks it to
    /// spill).
    #[test]
    fn the_point_tables_key_order_outlives_inserts_but_not_removals() {
        let mut memtable = Memtable::new(prefixes());
        let rows = (super::HASHED_RANGE_ROWS_MAX + 1).max(super::SORT_CACHE_ENTRIES_MIN + 1);
        for n in 0..rows as u8 {
            memtable.insert(&[b'p', 2 * n], Some(&[n]));
        }
        let read = |memtable: &Memtable| -> Vec<Vec<u8>> {
            let mut keys = Vec::new();
            for source in memtable.range_sources(b"p", b"q", false) {
                for entry in source {
                    keys.push(entry.expect("memory").0.into_owned());
                }
            }
            keys.sort();
            keys
        };
        assert_eq!(read(&memtable).len(), rows);
        memtable.spill_if_wanted();
        let points = &memtable.hashed[super::POINTS];
        assert!(
            !points.spilled,
            "a large read leaves the point table in place"
        );
        let runs = |memtable: &Memtable| {
            let order = memtable.hashed[super::POINTS].order.lock();
            order
                .as_ref()
                .map(|order| order.runs.iter().map(|run| run.len()).collect::<Vec<_>>())
        };
        assert_eq!(runs(&memtable), Some(vec![rows]));
        memtable.insert(&[b'p', 1], Some(b"new"));
        memtable.insert(&[b'p', 0], Some(b"overwritten"));
        assert_eq!(runs(&memtable), Some(vec![rows]), "writes keep the order");
        let keys = read(&memtable);
        assert_eq!(keys.len(), rows + 1);
        assert_eq!(keys[1], vec![b'p', 1], "the new key reads in its place");
        assert_eq!(
            runs(&memtable),
            Some(vec![rows, 1]),
            "it joined as a run of its own"
        );
        memtable.remove(&[b'p', 1]);
        assert_eq!(runs(&memtable), None, "a removal drops the order");
        assert_eq!(read(&memtable).len(), rows);
    }

    proptest! {
        /// Sorting key ids by their 16-byte windows (past the prefix all keys share) and
        /// then by their bytes orders them exactly as their bytes do, for keys with long
        /// shared prefixes, zero bytes and prefixes of each other.
        #[test]
        fn key_ids_sort_in_byte_order(
            shared in proptest::collection::vec(any::<u8>(), 0..24),
            tails in proptest::collection::hash_set(
                proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), any::<u8>()], 0..40),
                0..60,
            ),
        ) {
            let mut table: PointTable<u8> = PointTable::default();
            let mut expected: Vec<Vec<u8>> =
                tails.into_iter().map(|tail| [shared.as_slice(), &tail].concat()).collect();
            for key in &expected {
                table.upsert(key, || 0);
            }
            let sorted = super::sort_keys(&table, table.key_ids());
            let got: Vec<Vec<u8>> = sorted.iter().map(|id| table.key_of(*id).to_vec()).collect();
            expected.sort();
            prop_assert_eq!(&got, &expected);
            let (odd, even): (Vec<_>, Vec<_>) =
                got.iter().enumerate().partition(|(i, _)| i % 2 == 1);
            let ids = |keys: Vec<(usize, &Vec<u8>)>| -> Vec<_> {
                keys.into_iter().map(|(_, key)| table.key_id(key).expect("present")).collect()
            };
            let merged = super::merge_runs(&table, &ids(odd), &ids(even));
            let merged: Vec<Vec<u8>> = merged.iter().map(|id| table.key_of(*id).to_vec()).collect();
            prop_assert_eq!(merged, expected);
        }
    }

    proptest! {
        /// Range reads over a hash table large enough for its cached sorted order (more than
        /// `SORT_CACHE_ENTRIES_MIN` entries, 8 in tests) return the model's rows in order,
        /// forwards and backwards, tombstones included, and see every write made since the
        /// order was cached (fails if a write leaves a stale order behind).
        #[test]
        fn ranges_over_a_large_hash_table_follow_writes(
            rounds in proptest::collection::vec(
                (
                    proptest::collection::vec(
                        (0u8..40, proptest::option::of(0u8..255), any::<bool>()),
                        1..12,
                    ),
                    0u8..40,
                    0u8..41,
                    any::<bool>(),
                ),
                1..12,
            ),
        ) {
            let mut memtable = Memtable::new(prefixes());
            let mut model: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
            for n in 0..20u8 {
                memtable.insert(&[b'p', n], Some(&[n]));
                model.insert(vec![b'p', n], Some(vec![n]));
            }
            for (writes, from, to, reverse) in rounds {
                for (key, value, remove) in writes {
                    let key = vec![b'p', key];
                    if remove {
                        memtable.remove(&key);
                        model.remove(&key);
                    } else {
                        let value = value.map(|value| vec![value]);
                        memtable.insert(&key, value.as_deref());
                        model.insert(key, value);
                    }
                }
                let (begin, end) = (vec![b'p', from], vec![b'p', to]);
                for _ in 0..2 {
                    // Each source is in order; together they hold each key once.
                    let mut got = Vec::new();
                    for source in memtable.range_sources(&begin, &end, reverse) {
                        let rows: Vec<_> = source
                            .map(|entry| {
                                let (key, value) = entry.expect("memory");
                                (key.into_owned(), value.map(|value| value.into_owned()))
                            })
                            .collect();
                        let keys: Vec<&Vec<u8>> = rows.iter().map(|(key, _)| key).collect();
                        let mut ordered = keys.clone();
                        ordered.sort();
                        if reverse {
                            ordered.reverse();
                        }
                        prop_assert_eq!(keys, ordered, "a source is in order");
                        got.extend(rows);
                    }
                    got.sort();
                    if reverse {
                        got.reverse();
                    }
                    let mut expected: Vec<(Vec<u8>, Option<Vec<u8>>)> = model
                        .iter()
                        .filter(|(key, _)| **key >= begin && **key < end)
                        .map(|(key, value)| (key.clone(), value.clone()))
                        .collect();
                    if reverse {
                        expected.reverse();
                    }
                    prop_assert_eq!(got, expected);
                }
            }
        }
    }

    proptest! {
        /// The word-at-a-time comparison orders keys exactly as `[u8]` does, shared
        /// prefixes, tails of every length and zero bytes included.
        #[test]
        fn compare_keys_is_byte_order(
            prefix in proptest::collection::vec(any::<u8>(), 0..24),
            a in proptest::collection::vec(prop_oneof![Just(0u8), Just(255u8), any::<u8>()], 0..12),
            b in proptest::collection::vec(prop_oneof![Just(0u8), Just(255u8), any::<u8>()], 0..12),
        ) {
            let a = [prefix.as_slice(), &a].concat();
            let b = [prefix.as_slice(), &b].concat();
            prop_assert_eq!(compare_keys(&a, &b), a.as_slice().cmp(b.as_slice()));
            prop_assert_eq!(compare_keys(&b, &a), b.as_slice().cmp(a.as_slice()));
            prop_assert_eq!(compare_keys(&a, &a), std::cmp::Ordering::Equal);
        }
    }
}
