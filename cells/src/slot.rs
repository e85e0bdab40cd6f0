//! The placement hash: `user -> slot -> cell`.
//!
//! `slot(user) = xxh3_64_with_seed(utf8(user), SLOT_HASH_SEED) mod 65,536` and
//! `cell(slot) = slot / 256`. The seed and the function are fixed for every deployment
//! and must never change: the test vectors below (and in README) are the contract.
//! Slots are the unit of ownership and fencing; a cell is 256 consecutive slots.

use crate::ids::UserId;

/// Number of slots in a deployment.
pub const SLOT_COUNT: u32 = 65_536;
/// Slots in one cell.
pub const SLOTS_PER_CELL: u32 = 256;
/// Cells in a deployment.
pub const CELL_COUNT: u32 = SLOT_COUNT / SLOTS_PER_CELL;
/// Seed of the slot hash: the ASCII bytes of "tessera!" read as a big-endian integer.
pub const SLOT_HASH_SEED: u64 = 0x7465_7373_6572_6121;

const _: () = assert!(SLOT_COUNT.is_multiple_of(SLOTS_PER_CELL));
const _: () = assert!(SLOT_COUNT <= u16::MAX as u32 + 1);

/// A slot: `0..65_536`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot(u16);

/// A cell: `0..256`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cell(u16);

impl Slot {
    pub fn new(index: u16) -> Self {
        Slot(index)
    }
    pub fn index(self) -> u32 {
        u32::from(self.0)
    }
    pub fn cell(self) -> Cell {
        Cell((self.index() / SLOTS_PER_CELL) as u16)
    }
}

impl Cell {
    pub fn new(index: u16) -> Option<Self> {
        (u32::from(index) < CELL_COUNT).then_some(Cell(index))
    }
    pub fn index(self) -> u32 {
        u32::from(self.0)
    }
    /// The slots of this cell, in order.
    pub fn slots(self) -> impl Iterator<Item = Slot> {
        let first = self.index() * SLOTS_PER_CELL;
        (first..first + SLOTS_PER_CELL).map(|index| Slot(index as u16))
    }
}

/// The slot of a user's bytes (see the module docs for the exact function).
pub fn slot_of_bytes(user: &[u8]) -> Slot {
    let hash = xxhash_rust::xxh3::xxh3_64_with_seed(user, SLOT_HASH_SEED);
    Slot((hash % u64::from(SLOT_COUNT)) as u16)
}

/// The slot of a user.
pub fn slot_of(user: &UserId) -> Slot {
    slot_of_bytes(user.as_str().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published test vectors. They must never change: changing them would move every
    /// user of every deployment.
    pub const TEST_VECTORS: &[(&str, u16)] = &[
        ("alice", 49186),
        ("bob", 39694),
        ("merchant-42", 11978),
        ("user-0", 33391),
        ("user-1", 10810),
        ("u", 51297),
        ("Z.9_:-", 440),
        ("acct-9999", 38861),
    ];

    #[test]
    fn test_vectors_never_change() {
        for (user, expected) in TEST_VECTORS {
            let user = UserId::new(user).unwrap();
            assert_eq!(slot_of(&user).index(), u32::from(*expected), "user {user}");
        }
    }

    #[test]
    fn cells_are_consecutive_slots() {
        let cell = Slot::new(0x1234).cell();
        assert_eq!(cell.index(), 0x12);
        let slots: Vec<_> = cell.slots().collect();
        assert_eq!(slots.len(), 256);
        assert!(slots.iter().all(|slot| slot.cell() == cell));
        assert!(Cell::new(256).is_none());
    }

    #[test]
    fn spreads_users_evenly_over_cells() {
        let mut per_cell = vec![0u32; CELL_COUNT as usize];
        for i in 0..256_000 {
            let user = UserId::new(&format!("user-{i}")).unwrap();
            per_cell[slot_of(&user).cell().index() as usize] += 1;
        }
        assert!(
            per_cell.iter().all(|n| (800..1200).contains(n)),
            "{per_cell:?}"
        );
    }
}
