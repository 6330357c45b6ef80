//! The transport commands: remote add/list, pull, serve.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use osdeploy_store::{Access, RefName, Repo};
use osdeploy_transport::client::Progress;
use osdeploy_transport::pull::{PullOptions, plan_pull, pull as transport_pull};
use osdeploy_transport::remote::{self, Remote};
use osdeploy_transport::{serve, sign};

use crate::output::print_json;
use crate::reports;
use crate::transfer_bar::TransferBar;

/// `remote add`.
pub fn remote_add(repo: &Path, name: String, urls: Vec<String>, key_files: &[PathBuf], insecure: bool) -> Result<()> {
    let repo = Repo::open(repo, Access::Write)?;
    let keys =
        key_files.iter().map(|f| sign::load_public(f).map(|k| sign::public_hex(&k))).collect::<Result<Vec<_>, _>>()?;
    remote::add(&repo, Remote { name: name.clone(), urls, keys, insecure })?;
    println!("remote {name} added");
    Ok(())
}

/// `key generate`.
pub fn key_generate(file: &Path) -> Result<()> {
    let public = sign::generate(file)?;
    println!("secret key: {} (keep it on the signing machine)", file.display());
    println!("public key: {} ({})", file.with_extension("pub").display(), sign::public_hex(&public));
    Ok(())
}

/// `sign`: every branch's commit, then the summary.
pub fn sign(repo: &Path, key_file: &Path, lifetime: std::time::Duration) -> Result<()> {
    let repo = Repo::open(repo, Access::Write)?;
    let signed = sign::sign_repository(&repo, &sign::load_secret(key_file)?, lifetime)?;
    for (name, commit) in &signed.commits {
        println!("signed commit {commit} ({name})");
    }
    println!(
        "signed summary with key {}, valid until {} (seconds since the epoch; {}): sign again before then",
        signed.key,
        signed.expires,
        in_words(lifetime)
    );
    Ok(())
}

/// "7 days", "12 hours", "90 minutes".
fn in_words(span: std::time::Duration) -> String {
    let seconds = span.as_secs();
    match seconds {
        s if s >= 86_400 && s % 86_400 == 0 => format!("{} days", s / 86_400),
        s if s >= 3_600 && s % 3_600 == 0 => format!("{} hours", s / 3_600),
        s => format!("{} minutes", s / 60),
    }
}

/// `remote list`.
pub fn remote_list(repo: &Path, json: bool) -> Result<()> {
    let repo = Repo::open(repo, Access::Read)?;
    let remotes = remote::list(&repo)?;
    if json {
        let shown: std::collections::BTreeMap<&String, Remote> = remotes
            .iter()
            .map(|(name, r)| (name, Remote { urls: r.urls.iter().map(|u| remote::redacted(u)).collect(), ..r.clone() }))
            .collect();
        return print_json(&shown);
    }
    for r in remotes.values() {
        let urls: Vec<String> = r.urls.iter().map(|u| remote::redacted(u)).collect();
        println!(
            "{}\t{}{}",
            r.name,
            urls.join(" "),
            if r.insecure {
                "\t(insecure: unsigned data accepted)".to_string()
            } else {
                format!("\tkeys: {}", r.keys.join(" "))
            }
        );
    }
    Ok(())
}

/// `pull REMOTE BRANCH` and `pull --dry-run` into a repository named with `--repo` (an origin, a mirror, a test).
pub fn pull(
    repo: &Path,
    remote_name: &str,
    branch: &RefName,
    options: PullOptions,
    dry_run: bool,
    json: bool,
) -> Result<()> {
    if dry_run {
        let repo = Repo::open(repo, Access::Read)?;
        let remote = remote::get(&repo, remote_name)?;
        let plan = osdeploy_transport::runtime()?
            .block_on(plan_pull(&repo, &remote, branch, options, &std::env::temp_dir()))
            .with_context(|| format!("planning a pull of {branch} from {remote_name}"))?;
        if json {
            return print_json(&plan);
        }
        reports::print_plan(&plan);
        return Ok(());
    }
    let mut repo = Repo::open(repo, Access::Write)?;
    let remote = remote::get(&repo, remote_name)?;
    let progress = Arc::new(Progress::default());
    let bar = TransferBar::start(progress.clone());
    let stats = osdeploy_transport::runtime()?
        .block_on(transport_pull(&mut repo, &remote, branch, options, progress))
        .with_context(|| format!("pulling {branch} from {remote_name}"))?;
    drop(bar);
    if json {
        return print_json(&stats);
    }
    reports::print_pull(branch, &stats);
    Ok(())
}

/// `serve`.
pub fn serve(
    dir: PathBuf,
    listen: SocketAddr,
    max_connections: Option<u64>,
    header_timeout: u64,
    idle_timeout: u64,
) -> Result<()> {
    serve::raise_open_files_limit();
    let defaults = serve::ServeLimits::default_for_this_process();
    let limits = serve::ServeLimits {
        max_connections: max_connections.map_or(defaults.max_connections, |n| usize::try_from(n).unwrap_or(usize::MAX)),
        header_timeout: Duration::from_secs(header_timeout),
        idle_timeout: Duration::from_secs(idle_timeout),
    };
    osdeploy_transport::runtime()?.block_on(serve::serve(dir.clone(), listen, limits, |addr| {
        eprintln!("serving {} on http://{addr}/", dir.display());
    }))?;
    Ok(())
}
