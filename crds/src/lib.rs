//! The kubeha.io API: `HighAvailabilityCluster` (the user's intent) and `HighAvailabilityMember` (one node's
//! complete agent configuration and what that agent observes).
//!
//! This crate holds types only: no Kubernetes client, no runtime, no I/O, so both binaries and the chart
//! generator can depend on it without pulling either in.
