//! Verification of a store after a crash: every acknowledged transfer is present exactly
//! once, and the money invariants hold (the audit of `cells::ledger::audit`).

use cells::ids::TransferId;
use cells::keys::Keyspace;
use cells::ledger::audit::{audit, AuditError, AuditReport};
use cells::records::{self, TransferOutcome, TransferRecord};
use cells::store::Store;
use futures::executor::block_on;
use serde::Serialize;

/// What the verification found.
#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub acknowledged: u64,
    /// Acknowledged transfers with no accepted record in the store.
    pub missing: Vec<String>,
    pub audit: AuditReport,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.audit.is_clean()
    }
}

/// Checks `acknowledged` transfer ids against the store, then audits it.
pub fn verify(
    store: &dyn Store,
    space: Keyspace,
    acknowledged: &[TransferId],
) -> Result<VerifyReport, AuditError> {
    let mut missing = Vec::new();
    for chunk in acknowledged.chunks(cells::store::limits::GET_MANY_KEYS_MAX) {
        let keys = chunk.iter().map(|id| space.transfer(id)).collect();
        let values = block_on(store.get_many(keys))?;
        for (id, value) in chunk.iter().zip(values) {
            let accepted = match value {
                Some(bytes) => {
                    let record: TransferRecord = records::decode("transfer", &bytes)?;
                    record.outcome == TransferOutcome::Accepted
                }
                None => false,
            };
            if !accepted {
                missing.push(id.to_string());
            }
        }
    }
    let audit = audit(store, space)?;
    Ok(VerifyReport {
        acknowledged: acknowledged.len() as u64,
        missing,
        audit,
    })
}
