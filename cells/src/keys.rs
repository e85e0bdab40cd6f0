//! The key schema: every key Tessera writes, encoded with the FoundationDB tuple layer.
//!
//! Owns the layout of the keyspace; nothing else builds keys by hand. Every key starts
//! with the keyspace tag ([`Keyspace::Real`] or [`Keyspace::Shadow`]) so that shadow
//! (load-test) traffic can never read or write a real balance, then a record-kind tag.
//!
//! | key | value |
//! | --- | --- |
//! | `(space, 1, account)` | [`crate::records::AccountRecord`] |
//! | `(space, 2, account, seq)` | [`crate::records::PostingRecord`] (immutable, appended) |
//! | `(space, 3, transfer)` | [`crate::records::TransferRecord`] (idempotency + outcome) |
//! | `(space, 4, hold)` | [`crate::records::HoldRecord`] |
//! | `(space, 5, account, hold)` | empty: index of the account's active holds |
//! | `(space, 6, slot, kind, id)` | [`crate::records::OutboxRecord`]: a pending credit leg of a payer in `slot` |
//!
//! The control space (tag 2) is shared by both keyspaces: ownership applies to a user's
//! real and shadow traffic alike.
//!
//! | key | value |
//! | --- | --- |
//! | `(2, 0)` | ownership table version, `u64` big-endian; bumped by every change |
//! | `(2, 1, slot)` | [`crate::ownership::Owner`] of the slot (the fence); absent: unowned |
//! | `(2, 2, user)` | [`crate::ownership::Owner`] of a whitelisted user (the fence) |
//! | `(2, 3, version)` | [`crate::ownership::ChangeRecord`]: who changed what, when, why |
//! | `(2, 4, dc)` | [`crate::ownership::Lease`] of a DC node |
//! | `(2, 5, name)` | [`crate::shift::ShiftPlan`]: a traffic shift plan and its stage |

use foundationdb_tuple::TuplePack;

/// Packs a tuple into an exact-size key.
fn pack<T: TuplePack>(tuple: &T) -> Vec<u8> {
    exact(|out| pack_into(tuple, out))
}

/// The key `write` puts into a buffer, as an exact-size allocation (through a reused
/// buffer: keys are written by the million, and kept by the store's log and memtable).
fn exact(write: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with_borrow_mut(|scratch| {
        write(scratch);
        scratch.as_slice().to_vec()
    })
}

/// Packs a tuple into `out`, replacing what it held (for keys a caller copies and drops).
fn pack_into<T: TuplePack>(tuple: &T, out: &mut Vec<u8>) {
    out.clear();
    foundationdb_tuple::pack_into(tuple, out);
}

use crate::ids::{AccountId, DcId, HoldId, TransferId, UserId};
use crate::records::OutboxKind;
use crate::slot::Slot;
use crate::store::prefix_end;

const ACCOUNT: i64 = 1;
const POSTING: i64 = 2;
const TRANSFER: i64 = 3;
const HOLD: i64 = 4;
const ACCOUNT_HOLD: i64 = 5;
const OUTBOX: i64 = 6;

/// Record kinds of a keyspace, indexed by their tag ([`ACCOUNT`] to [`OUTBOX`]; 0 unused).
const RECORD_KINDS: usize = OUTBOX as usize + 1;

/// The packed `(space, kind)` heads of the record keys, made once by the tuple layer.
///
/// A top-level tuple packs as its elements' encodings one after the other, so a record's
/// key is its head followed by the packed rest: `(space, kind, a, b)` = `(space, kind)` ++
/// `(a, b)` (`record_heads_and_rests_pack_as_whole_tuples` checks every kind). Written by
/// the million (a transfer's record, each commit's balance record and statement block, a
/// credit leg's outbox entry), the two integers were two more calls into the tuple layer
/// per key, inlined or not at the compiler's whim (in one build they were not; this form
/// runs 2.4 % fewer instructions per `bench engine` uniform transfer than that build).
static RECORD_HEADS: std::sync::LazyLock<[[Vec<u8>; RECORD_KINDS]; 2]> =
    std::sync::LazyLock::new(|| {
        [Keyspace::Real, Keyspace::Shadow]
            // Not through `pack`: this may run inside `exact`, which holds its buffer.
            .map(|space| {
                std::array::from_fn(|kind| foundationdb_tuple::pack(&(space.tag(), kind as i64)))
            })
    });

