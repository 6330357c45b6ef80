//! The transport commands: remote add/list, pull, serve.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use osdeploy_store::{Access, Repo};
use osdeploy_transport::pull::{PullOptions, pull as transport_pull};
use osdeploy_transport::remote::{self, Remote};

use crate::output;

/// `remote add`.
pub fn remote_add(repo: &Path, name: String, urls: Vec<String>, insecure: bool) -> Result<()> {
    let repo = Repo::open(repo, Access::Write)?;
    remote::add(&repo, Remote { name: name.clone(), urls, insecure })?;
    println!("remote {name} added");
    Ok(())
}

/// `remote list`.
pub fn remote_list(repo: &Path, json: bool) -> Result<()> {
    let repo = Repo::open(repo, Access::Read)?;
    let remotes = remote::list(&repo)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&remotes)?);
        return Ok(());
    }
    for r in remotes.values() {
        println!(
            "{}\t{}{}",
            r.name,
            r.urls.join(" "),
            if r.insecure { "\t(insecure: unsigned data accepted)" } else { "" }
        );
    }
    Ok(())
}

/// `pull`.
pub fn pull(repo: &Path, remote_name: &str, branch: &str, in_flight: usize, json: bool) -> Result<()> {
    let mut repo = Repo::open(repo, Access::Write)?;
    let remote = remote::get(&repo, remote_name)?;
    let options = PullOptions { in_flight, ..Default::default() };
    let stats = transport_pull(&mut repo, &remote, branch, options)
        .with_context(|| format!("pulling {branch} from {remote_name}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(());
    }
    println!("{}", stats.commit);
    eprintln!(
        "pulled {} as {} in {:.1}s: {} in {} requests, {} metadata objects and {} chunks fetched, {} new files",
        branch,
        stats.r#ref,
        stats.seconds,
        output::size(stats.bytes_fetched),
        stats.requests,
        stats.metadata_fetched,
        stats.chunks_fetched,
        stats.files_new
    );
    Ok(())
}

/// `serve`.
pub fn serve(dir: PathBuf, listen: SocketAddr) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(osdeploy_transport::serve::serve(dir.clone(), listen, |addr| {
        eprintln!("serving {} on http://{addr}/", dir.display());
    }))?;
    Ok(())
}
