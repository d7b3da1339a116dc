//! The Command API.
