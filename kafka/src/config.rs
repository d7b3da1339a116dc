//! Where the broker is and how topics are named.

use rdkafka::ClientConfig;

/// The stream types Purser publishes, one topic each.
pub const STREAM_TYPES: &[&str] = &["account", "inventory", "order", "saga"];

/// The local broker.
pub(crate) const DEFAULT_BROKERS: &str = "127.0.0.1:9092";
/// Topics are `purser.account`, `purser.order`...
pub(crate) const DEFAULT_TOPIC_PREFIX: &str = "purser";
/// Partitions of each topic created at startup.
pub(crate) const DEFAULT_PARTITIONS: i32 = 3;
/// Consumer group session timeout.
pub(crate) const DEFAULT_SESSION_TIMEOUT_MS: u32 = 6000;

/// Connection and topic settings shared by the relay and every consumer.
///
/// Read from the environment by the `purser` binary (`KAFKA_BROKERS`,
/// `PURSER_KAFKA_TOPIC_PREFIX`, `PURSER_KAFKA_PARTITIONS`,
/// `PURSER_KAFKA_SESSION_TIMEOUT_MS`); [`Default`] gives the same local
/// values as the command line.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct KafkaConfig {
    /// Bootstrap brokers, comma separated.
    #[arg(
        long = "kafka-brokers",
        env = "KAFKA_BROKERS",
        default_value = DEFAULT_BROKERS
    )]
    pub brokers: String,
    /// Topics are named `{prefix}.{stream_type}`.
    #[arg(
        long = "kafka-topic-prefix",
        env = "PURSER_KAFKA_TOPIC_PREFIX",
        default_value = DEFAULT_TOPIC_PREFIX
    )]
    pub topic_prefix: String,
    /// Partitions of each topic created at startup.
    #[arg(long = "kafka-partitions", env = "PURSER_KAFKA_PARTITIONS", default_value_t = DEFAULT_PARTITIONS,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: i32,
    /// Consumer group session timeout. 6000 ms is the smallest that Apache
    /// Kafka accepts by default; Tansu takes about half of it to join a group.
    #[arg(
        long = "kafka-session-timeout-ms",
        env = "PURSER_KAFKA_SESSION_TIMEOUT_MS",
        default_value_t = DEFAULT_SESSION_TIMEOUT_MS
    )]
    pub session_timeout_ms: u32,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: DEFAULT_BROKERS.to_owned(),
            topic_prefix: DEFAULT_TOPIC_PREFIX.to_owned(),
            partitions: DEFAULT_PARTITIONS,
            session_timeout_ms: DEFAULT_SESSION_TIMEOUT_MS,
        }
    }
}

impl KafkaConfig {
    /// The same with this consumer group session timeout (tests take 2 s, so
    /// that a stopped consumer's partitions move on quickly).
    pub fn with_session_timeout_ms(self, session_timeout_ms: u32) -> KafkaConfig {
        KafkaConfig {
            session_timeout_ms,
            ..self
        }
    }

    /// The topic that carries the events of `stream_type`: `{prefix}.{stream_type}`.
    pub fn topic(&self, stream_type: &str) -> String {
        format!("{}.{}", self.topic_prefix, stream_type)
    }

    /// The settings every client starts from.
    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        kafka: KafkaConfig,
    }

    #[test]
    fn topic_is_prefix_dot_stream_type() {
        let config = KafkaConfig {
            topic_prefix: "t1".into(),
            ..KafkaConfig::default()
        };
        assert_eq!(config.topic("account"), "t1.account");
    }

    #[test]
    fn command_line_defaults_equal_default() {
        let cli = Cli::try_parse_from(["purser"]).expect("defaults parse");
        // The environment of the test run may set KAFKA_*; only compare when it does not.
        if std::env::vars().all(|(k, _)| !k.starts_with("KAFKA_")) {
            assert_eq!(cli.kafka, KafkaConfig::default());
        }
    }

    #[test]
    fn zero_partitions_are_refused() {
        assert!(Cli::try_parse_from(["purser", "--kafka-partitions", "0"]).is_err());
    }
}
