//! The orchestrator's commands to items, accounts and orders, serialised per
//! stream within the process: the sagas of one hot item queue for it here,
//! one command at a time, instead of colliding on its next version and
//! deciding again (across processes, the store's version check stays the
//! guard). Each command first decides on the state the previous one left
//! (the append at its version proves it current; else the repository reads
//! afresh), so a queue of sagas on one item reads the item's stream once:
//! [`event_store::AggregateCache`].

pub(super) type Writer<A> = event_store::AggregateCache<A>;
