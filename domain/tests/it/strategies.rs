//! Proptest settings and strategies the domain's property tests share.

use proptest::prelude::*;
use proptest::test_runner::Config;

/// Moderate settings: the suite runs on 2 shared cores.
pub fn proptest_config() -> Config {
    Config {
        cases: 256,
        ..Config::default()
    }
}

/// Positive amounts: small ones that interact, and extremes next to
/// `i64::MAX` that overflow.
pub fn positive_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        6 => 1..=1_000i64,
        2 => (i64::MAX - 1_000)..=i64::MAX,
        1 => i64::MAX / 2 - 10..=i64::MAX / 2 + 10,
        1 => 1..=i64::MAX,
    ]
}

/// A uuid from a pool of `n`, so that commands collide on purpose.
pub fn pooled_uuid(n: u8) -> impl Strategy<Value = uuid::Uuid> {
    (0..n).prop_map(|i| {
        uuid::Uuid::from_u128(0x0191_d0c2_7a3e_7cc1_9a41_0000_0000_0000 + u128::from(i))
    })
}
