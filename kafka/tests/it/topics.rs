//! Topic creation at startup.

use std::time::Duration;

use kafka::{ensure_topics, ensure_topics_retrying, KafkaConfig, STREAM_TYPES};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn ensure_topics_creates_every_topic_once_with_its_partitions() {
    let mut config = test_support::kafka::config("kafka-test");
    config.partitions = 2;
    ensure_topics(&config, STREAM_TYPES).await.expect("create");
    ensure_topics(&config, STREAM_TYPES)
        .await
        .expect("existing topics are fine");

    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .create()
        .expect("client");
    let metadata = tokio::task::spawn_blocking(move || {
        client
            .fetch_metadata(None, Duration::from_secs(10))
            .expect("metadata")
    })
    .await
    .expect("metadata task");
    for stream_type in STREAM_TYPES {
        let name = config.topic(stream_type);
        let topic = metadata
            .topics()
            .iter()
            .find(|t| t.name() == name)
            .unwrap_or_else(|| panic!("topic {name} exists"));
        assert_eq!(topic.partitions().len(), 2, "{name}");
    }
}

#[tokio::test]
async fn ensure_topics_retrying_succeeds_on_a_live_broker_and_gives_up_on_shutdown() {
    let config = test_support::kafka::config("kafka-test");
    let shutdown = CancellationToken::new();
    assert!(ensure_topics_retrying(&config, &["account"], &shutdown)
        .await
        .expect("live broker"));

    let dead = KafkaConfig {
        brokers: test_support::kafka::dead_broker(),
        ..test_support::kafka::config("kafka-test")
    };
    let waiting = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { ensure_topics_retrying(&dead, &["account"], &shutdown).await }
    });
    shutdown.cancel();
    let created = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("returns once shut down")
        .expect("task")
        .expect("no error");
    assert!(!created, "nothing was created without a broker");
}

#[tokio::test]
async fn a_tls_client_against_a_plaintext_broker_fails_with_an_error_not_a_hang() {
    let mut config = test_support::kafka::config("kafka-tls");
    config.security.protocol = kafka::SecurityProtocol::Ssl;
    config.validate().expect("valid settings");
    // The broker answers in plaintext: the TLS handshake fails, and the
    // request ends with librdkafka's error within its own timeout.
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        ensure_topics(&config, &["account"]),
    )
    .await
    .expect("ensure_topics returns, not hangs");
    let error = result.expect_err("no topic is created over a failed TLS handshake");
    assert!(matches!(error, kafka::Error::Kafka(_)), "{error:?}");
}
