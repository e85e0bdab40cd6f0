//! `split(n)` hot accounts: an account's balance spread over `n` part accounts, each its
//! own actor, so debits (and credits) of one hot account do not serialize on one actor.
//!
//! Owns the mapping between a split account and its parts: part `k` of account `A` is the
//! account `A.p{k}` (same user, so the same slot and DC; same currency and kind; standard
//! mode), created with `A` in one batch. A transfer, hold or capture naming `A` runs on
//! part `hash(id) mod n` (a retry with the same id reaches the same part, so idempotency
//! is unchanged). A lookup of `A` reports the exact sum of its parts. Before a batch
//! debits a part, the part is topped up from its richest siblings when it cannot cover the
//! batch's debits but the account as a whole can (rebalancing: transfers between parts,
//! waited for until their credit legs are durable). Every part keeps INV-5 on its own
//! (split customer accounts have no overdraft), so the whole account never goes below zero.
//!
//! Must never: let a part overdraw; report a balance other than the sum of the parts;
//! rebalance without a bound (at most [`REBALANCE_WAIT_MAX`] per batch, ids unique).

use std::time::Duration;

use cells::ids::{AccountId, TransferId};
use cells::ledger::ErrorCode;

/// Most parts of a split account.
pub const PARTS_MAX: u16 = 64;
/// Longest a batch waits for its rebalancing transfers to complete.
pub const REBALANCE_WAIT_MAX: Duration = Duration::from_secs(2);

/// The id of part `k` of `parent`.
pub fn part_id(parent: &AccountId, k: u16) -> Result<AccountId, ErrorCode> {
    AccountId::new(&format!("{}.p{k}", parent.as_str())).map_err(|_| ErrorCode::InvalidId)
}

/// Every part of `parent`.
pub fn part_ids(parent: &AccountId, parts: u16) -> Result<Vec<AccountId>, ErrorCode> {
    (0..parts).map(|k| part_id(parent, k)).collect()
}

/// The part a command with id `id` runs on (stable: a retry reaches the same part).
pub fn part_for(id: &str, parts: u16) -> u16 {
    assert!(parts > 0);
    (xxhash_rust::xxh3::xxh3_64(id.as_bytes()) % u64::from(parts)) as u16
}

/// `A.p3` → `("A", 3)`. Called for every command routed: it looks for the last `.` (a
/// byte search), not for the two-byte pattern (a substring searcher set up per call).
pub fn parent_of(account: &AccountId) -> Option<(AccountId, u16)> {
    let text = account.as_str();
    let dot = text.rfind('.')?;
    let k: u16 = text[dot + 1..].strip_prefix('p')?.parse().ok()?;
    Some((AccountId::new(&text[..dot]).ok()?, k))
}

/// A rebalancing transfer's id: unique per (parent, batch nonce, source part).
pub fn rebalance_id(parent: &AccountId, nonce: u64, from: u16, to: u16) -> TransferId {
    let text = format!("rb:{nonce:x}:{from}-{to}:{}", parent.as_str());
    // Long parent ids are cut; the nonce keeps the id unique.
    let cut: String = text.chars().take(64).collect();
    TransferId::new(&cut).expect("rebalance ids use id characters only")
}

/// How much to move from which parts so that part `short` holds `need`: takes from the
/// richest first. `available[k]` is part k's available balance. None when the parts
/// together cannot cover `need`.
pub fn plan_top_up(available: &[i128], short: usize, need: i128) -> Option<Vec<(usize, i128)>> {
    let mut missing = need - available[short];
    if missing <= 0 {
        return Some(Vec::new());
    }
    let mut donors: Vec<(usize, i128)> = available
        .iter()
        .enumerate()
        .filter(|(k, a)| *k != short && **a > 0)
        .map(|(k, a)| (k, *a))
        .collect();
    donors.sort_by_key(|donor| std::cmp::Reverse(donor.1));
    let mut moves = Vec::new();
    for (k, free) in donors {
        if missing <= 0 {
            break;
        }
        let take = free.min(missing);
        moves.push((k, take));
        missing -= take;
    }
    (missing <= 0).then_some(moves)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip_and_are_stable() {
        let parent = AccountId::new("merchant-7").unwrap();
        let part = part_id(&parent, 3).unwrap();
        assert_eq!(part.as_str(), "merchant-7.p3");
        assert_eq!(parent_of(&part), Some((parent.clone(), 3)));
        assert_eq!(parent_of(&parent), None);
        assert_eq!(part_for("t-1", 8), part_for("t-1", 8));
        assert!(part_id(&AccountId::new(&"x".repeat(63)).unwrap(), 1).is_err());
        let spread: std::collections::HashSet<u16> =
            (0..200).map(|i| part_for(&format!("t-{i}"), 4)).collect();
        assert_eq!(spread.len(), 4, "ids spread over every part");
    }

    proptest::proptest! {
        /// The byte search splits exactly as splitting at the last `.p` does.
        #[test]
        fn parent_of_splits_at_the_last_dot_p(id in "[a-p0-9.]{1,12}") {
            let account = AccountId::new(&id).unwrap();
            let expected = id.rsplit_once(".p").and_then(|(parent, k)| {
                Some((AccountId::new(parent).ok()?, k.parse::<u16>().ok()?))
            });
            proptest::prop_assert_eq!(parent_of(&account), expected);
        }
    }

    #[test]
    fn top_up_takes_from_the_richest_and_never_more_than_exists() {
        assert_eq!(plan_top_up(&[10, 50, 30], 0, 5), Some(vec![]));
        assert_eq!(
            plan_top_up(&[10, 50, 30], 0, 70),
            Some(vec![(1, 50), (2, 10)])
        );
        assert_eq!(plan_top_up(&[10, 50, 30], 0, 91), None);
        assert_eq!(plan_top_up(&[0, -5, 7], 0, 7), Some(vec![(2, 7)]));
    }
}