const CONTROL: i64 = 2;
const TABLE_VERSION: i64 = 0;
const SLOT_OWNER: i64 = 1;
const USER_OWNER: i64 = 2;
const OWNERSHIP_CHANGE: i64 = 3;
const LEASE: i64 = 4;
const SHIFT_PLAN: i64 = 5;

/// Which keyspace a key lives in: real money, or isolated shadow (test) traffic.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum Keyspace {
    #[default]
    Real,
    Shadow,
}

impl Keyspace {
    fn tag(self) -> i64 {
        match self {
            Keyspace::Real => 0,
            Keyspace::Shadow => 1,
        }
    }

    /// Writes into `out` (replacing what it held) the key of a record of `kind`: the packed
    /// `(space, kind)` head, then `rest` packed (see [`RECORD_HEADS`]).
    fn record_into<T: TuplePack>(self, kind: i64, rest: &T, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&RECORD_HEADS[self.tag() as usize][kind as usize]);
        foundationdb_tuple::pack_into(rest, out);
    }

    pub fn account(self, account: &AccountId) -> Vec<u8> {
        exact(|out| self.account_into(account, out))
    }

    /// [`Keyspace::account`], written into `out`.
    pub fn account_into(self, account: &AccountId, out: &mut Vec<u8>) {
        self.record_into(ACCOUNT, &(account.as_str(),), out)
    }

    /// Prefix of every account record (for audits).
    pub fn accounts_prefix(self) -> Vec<u8> {
        pack(&(self.tag(), ACCOUNT))
    }

    /// The key of the statement block ([`crate::records::PostingBlock`]) whose first
    /// posting has sequence number `seq`.
    pub fn posting(self, account: &AccountId, seq: u64) -> Vec<u8> {
        exact(|out| self.posting_into(account, seq, out))
    }

    /// [`Keyspace::posting`], written into `out`.
    pub fn posting_into(self, account: &AccountId, seq: u64, out: &mut Vec<u8>) {
        self.record_into(POSTING, &(account.as_str(), seq), out)
    }

    /// Range of an account's statement blocks that start at `seq >= from_seq` (the block
    /// holding `from_seq` may start before it: see [`crate::ledger::statement`]).
    pub fn postings_from(self, account: &AccountId, from_seq: u64) -> (Vec<u8>, Vec<u8>) {
        let prefix = pack(&(self.tag(), POSTING, account.as_str()));
        (self.posting(account, from_seq), prefix_end(&prefix))
    }

    /// Prefix of every posting (for audits).
    pub fn postings_prefix(self) -> Vec<u8> {
        pack(&(self.tag(), POSTING))
    }

    pub fn transfer(self, transfer: &TransferId) -> Vec<u8> {
        exact(|out| self.transfer_into(transfer, out))
    }

    /// [`Keyspace::transfer`], written into `out`.
    pub fn transfer_into(self, transfer: &TransferId, out: &mut Vec<u8>) {
        self.record_into(TRANSFER, &(transfer.as_str(),), out)
    }

    /// Prefix of every transfer record (for audits).
    pub fn transfers_prefix(self) -> Vec<u8> {
        pack(&(self.tag(), TRANSFER))
    }

    pub fn hold(self, hold: &HoldId) -> Vec<u8> {
        exact(|out| self.hold_into(hold, out))
    }

    /// [`Keyspace::hold`], written into `out`.
    pub fn hold_into(self, hold: &HoldId, out: &mut Vec<u8>) {
        self.record_into(HOLD, &(hold.as_str(),), out)
    }

    /// Prefix of every hold record (for audits).
    pub fn holds_prefix(self) -> Vec<u8> {
        pack(&(self.tag(), HOLD))
    }

    pub fn account_hold(self, account: &AccountId, hold: &HoldId) -> Vec<u8> {
        exact(|out| self.account_hold_into(account, hold, out))
    }

    /// [`Keyspace::account_hold`], written into `out`.
    pub fn account_hold_into(self, account: &AccountId, hold: &HoldId, out: &mut Vec<u8>) {
        self.record_into(ACCOUNT_HOLD, &(account.as_str(), hold.as_str()), out)
    }

    /// Prefix of an account's active-hold index.
    pub fn account_holds_prefix(self, account: &AccountId) -> Vec<u8> {
        pack(&(self.tag(), ACCOUNT_HOLD, account.as_str()))
    }

    pub fn outbox(self, slot: Slot, kind: OutboxKind, id: &str) -> Vec<u8> {
        exact(|out| self.outbox_into(slot, kind, id, out))
    }

    /// [`Keyspace::outbox`], written into `out`.
    pub fn outbox_into(self, slot: Slot, kind: OutboxKind, id: &str, out: &mut Vec<u8>) {
        self.record_into(OUTBOX, &(slot.index(), kind.tag(), id), out)
    }

    /// Range of the outbox entries of payers in slots `first..=last`.
    pub fn outbox_slots(self, first: Slot, last: Slot) -> (Vec<u8>, Vec<u8>) {
        let begin = pack(&(self.tag(), OUTBOX, first.index()));
        let end = prefix_end(&pack(&(self.tag(), OUTBOX, last.index())));
        (begin, end)
    }

    /// Prefix of every outbox entry of every cell.
    pub fn outbox_prefix(self) -> Vec<u8> {
        pack(&(self.tag(), OUTBOX))
    }
}

