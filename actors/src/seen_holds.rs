//! Where the holds this ledger created lie: hold id to its account and currency.
//!
//! Owns a bounded map, filled when a hold command is answered `hold_created` (the hold is
//! durable). A hold stays in it once released or captured (its account and currency still
//! hold; forgetting each cost more than the rare command on a finished hold). A release
//! or capture of a hold found here is routed without reading the hold record first: its
//! account and currency never change, and the record's other use, the state of a hold that
//! is no longer active, is asked for only when the actor finds the hold inactive (the
//! ledger then runs the command again on the record it reads; see `Ledger::execute_plain`).
//! A read of the record per release or capture was a tenth of the driver's samples in the
//! `holds` benchmark (BENCHMARKS.md).
//!
//! Must never: answer for a hold it was not told of (an id not here is read from the
//! store), or grow past [`SEEN_HOLDS_MAX`] (it is cleared whole when full: forgetting costs
//! only the read).

use std::sync::Mutex;

use foldhash::{HashMap, HashMapExt};

use cells::ids::{AccountId, HoldId};
use cells::money::Currency;

/// Holds remembered at most.
pub const SEEN_HOLDS_MAX: usize = 65_536;

/// Where a hold lies: fixed when it is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HoldRoute {
    pub account: AccountId,
    pub currency: Currency,
}

/// See the module docs.
pub(crate) struct SeenHolds {
    holds: Mutex<HashMap<HoldId, HoldRoute>>,
}

impl Default for SeenHolds {
    fn default() -> Self {
        SeenHolds {
            holds: Mutex::new(HashMap::new()),
        }
    }
}

impl SeenHolds {
    /// Remembers holds known to exist (durable, with these accounts and currencies).
    pub(crate) fn remember(&self, created: impl IntoIterator<Item = (HoldId, HoldRoute)>) {
        let Ok(mut holds) = self.holds.lock() else {
            return;
        };
        for (id, route) in created {
            if holds.len() >= SEEN_HOLDS_MAX {
                holds.clear();
            }
            holds.insert(id, route);
        }
    }

    /// The routes of those of `ids` remembered here.
    pub(crate) fn routes<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a HoldId>,
    ) -> Vec<(HoldId, HoldRoute)> {
        let Ok(holds) = self.holds.lock() else {
            return Vec::new();
        };
        ids.into_iter()
            .filter_map(|id| holds.get(id).map(|route| (id.clone(), route.clone())))
            .collect()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.holds.lock().map(|holds| holds.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(n: usize) -> (HoldId, HoldRoute) {
        let id = HoldId::new(&format!("h-{n}")).expect("valid id");
        let route = HoldRoute {
            account: AccountId::new(&format!("a-{}", n % 7)).expect("valid id"),
            currency: "USD".parse().expect("known currency"),
        };
        (id, route)
    }

    #[test]
    fn answers_only_for_holds_it_was_told_of() {
        let seen = SeenHolds::default();
        seen.remember([hold(1), hold(2)]);
        let (one, two, three) = (hold(1).0, hold(2).0, hold(3).0);
        assert_eq!(seen.routes([&one, &three]), vec![hold(1)]);
        assert_eq!(seen.routes([&three, &two]), vec![hold(2)]);
    }

    #[test]
    fn stays_within_its_bound() {
        let seen = SeenHolds::default();
        seen.remember((0..SEEN_HOLDS_MAX + 10).map(hold));
        assert!(seen.len() <= SEEN_HOLDS_MAX);
        // The latest holds are there (the map was cleared when full, then refilled).
        let last = hold(SEEN_HOLDS_MAX + 9).0;
        assert_eq!(seen.routes([&last]).len(), 1);
    }
}
