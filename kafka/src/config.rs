//! Where the broker is, how Purser's clients reach it (plaintext, TLS,
//! SASL) and how topics are named.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use rdkafka::ClientConfig;

use crate::{Error, Result};

/// The stream types Purser publishes, one topic each.
pub const STREAM_TYPES: &[&str] = &["account", "inventory", "order", "saga"];

/// The local broker.
pub(crate) const DEFAULT_BROKERS: &str = "127.0.0.1:9092";
/// Topics are `purser.account`, `purser.order`...
pub(crate) const DEFAULT_TOPIC_PREFIX: &str = "purser";
/// Partitions of each topic created at startup.
pub(crate) const DEFAULT_PARTITIONS: i32 = 3;
/// Replicas of each topic created at startup.
pub(crate) const DEFAULT_REPLICATION_FACTOR: i32 = 1;
/// Consumer group session timeout.
pub(crate) const DEFAULT_SESSION_TIMEOUT_MS: u32 = 6000;

/// Connection and topic settings shared by the relay and every consumer.
///
/// Read from the environment by the `purser` binary (`KAFKA_BROKERS`,
/// `PURSER_KAFKA_TOPIC_PREFIX`, `PURSER_KAFKA_PARTITIONS`,
/// `PURSER_KAFKA_REPLICATION_FACTOR`, `PURSER_KAFKA_SESSION_TIMEOUT_MS` and the [`KafkaSecurity`] settings);
/// [`Default`] gives the same local values as the command line.
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
    /// Replicas of each topic created at startup (1 for a single broker;
    /// managed brokers often require 3). Topics that exist are left as
    /// they are.
    #[arg(long = "kafka-replication-factor", env = "PURSER_KAFKA_REPLICATION_FACTOR",
          default_value_t = DEFAULT_REPLICATION_FACTOR,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub replication_factor: i32,
    /// Consumer group session timeout. 6000 ms is the smallest that Apache
    /// Kafka accepts by default; Tansu takes about half of it to join a group.
    #[arg(
        long = "kafka-session-timeout-ms",
        env = "PURSER_KAFKA_SESSION_TIMEOUT_MS",
        default_value_t = DEFAULT_SESSION_TIMEOUT_MS
    )]
    pub session_timeout_ms: u32,
    /// How the clients authenticate and encrypt (plaintext by default).
    #[command(flatten)]
    pub security: KafkaSecurity,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: DEFAULT_BROKERS.to_owned(),
            topic_prefix: DEFAULT_TOPIC_PREFIX.to_owned(),
            partitions: DEFAULT_PARTITIONS,
            replication_factor: DEFAULT_REPLICATION_FACTOR,
            session_timeout_ms: DEFAULT_SESSION_TIMEOUT_MS,
            security: KafkaSecurity::default(),
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

    /// Checks the settings as a whole (a SASL protocol needs a mechanism and
    /// credentials, a TLS file must exist, `PURSER_KAFKA_PROPERTIES` names
    /// only properties librdkafka knows...), so that a process refuses to
    /// start with a clear reason rather than failing at its first
    /// connection. Every client (producer, consumer, admin) is built from
    /// settings checked the same way.
    pub fn validate(&self) -> Result<()> {
        self.client_config().map(drop)
    }

    /// The settings every client (producer, consumer, admin) starts from:
    /// the brokers and the security settings.
    pub(crate) fn client_config(&self) -> Result<ClientConfig> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        self.security.apply(&mut config)?;
        check_with_librdkafka(&config)?;
        Ok(config)
    }
}

/// librdkafka checks every name and value (no client is made, nothing
/// connects), one property at a time so that a refusal names it. Its
/// message may quote the value, which may be a secret: the value is
/// replaced by `<redacted>`.
fn check_with_librdkafka(config: &ClientConfig) -> Result<()> {
    for key in config.config_map().into_keys() {
        let value = config.get(key).unwrap_or_default();
        let mut single = ClientConfig::new();
        single.set(key, value);
        if let Err(error) = single.create_native_config() {
            let mut message = error.to_string();
            if !value.is_empty() {
                message = message.replace(value, "<redacted>");
            }
            return Err(Error::Config(format!(
                "librdkafka refuses `{key}`: {message}"
            )));
        }
    }
    Ok(())
}

/// librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SecurityProtocol {
    /// No encryption, no authentication (the local broker).
    #[default]
    #[value(name = "plaintext")]
    Plaintext,
    /// TLS (optionally with a client certificate).
    #[value(name = "ssl")]
    Ssl,
    /// SASL authentication without encryption.
    #[value(name = "sasl_plaintext")]
    SaslPlaintext,
    /// SASL authentication over TLS (what managed brokers ask for).
    #[value(name = "sasl_ssl")]
    SaslSsl,
}

impl SecurityProtocol {
    fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// librdkafka's `sasl.mechanism`: the ones built into Purser's librdkafka
/// (no GSSAPI/Kerberos).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SaslMechanism {
    /// User name and password in clear (over TLS: `sasl_ssl`).
    #[value(name = "PLAIN")]
    Plain,
    /// Salted challenge-response, SHA-256.
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    /// Salted challenge-response, SHA-512.
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// A password: its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the client that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

/// Properties that Purser sets itself, per client or from a dedicated
/// variable: `PURSER_KAFKA_PROPERTIES` may not set them.
const RESERVED_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "KAFKA_BROKERS"),
    ("metadata.broker.list", "KAFKA_BROKERS"),
    ("security.protocol", "PURSER_KAFKA_SECURITY_PROTOCOL"),
    ("sasl.mechanism", "PURSER_KAFKA_SASL_MECHANISM"),
    ("sasl.mechanisms", "PURSER_KAFKA_SASL_MECHANISM"),
    ("sasl.username", "PURSER_KAFKA_SASL_USERNAME"),
    ("sasl.password", "PURSER_KAFKA_SASL_PASSWORD"),
    ("ssl.ca.location", "PURSER_KAFKA_SSL_CA_LOCATION"),
    (
        "ssl.certificate.location",
        "PURSER_KAFKA_SSL_CERTIFICATE_LOCATION",
    ),
    ("ssl.key.location", "PURSER_KAFKA_SSL_KEY_LOCATION"),
    ("ssl.key.password", "PURSER_KAFKA_SSL_KEY_PASSWORD"),
    ("session.timeout.ms", "PURSER_KAFKA_SESSION_TIMEOUT_MS"),
    // What the clients rely on for their guarantees.
    ("group.id", "Purser (one group per projection)"),
    ("enable.auto.commit", "Purser (commits after applying)"),
    ("auto.offset.reset", "Purser (earliest)"),
    ("enable.partition.eof", "Purser"),
    ("fetch.wait.max.ms", "Purser"),
    (
        "heartbeat.interval.ms",
        "Purser (a third of the session timeout)",
    ),
    ("enable.idempotence", "Purser (the idempotent producer)"),
    ("acks", "Purser (all)"),
    ("message.timeout.ms", "PURSER_RELAY_DELIVERY_TIMEOUT_MS"),
    ("delivery.timeout.ms", "PURSER_RELAY_DELIVERY_TIMEOUT_MS"),
];

/// Extra librdkafka properties, `key=value`, from `PURSER_KAFKA_PROPERTIES`:
/// separated by `;`, or by `,` when the text has no `;` (so that a value
/// holding commas can be given with `;` separators). Read as given and
/// checked by [`KafkaConfig::validate`], so that no error repeats the text
/// (a value may be a secret); its `Debug` shows the keys only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaProperties(String);