/// Prefixes of the records read and written by key, many, and range-read only by audits:
/// the transfer and hold records of both keyspaces. The embedded store keeps them in hash
/// tables ([`crate::store::embedded::EmbeddedOptions::point_prefixes`]).
pub fn point_prefixes() -> Vec<Vec<u8>> {
    [Keyspace::Real, Keyspace::Shadow]
        .into_iter()
        .flat_map(|space| [pack(&(space.tag(), TRANSFER)), pack(&(space.tag(), HOLD))])
        .collect()
}

/// Prefixes of the accounts' active-hold indexes of both keyspaces: an entry is set at a
/// hold and cleared at its capture, release or expiry; an account's are range-read when it
/// loads. The embedded store keeps them in a small B-tree of their own
/// ([`crate::store::embedded::EmbeddedOptions::index_prefixes`]).
pub fn index_prefixes() -> Vec<Vec<u8>> {
    [Keyspace::Real, Keyspace::Shadow]
        .into_iter()
        .map(|space| pack(&(space.tag(), ACCOUNT_HOLD)))
        .collect()
}

/// Prefixes of the records that are written once and cleared soon after: the outbox
/// entries of both keyspaces (a credit leg lives there from the payer's commit to the
/// payee's). The embedded store clears them without tombstones
/// ([`crate::store::embedded::EmbeddedOptions::transient_prefixes`]).
pub fn transient_prefixes() -> Vec<Vec<u8>> {
    [Keyspace::Real, Keyspace::Shadow]
        .into_iter()
        .map(Keyspace::outbox_prefix)
        .collect()
}

/// The ownership table's version key.
pub fn table_version() -> Vec<u8> {
    pack(&(CONTROL, TABLE_VERSION))
}

/// The owner record of a slot: the fence of every commit for the slot's users.
pub fn slot_owner(slot: Slot) -> Vec<u8> {
    pack(&(CONTROL, SLOT_OWNER, slot.index()))
}

/// Range of the owner records of slots `first..=last`.
pub fn slot_owners(first: Slot, last: Slot) -> (Vec<u8>, Vec<u8>) {
    (slot_owner(first), prefix_end(&slot_owner(last)))
}

/// Unpacks the slot of an owner record key.
pub fn slot_owner_slot(key: &[u8]) -> Option<Slot> {
    let (_, _, slot): (i64, i64, u32) = foundationdb_tuple::unpack(key).ok()?;
    u16::try_from(slot).ok().map(Slot::new)
}

/// The owner record of a whitelisted user.
pub fn user_owner(user: &UserId) -> Vec<u8> {
    pack(&(CONTROL, USER_OWNER, user.as_str()))
}

/// Prefix of every whitelisted user's owner record.
pub fn user_owners_prefix() -> Vec<u8> {
    pack(&(CONTROL, USER_OWNER))
}

/// Prefix of every slot's owner record.
pub fn slot_owners_prefix() -> Vec<u8> {
    pack(&(CONTROL, SLOT_OWNER))
}

/// Prefixes of the records nearly every commit reads: the owner records of slots and of
/// whitelisted users (a money commit's fence). They are few (at most one per slot, plus
/// the whitelist). The embedded store keeps them in memory as well, so a fence check never
/// walks its memtables or reads its checkpoint
/// ([`crate::store::embedded::EmbeddedOptions::pinned_prefixes`]).
pub fn pinned_prefixes() -> Vec<Vec<u8>> {
    vec![slot_owners_prefix(), user_owners_prefix()]
}

