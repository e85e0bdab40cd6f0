//! Ownership: which DC may write for each slot and each whitelisted user, fenced by epochs.
//!
//! Owns the versioned ownership table in the store (keys in [`crate::keys`]'s control
//! space): slot → [`Owner`], whitelisted user → [`Owner`], a table version bumped by every
//! change, a history record per version (who, when, why, what), and DC leases.
//!
//! The fence (INV-4). Every money commit carries a [`Fence`]: preconditions that the
//! user's slot record and the user's whitelist record still hold exactly the bytes the
//! writer loaded. Every change of either record changes its bytes (epochs only grow, and
//! removing a user from the whitelist bumps the slot's epoch), so a writer that loaded
//! before a change can never commit after it — whatever its clock, lease or network says.
//!
//! Leases. A DC node registers (a new incarnation, which also bumps the epochs of the
//! slots it owns, so an older process of the same DC is fenced out) and heartbeats by
//! rewriting its lease with a precondition on the bytes it last wrote. Observers judge
//! liveness on their own monotonic clock (a lease whose beat has not moved for its TTL),
//! so no two clocks are compared. A takeover marks the lease dead in the same transaction
//! that moves the dead DC's slots; the dead DC's next heartbeat then fails, and it
//! rejoins owning nothing.
//!
//! Must never: write a money record, or change an owner record without bumping the table
//! version and writing its history record in the same transaction.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ids::{DcId, UserId};
use crate::keys;
use crate::records::{self, RecordError};
use crate::slot::{slot_of, Slot, CELL_COUNT, SLOTS_PER_CELL, SLOT_COUNT};
use crate::store::{CommitError, RangeRequest, Store, StoreError, Transaction};

/// Most contiguous slot ranges one change record may list (keeps it under the value limit).
pub const CHANGE_RANGES_MAX: usize = 2_000;
/// Most whitelisted users one change may touch.
pub const CHANGE_USERS_MAX: usize = 1_000;
/// Most whitelisted users in a deployment (the whole whitelist is read in one range).
pub const WHITELIST_USERS_MAX: usize = 10_000;
/// Most bytes of a change's `who` and `why`.
pub const CHANGE_TEXT_BYTES_MAX: usize = 512;
/// Most DC nodes in a deployment.
pub const DCS_MAX: usize = 64;

/// The owner of a slot or a whitelisted user, and the epoch of that ownership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub dc: DcId,
    pub epoch: u64,
}

/// One change of ownership: contiguous slots `first..=last` moved from `from` to `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRangeChange {
    pub first: u16,
    pub last: u16,
    pub from: Option<DcId>,
    pub to: DcId,
}

/// One change of a whitelisted user: `to: None` removes the user from the whitelist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserChange {
    pub user: UserId,
    pub from: Option<DcId>,
    pub to: Option<DcId>,
}

/// The history record of one table version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRecord {
    pub version: u64,
    pub at_ms: u64,
    pub who: String,
    pub why: String,
    pub slots: Vec<SlotRangeChange>,
    pub users: Vec<UserChange>,
    /// The DC whose lease this change declared dead (a takeover), if any.
    pub declared_dead: Option<DcId>,
}

/// Whether a DC's lease stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseState {
    Live,
    /// Declared dead by a takeover; the DC must register again and owns nothing.
    Dead,
}

/// A DC node's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub dc: DcId,
    /// Where the DC node serves the DC protocol.
    pub addr: String,
    /// Bumped by every registration.
    pub incarnation: u64,
    /// Bumped by every heartbeat.
    pub beat: u64,
    pub ttl_ms: u64,
    pub state: LeaseState,
}

/// Why an ownership operation failed. None of them changed anything.
#[derive(Debug, thiserror::Error)]
pub enum OwnershipError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Commit(#[from] CommitError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("slot {slot} is owned by {current:?}, not {expected:?} as the change assumed")]
    Moved {
        slot: u32,
        current: Option<DcId>,
        expected: Option<DcId>,
    },
    #[error("user {user} is owned by {current:?}, not {expected:?} as the change assumed")]
    UserMoved {
        user: UserId,
        current: Option<DcId>,
        expected: Option<DcId>,
    },
    #[error("the change touches {count} {what}; at most {max} are allowed")]
    TooLarge {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("the lease of {dc} changed (another incarnation, or declared dead)")]
    LeaseLost { dc: DcId },
    #[error("no live DC to take the slots over")]
    NoSurvivor,
    #[error("stored ownership data is inconsistent: {0}")]
    Inconsistent(String),
}