impl KafkaProperties {
    /// The `key=value` pairs in the order given, or why they are refused.
    pub fn pairs(&self) -> std::result::Result<Vec<(String, String)>, String> {
        let separator = if self.0.contains(';') { ';' } else { ',' };
        let mut pairs: Vec<(String, String)> = Vec::new();
        let items = self
            .0
            .split(separator)
            .map(str::trim)
            .filter(|item| !item.is_empty());
        for (index, item) in items.enumerate() {
            let position = index + 1;
            let Some((key, value)) = item.split_once('=') else {
                // The item may be a secret: name its position, not its text.
                return Err(format!(
                    "item {position} is not key=value \
                     (items are separated by `;`, or by `,` when there is no `;`)"
                ));
            };
            let (key, value) = (key.trim(), value.trim());
            let name_like = |b: u8| b.is_ascii_alphanumeric() || b == b'.' || b == b'_';
            if key.is_empty() || !key.bytes().all(name_like) {
                return Err(format!(
                    "item {position}: `{key}` is not a librdkafka property name"
                ));
            }
            if let Some((_, owner)) = RESERVED_PROPERTIES.iter().find(|(name, _)| *name == key) {
                return Err(format!("`{key}` cannot be set here: it is set by {owner}"));
            }
            if pairs.iter().any(|(k, _)| k == key) {
                return Err(format!("`{key}` is given twice"));
            }
            pairs.push((key.to_owned(), value.to_owned()));
        }
        Ok(pairs)
    }
}

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let separator = if self.0.contains(';') { ';' } else { ',' };
        let items = self
            .0
            .split(separator)
            .map(str::trim)
            .filter(|item| !item.is_empty());
        f.debug_list()
            .entries(items.map(|item| match item.split_once('=') {
                Some((key, _)) => format!("{}=<redacted>", key.trim()),
                None => "<malformed>".to_owned(),
            }))
            .finish()
    }
}

impl FromStr for KafkaProperties {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> std::result::Result<Self, Self::Err> {
        Ok(KafkaProperties(text.to_owned()))
    }
}

/// How Purser's clients reach the brokers: `security.protocol`, SASL and TLS
/// settings, and any other librdkafka property, all from the environment so
/// that a managed Kafka can be used. Nothing secret shows in `Debug`.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct KafkaSecurity {
    /// `security.protocol`: plaintext, ssl, sasl_plaintext or sasl_ssl.
    #[arg(
        long = "kafka-security-protocol",
        env = "PURSER_KAFKA_SECURITY_PROTOCOL",
        value_enum,
        ignore_case = true,
        default_value_t = SecurityProtocol::Plaintext
    )]
    pub protocol: SecurityProtocol,
    /// `sasl.mechanism` (with sasl_plaintext or sasl_ssl): PLAIN,
    /// SCRAM-SHA-256 or SCRAM-SHA-512.
    #[arg(
        long = "kafka-sasl-mechanism",
        env = "PURSER_KAFKA_SASL_MECHANISM",
        value_enum,
        ignore_case = true
    )]
    pub sasl_mechanism: Option<SaslMechanism>,
    /// `sasl.username`.
    #[arg(long = "kafka-sasl-username", env = "PURSER_KAFKA_SASL_USERNAME")]
    pub sasl_username: Option<String>,
    /// `sasl.password` (prefer the environment variable to the option).
    #[arg(
        long = "kafka-sasl-password",
        env = "PURSER_KAFKA_SASL_PASSWORD",
        hide_env_values = true
    )]
    pub sasl_password: Option<Secret>,
    /// `ssl.ca.location`: the CA certificate(s) (PEM) that sign the
    /// brokers' certificates; the system's CAs when unset.
    #[arg(long = "kafka-ssl-ca-location", env = "PURSER_KAFKA_SSL_CA_LOCATION")]
    pub ssl_ca_location: Option<String>,
    /// `ssl.certificate.location`: the client's certificate (PEM), for
    /// brokers that authenticate clients by certificate.
    #[arg(
        long = "kafka-ssl-certificate-location",
        env = "PURSER_KAFKA_SSL_CERTIFICATE_LOCATION"
    )]
    pub ssl_certificate_location: Option<String>,
    /// `ssl.key.location`: the client's private key (PEM).
    #[arg(long = "kafka-ssl-key-location", env = "PURSER_KAFKA_SSL_KEY_LOCATION")]
    pub ssl_key_location: Option<String>,
    /// `ssl.key.password`: the private key's passphrase.
    #[arg(
        long = "kafka-ssl-key-password",
        env = "PURSER_KAFKA_SSL_KEY_PASSWORD",
        hide_env_values = true
    )]
    pub ssl_key_password: Option<Secret>,
    /// Any other librdkafka properties, `key=value` separated by `;` (or by
    /// `,` when there is no `;`), for every client.
    #[arg(
        long = "kafka-properties",
        env = "PURSER_KAFKA_PROPERTIES",
        hide_env_values = true
    )]
    pub properties: Option<KafkaProperties>,
}

