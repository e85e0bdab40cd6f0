//! FoundationDB error codes and what each one means for the storage interface.
//!
//! Owns: the numeric codes of FoundationDB 7.3 (`flow/include/flow/error_definitions.h`)
//! that Tessera reacts to, their classification, and the mapping from a code to
//! [`CommitError`] (for a commit) or [`StoreError`] (for a read or a watch). It is compiled
//! without the `fdb` feature so that its tests run everywhere; the backend in
//! [`crate::store::fdb`] hands it the numeric code of every error it gets.
//!
//! Must never: report "nothing was written" for a commit error it does not know to mean
//! that. A commit that ends in a code outside the known "not committed" set resolves
//! [`CommitError::Unknown`], so that the caller resolves it through its idempotency records
//! instead of retrying blindly.

use super::{CommitError, StoreError};

/// The FoundationDB error codes this module knows, by their name in FoundationDB.
pub mod code {
    pub const TIMED_OUT: i32 = 1004;
    pub const TRANSACTION_TOO_OLD: i32 = 1007;
    pub const FUTURE_VERSION: i32 = 1009;
    pub const NOT_COMMITTED: i32 = 1020;
    pub const COMMIT_UNKNOWN_RESULT: i32 = 1021;
    pub const COMMIT_UNKNOWN_RESULT_FATAL: i32 = 1022;
    pub const TRANSACTION_CANCELLED: i32 = 1025;
    pub const WATCH_CANCELLED: i32 = 1029;
    pub const REQUEST_MAYBE_DELIVERED: i32 = 1030;
    pub const TRANSACTION_TIMED_OUT: i32 = 1031;
    pub const TOO_MANY_WATCHES: i32 = 1032;
    pub const PROCESS_BEHIND: i32 = 1037;
    pub const DATABASE_LOCKED: i32 = 1038;
    pub const CLUSTER_VERSION_CHANGED: i32 = 1039;
    pub const COMMIT_PROXY_MEMORY_LIMIT_EXCEEDED: i32 = 1042;
    pub const BATCH_TRANSACTION_THROTTLED: i32 = 1051;
    pub const GRV_PROXY_MEMORY_LIMIT_EXCEEDED: i32 = 1078;
    pub const SERVER_OVERLOADED: i32 = 1211;
    pub const TAG_THROTTLED: i32 = 1213;
    pub const PROXY_TAG_THROTTLED: i32 = 1223;
    pub const TRANSACTION_THROTTLED_HOT_SHARD: i32 = 1235;
    pub const CLIENT_INVALID_OPERATION: i32 = 2000;
    pub const KEY_OUTSIDE_LEGAL_RANGE: i32 = 2004;
    pub const INVERTED_RANGE: i32 = 2005;
    pub const USED_DURING_COMMIT: i32 = 2017;
    pub const NO_COMMIT_VERSION: i32 = 2021;
    pub const TRANSACTION_TOO_LARGE: i32 = 2101;
    pub const KEY_TOO_LARGE: i32 = 2102;
    pub const VALUE_TOO_LARGE: i32 = 2103;
    /// First and last code of FoundationDB's "the client did something illegal" block;
    /// such an error is raised by the client library before anything reaches the cluster.
    pub const CLIENT_ERRORS_FIRST: i32 = 2000;
    pub const CLIENT_ERRORS_LAST: i32 = 2199;
}

/// What a FoundationDB error means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdbErrorKind {
    /// A key or range the transaction read changed before it committed (`not_committed`).
    Conflict,
    /// The commit may or may not have become durable.
    MaybeCommitted,
    /// The client stopped waiting (timeout or cancellation); a commit in flight may land.
    Abandoned,
    /// The transaction's read version is too old (older than five seconds).
    TooOld,
    /// The transaction's mutations and conflict ranges exceed ten megabytes.
    TooLarge,
    /// The cluster refused the work for now (throttled, behind, locked, out of memory).
    /// Nothing was committed; retrying later may succeed.
    Overloaded,
    /// The client library refused an illegal call; nothing reached the cluster.
    Invalid,
    /// A code this module does not know.
    Other,
}

