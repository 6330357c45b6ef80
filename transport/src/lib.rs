//! Transport of osdeploy repositories to nodes and mirrors.
//!
//! Today: [`plan`], which computes what a node holding one commit must fetch to get another —
//! the missing objects mapped to pack byte ranges and coalesced into few HTTP Range requests.
//! `osdeploy delta` prints it; the pull (issue 3) will execute it. The HTTP client, `serve` and
//! `mirror` come next (DESIGN.md §4).

pub mod plan;
