//! The crate's errors.

/// What can stop a batch from being applied. Every variant is transient from
/// the worker's point of view: the batch is retried, nothing is committed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The event store failed.
    #[error("event store: {0}")]
    Store(#[from] event_store::Error),
    /// The broker failed.
    #[error("kafka: {0}")]
    Kafka(#[from] kafka::Error),
    /// An event could not be applied (and its stream is not parked yet).
    #[error("applying {event_id} of {stream_id}: {source}")]
    Apply {
        /// The event's stream.
        stream_id: String,
        /// The event.
        event_id: uuid::Uuid,
        /// Why it could not be applied.
        #[source]
        source: ApplyError,
    },
    /// No projection has this name.
    #[error("unknown projection {0:?} (known: {known})", known = crate::names().join(", "))]
    UnknownProjection(String),
    /// Another rebuild of this projection holds its rebuild lock.
    #[error("a rebuild of projection {0} is already running")]
    RebuildRunning(String),
    /// The rebuild was asked to stop; what it committed is kept and a new
    /// run resumes from there.
    #[error("rebuild of {projection} interrupted after {events_done} events; run it again to resume (or with --restart to start over)")]
    Interrupted {
        /// The projection rebuilt.
        projection: String,
        /// Events replayed so far.
        events_done: u64,
    },
    /// A projection wrote to `read_models` by name while rebuilding into its
    /// shadow schema (its SQL must name its tables unqualified).
    #[error("projection {projection} wrote to read_models.{table} during a rebuild: it must name its tables unqualified")]
    WritesLiveTables {
        /// The projection.
        projection: String,
        /// The table it wrote by name.
        table: String,
    },
    /// The read model's tables cannot be copied into a shadow schema.
    #[error("cannot rebuild {projection}: {reason}")]
    Unsupported {
        /// The projection.
        projection: String,
        /// Why its tables cannot be copied.
        reason: String,
    },
    /// A stream id of a stream type the projection does not follow.
    #[error("stream id {0:?} is not of a stream type this projection follows")]
    InvalidStreamId(String),
    /// The event store does not hold the versions a gap needs (never expected:
    /// a version is only appended after the previous one committed).
    #[error("stream {stream_id}: the event store lacks versions {from}..={to}")]
    Gap {
        /// The stream.
        stream_id: String,
        /// The first version missing.
        from: i64,
        /// The last version missing.
        to: i64,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why one event could not be applied to a read model.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The payload is not a valid domain event (a poison event).
    #[error("cannot decode event: {0}")]
    Decode(String),
    /// The event does not fit the read model (e.g. a deposit to an account
    /// that was never opened).
    #[error("{0}")]
    Invalid(String),
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl From<event_store::Error> for ApplyError {
    fn from(error: event_store::Error) -> Self {
        match error {
            event_store::Error::Database(e) => ApplyError::Database(e),
            other => ApplyError::Decode(other.to_string()),
        }
    }
}

impl ApplyError {
    /// A failure that says nothing about the event itself (connection lost,
    /// deadlock, server shutting down): the batch is retried as a whole and
    /// the event does not count towards parking.
    pub fn is_transient(&self) -> bool {
        match self {
            ApplyError::Database(e) => is_transient(e),
            ApplyError::Decode(_) | ApplyError::Invalid(_) => false,
        }
    }
}

/// Connection-level errors and SQLSTATE classes 08 (connection), 40
/// (serialization failure, deadlock), 53 (insufficient resources) and 57
/// (operator intervention).
pub(crate) fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            ["08", "40", "53", "57"]
                .iter()
                .any(|class| code.starts_with(class))
        }),
        _ => false,
    }
}