/// The classification of `code`.
pub fn kind_of(code: i32) -> FdbErrorKind {
    use code::*;
    match code {
        NOT_COMMITTED => FdbErrorKind::Conflict,
        COMMIT_UNKNOWN_RESULT
        | COMMIT_UNKNOWN_RESULT_FATAL
        | CLUSTER_VERSION_CHANGED
        | REQUEST_MAYBE_DELIVERED => FdbErrorKind::MaybeCommitted,
        TRANSACTION_TIMED_OUT | TRANSACTION_CANCELLED | TIMED_OUT => FdbErrorKind::Abandoned,
        TRANSACTION_TOO_OLD => FdbErrorKind::TooOld,
        TRANSACTION_TOO_LARGE => FdbErrorKind::TooLarge,
        FUTURE_VERSION
        | PROCESS_BEHIND
        | DATABASE_LOCKED
        | COMMIT_PROXY_MEMORY_LIMIT_EXCEEDED
        | GRV_PROXY_MEMORY_LIMIT_EXCEEDED
        | BATCH_TRANSACTION_THROTTLED
        | SERVER_OVERLOADED
        | TAG_THROTTLED
        | PROXY_TAG_THROTTLED
        | TRANSACTION_THROTTLED_HOT_SHARD
        | TOO_MANY_WATCHES
        | WATCH_CANCELLED => FdbErrorKind::Overloaded,
        CLIENT_ERRORS_FIRST..=CLIENT_ERRORS_LAST => FdbErrorKind::Invalid,
        _ => FdbErrorKind::Other,
    }
}

/// FoundationDB's name for `code`, for the codes this module knows.
pub fn name_of(code: i32) -> Option<&'static str> {
    use code::*;
    let name = match code {
        TIMED_OUT => "timed_out",
        TRANSACTION_TOO_OLD => "transaction_too_old",
        FUTURE_VERSION => "future_version",
        NOT_COMMITTED => "not_committed",
        COMMIT_UNKNOWN_RESULT => "commit_unknown_result",
        COMMIT_UNKNOWN_RESULT_FATAL => "commit_unknown_result_fatal",
        TRANSACTION_CANCELLED => "transaction_cancelled",
        WATCH_CANCELLED => "watch_cancelled",
        REQUEST_MAYBE_DELIVERED => "request_maybe_delivered",
        TRANSACTION_TIMED_OUT => "transaction_timed_out",
        TOO_MANY_WATCHES => "too_many_watches",
        PROCESS_BEHIND => "process_behind",
        DATABASE_LOCKED => "database_locked",
        CLUSTER_VERSION_CHANGED => "cluster_version_changed",
        COMMIT_PROXY_MEMORY_LIMIT_EXCEEDED => "commit_proxy_memory_limit_exceeded",
        BATCH_TRANSACTION_THROTTLED => "batch_transaction_throttled",
        GRV_PROXY_MEMORY_LIMIT_EXCEEDED => "grv_proxy_memory_limit_exceeded",
        SERVER_OVERLOADED => "server_overloaded",
        TAG_THROTTLED => "tag_throttled",
        PROXY_TAG_THROTTLED => "proxy_tag_throttled",
        TRANSACTION_THROTTLED_HOT_SHARD => "transaction_throttled_hot_shard",
        CLIENT_INVALID_OPERATION => "client_invalid_operation",
        KEY_OUTSIDE_LEGAL_RANGE => "key_outside_legal_range",
        INVERTED_RANGE => "inverted_range",
        USED_DURING_COMMIT => "used_during_commit",
        NO_COMMIT_VERSION => "no_commit_version",
        TRANSACTION_TOO_LARGE => "transaction_too_large",
        KEY_TOO_LARGE => "key_too_large",
        VALUE_TOO_LARGE => "value_too_large",
        _ => return None,
    };
    Some(name)
}

