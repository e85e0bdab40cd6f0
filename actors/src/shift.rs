//! The shift-plan controller: stores plans and moves them between stages.
//!
//! Owns the plan records in the store (created once, updated with a compare-and-set on the
//! previous record so two controllers cannot both move a plan) and the execution of a
//! plan's moves through the handover protocol, all runs of one step together: freeze every
//! run at the DC that serves it, one ownership change for every slot and whitelisted user
//! of the step (with the expected owners checked in its transaction), reload at the
//! destination, thaw. A rollback is the same step backwards, at once.
//!
//! Must never: move anything outside the plan; record a plan position the table does not
//! show (the table changes first; a step that failed after it is finished by running it
//! again, which skips what already moved); leave a DC frozen when a step fails (DCs also
//! thaw on their own after the freeze bound).

use std::collections::BTreeSet;
use std::time::Instant;

use cells::ids::{DcId, UserId};
use cells::keys;
use cells::ownership::{self, ChangeMeta, ChangePlan, OwnershipError, OwnershipTable};
use cells::records;
use cells::shift::{Moves, PlanError, ShiftPlan, PLAN_WHITELIST_MAX};
use cells::slot::{slot_of, Slot};
use cells::store::{CommitError, RangeRequest, Store, StoreError};
use futures::future::join_all;
use serde::Serialize;

use crate::handover::{DcLinks, HandoverError, HANDOVER_FREEZE_MS};

/// Most plans kept in the store.
pub const PLANS_MAX: usize = 1_000;