impl OwnershipError {
    /// Whether the same operation may succeed if tried again (after re-reading the table).
    pub fn is_retryable(&self) -> bool {
        match self {
            OwnershipError::Store(error) => error.is_retryable(),
            OwnershipError::Commit(error) => error.is_retryable(),
            _ => false,
        }
    }
}

/// The preconditions that fence a commit for one user (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    slot_key: Vec<u8>,
    slot_value: Option<Vec<u8>>,
    user_key: Vec<u8>,
    user_value: Option<Vec<u8>>,
}

impl Fence {
    /// Reads the fence of `user` at one committed state.
    pub async fn read(store: &dyn Store, user: &UserId) -> Result<Fence, StoreError> {
        let slot_key = keys::slot_owner(slot_of(user));
        let user_key = keys::user_owner(user);
        let mut values = store
            .get_many(vec![slot_key.clone(), user_key.clone()])
            .await?;
        let user_value = values.pop().flatten();
        let slot_value = values.pop().flatten();
        Ok(Fence {
            slot_key,
            slot_value,
            user_key,
            user_value,
        })
    }

    /// The user's effective owner: the whitelist entry if any, else the slot's owner.
    pub fn owner(&self) -> Result<Option<Owner>, RecordError> {
        match (&self.user_value, &self.slot_value) {
            (Some(bytes), _) | (None, Some(bytes)) => records::decode("owner", bytes).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// Adds the fence's preconditions to `txn`.
    pub fn apply(&self, txn: &mut dyn Transaction) -> Result<(), StoreError> {
        txn.require(&self.slot_key, self.slot_value.as_deref())?;
        txn.require(&self.user_key, self.user_value.as_deref())
    }

    /// Whether `key` is one of the fence's keys (a failed precondition on it means the
    /// writer no longer owns the user).
    pub fn is_fence_key(&self, key: &[u8]) -> bool {
        key == self.slot_key.as_slice() || key == self.user_key.as_slice()
    }
}

/// The ownership table at one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnershipTable {
    pub version: u64,
    /// One entry per slot (`SLOT_COUNT`), `None` when unowned.
    pub slots: Vec<Option<Owner>>,
    pub users: BTreeMap<UserId, Owner>,
}

impl OwnershipTable {
    /// An empty table (version 0, nothing owned).
    pub fn empty() -> Self {
        OwnershipTable {
            version: 0,
            slots: vec![None; SLOT_COUNT as usize],
            users: BTreeMap::new(),
        }
    }

    /// The owner of `user`: the whitelist entry first, else the slot's owner.
    pub fn owner_of(&self, user: &UserId) -> Option<&Owner> {
        self.users
            .get(user)
            .or_else(|| self.slots[slot_of(user).index() as usize].as_ref())
    }

    /// The owner of `slot` (ignoring the whitelist).
    pub fn slot_owner(&self, slot: Slot) -> Option<&Owner> {
        self.slots[slot.index() as usize].as_ref()
    }

    /// The slots `dc` owns, in order.
    pub fn slots_of<'a>(&'a self, dc: &'a DcId) -> impl Iterator<Item = Slot> + 'a {
        self.slots
            .iter()
            .enumerate()
            .filter(move |(_, owner)| owner.as_ref().map(|o| &o.dc) == Some(dc))
            .map(|(index, _)| Slot::new(index as u16))
    }

