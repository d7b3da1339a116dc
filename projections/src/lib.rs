//! Projection workers and read models. Filled by the projections issue.
