//! Ownership table tests against the embedded store.

use std::collections::HashMap;
use std::sync::Arc;

use futures::executor::block_on;
use proptest::prelude::*;

use super::*;
use crate::slot::Cell;
use crate::store::embedded::{EmbeddedOptions, EmbeddedStore};

fn open() -> (tempfile::TempDir, Arc<EmbeddedStore>) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).expect("open");
    (dir, store)
}

fn dc(name: &str) -> DcId {
    DcId::new(name).expect("dc id")
}

fn dcs() -> Vec<DcId> {
    vec![dc("dc-a"), dc("dc-b"), dc("dc-c")]
}

fn meta() -> ChangeMeta {
    ChangeMeta::new("test", "because")
}

fn user(name: &str) -> UserId {
    UserId::new(name).expect("user id")
}

/// Commits a write to `key` fenced by `fence`.
fn fenced_write(store: &dyn Store, fence: &Fence) -> Result<u64, CommitError> {
    let mut txn = store.begin().expect("begin");
    fence.apply(&mut *txn).expect("fence");
    txn.set(b"money", b"moved").expect("set");
    block_on(txn.commit())
}

#[test]
fn bootstrap_spreads_whole_cells_and_runs_once() {
    let (_dir, store) = open();
    let version = block_on(bootstrap(&*store, &dcs(), &meta())).expect("bootstrap");
    assert_eq!(version, Some(1));
    let table = block_on(OwnershipTable::read(&*store)).expect("read");
    assert_eq!(table.version, 1);
    let counts = table.slot_counts();
    assert_eq!(counts.values().sum::<usize>(), SLOT_COUNT as usize);
    assert_eq!(counts.len(), 3);
    // Every cell belongs to one DC as a whole.
    for index in 0..256u16 {
        let cell = Cell::new(index).expect("cell");
        let owners: std::collections::BTreeSet<_> = cell
            .slots()
            .map(|s| table.slot_owner(s).expect("owned").dc.clone())
            .collect();
        assert_eq!(owners.len(), 1, "cell {index} is split");
    }
    assert_eq!(
        block_on(bootstrap(&*store, &dcs(), &meta())).expect("again"),
        None
    );
    let history = block_on(history(&*store, 0, 10)).expect("history");
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].slots.len(), 3, "three contiguous ranges");
}

#[test]
fn a_move_bumps_epochs_and_fences_out_the_previous_owner() {
    let (_dir, store) = open();
    block_on(bootstrap(&*store, &dcs(), &meta())).expect("bootstrap");
    let alice = user("alice");
    let stale = block_on(Fence::read(&*store, &alice)).expect("fence");
    let before = stale.owner().expect("decode").expect("owned");
    assert_eq!(before.epoch, 1);
    let target = dcs()
        .into_iter()
        .find(|d| *d != before.dc)
        .expect("another DC");
    let plan = ChangePlan::move_slots([slot_of(&alice)], Some(&before.dc), &target);
    assert_eq!(
        block_on(apply_change(&*store, &plan, &meta())).expect("move"),
        2
    );
    let fresh = block_on(Fence::read(&*store, &alice)).expect("fence");
    assert_eq!(
        fresh.owner().expect("decode"),
        Some(Owner {
            dc: target.clone(),
            epoch: 2
        })
    );
    // The stale writer's commit fails on the fence key and writes nothing.
    match fenced_write(&*store, &stale) {
        Err(CommitError::PreconditionFailed { keys }) => {
            assert!(keys.iter().all(|k| stale.is_fence_key(k)), "{keys:?}");
        }
        other => panic!("stale fence committed: {other:?}"),
    }
    assert_eq!(block_on(store.get(b"money")).expect("read"), None);
    fenced_write(&*store, &fresh).expect("the owner commits");
}

#[test]
fn a_change_that_assumed_the_wrong_owner_changes_nothing() {
    let (_dir, store) = open();
    block_on(bootstrap(&*store, &dcs(), &meta())).expect("bootstrap");
    let before = block_on(OwnershipTable::read(&*store)).expect("read");
    let slot = Slot::new(0);
    let owner = before.slot_owner(slot).expect("owned").dc.clone();
    let wrong = dcs().into_iter().find(|d| *d != owner).expect("other");
    let plan = ChangePlan::move_slots([Slot::new(1), slot], Some(&wrong), &wrong);
    let error = block_on(apply_change(&*store, &plan, &meta())).expect_err("wrong owner");
    assert!(
        matches!(error, OwnershipError::Moved { slot: 1, .. }),
        "{error}"
    );
    assert_eq!(
        block_on(OwnershipTable::read(&*store)).expect("read"),
        before
    );
}