/// Unpacks the user of a whitelist key.
pub fn user_owner_user(key: &[u8]) -> Option<UserId> {
    let (_, _, user): (i64, i64, String) = foundationdb_tuple::unpack(key).ok()?;
    UserId::new(&user).ok()
}

/// The history record of ownership table version `version`.
pub fn ownership_change(version: u64) -> Vec<u8> {
    pack(&(CONTROL, OWNERSHIP_CHANGE, version))
}

/// Range of the history records of versions `from..`.
pub fn ownership_changes_from(from: u64) -> (Vec<u8>, Vec<u8>) {
    (
        ownership_change(from),
        prefix_end(&pack(&(CONTROL, OWNERSHIP_CHANGE))),
    )
}

/// The lease of a DC node.
pub fn lease(dc: &DcId) -> Vec<u8> {
    pack(&(CONTROL, LEASE, dc.as_str()))
}

/// Prefix of every DC node's lease.
pub fn leases_prefix() -> Vec<u8> {
    pack(&(CONTROL, LEASE))
}

/// A traffic shift plan.
pub fn shift_plan(name: &str) -> Vec<u8> {
    pack(&(CONTROL, SHIFT_PLAN, name))
}

/// Prefix of every shift plan.
pub fn shift_plans_prefix() -> Vec<u8> {
    pack(&(CONTROL, SHIFT_PLAN))
}

/// Unpacks the hold id at the end of an active-hold index key.
pub fn account_hold_id(key: &[u8]) -> Option<HoldId> {
    let (_, _, _, hold): (i64, i64, String, String) = foundationdb_tuple::unpack(key).ok()?;
    HoldId::new(&hold).ok()
}

/// Unpacks the sequence number at the end of a posting key (a block's first posting).
pub fn posting_seq(key: &[u8]) -> Option<u64> {
    let (_, _, _, seq): (i64, i64, String, u64) = foundationdb_tuple::unpack(key).ok()?;
    Some(seq)
}

