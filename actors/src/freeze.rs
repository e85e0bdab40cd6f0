//! The freeze gate: holds new work for slots being handed over, and counts the work in
//! flight per slot so a handover knows when the slots are drained.
//!
//! Owns, per slot, a frozen bit and the number of batches in flight. A batch enters the
//! gate for the payer slots it touches before it is dispatched and leaves when its answers
//! are back; a freeze sets the bits first and then waits for the counts to reach zero. Both
//! sides use sequentially consistent operations, so a batch either sees the freeze or is
//! counted by it (never neither).
//!
//! Must never: let a batch into a frozen slot, or keep a slot frozen without a bound (the
//! node thaws on its own when the controller does not).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use cells::slot::{Slot, SLOT_COUNT};

const WORD_BITS: usize = 64;

pub(crate) struct Gate {
    frozen: Box<[AtomicU64]>,
    in_flight: Box<[AtomicU32]>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            frozen: (0..SLOT_COUNT as usize / WORD_BITS)
                .map(|_| AtomicU64::new(0))
                .collect(),
            in_flight: (0..SLOT_COUNT as usize)
                .map(|_| AtomicU32::new(0))
                .collect(),
        }
    }
}

impl Gate {
    fn is_frozen(&self, slot: Slot) -> bool {
        let index = slot.index() as usize;
        self.frozen[index / WORD_BITS].load(Ordering::SeqCst) & (1 << (index % WORD_BITS)) != 0
    }

    /// Counts a batch into `slots` (distinct); refuses, counting nothing, with the frozen
    /// ones when any is frozen.
    pub(crate) fn try_enter(&self, slots: &[Slot]) -> Result<(), Vec<Slot>> {
        for slot in slots {
            self.in_flight[slot.index() as usize].fetch_add(1, Ordering::SeqCst);
        }
        let frozen: Vec<Slot> = slots
            .iter()
            .copied()
            .filter(|s| self.is_frozen(*s))
            .collect();
        if frozen.is_empty() {
            return Ok(());
        }
        self.leave(slots);
        Err(frozen)
    }

    /// Counts a batch out of `slots` (as entered).
    pub(crate) fn leave(&self, slots: &[Slot]) {
        for slot in slots {
            let before = self.in_flight[slot.index() as usize].fetch_sub(1, Ordering::SeqCst);
            assert!(
                before > 0,
                "slot {} left more often than entered",
                slot.index()
            );
        }
    }

    pub(crate) fn set_frozen(&self, first: Slot, last: Slot, frozen: bool) {
        for index in first.index() as usize..=last.index() as usize {
            let bit = 1u64 << (index % WORD_BITS);
            let word = &self.frozen[index / WORD_BITS];
            if frozen {
                word.fetch_or(bit, Ordering::SeqCst);
            } else {
                word.fetch_and(!bit, Ordering::SeqCst);
            }
        }
    }

    /// Batches in flight in `first..=last`.
    pub(crate) fn busy(&self, first: Slot, last: Slot) -> u64 {
        (first.index() as usize..=last.index() as usize)
            .map(|index| u64::from(self.in_flight[index].load(Ordering::SeqCst)))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frozen_slot_refuses_and_counts_nothing() {
        let gate = Gate::default();
        let (a, b) = (Slot::new(7), Slot::new(300));
        gate.try_enter(&[a, b]).unwrap();
        assert_eq!(gate.busy(a, b), 2);
        gate.set_frozen(Slot::new(300), Slot::new(301), true);
        assert_eq!(gate.try_enter(&[a, b]), Err(vec![b]));
        assert_eq!(gate.busy(a, b), 2, "a refused batch is not counted");
        gate.leave(&[a, b]);
        assert_eq!(gate.busy(Slot::new(0), Slot::new(u16::MAX)), 0);
        gate.set_frozen(Slot::new(300), Slot::new(301), false);
        gate.try_enter(&[b]).unwrap();
        gate.leave(&[b]);
    }

    #[test]
    fn concurrent_batches_are_either_counted_or_refused() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let gate = Arc::new(Gate::default());
        let slot = Slot::new(42);
        let inside = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (gate, inside, stop) = (gate.clone(), inside.clone(), stop.clone());
                std::thread::spawn(move || {
                    for _ in 0..200_000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        if gate.try_enter(&[slot]).is_ok() {
                            inside.fetch_add(1, Ordering::SeqCst);
                            inside.fetch_sub(1, Ordering::SeqCst);
                            gate.leave(&[slot]);
                        }
                    }
                })
            })
            .collect();
        gate.set_frozen(slot, slot, true);
        while gate.busy(slot, slot) > 0 {
            std::hint::spin_loop();
        }
        // Drained: from now on nothing may be inside.
        for _ in 0..10_000 {
            assert_eq!(inside.load(Ordering::SeqCst), 0);
        }
        stop.store(true, Ordering::Relaxed);
        workers.into_iter().for_each(|w| w.join().unwrap());
    }
}
