//! Human reports of plans and transfers: pull plans (`delta`, `pull --dry-run`), pulls, switch plans.

use osdeploy_deploy::deploy::ops::{EtcPlan, SwitchPlan};
use osdeploy_store::checkout::CheckoutMethod;
use osdeploy_transport::plan::PullPlan;
use osdeploy_transport::pull::PullStats;

use crate::output;

/// The human table of a pull plan (`delta`, `pull --dry-run`).
pub fn print_plan(plan: &PullPlan) {
    let total_raw = plan.chunk_bytes_raw + plan.reused_bytes_raw;
    match &plan.from {
        Some(from) => println!("from {from}"),
        None => println!("from (nothing)"),
    }
    println!("to   {}", plan.to);
    let signatures = plan.whole_files.len().saturating_sub(1);
    println!(
        "fetch      {:>12}  in {} requests: {} pack ranges, {} pack indexes, the summary{}",
        output::size(plan.transfer_bytes),
        plan.requests,
        plan.reads.len(),
        plan.index_files,
        if signatures > 0 { format!(" and {signatures} signature files") } else { String::new() }
    );
    println!(
        "  chunks   {:>12}  {} new chunks, {} uncompressed",
        output::size(plan.needed_bytes.saturating_sub(plan.metadata_bytes)),
        plan.chunks,
        output::size(plan.chunk_bytes_raw)
    );
    println!("  metadata {:>12}  {} objects", output::size(plan.metadata_bytes), plan.metadata_objects);
    println!("  indexes  {:>12}", output::size(plan.index_bytes));
    println!(
        "files      {:>12}  new files built from chunks{}",
        plan.files_new,
        if plan.files_adopted > 0 {
            format!(" ({} left complete by an interrupted pull)", plan.files_adopted)
        } else {
            String::new()
        }
    );
    println!(
        "reuse      {:>12}  {} chunks of the new files already on the node ({:.1}% of their content)",
        output::size(plan.reused_bytes_raw),
        plan.chunks_reused,
        if total_raw == 0 { 0.0 } else { 100.0 * plan.reused_bytes_raw as f64 / total_raw as f64 }
    );
}

/// The lines `pull` prints: the commit on stdout, what it cost on stderr.
pub fn print_pull(branch: &str, stats: &PullStats) {
    println!("{}", stats.commit);
    eprintln!(
        "pulled {} as {} in {:.1}s: {} in {} requests, {} metadata objects and {} chunks fetched ({} reused), {} new files",
        branch,
        stats.r#ref,
        stats.seconds,
        output::size(stats.bytes_fetched),
        stats.requests,
        stats.metadata_fetched,
        stats.chunks_fetched,
        stats.chunks_reused,
        stats.files_new
    );
}

/// The human form of `switch --dry-run`.
pub fn print_switch_plan(plan: &SwitchPlan) {
    let version = plan.version.as_ref().map_or_else(String::new, |v| format!(" (version {v})"));
    println!("switch (dry run: nothing written) would deploy {}{version} into slot {}", plan.commit, plan.slot);
    println!("slot {} stays as it is (booted)", plan.booted);
    let how = match (plan.method, plan.same_filesystem) {
        (CheckoutMethod::Reflink, _) => "reflinked (FICLONE, no data copied)",
        (CheckoutMethod::Copy, false) => "copied (the slots are not on the repository's filesystem)",
        (CheckoutMethod::Copy, true) => "copied (this filesystem cannot share extents)",
        (CheckoutMethod::Decompress, _) => "written from compressed chunks",
    };
    println!("content: {how}{}", if plan.verify { ", re-hashed first" } else { "" });
    match &plan.etc {
        EtcPlan::Merge { base } => println!("/etc: three-way merge with the booted release {base}"),
        EtcPlan::BaseMissing { base } => {
            println!("/etc: not merged (the booted release {base} is no longer in the repository)")
        }
        EtcPlan::NothingDeployed => {
            println!("/etc: the new release's, as it is (nothing deployed in the booted slot)")
        }
    }
    if plan.cancel_trial {
        println!("the pending trial of slot {} is cancelled first", plan.slot);
    }
    println!("bootloader {}: slot {} armed for {} trial boots", plan.bootloader.as_str(), plan.slot, plan.tries);
}