/// Why a plan operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ShiftError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("no plan named {0}")]
    UnknownPlan(String),
    #[error("a plan named {0} exists")]
    PlanExists(String),
    #[error("plan {0} changed while this operation ran; read it again and retry")]
    Conflict(String),
    #[error("slot {slot} is owned by {current:?}; the plan expected {expected:?} (someone else moved it)")]
    Diverged {
        slot: u16,
        current: Option<String>,
        expected: Option<String>,
    },
    #[error("cells {cells:?} of this plan are in another plan ({other})")]
    Overlap { cells: Vec<u16>, other: String },
    #[error("{0} plans exist; delete some first")]
    TooManyPlans(usize),
    #[error(transparent)]
    Handover(#[from] HandoverError),
    #[error(transparent)]
    Ownership(#[from] OwnershipError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Commit(#[from] CommitError),
    #[error(transparent)]
    Record(#[from] records::RecordError),
}

/// What one step did.
#[derive(Debug, Clone, Serialize)]
pub struct ShiftReport {
    pub plan: String,
    pub from_stage: String,
    pub to_stage: String,
    pub slots_moved: usize,
    pub users_moved: usize,
    /// Table version after the step.
    pub version: u64,
    /// First freeze to last thaw, as the controller saw it.
    pub freeze_window_us: u64,
}

/// Every plan, by name.
pub async fn list_plans(store: &dyn Store) -> Result<Vec<ShiftPlan>, ShiftError> {
    let rows = store
        .get_range(RangeRequest::prefix(
            &keys::shift_plans_prefix(),
            PLANS_MAX + 1,
        ))
        .await?;
    rows.iter()
        .map(|(_, value)| records::decode::<ShiftPlan>("shift plan", value).map_err(Into::into))
        .collect()
}

/// One plan and its stored bytes (for the compare-and-set).
pub async fn load_plan(store: &dyn Store, name: &str) -> Result<(ShiftPlan, Vec<u8>), ShiftError> {
    let bytes = store
        .get(&keys::shift_plan(name))
        .await?
        .ok_or_else(|| ShiftError::UnknownPlan(name.to_string()))?;
    Ok((records::decode("shift plan", &bytes)?, bytes))
}

async fn save(
    store: &dyn Store,
    plan: &ShiftPlan,
    previous: Option<&[u8]>,
) -> Result<(), ShiftError> {
    let key = keys::shift_plan(&plan.name);
    let mut txn = store.begin()?;
    txn.require(&key, previous)?;
    txn.set(&key, &records::encode(plan))?;
    match txn.commit().await {
        Ok(_) => Ok(()),
        Err(CommitError::PreconditionFailed { .. }) if previous.is_none() => {
            Err(ShiftError::PlanExists(plan.name.clone()))
        }
        Err(CommitError::PreconditionFailed { .. }) => Err(ShiftError::Conflict(plan.name.clone())),
        Err(error) => Err(error.into()),
    }
}

/// Stores a new plan (position 0). Its cells must not be in another plan that has moved
/// anything.
pub async fn create_plan(store: &dyn Store, plan: &ShiftPlan) -> Result<(), ShiftError> {
    let plans = list_plans(store).await?;
    if plans.len() >= PLANS_MAX {
        return Err(ShiftError::TooManyPlans(plans.len()));
    }
    let mine: BTreeSet<u16> = plan.cells.iter().copied().collect();
    for other in plans.iter().filter(|other| other.position > 0) {
        let shared: Vec<u16> = other
            .cells
            .iter()
            .copied()
            .filter(|c| mine.contains(c))
            .collect();
        if !shared.is_empty() {
            return Err(ShiftError::Overlap {
                cells: shared,
                other: other.name.clone(),
            });
        }
    }
    save(store, plan, None).await
}

/// Deletes a plan that is at position 0 (nothing moved).
pub async fn delete_plan(store: &dyn Store, name: &str) -> Result<(), ShiftError> {
    let (plan, bytes) = load_plan(store, name).await?;
    if plan.position != 0 {
        return Err(PlanError::Position {
            name: plan.name,
            position: plan.position,
            stages: plan.stages.len(),
            what: "roll it back to none before deleting it",
        }
        .into());
    }
    let key = keys::shift_plan(name);
    let mut txn = store.begin()?;
    txn.require(&key, Some(&bytes))?;
    txn.clear(&key)?;
    txn.commit().await.map_err(|error| match error {
        CommitError::PreconditionFailed { .. } => ShiftError::Conflict(name.to_string()),
        other => other.into(),
    })?;
    Ok(())
}

/// Moves the plan one stage forward.
pub async fn advance(
    store: &dyn Store,
    links: &DcLinks,
    name: &str,
    meta: &ChangeMeta,
) -> Result<ShiftReport, ShiftError> {
    let (plan, bytes) = load_plan(store, name).await?;
    if plan.paused {
        return Err(PlanError::Paused(plan.name).into());
    }
    if plan.position >= plan.stages.len() {
        return Err(PlanError::Position {
            name: plan.name.clone(),
            position: plan.position,
            stages: plan.stages.len(),
            what: "it is complete",
        }
        .into());
    }
    step(store, links, plan, bytes, plan_position_plus_one, meta).await
}

fn plan_position_plus_one(plan: &ShiftPlan) -> usize {
    plan.position + 1
}

/// Moves the plan back to an earlier stage (`none` for before the first), at once.
/// Allowed while paused.
pub async fn rollback(
    store: &dyn Store,
    links: &DcLinks,
    name: &str,
    to_stage: &str,
    meta: &ChangeMeta,
) -> Result<ShiftReport, ShiftError> {
    let (plan, bytes) = load_plan(store, name).await?;
    let target = plan
        .position_of(to_stage)
        .ok_or_else(|| PlanError::BadStage(to_stage.to_string()))?;
    if target >= plan.position {
        return Err(PlanError::Position {
            name: plan.name.clone(),
            position: plan.position,
            stages: plan.stages.len(),
            what: "a rollback goes to an earlier stage",
        }
        .into());
    }
    step(store, links, plan, bytes, move |_| target, meta).await
}

/// Pauses (no advance until resumed) or resumes a plan.
pub async fn set_paused(
    store: &dyn Store,
    name: &str,
    paused: bool,
    who: &str,
) -> Result<ShiftPlan, ShiftError> {
    let (mut plan, bytes) = load_plan(store, name).await?;
    plan.paused = paused;
    plan.updated_ms = ownership::now_ms();
    plan.updated_by = who.to_string();
    save(store, &plan, Some(&bytes)).await?;
    Ok(plan)
}

/// Adds a user to (or removes one from) the plan's whitelist; when the whitelist stage is
/// done the user moves at once (to the target, or back to the slot's owner).
pub async fn whitelist(
    store: &dyn Store,
    links: &DcLinks,
    name: &str,
    user: &UserId,
    add: bool,
    meta: &ChangeMeta,
) -> Result<ShiftReport, ShiftError> {
    let (mut plan, bytes) = load_plan(store, name).await?;
    if !plan.covers(user) {
        return Err(PlanError::UserOutsidePlan(user.to_string()).into());
    }
    let listed = plan.whitelist.contains(user);
    let stage = plan.stage_name(plan.position);
    let mut report = ShiftReport {
        plan: plan.name.clone(),
        from_stage: stage.clone(),
        to_stage: stage,
        slots_moved: 0,
        users_moved: 0,
        version: 0,
        freeze_window_us: 0,
    };
    if add == listed {
        report.version = ownership::read_version(store).await?;
        return Ok(report);
    }
    if add && plan.whitelist.len() >= PLAN_WHITELIST_MAX {
        return Err(PlanError::WhitelistFull.into());
    }
    if plan.whitelist_active(plan.position) {
        let moves = Moves {
            users: vec![if add {
                (user.clone(), None, Some(plan.to.clone()))
            } else {
                (user.clone(), Some(plan.to.clone()), None)
            }],
            ..Moves::default()
        };
        let done = execute(store, links, &plan, &moves, meta).await?;
        report.users_moved = done.users;
        report.version = done.version;
        report.freeze_window_us = done.window_us;
    } else {
        report.version = ownership::read_version(store).await?;
    }
    if add {
        plan.whitelist.push(user.clone());
    } else {
        plan.whitelist.retain(|u| u != user);
    }
    plan.updated_ms = ownership::now_ms();
    plan.updated_by = meta.who.clone();
    save(store, &plan, Some(&bytes)).await?;
    Ok(report)
}

async fn step(
    store: &dyn Store,
    links: &DcLinks,
    mut plan: ShiftPlan,
    bytes: Vec<u8>,
    target: impl Fn(&ShiftPlan) -> usize,
    meta: &ChangeMeta,
) -> Result<ShiftReport, ShiftError> {
    let from = plan.position;
    let to = target(&plan);
    let moves = plan.moves(from, to);
    let done = execute(store, links, &plan, &moves, meta).await?;
    plan.position = to;
    plan.updated_ms = ownership::now_ms();
    plan.updated_by = meta.who.clone();
    save(store, &plan, Some(&bytes)).await?;
    metrics::counter!("tessera_shift_steps_total").increment(1);
    metrics::histogram!("tessera_shift_freeze_window_seconds").record(done.window_us as f64 / 1e6);
    tracing::info!(plan = %plan.name, from = %plan.stage_name(from), to = %plan.stage_name(to),
        slots = done.slots, users = done.users, version = done.version, "shift step");
    Ok(ShiftReport {
        plan: plan.name.clone(),
        from_stage: plan.stage_name(from),
        to_stage: plan.stage_name(to),
        slots_moved: done.slots,
        users_moved: done.users,
        version: done.version,
        freeze_window_us: done.window_us,
    })
}

struct Done {
    slots: usize,
    users: usize,
    version: u64,
    window_us: u64,
}

/// Consecutive slots as `(first, last)` runs.
fn runs_of(slots: &[u16]) -> Vec<(u16, u16)> {
    let mut runs: Vec<(u16, u16)> = Vec::new();
    for slot in slots {
        match runs.last_mut() {
            Some((_, last)) if u32::from(*last) + 1 == u32::from(*slot) => *last = *slot,
            _ => runs.push((*slot, *slot)),
        }
    }
    runs
}

/// Runs `moves`, skipping what the table already shows done.
async fn execute(
    store: &dyn Store,
    links: &DcLinks,
    plan: &ShiftPlan,
    moves: &Moves,
    meta: &ChangeMeta,
) -> Result<Done, ShiftError> {
    let table = OwnershipTable::read(store).await?;
    let mut slots = Vec::new();
    if let (Some(from), Some(to)) = (&moves.slots_from, &moves.slots_to) {
        for slot in ShiftPlan::slots_of(moves) {
            let current = table.slot_owner(slot).map(|owner| &owner.dc);
            if current == Some(to) {
                continue;
            }
            if current != Some(from) {
                return Err(ShiftError::Diverged {
                    slot: slot.index() as u16,
                    current: current.map(ToString::to_string),
                    expected: Some(from.to_string()),
                });
            }
            slots.push(slot.index() as u16);
        }
    }
    let users: Vec<(UserId, Option<DcId>, Option<DcId>)> = moves
        .users
        .iter()
        .filter(|(user, _, new)| table.users.get(user).map(|o| &o.dc) != new.as_ref())
        .cloned()
        .collect();
    if slots.is_empty() && users.is_empty() {
        return Ok(Done {
            slots: 0,
            users: 0,
            version: table.version,
            window_us: 0,
        });
    }
    let runs = runs_of(&slots);
    // Freeze: the slot runs at the DC serving them; each moving user's slot at both DCs.
    let mut freezes: Vec<(DcId, u16, u16)> = Vec::new();
    if let Some(from) = &moves.slots_from {
        freezes.extend(
            runs.iter()
                .map(|(first, last)| (from.clone(), *first, *last)),
        );
    }
    for (user, _, _) in &users {
        let slot = slot_of(user).index() as u16;
        freezes.push((plan.from.clone(), slot, slot));
        freezes.push((plan.to.clone(), slot, slot));
    }
    let source_dc = moves
        .slots_from
        .clone()
        .unwrap_or_else(|| plan.from.clone());
    let destination_dc = moves.slots_to.clone().unwrap_or_else(|| plan.to.clone());
    let source = links.get(&source_dc).await?;
    let destination = links.get(&destination_dc).await?;
    let link_of = |dc: &DcId| {
        if *dc == source_dc {
            &source
        } else {
            &destination
        }
    };
    let started = Instant::now();
    let frozen = join_all(
        freezes
            .iter()
            .map(|(dc, first, last)| link_of(dc).freeze(*first, *last, HANDOVER_FREEZE_MS)),
    )
    .await;
    let thaw_all = || {
        join_all(
            freezes
                .iter()
                .map(|(dc, first, last)| link_of(dc).thaw(*first, *last)),
        )
    };
    if let Some((index, Err(error))) = frozen.iter().enumerate().find(|(_, r)| r.is_err()) {
        let _ = thaw_all().await;
        return Err(HandoverError::Call {
            dc: freezes[index].0.to_string(),
            error: error.clone(),
        }
        .into());
    }
    let change = ChangePlan {
        slots: match (&moves.slots_from, &moves.slots_to) {
            (Some(from), Some(to)) => slots
                .iter()
                .map(|slot| (Slot::new(*slot), Some(from.clone()), to.clone()))
                .collect(),
            _ => Vec::new(),
        },
        users,
    };
    let version = match ownership::apply_change(store, &change, meta).await {
        Ok(version) => version,
        Err(error) => {
            let _ = thaw_all().await;
            return Err(error.into());
        }
    };
    if let Err(error) = destination.reload().await {
        tracing::warn!(dc = %destination_dc, %error, "destination did not reload the table");
    }
    if !change.users.is_empty() {
        let _ = source.reload().await;
    }
    let thawed = thaw_all().await;
    let window_us = started.elapsed().as_micros() as u64;
    if let Some(Err(error)) = thawed.into_iter().find(Result::is_err) {
        tracing::warn!(%error, "a DC did not confirm the thaw (it thaws on its own after the bound)");
    }
    Ok(Done {
        slots: slots.len(),
        users: change.users.len(),
        version,
        window_us,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn runs_join_consecutive_slots() {
        assert_eq!(
            super::runs_of(&[1, 2, 3, 7, 9, 10]),
            vec![(1, 3), (7, 7), (9, 10)]
        );
        assert!(super::runs_of(&[]).is_empty());
    }
}