#[test]
fn whitelist_removal_never_revives_a_fence_from_before_the_whitelisting() {
    let (_dir, store) = open();
    block_on(bootstrap(&*store, &dcs(), &meta())).expect("bootstrap");
    let bob = user("bob");
    let at_x = block_on(Fence::read(&*store, &bob)).expect("fence");
    let x = at_x.owner().expect("decode").expect("owned").dc;
    let y = dcs().into_iter().find(|d| *d != x).expect("other");
    let add = ChangePlan {
        slots: Vec::new(),
        users: vec![(bob.clone(), None, Some(y.clone()))],
    };
    block_on(apply_change(&*store, &add, &meta())).expect("whitelist");
    let at_y = block_on(Fence::read(&*store, &bob)).expect("fence");
    assert_eq!(at_y.owner().expect("decode").expect("owned").dc, y);
    assert!(fenced_write(&*store, &at_x).is_err(), "x is fenced out");
    let remove = ChangePlan {
        slots: Vec::new(),
        users: vec![(bob.clone(), Some(y.clone()), None)],
    };
    block_on(apply_change(&*store, &remove, &meta())).expect("remove");
    assert!(
        fenced_write(&*store, &at_x).is_err(),
        "no ABA: x's old fence stays dead"
    );
    assert!(fenced_write(&*store, &at_y).is_err(), "y is fenced out");
    let back = block_on(Fence::read(&*store, &bob)).expect("fence");
    assert_eq!(back.owner().expect("decode").expect("owned").dc, x);
    fenced_write(&*store, &back).expect("x commits again after reloading");
}

#[test]
fn leases_heartbeat_take_over_and_rejoin_owning_nothing() {
    let (_dir, store) = open();
    block_on(bootstrap(&*store, &dcs(), &meta())).expect("bootstrap");
    let a = dc("dc-a");
    let lease = block_on(register(&*store, &a, "127.0.0.1:1", 2_000)).expect("register");
    assert_eq!((lease.incarnation, lease.beat), (1, 0));
    let table = block_on(OwnershipTable::read(&*store)).expect("read");
    assert!(table
        .slots_of(&a)
        .all(|s| table.slot_owner(s).expect("o").epoch == 2));
    let lease = block_on(heartbeat(&*store, &lease)).expect("beat");
    assert_eq!(lease.beat, 1);
    // An observer saw beat 0 only: its takeover is refused, the DC is alive.
    let mut stale = lease.clone();
    stale.beat = 0;
    let survivors = [dc("dc-b"), dc("dc-c")];
    let error = block_on(take_over(&*store, &stale, &survivors, &meta())).expect_err("alive");
    assert!(matches!(error, OwnershipError::LeaseLost { .. }), "{error}");
    let owned = table.slots_of(&a).count();
    block_on(take_over(&*store, &lease, &survivors, &meta())).expect("take over");
    let table = block_on(OwnershipTable::read(&*store)).expect("read");
    assert_eq!(table.slots_of(&a).count(), 0);
    assert_eq!(
        table.slot_counts().values().sum::<usize>(),
        SLOT_COUNT as usize
    );
    assert!(table.slot_counts()[&dc("dc-b")] >= owned / 2);
    // The dead DC's next heartbeat fails; it registers again owning nothing.
    let error = block_on(heartbeat(&*store, &lease)).expect_err("lost");
    assert!(matches!(error, OwnershipError::LeaseLost { .. }), "{error}");
    let again = block_on(register(&*store, &a, "127.0.0.1:1", 2_000)).expect("register");
    assert_eq!((again.incarnation, again.state), (2, LeaseState::Live));
    let table = block_on(OwnershipTable::read(&*store)).expect("read");
    assert_eq!(table.slots_of(&a).count(), 0);
    let leases = block_on(read_leases(&*store)).expect("leases");
    assert_eq!(leases, vec![again]);
    let history = block_on(history(&*store, 0, 100)).expect("history");
    assert_eq!(history.last().expect("some").version, table.version);
    assert_eq!(
        history.iter().filter(|c| c.declared_dead.is_some()).count(),
        1
    );
}

#[test]
fn takeover_moves_whitelisted_users_of_the_dead_dc() {
    let (_dir, store) = open();
    block_on(bootstrap(&*store, &dcs(), &meta())).expect("bootstrap");
    let a = dc("dc-a");
    let carol = user("carol");
    let add = ChangePlan {
        slots: Vec::new(),
        users: vec![(carol.clone(), None, Some(a.clone()))],
    };
    block_on(apply_change(&*store, &add, &meta())).expect("whitelist");
    let lease = block_on(register(&*store, &a, "127.0.0.1:1", 2_000)).expect("register");
    block_on(take_over(&*store, &lease, &[dc("dc-b")], &meta())).expect("take over");
    let table = block_on(OwnershipTable::read(&*store)).expect("read");
    assert_eq!(table.owner_of(&carol).expect("owned").dc, dc("dc-b"));
}

