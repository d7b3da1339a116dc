use domain::OrderId;

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the orchestrator can fail with. Business refusals are not errors:
/// they are recorded in the saga's stream and drive it to compensation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The event store failed.
    #[error("event store: {0}")]
    Store(#[from] event_store::Error),
    /// The database failed (the work queue, the trigger).
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A saga's stream could not be recorded or read as expected.
    #[error("saga of order {order_id}: {message}")]
    Saga {
        /// The order whose saga it is.
        order_id: OrderId,
        /// What went wrong.
        message: String,
    },
    /// The order a saga was asked for does not exist.
    #[error("no order {0}")]
    OrderNotFound(OrderId),
    #[error(
        "saga of order {order_id} is {state}: only a saga that needs attention can be retried"
    )]
    /// An operator's retry of a saga that does not need attention.
    NotRetryable {
        /// The order whose saga it is.
        order_id: OrderId,
        /// The saga's state.
        state: String,
    },
    /// A task of the orchestrator panicked or was cancelled.
    #[error("task failed: {0}")]
    Task(String),
}
