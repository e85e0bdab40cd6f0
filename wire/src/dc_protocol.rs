//! The DC protocol: what the router and other DCs send a DC node, and what it answers.
//!
//! Owns the messages (postcard inside [`crate::frame`] frames) and their limits. A request
//! that expects an answer carries a non-zero id chosen by the client; answers may come
//! back in any order.
//!
//! Must never: do I/O, or accept a message whose counts break the limits below (a decoded
//! message is checked with [`DcRequest::check`] before anything acts on it).

use cells::ids::DcId;
use cells::keys::Keyspace;
use cells::ledger::{Command, CommandResult, ErrorCode, BATCH_COMMANDS_MAX};
use cells::store::KeyValue;
use serde::{Deserialize, Serialize};

use crate::frame::{self, FrameError};

/// Most credit legs in one [`DcRequest::Credits`] message.
pub const CREDITS_PER_MESSAGE_MAX: usize = 4 * BATCH_COMMANDS_MAX;
/// Most bytes of one credit leg (outbox key plus value).
pub const CREDIT_LEG_BYTES_MAX: usize = 4_096;

/// A request to a DC node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DcRequest {
    /// Runs a batch of ledger commands (at most [`BATCH_COMMANDS_MAX`]); answered by
    /// [`DcResponse::Executed`] with one result per command, in order.
    Execute {
        id: u64,
        space: Keyspace,
        commands: Vec<Command>,
    },
    /// Credit legs (outbox entries, key and value) whose payees the receiver owns, sent
    /// by the payer's DC. No answer: the payer's DC rescans its outbox for what is left.
    Credits {
        space: Keyspace,
        legs: Vec<KeyValue>,
    },
    /// Asks for [`DcResponse::Status`].
    Status { id: u64 },
    /// Handover, step 1 at the source DC: freeze payer slots `first..=last` (new batches
    /// for them wait) and drain the batches in flight there, for at most `max_ms` (after
    /// which the node thaws on its own). Answered by [`DcResponse::Frozen`].
    Freeze {
        id: u64,
        first: u16,
        last: u16,
        max_ms: u32,
    },
    /// Handover, last step at the source DC: reload the ownership table, then thaw.
    /// Answered by [`DcResponse::Thawed`].
    Thaw { id: u64, first: u16, last: u16 },
    /// Reload the ownership table now (the destination of a handover, before the source
    /// thaws). Answered by [`DcResponse::Reloaded`].
    Reload { id: u64 },
}

/// Longest freeze a [`DcRequest::Freeze`] may ask for.
pub const FREEZE_MS_MAX: u32 = 5_000;

/// Why a request was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("request id 0 is reserved for messages without an answer")]
    ZeroId,
    #[error("{count} {what} in one message; at most {max}")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("a credit leg of {bytes} bytes exceeds {max}")]
    LegTooLarge { bytes: usize, max: usize },
    #[error("slot range {first}..={last} is empty or reversed")]
    BadSlotRange { first: u16, last: u16 },
    #[error("a freeze of {max_ms} ms; at most {FREEZE_MS_MAX} ms")]
    FreezeTooLong { max_ms: u32 },
}

impl RequestError {
    /// The error code answered for it, if the request is answered at all; otherwise it is
    /// a protocol violation and the connection is closed.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            RequestError::TooMany { .. } => Some(ErrorCode::BatchTooLarge),
            _ => None,
        }
    }
}

impl DcRequest {
    /// Checks the message against the protocol's limits.
    pub fn check(&self) -> Result<(), RequestError> {
        match self {
            DcRequest::Execute { id, commands, .. } => {
                if *id == 0 {
                    return Err(RequestError::ZeroId);
                }
                if commands.len() > BATCH_COMMANDS_MAX {
                    return Err(RequestError::TooMany {
                        what: "commands",
                        count: commands.len(),
                        max: BATCH_COMMANDS_MAX,
                    });
                }
                Ok(())
            }
            DcRequest::Credits { legs, .. } => {
                if legs.len() > CREDITS_PER_MESSAGE_MAX {
                    return Err(RequestError::TooMany {
                        what: "credit legs",
                        count: legs.len(),
                        max: CREDITS_PER_MESSAGE_MAX,
                    });
                }
                match legs
                    .iter()
                    .map(|(key, value)| key.len() + value.len())
                    .find(|bytes| *bytes > CREDIT_LEG_BYTES_MAX)
                {
                    Some(bytes) => Err(RequestError::LegTooLarge {
                        bytes,
                        max: CREDIT_LEG_BYTES_MAX,
                    }),
                    None => Ok(()),
                }
            }
            DcRequest::Status { id } | DcRequest::Reload { id } if *id == 0 => {
                Err(RequestError::ZeroId)
            }
            DcRequest::Status { .. } | DcRequest::Reload { .. } => Ok(()),
            DcRequest::Freeze { id, .. } | DcRequest::Thaw { id, .. } if *id == 0 => {
                Err(RequestError::ZeroId)
            }
            DcRequest::Freeze {
                first,
                last,
                max_ms,
                ..
            } => {
                if first > last {
                    Err(RequestError::BadSlotRange {
                        first: *first,
                        last: *last,
                    })
                } else if *max_ms > FREEZE_MS_MAX {
                    Err(RequestError::FreezeTooLong { max_ms: *max_ms })
                } else {
                    Ok(())
                }
            }
            DcRequest::Thaw { first, last, .. } if first > last => {
                Err(RequestError::BadSlotRange {
                    first: *first,
                    last: *last,
                })
            }
            DcRequest::Thaw { .. } => Ok(()),
        }
    }

