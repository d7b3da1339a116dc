//! Topic creation at startup (Tansu, like many managed brokers, does not
//! create topics on first use).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;

use crate::{Error, KafkaConfig, Result};

/// How long the broker may take to answer the create request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Creates `{prefix}.{stream_type}` for every stream type, with
/// `config.partitions` partitions and `config.replication_factor` replicas. Topics that already exist
/// are left as they are, so every process can call this at startup.
#[tracing::instrument(skip_all, fields(brokers = %config.brokers, prefix = %config.topic_prefix), err)]
pub async fn ensure_topics(config: &KafkaConfig, stream_types: &[&str]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = config.client_config()?.create()?;
    let names: Vec<String> = stream_types.iter().map(|t| config.topic(t)).collect();
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| {
            NewTopic::new(
                name,
                config.partitions,
                TopicReplication::Fixed(config.replication_factor),
            )
        })
        .collect();
    let options = AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT));
    for result in admin.create_topics(&topics, &options).await? {
        match result {
            Ok(topic) => tracing::info!(%topic, partitions = config.partitions, "topic created"),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(%topic, "topic exists")
            }
            Err((topic, code)) => return Err(Error::CreateTopic { topic, code }),
        }
    }
    Ok(())
}

/// First pause of [`ensure_topics_retrying`]; it doubles up to [`MAX_RETRY_PAUSE`].
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(250);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(10);

/// [`ensure_topics`], tried again with growing pauses while the broker
/// cannot be reached, so a service started before its broker waits for it.
/// Returns `Ok(false)` if `shutdown` is cancelled first; a refusal by the
/// broker (say, too many partitions) is returned at once.
pub async fn ensure_topics_retrying(
    config: &KafkaConfig,
    stream_types: &[&str],
    shutdown: &CancellationToken,
) -> Result<bool> {
    let mut pause = FIRST_RETRY_PAUSE;
    loop {
        let attempt = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(false),
            attempt = ensure_topics(config, stream_types) => attempt,
        };
        match attempt {
            Ok(()) => return Ok(true),
            Err(Error::Kafka(error)) => {
                tracing::warn!(%error, brokers = %config.brokers, retry_in_ms = pause.as_millis() as u64, "cannot create the topics yet");
            }
            Err(error) => return Err(error),
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => return Ok(false),
        }
        pause = (pause * 2).min(MAX_RETRY_PAUSE);
    }
}