/// Unpacks the account of a posting key.
pub fn posting_account(key: &[u8]) -> Option<AccountId> {
    let (_, _, account, _): (i64, i64, String, u64) = foundationdb_tuple::unpack(key).ok()?;
    AccountId::new(&account).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `*_into` form writes exactly the key its allocating form returns, whatever
    /// the buffer held before.
    #[test]
    fn keys_written_into_a_used_buffer_are_the_same_keys() {
        let account = AccountId::new("acct-7").unwrap();
        let transfer = TransferId::new("t-42").unwrap();
        let hold = HoldId::new("h:9").unwrap();
        for space in [Keyspace::Real, Keyspace::Shadow] {
            let mut out = b"stale bytes from an earlier key".to_vec();
            space.account_into(&account, &mut out);
            assert_eq!(out, space.account(&account));
            space.posting_into(&account, 1 << 40, &mut out);
            assert_eq!(out, space.posting(&account, 1 << 40));
            space.transfer_into(&transfer, &mut out);
            assert_eq!(out, space.transfer(&transfer));
            space.hold_into(&hold, &mut out);
            assert_eq!(out, space.hold(&hold));
            space.account_hold_into(&account, &hold, &mut out);
            assert_eq!(out, space.account_hold(&account, &hold));
        }
    }

    /// Every record key is exactly the whole tuple the module docs give, packed by the
    /// tuple layer in one piece: the cached `(space, kind)` heads followed by the packed
    /// rest change no byte of the layout (ids of several lengths, a sequence number past
    /// one byte, both keyspaces).
    #[test]
    fn record_heads_and_rests_pack_as_whole_tuples() {
        use foundationdb_tuple::pack as whole;
        for (account, transfer, hold) in [("a", "t", "h"), ("acct-7", "t-42", "h:9")] {
            let account = AccountId::new(account).unwrap();
            let transfer = TransferId::new(transfer).unwrap();
            let hold = HoldId::new(hold).unwrap();
            for space in [Keyspace::Real, Keyspace::Shadow] {
                let tag = space.tag();
                let a = account.as_str();
                assert_eq!(space.account(&account), whole(&(tag, ACCOUNT, a)));
                for seq in [0u64, 1, 255, 256, 1 << 40, u64::MAX] {
                    assert_eq!(space.posting(&account, seq), whole(&(tag, POSTING, a, seq)));
                }
                let t = transfer.as_str();
                assert_eq!(space.transfer(&transfer), whole(&(tag, TRANSFER, t)));
                assert_eq!(space.hold(&hold), whole(&(tag, HOLD, hold.as_str())));
                assert_eq!(
                    space.account_hold(&account, &hold),
                    whole(&(tag, ACCOUNT_HOLD, a, hold.as_str()))
                );
                for slot in [0u16, 255, 256, 65_535] {
                    for kind in [OutboxKind::Transfer, OutboxKind::Capture] {
                        let key = space.outbox(Slot::new(slot), kind, "t-42");
                        let expected =
                            whole(&(tag, OUTBOX, Slot::new(slot).index(), kind.tag(), "t-42"));
                        assert_eq!(key, expected);
                    }
                }
            }
        }
    }

    /// The pinned prefixes cover exactly the fence keys (every slot's and every
    /// whitelisted user's owner record) and nothing a transfer writes; if they drifted from
    /// the fence keys, fence checks would silently walk the store's layers again.
    #[test]
    fn pinned_prefixes_cover_the_fence_keys_only() {
        let pinned = pinned_prefixes();
        let covered = |key: &[u8]| pinned.iter().any(|prefix| key.starts_with(prefix));
        for slot in [0u16, 1, 255, 256, 65_535] {
            assert!(covered(&slot_owner(Slot::new(slot))), "slot {slot}");
        }
        let user = UserId::new("alice").unwrap();
        assert!(covered(&user_owner(&user)));
        let account = AccountId::new("alice.main").unwrap();
        let transfer = TransferId::new("t-1").unwrap();
        for space in [Keyspace::Real, Keyspace::Shadow] {
            assert!(!covered(&space.account(&account)));
            assert!(!covered(&space.posting(&account, 7)));
            assert!(!covered(&space.transfer(&transfer)));
        }
        assert!(!covered(&table_version()));
        assert!(!covered(&ownership_change(3)));
    }

    #[test]
    fn postings_sort_by_sequence_within_an_account() {
        let account = AccountId::new("a").unwrap();
        let space = Keyspace::Real;
        let keys: Vec<_> = [1u64, 2, 255, 256, 70_000]
            .iter()
            .map(|s| space.posting(&account, *s))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(posting_seq(&keys[3]), Some(256));
        assert_eq!(posting_account(&keys[3]), Some(account.clone()));
        let (begin, end) = space.postings_from(&account, 2);
        assert!(keys[1] >= begin && keys[4] < end && keys[0] < begin);
        // Another account's postings are outside the range.
        let other = AccountId::new("a0").unwrap();
        assert!(space.posting(&other, 0) >= end || space.posting(&other, 0) < begin);
    }

    #[test]
    fn shadow_keys_never_equal_real_keys() {
        let account = AccountId::new("merchant").unwrap();
        assert_ne!(
            Keyspace::Real.account(&account),
            Keyspace::Shadow.account(&account)
        );
        let real = Keyspace::Real.accounts_prefix();
        assert!(!Keyspace::Shadow.account(&account).starts_with(&real));
    }

    /// The index prefixes cover every account's active-hold index entries, in both
    /// keyspaces, and none of the records beside them (account records and posting blocks
    /// belong to the memtable's main tree, transfer and hold records to its hash table).
    #[test]
    fn index_prefixes_cover_the_hold_indexes_only() {
        let index = index_prefixes();
        let covered = |key: &[u8]| index.iter().any(|prefix| key.starts_with(prefix));
        let account = AccountId::new("alice.main").unwrap();
        let hold = HoldId::new("h-1").unwrap();
        let transfer = TransferId::new("t-1").unwrap();
        for space in [Keyspace::Real, Keyspace::Shadow] {
            assert!(covered(&space.account_hold(&account, &hold)));
            assert!(covered(&space.account_holds_prefix(&account)));
            assert!(!covered(&space.account(&account)));
            assert!(!covered(&space.posting(&account, 7)));
            assert!(!covered(&space.transfer(&transfer)));
            assert!(!covered(&space.hold(&hold)));
            assert!(!covered(&space.outbox_prefix()));
        }
        assert!(!covered(&slot_owner(Slot::new(3))));
    }

    #[test]
    fn hold_index_round_trips() {
        let account = AccountId::new("a").unwrap();
        let hold = HoldId::new("h-1").unwrap();
        let key = Keyspace::Real.account_hold(&account, &hold);
        assert!(key.starts_with(&Keyspace::Real.account_holds_prefix(&account)));
        assert_eq!(account_hold_id(&key), Some(hold));
    }
}
