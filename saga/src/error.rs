use domain::OrderId;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the orchestrator can fail with. Business refusals are not errors:
/// they are recorded in the saga's stream and drive it to compensation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("event store: {0}")]
    Store(#[from] event_store::Error),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("saga of order {order_id}: {message}")]
    Saga { order_id: OrderId, message: String },
    #[error("no order {0}")]
    OrderNotFound(OrderId),
    #[error(
        "saga of order {order_id} is {state}: only a saga that needs attention can be retried"
    )]
    NotRetryable { order_id: OrderId, state: String },
    #[error("task failed: {0}")]
    Task(String),
}