    /// Counts of slots per owning DC.
    pub fn slot_counts(&self) -> BTreeMap<DcId, usize> {
        let mut counts = BTreeMap::new();
        for owner in self.slots.iter().flatten() {
            *counts.entry(owner.dc.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// Reads the whole table at one committed state.
    pub async fn read(store: &dyn Store) -> Result<OwnershipTable, OwnershipError> {
        let mut txn = store.begin()?;
        read_table_in(&mut *txn).await
    }
}

/// Reads the ownership table's version alone (cheap: callers poll it).
pub async fn read_version(store: &dyn Store) -> Result<u64, OwnershipError> {
    decode_version(store.get(&keys::table_version()).await?)
}

fn decode_version(bytes: Option<Vec<u8>>) -> Result<u64, OwnershipError> {
    match bytes {
        None => Ok(0),
        Some(bytes) => bytes
            .as_slice()
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| OwnershipError::Inconsistent("table version".into())),
    }
}

async fn read_table_in(txn: &mut dyn Transaction) -> Result<OwnershipTable, OwnershipError> {
    let version = decode_version(txn.get(&keys::table_version()).await?)?;
    let mut table = OwnershipTable::empty();
    table.version = version;
    let last = Slot::new((SLOT_COUNT - 1) as u16);
    let (begin, end) = keys::slot_owners(Slot::new(0), last);
    let rows = txn
        .get_range(RangeRequest::new(begin, end, SLOT_COUNT as usize))
        .await?;
    for (key, value) in rows {
        let slot = keys::slot_owner_slot(&key)
            .ok_or_else(|| OwnershipError::Inconsistent("slot owner key".into()))?;
        table.slots[slot.index() as usize] = Some(records::decode("owner", &value)?);
    }
    let rows = txn
        .get_range(RangeRequest::prefix(
            &keys::user_owners_prefix(),
            WHITELIST_USERS_MAX + 1,
        ))
        .await?;
    if rows.len() > WHITELIST_USERS_MAX {
        return Err(OwnershipError::Inconsistent(
            "whitelist over its limit".into(),
        ));
    }
    for (key, value) in rows {
        let user = keys::user_owner_user(&key)
            .ok_or_else(|| OwnershipError::Inconsistent("user owner key".into()))?;
        table.users.insert(user, records::decode("owner", &value)?);
    }
    Ok(table)
}

/// Reads, inside `txn`, only what applying `plan` checks: the version, the owners of the
/// planned slots and of the slots of planned users, and the planned users' entries. The
/// rest of the returned table is empty.
async fn read_plan_in(
    txn: &mut dyn Transaction,
    plan: &ChangePlan,
) -> Result<OwnershipTable, OwnershipError> {
    let mut table = OwnershipTable::empty();
    table.version = decode_version(txn.get(&keys::table_version()).await?)?;
    let mut slots: Vec<Slot> = plan.slots.iter().map(|(slot, _, _)| *slot).collect();
    slots.extend(plan.users.iter().map(|(user, _, _)| slot_of(user)));
    read_slot_runs_in(txn, slots, &mut table).await?;
    for (user, _, _) in &plan.users {
        if let Some(bytes) = txn.get(&keys::user_owner(user)).await? {
            table
                .users
                .insert(user.clone(), records::decode("owner", &bytes)?);
        }
    }
    Ok(table)
}

/// Reads the owner records of `slots` (in contiguous runs) into `table`.
async fn read_slot_runs_in(
    txn: &mut dyn Transaction,
    mut slots: Vec<Slot>,
    table: &mut OwnershipTable,
) -> Result<(), OwnershipError> {
    slots.sort_unstable();
    slots.dedup();
    let mut runs: Vec<(Slot, Slot)> = Vec::new();
    for slot in slots {
        match runs.last_mut() {
            Some((_, last)) if last.index() + 1 == slot.index() => *last = slot,
            _ => runs.push((slot, slot)),
        }
    }
    for (first, last) in runs {
        let count = (last.index() - first.index() + 1) as usize;
        for index in first.index()..=last.index() {
            table.slots[index as usize] = None;
        }
        let (begin, end) = keys::slot_owners(first, last);
        for (key, value) in txn.get_range(RangeRequest::new(begin, end, count)).await? {
            let slot = keys::slot_owner_slot(&key)
                .ok_or_else(|| OwnershipError::Inconsistent("slot owner key".into()))?;
            table.slots[slot.index() as usize] = Some(records::decode("owner", &value)?);
        }
    }
    Ok(())
}

/// Brings `table` up to the store's current version by reading only what the history
/// says changed since (falls back to a full read when the history does not cover the gap).
/// The result may include changes newer than its version; the next refresh re-reads them.
/// When the version has not moved (most polls) the result is `table` itself, not a copy.
pub async fn refresh(
    store: &dyn Store,
    table: &Arc<OwnershipTable>,
) -> Result<Arc<OwnershipTable>, OwnershipError> {
    const INCREMENTAL_CHANGES_MAX: u64 = 64;
    let version = read_version(store).await?;
    if version == table.version {
        return Ok(Arc::clone(table));
    }
    if table.version == 0
        || version < table.version
        || version - table.version > INCREMENTAL_CHANGES_MAX
    {
        return OwnershipTable::read(store).await.map(Arc::new);
    }
    let changes = history(store, table.version + 1, INCREMENTAL_CHANGES_MAX as usize).await?;
    let consecutive = changes
        .iter()
        .enumerate()
        .all(|(i, change)| change.version == table.version + 1 + i as u64);
    let Some(newest) = changes.last().map(|c| c.version) else {
        return OwnershipTable::read(store).await.map(Arc::new);
    };
    if !consecutive || newest < version {
        return OwnershipTable::read(store).await.map(Arc::new);
    }
    let mut next = OwnershipTable::clone(table);
    let mut slots = Vec::new();
    let mut users = Vec::new();
    for change in &changes {
        for range in &change.slots {
            slots.extend((range.first..=range.last).map(Slot::new));
        }
        for user in &change.users {
            slots.push(slot_of(&user.user));
            users.push(user.user.clone());
        }
    }
    let mut txn = store.begin()?;
    read_slot_runs_in(&mut *txn, slots, &mut next).await?;
    for user in users {
        match txn.get(&keys::user_owner(&user)).await? {
            Some(bytes) => {
                next.users.insert(user, records::decode("owner", &bytes)?);
            }
            None => {
                next.users.remove(&user);
            }
        }
    }
    next.version = newest;
    Ok(Arc::new(next))
}

/// Who makes a change and why (kept in the history record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeMeta {
    pub who: String,
    pub why: String,
    pub at_ms: u64,
}

impl ChangeMeta {
    pub fn new(who: &str, why: &str) -> Self {
        ChangeMeta {
            who: truncate(who),
            why: truncate(why),
            at_ms: now_ms(),
        }
    }
}

fn truncate(text: &str) -> String {
    let mut end = text.len().min(CHANGE_TEXT_BYTES_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Milliseconds since the Unix epoch (for history records only; never for liveness).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A planned change: slots (each with the owner the planner saw) and whitelist entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangePlan {
    /// `(slot, expected current owner, new owner)`.
    pub slots: Vec<(Slot, Option<DcId>, DcId)>,
    /// `(user, expected current whitelist owner, new whitelist owner or None to remove)`.
    pub users: Vec<(UserId, Option<DcId>, Option<DcId>)>,
}

impl ChangePlan {
    /// Moves `slots` (all expected at `from`) to `to`.
    pub fn move_slots(
        slots: impl IntoIterator<Item = Slot>,
        from: Option<&DcId>,
        to: &DcId,
    ) -> Self {
        ChangePlan {
            slots: slots
                .into_iter()
                .map(|slot| (slot, from.cloned(), to.clone()))
                .collect(),
            users: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty() && self.users.is_empty()
    }
}

/// Applies `plan` in one transaction: checks every expected owner, bumps epochs, bumps the
/// table version and writes the history record. Returns the new table version.
pub async fn apply_change(
    store: &dyn Store,
    plan: &ChangePlan,
    meta: &ChangeMeta,
) -> Result<u64, OwnershipError> {
    if plan.users.len() > CHANGE_USERS_MAX {
        return Err(OwnershipError::TooLarge {
            what: "users",
            count: plan.users.len(),
            max: CHANGE_USERS_MAX,
        });
    }
    let mut txn = store.begin()?;
    let table = read_plan_in(&mut *txn, plan).await?;
    let record = stage_change(&mut *txn, &table, plan, meta, None)?;
    let version = record.version;
    txn.set(&keys::ownership_change(version), &records::encode(&record))?;
    txn.commit().await?;
    metrics::counter!("tessera_ownership_changes_total").increment(1);
    tracing::info!(version, who = %meta.who, why = %meta.why, "ownership changed");
    Ok(version)
}

/// Writes the owner records of `plan` into `txn` (checked against `table`, which `txn`
/// read) and the new table version; returns the history record to write.
fn stage_change(
    txn: &mut dyn Transaction,
    table: &OwnershipTable,
    plan: &ChangePlan,
    meta: &ChangeMeta,
    declared_dead: Option<DcId>,
) -> Result<ChangeRecord, OwnershipError> {
    let mut bumped_slots = Vec::new();
    for (slot, expected, to) in &plan.slots {
        let current = table.slot_owner(*slot);
        if current.map(|o| &o.dc) != expected.as_ref() {
            return Err(OwnershipError::Moved {
                slot: slot.index(),
                current: current.map(|o| o.dc.clone()),
                expected: expected.clone(),
            });
        }
        let epoch = current.map_or(0, |o| o.epoch) + 1;
        let owner = Owner {
            dc: to.clone(),
            epoch,
        };
        txn.set(&keys::slot_owner(*slot), &records::encode(&owner))?;
        bumped_slots.push(*slot);
    }
    let users = stage_users(txn, table, plan, &mut bumped_slots)?;
    let slots = compress(&plan.slots);
    if slots.len() > CHANGE_RANGES_MAX {
        return Err(OwnershipError::TooLarge {
            what: "slot ranges",
            count: slots.len(),
            max: CHANGE_RANGES_MAX,
        });
    }
    let version = table.version + 1;
    txn.set(&keys::table_version(), &version.to_be_bytes())?;
    Ok(ChangeRecord {
        version,
        at_ms: meta.at_ms,
        who: meta.who.clone(),
        why: meta.why.clone(),
        slots,
        users,
        declared_dead,
    })
}

/// Writes the whitelist changes. Removing a user bumps its slot's epoch (unless the plan
/// already moves that slot) so that no writer fenced before the user was whitelisted can
/// commit again once the entry is gone.
fn stage_users(
    txn: &mut dyn Transaction,
    table: &OwnershipTable,
    plan: &ChangePlan,
    bumped_slots: &mut Vec<Slot>,
) -> Result<Vec<UserChange>, OwnershipError> {
    let mut changes = Vec::with_capacity(plan.users.len());
    for (user, expected, to) in &plan.users {
        let current = table.users.get(user);
        if current.map(|o| &o.dc) != expected.as_ref() {
            return Err(OwnershipError::UserMoved {
                user: user.clone(),
                current: current.map(|o| o.dc.clone()),
                expected: expected.clone(),
            });
        }
        let key = keys::user_owner(user);
        match to {
            Some(dc) => {
                let epoch = current.map_or(0, |o| o.epoch) + 1;
                let owner = Owner {
                    dc: dc.clone(),
                    epoch,
                };
                txn.set(&key, &records::encode(&owner))?;
            }
            None => {
                txn.clear(&key)?;
                let slot = slot_of(user);
                if !bumped_slots.contains(&slot) {
                    if let Some(owner) = table.slot_owner(slot) {
                        let bumped = Owner {
                            dc: owner.dc.clone(),
                            epoch: owner.epoch + 1,
                        };
                        txn.set(&keys::slot_owner(slot), &records::encode(&bumped))?;
                        bumped_slots.push(slot);
                    }
                }
            }
        }
        changes.push(UserChange {
            user: user.clone(),
            from: expected.clone(),
            to: to.clone(),
        });
    }
    Ok(changes)
}

/// Summarises slot moves as contiguous ranges with the same source and target.
fn compress(slots: &[(Slot, Option<DcId>, DcId)]) -> Vec<SlotRangeChange> {
    let mut sorted: Vec<_> = slots.iter().collect();
    sorted.sort_by_key(|(slot, _, _)| *slot);
    let mut ranges: Vec<SlotRangeChange> = Vec::new();
    for (slot, from, to) in sorted {
        let index = slot.index() as u16;
        match ranges.last_mut() {
            Some(range)
                if u32::from(range.last) + 1 == slot.index()
                    && range.from == *from
                    && range.to == *to =>
            {
                range.last = index;
            }
            _ => ranges.push(SlotRangeChange {
                first: index,
                last: index,
                from: from.clone(),
                to: to.clone(),
            }),
        }
    }
    ranges
}

/// Reads the history records of versions `from..`, at most `limit`.
pub async fn history(
    store: &dyn Store,
    from: u64,
    limit: usize,
) -> Result<Vec<ChangeRecord>, OwnershipError> {
    let (begin, end) = keys::ownership_changes_from(from);
    let rows = store
        .get_range(RangeRequest::new(begin, end, limit))
        .await?;
    rows.iter()
        .map(|(_, value)| records::decode("ownership change", value).map_err(Into::into))
        .collect()
}

/// Assigns every unowned slot to `dcs`, in contiguous runs of whole cells (the first
/// cells to the first DC, and so on). Does nothing (returns `None`) when every slot is
/// owned already. Returns the new table version otherwise.
pub async fn bootstrap(
    store: &dyn Store,
    dcs: &[DcId],
    meta: &ChangeMeta,
) -> Result<Option<u64>, OwnershipError> {
    if dcs.is_empty() || dcs.len() > DCS_MAX {
        return Err(OwnershipError::TooLarge {
            what: "DCs",
            count: dcs.len(),
            max: DCS_MAX,
        });
    }
    let table = OwnershipTable::read(store).await?;
    let plan = ChangePlan {
        slots: (0..SLOT_COUNT)
            .filter(|index| table.slots[*index as usize].is_none())
            .map(|index| {
                let cell = (index / SLOTS_PER_CELL) as usize;
                let share = cell * dcs.len() / CELL_COUNT as usize;
                (Slot::new(index as u16), None, dcs[share].clone())
            })
            .collect(),
        users: Vec::new(),
    };
    if plan.is_empty() {
        return Ok(None);
    }
    apply_change(store, &plan, meta).await.map(Some)
}

/// Reads every DC's lease.
pub async fn read_leases(store: &dyn Store) -> Result<Vec<Lease>, OwnershipError> {
    let rows = store
        .get_range(RangeRequest::prefix(&keys::leases_prefix(), DCS_MAX + 1))
        .await?;
    if rows.len() > DCS_MAX {
        return Err(OwnershipError::Inconsistent(
            "more leases than DCS_MAX".into(),
        ));
    }
    rows.iter()
        .map(|(_, value)| records::decode("lease", value).map_err(Into::into))
        .collect()
}

/// Registers a new incarnation of `dc` (serving at `addr`). Bumps the epoch of every slot
/// and user `dc` owns, so a previous process of the same DC can no longer commit, and
/// bumps the table version. A DC that was declared dead owns nothing by now.
pub async fn register(
    store: &dyn Store,
    dc: &DcId,
    addr: &str,
    ttl_ms: u64,
) -> Result<Lease, OwnershipError> {
    let mut txn = store.begin()?;
    let key = keys::lease(dc);
    let previous: Option<Lease> = match txn.get(&key).await? {
        Some(bytes) => Some(records::decode("lease", &bytes)?),
        None => None,
    };
    let table = read_table_in(&mut *txn).await?;
    let mut plan = ChangePlan::move_slots(table.slots_of(dc), Some(dc), dc);
    plan.users = table
        .users
        .iter()
        .filter(|(_, owner)| &owner.dc == dc)
        .map(|(user, _)| (user.clone(), Some(dc.clone()), Some(dc.clone())))
        .collect();
    let meta = ChangeMeta::new(dc.as_str(), "DC node registered (new incarnation)");
    let record = stage_change(&mut *txn, &table, &plan, &meta, None)?;
    txn.set(
        &keys::ownership_change(record.version),
        &records::encode(&record),
    )?;
    let lease = Lease {
        dc: dc.clone(),
        addr: addr.to_string(),
        incarnation: previous.map_or(0, |l| l.incarnation) + 1,
        beat: 0,
        ttl_ms,
        state: LeaseState::Live,
    };
    txn.set(&key, &records::encode(&lease))?;
    txn.commit().await?;
    tracing::info!(dc = %dc, incarnation = lease.incarnation, "DC registered");
    Ok(lease)
}

/// Renews `lease` (as last written by this DC). Fails with [`OwnershipError::LeaseLost`]
/// when the lease changed meanwhile: the DC was declared dead or re-registered elsewhere.
pub async fn heartbeat(store: &dyn Store, lease: &Lease) -> Result<Lease, OwnershipError> {
    let key = keys::lease(&lease.dc);
    let mut next = lease.clone();
    next.beat += 1;
    let mut txn = store.begin()?;
    txn.require(&key, Some(&records::encode(lease)))?;
    txn.set(&key, &records::encode(&next))?;
    match txn.commit().await {
        Ok(_) => Ok(next),
        Err(CommitError::PreconditionFailed { .. }) => Err(OwnershipError::LeaseLost {
            dc: lease.dc.clone(),
        }),
        Err(error) => Err(error.into()),
    }
}

/// Takes over the slots and whitelisted users of `dead` (its lease exactly as observed,
/// unchanged for its TTL): spreads them over `survivors` in contiguous runs, bumps their
/// epochs, and marks the lease dead, all in one transaction. Fails with
/// [`OwnershipError::LeaseLost`] if the lease moved meanwhile (the DC is alive after all,
/// or another survivor took over first).
pub async fn take_over(
    store: &dyn Store,
    dead: &Lease,
    survivors: &[DcId],
    meta: &ChangeMeta,
) -> Result<u64, OwnershipError> {
    if survivors.is_empty() {
        return Err(OwnershipError::NoSurvivor);
    }
    let mut txn = store.begin()?;
    let key = keys::lease(&dead.dc);
    txn.require(&key, Some(&records::encode(dead)))?;
    let table = read_table_in(&mut *txn).await?;
    let plan = takeover_plan(&table, &dead.dc, survivors);
    let record = stage_change(&mut *txn, &table, &plan, meta, Some(dead.dc.clone()))?;
    let version = record.version;
    txn.set(&keys::ownership_change(version), &records::encode(&record))?;
    let mut marked = dead.clone();
    marked.state = LeaseState::Dead;
    txn.set(&key, &records::encode(&marked))?;
    match txn.commit().await {
        Ok(_) => {}
        Err(CommitError::PreconditionFailed { .. }) => {
            return Err(OwnershipError::LeaseLost {
                dc: dead.dc.clone(),
            })
        }
        Err(error) => return Err(error.into()),
    }
    metrics::counter!("tessera_takeovers_total").increment(1);
    tracing::warn!(dead = %dead.dc, version, slots = plan.slots.len(), "took over a dead DC");
    Ok(version)
}

/// The plan of a takeover: `dead`'s slots split into contiguous runs over `survivors`,
/// its whitelisted users to the survivor that gets their slot.
pub fn takeover_plan(table: &OwnershipTable, dead: &DcId, survivors: &[DcId]) -> ChangePlan {
    let slots: Vec<Slot> = table.slots_of(dead).collect();
    let count = slots.len().max(1);
    let mut plan = ChangePlan::default();
    for (position, slot) in slots.iter().enumerate() {
        let to = &survivors[position * survivors.len() / count];
        plan.slots.push((*slot, Some(dead.clone()), to.clone()));
    }
    let moved: BTreeMap<Slot, &DcId> = plan.slots.iter().map(|(s, _, to)| (*s, to)).collect();
    for (user, owner) in &table.users {
        if &owner.dc == dead {
            let slot = slot_of(user);
            let to = match (moved.get(&slot), table.slot_owner(slot)) {
                (Some(to), _) => (*to).clone(),
                (None, Some(o)) if &o.dc != dead => o.dc.clone(),
                _ => survivors[0].clone(),
            };
            plan.users
                .push((user.clone(), Some(dead.clone()), Some(to)));
        }
    }
    plan
}

#[cfg(test)]
mod tests;
