//! `osdeploy mirror`: copy a remote archive repository (all or chosen branches) into a local
//! archive repository, incrementally (see `osdeploy_transport::mirror`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use osdeploy_transport::client::Progress;
use osdeploy_transport::mirror::{MirrorOptions, SummarySigner, mirror as transport_mirror};
use osdeploy_transport::remote::Remote;
use osdeploy_transport::sign;

use crate::http_args::HttpArgs;
use crate::output;
use crate::transfer_bar::TransferBar;

/// Arguments of `osdeploy mirror`.
#[derive(clap::Args, Debug)]
pub struct MirrorArgs {
    /// Base URL of the archive repository to mirror (http:// or https://).
    pub url: String,
    /// The mirror: an archive repository, created when the directory is new or empty.
    pub dir: PathBuf,
    /// Mirror only this branch (repeatable): only the packs it needs, and a summary of the
    /// mirror's own. Without it, every branch, and the origin's signed summary passed on.
    #[arg(long = "branch", value_name = "BRANCH")]
    pub branches: Vec<String>,
    /// A public key file trusted to sign the upstream's summary and commits (repeatable).
    #[arg(long = "key", value_name = "PUBKEY_FILE")]
    pub keys: Vec<PathBuf>,
    /// Accept unsigned data from the upstream.
    #[arg(long, conflicts_with = "keys")]
    pub insecure: bool,
    /// Sign the summary of a partial mirror with this secret key; nodes then trust its public key
    /// besides the origin's.
    #[arg(long, value_name = "SECRET_KEY_FILE", requires = "branches")]
    pub sign_key: Option<PathBuf>,
    /// How the transfer uses the network.
    #[command(flatten)]
    pub http: HttpArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `mirror`.
pub fn mirror(args: MirrorArgs) -> Result<()> {
    ensure!(
        args.insecure || !args.keys.is_empty(),
        "give the public key the upstream signs with (--key FILE), or --insecure to accept unsigned data"
    );
    let keys =
        args.keys.iter().map(|f| sign::load_public(f).map(|k| sign::public_hex(&k))).collect::<Result<Vec<_>, _>>()?;
    let remote = Remote { name: args.url.clone(), urls: vec![args.url.clone()], keys, insecure: args.insecure };
    let options = MirrorOptions {
        branches: args.branches.iter().map(|b| b.parse()).collect::<Result<_, _>>()?,
        sign_key: args.sign_key.as_deref().map(sign::load_secret).transpose()?,
        http: args.http.options(),
    };
    let progress = Arc::new(Progress::default());
    let bar = TransferBar::start(progress.clone());
    let stats = osdeploy_transport::runtime()?
        .block_on(transport_mirror(&args.dir, &remote, &options, progress))
        .with_context(|| format!("mirroring {} into {}", args.url, args.dir.display()))?;
    drop(bar);
    if args.json {
        output::print_json(&stats)?;
    } else {
        for (name, commit) in &stats.refs {
            println!("{name}\t{commit}");
        }
        for name in &stats.refs_deleted {
            eprintln!("deleted branch {name}: no longer mirrored");
        }
        eprintln!(
            "mirrored {} branch{} of {} into {} in {:.1}s: {} packs fetched, {} already held; {} in {} requests; \
             summary signed by {}",
            stats.refs.len(),
            if stats.refs.len() == 1 { "" } else { "es" },
            args.url,
            args.dir.display(),
            stats.seconds,
            stats.packs_fetched,
            stats.packs_skipped,
            output::size(stats.bytes_fetched),
            stats.requests,
            match stats.summary_signed_by {
                SummarySigner::Origin => "the origin",
                SummarySigner::Mirror => "the mirror's key",
                SummarySigner::None => "nobody",
            }
        );
    }
    if stats.summary_signed_by == SummarySigner::None {
        eprintln!(
            "warning: the mirror's summary is not signed: nodes must add it with --insecure{}",
            if stats.full { "" } else { ", or mirror again with --sign-key" }
        );
    }
    Ok(())
}
