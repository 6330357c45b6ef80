//! Human reports of plans and transfers: pull plans (`delta`, `pull --dry-run`), pulls, switch plans.

use osdeploy_deploy::deploy::ops::{EtcPlan, SwitchPlan};
use osdeploy_store::checkout::CheckoutMethod;
use osdeploy_store::delta::generate::GenerateStats;
use osdeploy_store::{CommitId, RefName};
use osdeploy_transport::plan::PullPlan;
use osdeploy_transport::pull::PullStats;
use osdeploy_transport::report::UpdateCost;

use crate::output;

/// The human table of a pull plan (`delta`, `pull --dry-run`).
pub fn print_plan(plan: &PullPlan) {
    let total_raw = plan.chunk_bytes_raw + plan.reused_bytes_raw;
    match &plan.from {
        Some(from) => println!("from {from}"),
        None => println!("from (nothing)"),
    }
    println!("to   {}", plan.to);
    let signatures = plan.whole_files.iter().filter(|f| f.name.ends_with(".sig")).count();
    let delta_index = plan.whole_files.iter().any(|f| f.name.ends_with(".dix"));
    println!(
        "fetch      {:>12}  in {} requests: {} pack ranges, {} pack indexes, the summary{}",
        output::size(plan.transfer_bytes),
        plan.requests,
        plan.reads.len(),
        plan.index_files,
        if signatures > 0 { format!(", {signatures} signature files") } else { String::new() }
            + if delta_index { ", the delta index" } else { "" }
    );
    if plan.deltas > 0 {
        let plural = if plan.deltas == 1 { "" } else { "s" };
        println!("  deltas   {:>12}  {} delta{plural}", output::size(plan.delta_bytes), plan.deltas);
    }
    println!(
        "  chunks   {:>12}  {} new chunks, {} uncompressed",
        output::size(
            plan.needed_bytes.saturating_sub(plan.metadata_bytes + plan.metadata_delta_bytes + plan.delta_bytes)
        ),
        plan.chunks,
        output::size(plan.chunk_bytes_raw)
    );
    if plan.metadata_delta_bytes > 0 {
        println!("  metadata {:>12}  1 metadata delta", output::size(plan.metadata_delta_bytes));
    } else {
        println!("  metadata {:>12}  {} objects", output::size(plan.metadata_bytes), plan.metadata_objects);
    }
    println!("  indexes  {:>12}", output::size(plan.index_bytes));
    println!(
        "files      {:>12}  new files: {} from deltas, {} from chunks{}",
        plan.files_new,
        plan.files_from_deltas,
        plan.files_new - plan.files_from_deltas - plan.files_adopted,
        if plan.files_adopted > 0 {
            format!(", {} left complete by an interrupted pull", plan.files_adopted)
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
    print_without_deltas(plan);
}

/// Compares with chunks only, when deltas were considered.
fn print_without_deltas(plan: &PullPlan) {
    if let Some(chunks) = plan.without_deltas.filter(|_| plan.files_from_deltas > 0) {
        let saved = chunks.transfer_bytes.saturating_sub(plan.transfer_bytes);
        println!(
            "chunks only {:>11}  in {} requests (deltas save {}, {:.0}%)",
            output::size(chunks.transfer_bytes),
            chunks.requests,
            output::size(saved),
            if chunks.transfer_bytes == 0 { 0.0 } else { 100.0 * saved as f64 / chunks.transfer_bytes as f64 }
        );
    }
}

/// The table of `delta report`.
pub fn print_update_costs(to: CommitId, version: &str, costs: &[UpdateCost]) {
    println!("updates to {to} (version {version})");
    println!(
        "{:<16} {:<12} {:>14} {:>6} {:>14} {:>6} {:>7} {:>13}",
        "from", "version", "with deltas", "req", "chunks only", "req", "saved", "files (delta)"
    );
    for c in costs {
        let saved = c.chunks_only.transfer_bytes.saturating_sub(c.with_deltas.transfer_bytes);
        let percent = if c.chunks_only.transfer_bytes == 0 {
            0.0
        } else {
            100.0 * saved as f64 / c.chunks_only.transfer_bytes as f64
        };
        println!(
            "{:<16} {:<12} {:>14} {:>6} {:>14} {:>6} {:>6.0}% {:>13}",
            &c.from.to_string()[..16],
            c.version,
            output::size(c.with_deltas.transfer_bytes),
            c.with_deltas.requests,
            output::size(c.chunks_only.transfer_bytes),
            c.chunks_only.requests,
            percent,
            format!("{} ({})", c.files_new, c.files_from_deltas)
        );
    }
}

/// The human report of `delta generate`.
pub fn print_generate(stats: &GenerateStats) {
    let from: Vec<String> = stats.from.iter().map(|c| c.to_string()).collect();
    println!("deltas to {} from {}", stats.to, from.join(", "));
    let rules: Vec<String> = stats.pairs_by_rule.iter().map(|(rule, n)| format!("{n} by {}", rule.as_str())).collect();
    println!("pairs      {:>12}  ({})", stats.pairs, rules.join(", "));
    println!(
        "encoded    {:>12}  ({} reused, {} not smaller than their chunks, {} too large)",
        stats.encoded, stats.reused, stats.not_smaller, stats.too_large
    );
    let codecs: Vec<String> = stats.by_codec.iter().map(|(codec, n)| format!("{n} {codec}")).collect();
    println!(
        "listed     {:>12}  deltas of {} ({}), replacing {} of chunks",
        stats.listed,
        output::size(stats.delta_bytes),
        codecs.join(", "),
        output::size(stats.chunk_bytes)
    );
    if stats.metadata_deltas > 0 {
        println!(
            "metadata   {:>12}  metadata deltas; this run's: {}, replacing {} of metadata objects",
            stats.metadata_deltas,
            output::size(stats.metadata_delta_bytes),
            output::size(stats.metadata_bytes)
        );
    }
    println!("index      {:>12}  in {:.1}s", output::size(stats.index_bytes), stats.seconds);
}

/// The lines `pull` prints: the commit on stdout, what it cost on stderr.
pub fn print_pull(branch: &RefName, stats: &PullStats) {
    println!("{}", stats.commit);
    eprintln!(
        "pulled {} as {} in {:.1}s: {} in {} requests, {} metadata objects and {} chunks fetched ({} reused), {} new files ({} from deltas{})",
        branch,
        stats.r#ref,
        stats.seconds,
        output::size(stats.bytes_fetched),
        stats.requests,
        stats.metadata_fetched,
        stats.chunks_fetched,
        stats.chunks_reused,
        stats.files_new,
        stats.files_from_deltas,
        if stats.delta_fallbacks > 0 {
            format!(", {} fell back to chunks", stats.delta_fallbacks)
        } else {
            String::new()
        }
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
    if let Some(kernel) = &plan.kernel {
        let initrd = kernel.release.initrd.as_ref().map_or_else(|| " (no initrd)".to_owned(), |i| format!(" and {i}"));
        println!(
            "kernel {}: {}{initrd} copied to {}, booted with: {}",
            kernel.release.version,
            kernel.release.kernel,
            kernel.install_dir.display(),
            kernel.options
        );
    }
    println!("bootloader {}: slot {} armed for {} trial boots", plan.bootloader.as_str(), plan.slot, plan.tries);
}