/// One random ownership operation.
#[derive(Debug, Clone)]
enum Op {
    MoveCellSlots { cell: u16, count: u16, to: usize },
    Whitelist { user: usize, to: Option<usize> },
    Register { dc: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u16..4, 1u16..=256, 0usize..3).prop_map(|(cell, count, to)| Op::MoveCellSlots {
            cell,
            count,
            to
        }),
        (0usize..6, proptest::option::of(0usize..3))
            .prop_map(|(user, to)| Op::Whitelist { user, to }),
        (0usize..3).prop_map(|dc| Op::Register { dc }),
    ]
}

fn apply_op(store: &dyn Store, op: &Op) {
    let dcs = dcs();
    let table = block_on(OwnershipTable::read(store)).expect("read");
    let result = match op {
        Op::MoveCellSlots { cell, count, to } => {
            let cell = Cell::new(*cell).expect("cell");
            let plan = ChangePlan {
                slots: cell
                    .slots()
                    .take(usize::from(*count))
                    .map(|s| {
                        (
                            s,
                            table.slot_owner(s).map(|o| o.dc.clone()),
                            dcs[*to].clone(),
                        )
                    })
                    .collect(),
                users: Vec::new(),
            };
            block_on(apply_change(store, &plan, &meta())).map(|_| ())
        }
        Op::Whitelist { user: index, to } => {
            let user = test_user(*index);
            let current = table.users.get(&user).map(|o| o.dc.clone());
            let plan = ChangePlan {
                slots: Vec::new(),
                users: vec![(user, current, to.map(|t| dcs[t].clone()))],
            };
            block_on(apply_change(store, &plan, &meta())).map(|_| ())
        }
        Op::Register { dc } => {
            block_on(register(store, &dcs[*dc], "127.0.0.1:1", 1_000)).map(|_| ())
        }
    };
    result.expect("operation applies");
}

/// Users in the first cells (so that random moves of cells 0..4 touch them often).
fn test_user(index: usize) -> UserId {
    (0..)
        .map(|n| user(&format!("u{index}-{n}")))
        .find(|u| slot_of(u).cell().index() < 4)
        .expect("some user lands in the first cells")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// INV-4 at the table level: whenever a user's owner changes, every fence read before
    /// the change is dead, and a fence once dead never comes back (no ABA).
    #[test]
    fn fences_die_with_every_owner_change_and_never_revive(
        ops in proptest::collection::vec(op(), 1..14)
    ) {
        let (_dir, store) = open();
        block_on(bootstrap(&*store, &dcs(), &meta())).expect("bootstrap");
        let users: Vec<UserId> = (0..6).map(test_user).collect();
        let mut seen: HashMap<UserId, Vec<Fence>> = HashMap::new();
        for user in &users {
            seen.insert(user.clone(), vec![block_on(Fence::read(&*store, user)).expect("f")]);
        }
        for op in &ops {
            apply_op(&*store, op);
            for user in &users {
                let fence = block_on(Fence::read(&*store, user)).expect("fence");
                let history = seen.get_mut(user).expect("tracked");
                let last = history.last().expect("one at least");
                if fence.owner().expect("decode").map(|o| o.dc)
                    != last.owner().expect("decode").map(|o| o.dc)
                {
                    prop_assert_ne!(&fence, last, "owner changed but the fence did not");
                }
                if &fence != last {
                    prop_assert!(!history.contains(&fence), "a dead fence came back: {op:?}");
                    history.push(fence);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// A table kept current by `refresh` (reading only what the history says changed)
    /// equals a full read after every change, whatever the mix of changes.
    #[test]
    fn refresh_from_history_equals_a_full_read(
        ops in proptest::collection::vec(op(), 1..14),
        every in 1usize..4,
    ) {
        let (_dir, store) = open();
        block_on(bootstrap(&*store, &dcs(), &meta())).expect("bootstrap");
        let mut cached = std::sync::Arc::new(block_on(OwnershipTable::read(&*store)).expect("read"));
        for (position, op) in ops.iter().enumerate() {
            apply_op(&*store, op);
            if position % every == 0 {
                cached = block_on(refresh(&*store, &cached)).expect("refresh");
                let full = block_on(OwnershipTable::read(&*store)).expect("read");
                prop_assert_eq!(&*cached, &full, "after {:?}", op);
            }
        }
        cached = block_on(refresh(&*store, &cached)).expect("refresh");
        prop_assert_eq!(&*cached, &block_on(OwnershipTable::read(&*store)).expect("read"));
    }
}