/// `FoundationDB error <code> (<name>)`: the detail carried by backend errors.
pub fn describe(code: i32) -> String {
    match name_of(code) {
        Some(name) => format!("FoundationDB error {code} ({name})"),
        None => format!("FoundationDB error {code}"),
    }
}

/// What the mapping needs to fill in the typed errors' fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorContext {
    /// The transaction age limit the store enforces.
    pub transaction_duration_ms_max: u64,
    /// Bytes the transaction had buffered (as counted by `Transaction::size_bytes`).
    pub transaction_bytes: usize,
}

/// The interface's outcome of a commit that FoundationDB failed with `code`.
pub fn commit_error(code: i32, context: ErrorContext) -> CommitError {
    match kind_of(code) {
        FdbErrorKind::Conflict => CommitError::Conflict,
        FdbErrorKind::Overloaded => CommitError::Overloaded,
        FdbErrorKind::TooOld | FdbErrorKind::TooLarge | FdbErrorKind::Invalid => {
            CommitError::Rejected(read_error(code, context))
        }
        // Timeouts and cancellations during a commit may still land (FoundationDB documents
        // this for `transaction_timed_out`), and an unknown code proves nothing either.
        FdbErrorKind::MaybeCommitted | FdbErrorKind::Abandoned | FdbErrorKind::Other => {
            CommitError::Unknown {
                detail: describe(code),
            }
        }
    }
}

/// The interface's outcome of a commit whose own reads (its preconditions) FoundationDB
/// failed with `code`: the commit was never sent, so nothing can have been written.
pub fn uncommitted_error(code: i32, context: ErrorContext) -> CommitError {
    match kind_of(code) {
        FdbErrorKind::Conflict => CommitError::Conflict,
        FdbErrorKind::Overloaded | FdbErrorKind::Abandoned | FdbErrorKind::MaybeCommitted => {
            CommitError::Overloaded
        }
        FdbErrorKind::TooOld
        | FdbErrorKind::TooLarge
        | FdbErrorKind::Invalid
        | FdbErrorKind::Other => CommitError::Rejected(read_error(code, context)),
    }
}

