//! Topics of their own on the test broker (`KAFKA_BROKERS`, default
//! `127.0.0.1:9092`), so that tests and benchmarks running at once never
//! share one.

use kafka::KafkaConfig;

/// Topics of their own on the brokers of `KAFKA_BROKERS` (the local default
/// without it): prefix `{label}-{uuid}`, the rest as [`KafkaConfig`]'s
/// default. How benchmarks connect.
pub fn isolated(label: &str) -> KafkaConfig {
    let default = KafkaConfig::default();
    KafkaConfig {
        brokers: std::env::var("KAFKA_BROKERS").unwrap_or(default.brokers),
        topic_prefix: format!("{label}-{}", uuid::Uuid::new_v4().simple()),
        ..default
    }
}

/// [`isolated`] with a 2 s consumer group session timeout, so that a
/// stopped consumer's partitions move on quickly: how tests connect.
pub fn config(label: &str) -> KafkaConfig {
    isolated(label).with_session_timeout_ms(2_000)
}

/// [`config`] with every stream type's topic created.
///
/// # Panics
/// When the broker does not create them.
pub async fn topics(label: &str) -> KafkaConfig {
    let config = config(label);
    kafka::ensure_topics(&config, kafka::STREAM_TYPES)
        .await
        .expect("create topics");
    config
}

/// A broker address where nothing listens.
pub fn dead_broker() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let address = listener.local_addr().expect("local address");
    drop(listener);
    address.to_string()
}
