//! The domain's integration tests: given/when/then rules and proptest
//! properties per aggregate, in one binary.

mod account;
mod inventory;
mod order;
mod saga;
mod strategies;
