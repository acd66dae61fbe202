//! The host service: what `hotspare agent` decides and keeps in the
//! registry. Decisions (placement, reconciliation) are pure functions;
//! the agent's loop gathers their inputs and carries out their results.
//! Design: `docs/service.md`.

pub mod agent;
pub mod api;
pub mod auth;
pub mod config;
pub mod metrics;
pub mod model;
pub mod placement;
pub mod reconcile;
pub mod registry;
pub mod supervisor;
