//! The handlers, one module per resource.

pub mod accounts;
pub mod health;
pub mod inventory;
pub mod orders;
pub mod projections;
pub mod sagas;
