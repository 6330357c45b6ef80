//! HTTP transport for osdeploy repositories.
//!
//! This crate will hold the pull client (summary → missing chunks → coalesced HTTP Range requests,
//! verified as they arrive), `osdeploy serve`, `osdeploy mirror` and the `delta` planner; see
//! DESIGN.md §4 and issue 3. It deliberately contains no code yet: the store comes first.