fn refuse(message: String) -> Error {
    Error::Config(message)
}

impl KafkaSecurity {
    /// Checks the settings together and sets them on `config`.
    fn apply(&self, config: &mut ClientConfig) -> Result<()> {
        let protocol = self.protocol;
        config.set("security.protocol", protocol.as_str());

        if protocol.uses_sasl() {
            let mechanism = self.sasl_mechanism.ok_or_else(|| {
                refuse(format!(
                    "PURSER_KAFKA_SECURITY_PROTOCOL={} needs PURSER_KAFKA_SASL_MECHANISM \
                     (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)",
                    protocol.as_str()
                ))
            })?;
            let (Some(username), Some(password)) = (&self.sasl_username, &self.sasl_password)
            else {
                return Err(refuse(format!(
                    "PURSER_KAFKA_SASL_MECHANISM={} needs PURSER_KAFKA_SASL_USERNAME and \
                     PURSER_KAFKA_SASL_PASSWORD",
                    mechanism.as_str()
                )));
            };
            if username.is_empty() {
                return Err(refuse("PURSER_KAFKA_SASL_USERNAME is empty".to_owned()));
            }
            config
                .set("sasl.mechanism", mechanism.as_str())
                .set("sasl.username", username)
                .set("sasl.password", password.expose());
        } else {
            for (set, name) in [
                (self.sasl_mechanism.is_some(), "PURSER_KAFKA_SASL_MECHANISM"),
                (self.sasl_username.is_some(), "PURSER_KAFKA_SASL_USERNAME"),
                (self.sasl_password.is_some(), "PURSER_KAFKA_SASL_PASSWORD"),
            ] {
                if set {
                    return Err(refuse(format!(
                        "{name} is set but PURSER_KAFKA_SECURITY_PROTOCOL={} uses no SASL \
                         (sasl_plaintext or sasl_ssl do)",
                        protocol.as_str()
                    )));
                }
            }
        }

        let files = [
            (
                &self.ssl_ca_location,
                "PURSER_KAFKA_SSL_CA_LOCATION",
                "ssl.ca.location",
            ),
            (
                &self.ssl_certificate_location,
                "PURSER_KAFKA_SSL_CERTIFICATE_LOCATION",
                "ssl.certificate.location",
            ),
            (
                &self.ssl_key_location,
                "PURSER_KAFKA_SSL_KEY_LOCATION",
                "ssl.key.location",
            ),
        ];
        for (location, name, property) in files {
            let Some(location) = location else { continue };
            if !protocol.uses_tls() {
                return Err(refuse(format!(
                    "{name} is set but PURSER_KAFKA_SECURITY_PROTOCOL={} uses no TLS \
                     (ssl or sasl_ssl do)",
                    protocol.as_str()
                )));
            }
            // librdkafka's `probe` looks for the system's CA folders.
            let probe = property == "ssl.ca.location" && location == "probe";
            if !probe && !Path::new(location).exists() {
                return Err(refuse(format!("{name}: no such file: {location}")));
            }
            config.set(property, location);
        }
        match (&self.ssl_certificate_location, &self.ssl_key_location) {
            (Some(_), None) => {
                return Err(refuse(
                    "PURSER_KAFKA_SSL_CERTIFICATE_LOCATION needs PURSER_KAFKA_SSL_KEY_LOCATION"
                        .to_owned(),
                ))
            }
            (None, Some(_)) => {
                return Err(refuse(
                    "PURSER_KAFKA_SSL_KEY_LOCATION needs PURSER_KAFKA_SSL_CERTIFICATE_LOCATION"
                        .to_owned(),
                ))
            }
            _ => {}
        }
        if let Some(password) = &self.ssl_key_password {
            if self.ssl_key_location.is_none() {
                return Err(refuse(
                    "PURSER_KAFKA_SSL_KEY_PASSWORD is set without PURSER_KAFKA_SSL_KEY_LOCATION"
                        .to_owned(),
                ));
            }
            config.set("ssl.key.password", password.expose());
        }

        if let Some(properties) = &self.properties {
            let pairs = properties
                .pairs()
                .map_err(|reason| refuse(format!("PURSER_KAFKA_PROPERTIES: {reason}")))?;
            for (key, value) in pairs {
                config.set(key, value);
            }
        }
        Ok(())
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

    /// A file that exists, for the TLS locations.
    const SOME_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");

    fn parse(args: &[&str]) -> std::result::Result<KafkaConfig, clap::Error> {
        let mut argv = vec!["purser"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|cli| cli.kafka)
    }

    fn refused(config: &KafkaConfig) -> String {
        match config.validate() {
            Err(Error::Config(message)) => message,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn property(config: &ClientConfig, key: &str) -> Option<String> {
        config.get(key).map(str::to_owned)
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
        // The environment of the test run may set KAFKA_* or PURSER_KAFKA_*;
        // only compare when it does not.
        if std::env::vars().any(|(k, _)| k.starts_with("KAFKA_") || k.starts_with("PURSER_KAFKA_"))
        {
            return;
        }
        let cli = Cli::try_parse_from(["purser"]).expect("defaults parse");
        assert_eq!(cli.kafka, KafkaConfig::default());
    }

    #[test]
    fn zero_partitions_are_refused() {
        assert!(Cli::try_parse_from(["purser", "--kafka-partitions", "0"]).is_err());
    }

    #[test]
    fn the_default_is_plaintext_with_nothing_else() {
        let config = KafkaConfig::default().client_config().expect("valid");
        let mut keys: Vec<&str> = config.config_map().into_keys().collect();
        keys.sort_unstable();
        assert_eq!(keys, ["bootstrap.servers", "security.protocol"]);
        assert_eq!(
            property(&config, "security.protocol").as_deref(),
            Some("plaintext")
        );
    }

    #[test]
    fn sasl_ssl_with_scram_sets_the_librdkafka_properties() {
        let config = parse(&[
            "--kafka-brokers",
            "broker.example:9093",
            "--kafka-security-protocol",
            "SASL_SSL",
            "--kafka-sasl-mechanism",
            "scram-sha-512",
            "--kafka-sasl-username",
            "purser",
            "--kafka-sasl-password",
            "s3cret",
            "--kafka-ssl-ca-location",
            SOME_FILE,
            "--kafka-properties",
            "client.id=purser-1; socket.keepalive.enable=true;",
        ])
        .expect("parses");
        let client = config.client_config().expect("valid");
        for (key, value) in [
            ("bootstrap.servers", "broker.example:9093"),
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "purser"),
            ("sasl.password", "s3cret"),
            ("ssl.ca.location", SOME_FILE),
            ("client.id", "purser-1"),
            ("socket.keepalive.enable", "true"),
        ] {
            assert_eq!(property(&client, key).as_deref(), Some(value), "{key}");
        }
    }

    #[test]
    fn ssl_with_a_client_certificate_sets_the_librdkafka_properties() {
        let config = KafkaConfig {
            security: KafkaSecurity {
                protocol: SecurityProtocol::Ssl,
                ssl_certificate_location: Some(SOME_FILE.into()),
                ssl_key_location: Some(SOME_FILE.into()),
                ssl_key_password: Some("k3y".into()),
                ..KafkaSecurity::default()
            },
            ..KafkaConfig::default()
        };
        let client = config.client_config().expect("valid");
        assert_eq!(
            property(&client, "security.protocol").as_deref(),
            Some("ssl")
        );
        assert_eq!(
            property(&client, "ssl.certificate.location").as_deref(),
            Some(SOME_FILE)
        );
        assert_eq!(
            property(&client, "ssl.key.location").as_deref(),
            Some(SOME_FILE)
        );
        assert_eq!(
            property(&client, "ssl.key.password").as_deref(),
            Some("k3y")
        );
        assert_eq!(property(&client, "sasl.mechanism"), None);
    }

    #[test]
    fn properties_split_on_commas_when_there_is_no_semicolon() {
        let properties: KafkaProperties = "a.b=1, c.d = two ,".parse().expect("infallible");
        assert_eq!(
            properties.pairs().expect("valid"),
            [
                ("a.b".to_owned(), "1".to_owned()),
                ("c.d".to_owned(), "two".to_owned())
            ]
        );
        let properties: KafkaProperties = "ssl.cipher.suites=A,B;client.id=x"
            .parse()
            .expect("infallible");
        assert_eq!(properties.pairs().expect("valid")[0].1, "A,B");
    }

    #[test]
    fn malformed_properties_are_refused_at_validation() {
        for (text, reason) in [
            ("client.id", "not key=value"),
            ("=x", "not a librdkafka property name"),
            ("client id=x", "not a librdkafka property name"),
            ("sasl.password=x", "PURSER_KAFKA_SASL_PASSWORD"),
            ("enable.auto.commit=true", "set by Purser"),
            ("bootstrap.servers=x:1", "KAFKA_BROKERS"),
            ("client.id=a,client.id=b", "given twice"),
        ] {
            let config = parse(&["--kafka-properties", text]).expect("parses");
            let message = refused(&config);
            assert!(
                message.starts_with("PURSER_KAFKA_PROPERTIES: "),
                "{message}"
            );
            assert!(message.contains(reason), "{text}: {message}");
        }
    }

    #[test]
    fn an_unknown_property_is_refused_by_librdkafka_at_validation() {
        let config = parse(&["--kafka-properties", "no.such.property=1"]).expect("parses");
        let message = refused(&config);
        assert!(message.contains("no.such.property"), "{message}");
    }

    #[test]
    fn an_invalid_protocol_or_mechanism_is_refused_at_parse() {
        let error = parse(&["--kafka-security-protocol", "tls"]).expect_err("refused");
        assert!(error.to_string().contains("sasl_ssl"), "{error}");
        let error = parse(&["--kafka-sasl-mechanism", "GSSAPI"]).expect_err("refused");
        assert!(error.to_string().contains("SCRAM-SHA-256"), "{error}");
    }

    #[test]
    fn inconsistent_settings_are_refused_with_the_variable_named() {
        let sasl = |mechanism, username: Option<&str>, password: Option<&str>| KafkaConfig {
            security: KafkaSecurity {
                protocol: SecurityProtocol::SaslSsl,
                sasl_mechanism: mechanism,
                sasl_username: username.map(str::to_owned),
                sasl_password: password.map(Secret::from),
                ..KafkaSecurity::default()
            },
            ..KafkaConfig::default()
        };
        let cases = [
            (sasl(None, Some("u"), Some("p")), "needs PURSER_KAFKA_SASL_MECHANISM"),
            (
                sasl(Some(SaslMechanism::Plain), None, Some("p")),
                "needs PURSER_KAFKA_SASL_USERNAME and PURSER_KAFKA_SASL_PASSWORD",
            ),
            (
                sasl(Some(SaslMechanism::Plain), Some("u"), None),
                "needs PURSER_KAFKA_SASL_USERNAME and PURSER_KAFKA_SASL_PASSWORD",
            ),
            (
                KafkaConfig {
                    security: KafkaSecurity {
                        sasl_username: Some("u".into()),
                        ..KafkaSecurity::default()
                    },
                    ..KafkaConfig::default()
                },
                "PURSER_KAFKA_SASL_USERNAME is set but PURSER_KAFKA_SECURITY_PROTOCOL=plaintext",
            ),
            (
                KafkaConfig {
                    security: KafkaSecurity {
                        protocol: SecurityProtocol::SaslPlaintext,
                        ssl_ca_location: Some(SOME_FILE.into()),
                        ..sasl(Some(SaslMechanism::Plain), Some("u"), Some("p")).security
                    },
                    ..KafkaConfig::default()
                },
                "PURSER_KAFKA_SSL_CA_LOCATION is set but PURSER_KAFKA_SECURITY_PROTOCOL=sasl_plaintext",
            ),
            (
                KafkaConfig {
                    security: KafkaSecurity {
                        protocol: SecurityProtocol::Ssl,
                        ssl_ca_location: Some("/no/such/ca.pem".into()),
                        ..KafkaSecurity::default()
                    },
                    ..KafkaConfig::default()
                },
                "PURSER_KAFKA_SSL_CA_LOCATION: no such file: /no/such/ca.pem",
            ),
            (
                KafkaConfig {
                    security: KafkaSecurity {
                        protocol: SecurityProtocol::Ssl,
                        ssl_certificate_location: Some(SOME_FILE.into()),
                        ..KafkaSecurity::default()
                    },
                    ..KafkaConfig::default()
                },
                "PURSER_KAFKA_SSL_CERTIFICATE_LOCATION needs PURSER_KAFKA_SSL_KEY_LOCATION",
            ),
            (
                KafkaConfig {
                    security: KafkaSecurity {
                        protocol: SecurityProtocol::Ssl,
                        ssl_key_password: Some("k".into()),
                        ..KafkaSecurity::default()
                    },
                    ..KafkaConfig::default()
                },
                "PURSER_KAFKA_SSL_KEY_PASSWORD is set without PURSER_KAFKA_SSL_KEY_LOCATION",
            ),
        ];
        for (config, expected) in cases {
            let message = refused(&config);
            assert!(
                message.contains(expected),
                "{message}\nexpected: {expected}"
            );
        }
    }

    #[test]
    fn secrets_do_not_show_in_debug_or_errors() {
        let config = parse(&[
            "--kafka-security-protocol",
            "sasl_ssl",
            "--kafka-sasl-mechanism",
            "PLAIN",
            "--kafka-sasl-username",
            "purser",
            "--kafka-sasl-password",
            "hunter2-sasl",
            "--kafka-properties",
            "ssl.keystore.password=hunter2-property",
        ])
        .expect("parses");
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("purser"), "{debug}");
        assert!(debug.contains("ssl.keystore.password"), "{debug}");
        let client = format!("{:?}", config.client_config().expect("valid"));
        assert!(!client.contains("hunter2"), "{client}");

        // librdkafka quotes a value it refuses: it is redacted.
        let config = parse(&[
            "--kafka-properties",
            "socket.keepalive.enable=hunter2-value",
        ])
        .expect("parses");
        let message = refused(&config);
        assert!(message.contains("socket.keepalive.enable"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");

        // A malformed item is named by its position, not its text.
        let config = parse(&["--kafka-properties", "client.id=x;hunter2-typo"]).expect("parses");
        let message = refused(&config);
        assert!(message.contains("item 2"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn librdkafka_is_built_with_tls_and_sasl_plain_and_scram() {
        let native = ClientConfig::new().create_native_config().expect("config");
        let features = native.get("builtin.features").expect("builtin.features");
        for feature in ["ssl", "sasl_plain", "sasl_scram"] {
            assert!(
                features.split(',').any(|f| f == feature),
                "{feature} missing from {features}"
            );
        }
    }
}
