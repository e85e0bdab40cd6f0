//! Handover: the planned move of a run of slots from the DC that owns them to another.
//!
//! Owns the controller side of the protocol, in this order: freeze the slots at the source
//! (new batches for them wait there) and drain the batches in flight; bump owner and epoch
//! in one store transaction; have the destination reload the table; have the source reload
//! it and thaw (its waiting batches are then answered `not_owner` and the caller re-routes).
//! The freeze window (freeze to thaw) is measured and reported. This is the primitive the
//! router's shift stages use.
//!
//! Must never: move slots it did not see owned by one live source (the change's expected
//! owners are checked inside its transaction), or leave the source frozen when a step
//! fails (the source also thaws on its own after the freeze bound).
//!
//! Correctness does not depend on the freeze: a commit the source still makes after the
//! bump fails on its fence. The freeze only keeps such commits from failing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cells::ids::DcId;
use cells::ownership::{self, ChangeMeta, ChangePlan, LeaseState, OwnershipError, OwnershipTable};
use cells::slot::Slot;
use cells::store::Store;
use serde::Serialize;
use wire::dc_client::{DcCallError, DcClient, DcClientOptions};

/// Freeze bound asked of the source: the source thaws on its own after it.
pub const HANDOVER_FREEZE_MS: u32 = 2_000;

/// What one handover did and how long the slots were frozen.
#[derive(Debug, Clone, Serialize)]
pub struct HandoverReport {
    pub first: u16,
    pub last: u16,
    pub from: String,
    pub to: String,
    /// Table version of the change (the current version when nothing had to move).
    pub version: u64,
    /// False when the slots were already at `to`.
    pub moved: bool,
    /// Whether every batch in flight at the source was answered before the bump.
    pub drained: bool,
    pub drain_us: u64,
    /// Freeze to thaw, as the controller saw it.
    pub freeze_window_us: u64,
}

/// Why a handover did not happen (nothing moved, unless `Thaw` says otherwise).
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("slot range {first}..={last} is empty or reversed")]
    BadRange { first: u16, last: u16 },
    #[error("slot {slot} is owned by no DC")]
    Unowned { slot: u16 },
    #[error("slots {first}..={last} have more than one owner ({owners:?}); hand over one owner's run at a time")]
    MixedOwners {
        first: u16,
        last: u16,
        owners: Vec<String>,
    },
    #[error("DC {dc} has no live lease (a dead DC's slots move by takeover, not handover)")]
    NoLiveLease { dc: String },
    #[error("DC {dc} did not answer: {error}")]
    Call { dc: String, error: DcCallError },
    #[error(transparent)]
    Ownership(#[from] OwnershipError),
}

/// Links to DC nodes by DC, made from their leases on first use.
pub struct DcLinks {
    store: Arc<dyn Store>,
    links: Mutex<HashMap<DcId, (String, Arc<DcClient>)>>,
}

impl DcLinks {
    pub fn new(store: Arc<dyn Store>) -> Self {
        DcLinks {
            store,
            links: Mutex::new(HashMap::new()),
        }
    }

    /// A connected link to `dc` (waits up to a second for a new one to connect).
    pub async fn get(&self, dc: &DcId) -> Result<Arc<DcClient>, HandoverError> {
        let leases = ownership::read_leases(&*self.store).await?;
        let lease = leases
            .into_iter()
            .find(|l| &l.dc == dc && l.state == LeaseState::Live)
            .ok_or_else(|| HandoverError::NoLiveLease { dc: dc.to_string() })?;
        let link = {
            let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
            match links.get(dc) {
                Some((addr, link)) if *addr == lease.addr => Arc::clone(link),
                _ => {
                    let link = DcClient::connect(&lease.addr, DcClientOptions::default()).map_err(
                        |error| HandoverError::Call {
                            dc: dc.to_string(),
                            error: DcCallError::NotSent {
                                addr: format!("{}: {error}", lease.addr),
                                reason: "cannot start the link",
                            },
                        },
                    )?;
                    let link = Arc::new(link);
                    links.insert(dc.clone(), (lease.addr.clone(), Arc::clone(&link)));
                    link
                }
            }
        };
        let deadline = Instant::now() + Duration::from_secs(1);
        while !link.is_connected() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(link)
    }
}

/// Moves slots `first..=last` (all owned by one DC) to `to`. See the module docs.
pub async fn hand_over(
    store: &dyn Store,
    links: &DcLinks,
    first: u16,
    last: u16,
    to: &DcId,
    meta: &ChangeMeta,
) -> Result<HandoverReport, HandoverError> {
    if first > last {
        return Err(HandoverError::BadRange { first, last });
    }
    let table = OwnershipTable::read(store).await?;
    let mut owners: Vec<DcId> = Vec::new();
    for slot in first..=last {
        let owner = table
            .slot_owner(Slot::new(slot))
            .ok_or(HandoverError::Unowned { slot })?;
        if !owners.contains(&owner.dc) {
            owners.push(owner.dc.clone());
        }
    }
    if owners.len() > 1 {
        return Err(HandoverError::MixedOwners {
            first,
            last,
            owners: owners.iter().map(ToString::to_string).collect(),
        });
    }
    let from = owners.remove(0);
    let mut report = HandoverReport {
        first,
        last,
        from: from.to_string(),
        to: to.to_string(),
        version: table.version,
        moved: false,
        drained: true,
        drain_us: 0,
        freeze_window_us: 0,
    };
    if &from == to {
        return Ok(report);
    }
    let source = links.get(&from).await?;
    let destination = links.get(to).await?;
    let call_error = |dc: &DcId| {
        let dc = dc.to_string();
        move |error| HandoverError::Call { dc, error }
    };
    let started = Instant::now();
    let (drained, drain_us) = source
        .freeze(first, last, HANDOVER_FREEZE_MS)
        .await
        .map_err(call_error(&from))?;
    let plan = ChangePlan::move_slots((first..=last).map(Slot::new), Some(&from), to);
    let version = match ownership::apply_change(store, &plan, meta).await {
        Ok(version) => version,
        Err(error) => {
            let _ = source.thaw(first, last).await;
            return Err(error.into());
        }
    };
    if let Err(error) = destination.reload().await {
        // Its follower loads the table within its poll interval anyway.
        tracing::warn!(dc = %to, %error, "destination did not reload the table");
    }
    source.thaw(first, last).await.map_err(call_error(&from))?;
    let window = started.elapsed();
    metrics::histogram!("tessera_handover_freeze_window_seconds").record(window.as_secs_f64());
    metrics::counter!("tessera_handovers_total").increment(1);
    tracing::info!(first, last, %from, %to, version, drained,
        window_ms = window.as_secs_f64() * 1e3, "handed over");
    report.version = version;
    report.moved = true;
    report.drained = drained;
    report.drain_us = drain_us;
    report.freeze_window_us = window.as_micros() as u64;
    Ok(report)
}
