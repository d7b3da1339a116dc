use uuid::Uuid;

use crate::ExpectedVersion;

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the event store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The stream was not at the expected version; nothing was written.
    #[error("version conflict on {stream}: expected {expected}, actual {actual}")]
    Conflict {
        /// The stream appended to.
        stream: String,
        /// The version the append expected.
        expected: ExpectedVersion,
        /// The stream's version.
        actual: u64,
    },
    /// An idempotency key came back with a different request fingerprint.
    #[error("idempotency key reused with a different request")]
    IdempotencyKeyReused,
    /// An append with an event id that is already stored; nothing was written.
    #[error("event {0} is already stored")]
    DuplicateEventId(Uuid),
    /// An [`crate::Appends`] used after one of its appends was rejected
    /// (its transaction is rolled back).
    #[error("these appends were rolled back after a rejected append")]
    RolledBack,
    /// `append` was called without events.
    #[error("an append needs at least one event")]
    NoEvents,
    /// A stored event is not a valid domain event of its type and schema version.
    #[error("cannot decode stored event: {0}")]
    Decode(#[from] domain::DecodeError),
    /// Stored JSON (metadata, a snapshot) does not have the expected shape.
    #[error("cannot decode stored {what}: {source}")]
    Json {
        /// What was being decoded.
        what: &'static str,
        /// Why it could not be.
        #[source]
        source: serde_json::Error,
    },
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl Error {
    /// Whether a retry of the same operation may succeed (database trouble,
    /// as opposed to a conflict or a decoding error).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Database(
                sqlx::Error::Io(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::WorkerCrashed
            )
        )
    }
}