    /// The id an answer must carry, if the request expects one.
    pub fn id(&self) -> Option<u64> {
        match self {
            DcRequest::Execute { id, .. }
            | DcRequest::Status { id }
            | DcRequest::Freeze { id, .. }
            | DcRequest::Thaw { id, .. }
            | DcRequest::Reload { id } => Some(*id),
            DcRequest::Credits { .. } => None,
        }
    }
}

/// What a DC node says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub dc: DcId,
    /// The node's lease incarnation (bumped by every registration).
    pub incarnation: u64,
    /// The ownership table version the node last loaded.
    pub table_version: u64,
    /// Slots the node owns in that table.
    pub owned_slots: u32,
    /// Account actors alive in the node.
    pub active_accounts: u64,
}

/// An answer of a DC node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DcResponse {
    /// The results of an [`DcRequest::Execute`], or why the whole batch was refused.
    Executed {
        id: u64,
        results: Result<Vec<CommandResult>, ErrorCode>,
    },
    Status {
        id: u64,
        status: NodeStatus,
    },
    /// The slots are frozen; `drained` says whether the batches in flight there were all
    /// answered within the bound (`drain_us` is how long that took).
    Frozen {
        id: u64,
        drained: bool,
        drain_us: u64,
    },
    /// The node reloaded the table (now at `table_version`) and thawed the slots.
    Thawed {
        id: u64,
        table_version: u64,
    },
    /// The node reloaded the table, now at `table_version`.
    Reloaded {
        id: u64,
        table_version: u64,
    },
}

impl DcResponse {
    pub fn id(&self) -> u64 {
        match self {
            DcResponse::Executed { id, .. }
            | DcResponse::Status { id, .. }
            | DcResponse::Frozen { id, .. }
            | DcResponse::Thawed { id, .. }
            | DcResponse::Reloaded { id, .. } => *id,
        }
    }
}

/// Appends `message` as one frame to `out`.
pub fn encode<T: Serialize>(message: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = frame::start_frame(out);
    match postcard::to_io(message, &mut *out) {
        Ok(_) => frame::finish_frame(out, start),
        Err(error) => {
            out.truncate(start);
            Err(FrameError::malformed(error))
        }
    }
}

/// Decodes one message from a frame's payload; trailing bytes are an error.
pub fn decode<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, FrameError> {
    match postcard::take_from_bytes(payload) {
        Ok((message, [])) => Ok(message),
        Ok((_, rest)) => Err(FrameError::malformed(format_args!(
            "{} bytes after the message",
            rest.len()
        ))),
        Err(error) => Err(FrameError::malformed(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cells::ids::{AccountId, TransferId};
    use cells::ledger::{Outcome, TransferRequest};
    use cells::money::{Amount, Currency};

    fn transfer(id: &str) -> Command {
        Command::Transfer(TransferRequest {
            id: TransferId::new(id).unwrap(),
            from: AccountId::new("a").unwrap(),
            to: AccountId::new("b").unwrap(),
            amount: Amount::from_minor_units(5).unwrap(),
            currency: Currency::from_code("USD").unwrap(),
        })
    }

    fn payload(frame: &[u8]) -> &[u8] {
        &frame[frame::FRAME_HEADER_BYTES..]
    }

    #[test]
    fn messages_round_trip() {
        let request = DcRequest::Execute {
            id: 7,
            space: Keyspace::Shadow,
            commands: vec![transfer("t-1"), transfer("t-2")],
        };
        let mut out = Vec::new();
        encode(&request, &mut out).unwrap();
        assert_eq!(decode::<DcRequest>(payload(&out)).unwrap(), request);
        let response = DcResponse::Executed {
            id: 7,
            results: Ok(vec![
                Ok(Outcome::TransferAccepted),
                Err(ErrorCode::InsufficientFunds),
            ]),
        };
        let mut out = Vec::new();
        encode(&response, &mut out).unwrap();
        assert_eq!(decode::<DcResponse>(payload(&out)).unwrap(), response);
    }

    #[test]
    fn garbage_and_trailing_bytes_are_malformed() {
        assert!(decode::<DcRequest>(&[0xff, 0xff, 0xff]).is_err());
        let mut out = Vec::new();
        encode(&DcRequest::Status { id: 1 }, &mut out).unwrap();
        let mut bytes = payload(&out).to_vec();
        bytes.push(0);
        assert!(decode::<DcRequest>(&bytes).is_err());
    }

    #[test]
    fn limits_are_checked() {
        let too_many = DcRequest::Execute {
            id: 1,
            space: Keyspace::Real,
            commands: vec![transfer("t"); BATCH_COMMANDS_MAX + 1],
        };
        assert_eq!(
            too_many.check().unwrap_err().code(),
            Some(ErrorCode::BatchTooLarge)
        );
        let zero = DcRequest::Execute {
            id: 0,
            space: Keyspace::Real,
            commands: vec![],
        };
        assert_eq!(zero.check(), Err(RequestError::ZeroId));
        let big_leg = DcRequest::Credits {
            space: Keyspace::Real,
            legs: vec![(vec![0; CREDIT_LEG_BYTES_MAX], vec![1])],
        };
        assert!(matches!(
            big_leg.check(),
            Err(RequestError::LegTooLarge { .. })
        ));
    }
}