/// The interface's error for a read or a watch that FoundationDB failed with `code`.
/// Nothing is written by a read, so every code maps to a [`StoreError`].
pub fn read_error(code: i32, context: ErrorContext) -> StoreError {
    match kind_of(code) {
        FdbErrorKind::TooOld => StoreError::TransactionTooOld {
            max_ms: context.transaction_duration_ms_max,
        },
        FdbErrorKind::TooLarge => StoreError::TransactionTooLarge {
            bytes: context.transaction_bytes,
            max: super::limits::TRANSACTION_BYTES_MAX,
        },
        _ => StoreError::Backend {
            detail: describe(code),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::limits::{TRANSACTION_BYTES_MAX, TRANSACTION_DURATION_MS_MAX};

    const CONTEXT: ErrorContext = ErrorContext {
        transaction_duration_ms_max: TRANSACTION_DURATION_MS_MAX,
        transaction_bytes: 123,
    };

    #[test]
    fn not_committed_is_a_conflict() {
        let error = commit_error(code::NOT_COMMITTED, CONTEXT);
        assert!(matches!(error, CommitError::Conflict), "{error:?}");
        assert!(error.is_retryable() && !error.maybe_committed());
    }

    #[test]
    fn unknown_results_are_maybe_committed() {
        for code in [
            code::COMMIT_UNKNOWN_RESULT,
            code::CLUSTER_VERSION_CHANGED,
            code::COMMIT_UNKNOWN_RESULT_FATAL,
            code::REQUEST_MAYBE_DELIVERED,
        ] {
            let error = commit_error(code, CONTEXT);
            assert!(error.maybe_committed(), "{code}: {error:?}");
            assert!(!error.is_retryable(), "{code}: never retried blindly");
        }
    }

    #[test]
    fn a_timeout_during_commit_may_have_committed() {
        for code in [code::TRANSACTION_TIMED_OUT, code::TRANSACTION_CANCELLED] {
            assert!(commit_error(code, CONTEXT).maybe_committed(), "{code}");
            assert!(read_error(code, CONTEXT).is_retryable(), "{code} on a read");
        }
    }

    #[test]
    fn unknown_codes_never_claim_nothing_was_written() {
        for code in [1, 1000, 1026, 1500, 4000, 4100, 9999] {
            assert!(commit_error(code, CONTEXT).maybe_committed(), "{code}");
        }
    }

    #[test]
    fn too_old_and_too_large_are_typed() {
        let error = commit_error(code::TRANSACTION_TOO_OLD, CONTEXT);
        assert!(
            matches!(
                error,
                CommitError::Rejected(StoreError::TransactionTooOld { max_ms })
                    if max_ms == TRANSACTION_DURATION_MS_MAX
            ),
            "{error:?}"
        );
        let error = read_error(code::TRANSACTION_TOO_OLD, CONTEXT);
        assert!(
            matches!(error, StoreError::TransactionTooOld { .. }),
            "{error:?}"
        );
        let error = commit_error(code::TRANSACTION_TOO_LARGE, CONTEXT);
        assert!(
            matches!(
                error,
                CommitError::Rejected(StoreError::TransactionTooLarge { bytes: 123, max })
                    if max == TRANSACTION_BYTES_MAX
            ),
            "{error:?}"
        );
    }

    #[test]
    fn overload_codes_are_retryable_and_not_committed() {
        for code in [
            code::FUTURE_VERSION,
            code::PROCESS_BEHIND,
            code::DATABASE_LOCKED,
            code::COMMIT_PROXY_MEMORY_LIMIT_EXCEEDED,
            code::GRV_PROXY_MEMORY_LIMIT_EXCEEDED,
            code::BATCH_TRANSACTION_THROTTLED,
            code::TAG_THROTTLED,
            code::PROXY_TAG_THROTTLED,
            code::TRANSACTION_THROTTLED_HOT_SHARD,
            code::TOO_MANY_WATCHES,
        ] {
            let error = commit_error(code, CONTEXT);
            assert!(
                matches!(error, CommitError::Overloaded),
                "{code}: {error:?}"
            );
            assert!(read_error(code, CONTEXT).is_retryable(), "{code}");
        }
    }

    #[test]
    fn client_errors_are_rejected_without_writing() {
        for code in [
            code::KEY_TOO_LARGE,
            code::INVERTED_RANGE,
            code::USED_DURING_COMMIT,
        ] {
            let error = commit_error(code, CONTEXT);
            assert!(
                matches!(error, CommitError::Rejected(_)),
                "{code}: {error:?}"
            );
            assert!(!error.maybe_committed() && !error.is_retryable());
        }
    }

    #[test]
    fn errors_before_the_commit_never_say_maybe_committed() {
        for code in [1, 1007, 1020, 1021, 1031, 1037, 2004, 2101, 4100] {
            let error = uncommitted_error(code, CONTEXT);
            assert!(!error.maybe_committed(), "{code}: {error:?}");
        }
        let error = uncommitted_error(code::TRANSACTION_TIMED_OUT, CONTEXT);
        assert!(error.is_retryable(), "{error:?}");
    }

    #[test]
    fn descriptions_name_the_code() {
        assert_eq!(
            describe(code::COMMIT_UNKNOWN_RESULT),
            "FoundationDB error 1021 (commit_unknown_result)"
        );
        assert_eq!(describe(4242), "FoundationDB error 4242");
        let named = (0..5000).filter(|code| name_of(*code).is_some()).count();
        assert_eq!(named, 29, "every named code is listed once");
    }
}
