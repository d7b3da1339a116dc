//! An operator's retry of a saga that needs attention.

use domain::{FulfilmentSaga, OrderId, SagaCommand, SagaStatus};
use event_store::{EventStore, ExecuteError, ExecuteOptions, Executed, Metadata, Repository};

use crate::{Error, Queue, Result};

/// An operator's retry of a saga in `needs_attention` (`purser saga retry`):
/// records it and makes the saga due. The orchestrator picks it up.
pub async fn retry(store: &EventStore, order_id: OrderId) -> Result<SagaStatus> {
    let sagas: Repository<FulfilmentSaga> = Repository::new(store.clone());
    let options = ExecuteOptions {
        metadata: Metadata {
            actor: Some("operator".to_owned()),
            ..Metadata::default()
        },
        ..ExecuteOptions::default()
    };
    let outcome = match sagas
        .execute(&order_id.to_string(), &SagaCommand::Retry, options, |_| ())
        .await
    {
        Ok(Executed::Done(outcome)) => outcome,
        Ok(Executed::Refused(domain::SagaError::NotFound)) => {
            return Err(Error::OrderNotFound(order_id))
        }
        Ok(Executed::Refused(refusal)) => {
            let state = sagas.load(&order_id.to_string()).await?.state.status;
            tracing::debug!(%refusal, "retry refused");
            return Err(Error::NotRetryable {
                order_id,
                state: state.to_string(),
            });
        }
        Ok(Executed::Replayed(_)) => unreachable!("no idempotency key"),
        Err(ExecuteError::Store(error)) => return Err(error.into()),
        Err(error) => {
            return Err(Error::Saga {
                order_id,
                message: error.to_string(),
            })
        }
    };
    Queue::new(store.pool().clone()).wake(order_id).await?;
    Ok(outcome.state.status)
}
