//! The kubeha operator: resolves each `HighAvailabilityCluster`'s masters, renders one
//! `HighAvailabilityMember` per master, and folds what the agents report back into the cluster's status.
//!
//! The operator never touches sockets or the node's network; everything that happens on a node is the
//! agent's business. The decisions are pure functions ([`desired`], [`status`], [`conflict`], [`vipcheck`]); the
//! [`controller`] only reads, calls them, and writes.

pub mod conflict;
pub mod controller;
pub mod desired;
pub mod seen;
pub mod status;
pub mod vipcheck;
