//! Order fulfilment saga orchestrator. Filled by the saga issue.
