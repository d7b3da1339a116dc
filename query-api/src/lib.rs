//! The Query API. Filled by the projections issue.
