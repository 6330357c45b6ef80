//! Command-line definitions and dispatch.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use osdeploy_store::repo::RepoMode;

use osdeploy_deploy::deploy::prepare_root::BootPaths;
use osdeploy_deploy::deploy::{BootloaderKind, Sysroot};

use osdeploy_transport::client::HttpOptions;
use osdeploy_transport::deltas::DeltaUse;
use osdeploy_transport::pull::PullOptions;

use crate::fleet_cmds::RolloutAction;
use crate::http_args::HttpArgs;
use crate::mount_cmds::MountMode;
use crate::{delta_cmds, deploy_cmds, dist_cmds, fleet_cmds, mirror_cmd, mount_cmds, repo_cmds, transport_cmds};

/// The sysroot when neither `--sysroot` nor `OSDEPLOY_SYSROOT` gives one: where a booted node sees its physical root.
pub const DEFAULT_SYSROOT: &str = "/sysroot";
/// Where a node keeps its configuration (config.toml, health.d/).
pub const DEFAULT_CONFIG_DIR: &str = "/etc/osdeploy";

/// Deliver immutable OS trees: commit them into a deduplicated repository, inspect, check out, deploy.
#[derive(Parser, Debug)]
#[command(name = "osdeploy", version, about, long_about = None)]
pub struct Cli {
    /// Repository to work on [default: SYSROOT/osdeploy/repo, the sysroot's repository].
    #[arg(long, global = true, env = "OSDEPLOY_REPO", value_name = "PATH")]
    pub repo: Option<PathBuf>,
    /// The sysroot (physical root holding osdeploy/ with the repository and the slots) [default: /sysroot].
    #[arg(long, global = true, env = "OSDEPLOY_SYSROOT", value_name = "PATH")]
    pub sysroot: Option<PathBuf>,
    /// Node configuration: config.toml, health.d/ [default: /etc/osdeploy].
    #[arg(long, global = true, env = "OSDEPLOY_CONFIG_DIR", value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `osdeploy key` subcommands.
/// `delta` subcommands.
#[derive(Subcommand, Debug)]
pub enum DeltaAction {
    /// Encode, file by file, the changed contents of TO against those of earlier releases (each --from, or TO's
    /// last --last ancestors), keep each delta that is smaller than the chunks it replaces, and publish them with
    /// TO's delta index in the summary. Deltas already published for a pair are reused.
    Generate {
        /// An earlier release to start from (repeatable; default: TO's ancestors, see --last).
        #[arg(long)]
        from: Vec<String>,
        /// The release the deltas lead to.
        #[arg(long)]
        to: String,
        /// Without --from: how many of TO's ancestors to start from.
        #[arg(long, default_value_t = 3)]
        last: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// What updating to TO costs a node holding each of TO's last N ancestors: bytes and requests with per-file
    /// deltas and with chunks only.
    Report {
        /// The release updated to (a branch or commit).
        to: String,
        /// How many earlier releases to report on.
        #[arg(long, default_value_t = 5)]
        last: usize,
        /// Also draw the report as an SVG bar chart into this file.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyAction {
    /// Create an ed25519 key pair: FILE (secret, mode 0600) and FILE.pub (give it to nodes).
    Generate {
        /// Where to write the secret key.
        file: PathBuf,
    },
}

/// `osdeploy remote` subcommands.
#[derive(Subcommand, Debug)]
pub enum RemoteAction {
    /// Add (or replace) a remote: one or more URLs of the same archive repository, tried in order.
    Add {
        /// Its name.
        name: String,
        /// Base URLs (http:// or https://), preferred first (e.g. an edge mirror, then the origin).
        #[arg(required = true)]
        urls: Vec<String>,
        /// A public key file (`osdeploy key generate`) trusted to sign the remote's summary and
        /// commits (repeatable, for key rotation).
        #[arg(long = "key", value_name = "PUBKEY_FILE")]
        keys: Vec<PathBuf>,
        /// Accept unsigned data from this remote.
        #[arg(long, conflicts_with = "keys")]
        insecure: bool,
    },
    /// List remotes.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a repository in a new or empty directory.
    Init {
        /// archive (origins, mirrors) or bare (nodes).
        #[arg(long, value_enum)]
        mode: RepoMode,
        /// zstd level for archive objects (1-22; default chosen by measurement, see docs/benchmarks.md).
        #[arg(long, default_value_t = osdeploy_store::repo::DEFAULT_COMPRESSION_LEVEL)]
        compression_level: i32,
        /// FastCDC chunk sizes in bytes as MIN/AVG/MAX (AVG a power of two).
        #[arg(long, value_name = "MIN/AVG/MAX")]
        chunk_sizes: Option<String>,
    },
    /// Commit a directory tree on a branch.
    Commit(repo_cmds::CommitArgs),
    /// Show a branch's history.
    Log {
        /// Branch, commit id or unique prefix.
        commit: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one commit.
    Show {
        /// Branch, commit id or unique prefix.
        commit: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List a directory of a commit (or describe a single entry).
    Ls {
        /// Branch, commit id or unique prefix.
        commit: String,
        /// Path inside the commit (default: the root): as the shell gives it, or as `ls` prints it (`\xff` for a
        /// byte that is not UTF-8, `\\` for a backslash).
        #[arg(default_value = "/")]
        path: std::ffi::OsString,
        /// List subdirectories recursively.
        #[arg(long, short = 'R')]
        recursive: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a file's content to standard output.
    Cat {
        /// Branch, commit id or unique prefix.
        commit: String,
        /// Path of a regular file inside the commit: as the shell gives it, or as `ls` prints it.
        path: std::ffi::OsString,
    },
    /// List the paths added, removed or modified from commit A to commit B.
    Diff {
        /// The old commit.
        a: String,
        /// The new commit.
        b: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a commit out into a directory (reflinks where the filesystem allows, copies otherwise).
    Checkout {
        /// Branch, commit id or unique prefix.
        commit: String,
        /// Destination: must not exist, or be an empty directory.
        dir: PathBuf,
        /// Copy content even where the filesystem could share extents.
        #[arg(long)]
        no_reflink: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every object and check that everything the refs reach is present.
    Fsck {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove objects no ref reaches.
    Prune {
        /// Report what would be removed without removing it.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// What a node holding FROM must fetch for TO: bytes, objects, requests after coalescing, with deltas
    /// where they are cheaper and with chunks only. `delta generate` makes the deltas.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Delta {
        /// Generate deltas instead of planning.
        #[command(subcommand)]
        action: Option<DeltaAction>,
        /// The commit the node holds, or "none" for a node that holds nothing.
        #[arg(required = true)]
        from: Option<String>,
        /// The commit it wants.
        #[arg(required = true)]
        to: Option<String>,
        /// Merge neighbouring ranges of a pack separated by at most this many bytes.
        #[arg(long, default_value_t = 64 << 10)]
        max_gap: u64,
        /// Largest single Range request in bytes.
        #[arg(long, default_value_t = 16 << 20)]
        max_request: u64,
        /// Plan chunks only, as a node pulling with --no-deltas.
        #[arg(long)]
        no_deltas: bool,
        /// Plan against this remote over HTTP (FROM and TO name its branches or full commit ids): only its
        /// summary, pack indexes and metadata are fetched, nothing is stored.
        #[arg(long, value_name = "REMOTE")]
        remote: Option<String>,
        /// How the survey uses the network (with --remote).
        #[command(flatten)]
        http: HttpArgs,
        /// Print JSON (with every planned request).
        #[arg(long)]
        json: bool,
    },
    /// Manage the remotes this repository pulls from.
    Remote {
        /// What to do.
        #[command(subcommand)]
        action: RemoteAction,
    },
    /// Fetch a branch's newest commit from a remote: only missing objects, in few requests. On a sysroot the first
    /// pull records REMOTE/BRANCH as followed; without arguments, the followed branch is pulled.
    Pull {
        /// The remote (see `osdeploy remote add`).
        #[arg(requires = "branch")]
        remote: Option<String>,
        /// The branch on the remote; stored locally as REMOTE/BRANCH.
        branch: Option<String>,
        /// Range requests in flight at once.
        #[arg(long, default_value_t = 4)]
        in_flight: usize,
        /// Accept a commit older than the one already pulled (a deliberate downgrade).
        #[arg(long)]
        allow_downgrade: bool,
        /// Fetch chunks only: never rebuild a file from a delta (see `osdeploy delta generate`).
        #[arg(long)]
        no_deltas: bool,
        /// How the transfer uses the network.
        #[command(flatten)]
        http: HttpArgs,
        /// Print the plan (files to build from deltas or chunks, pack ranges, bytes and requests) and write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Manage signing keys.
    Key {
        /// What to do.
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Sign the summary and every branch's commit of an archive repository (run after commits).
    Sign {
        /// The secret key file (`osdeploy key generate`).
        #[arg(long)]
        key: PathBuf,
        /// How long the summary's signature lasts (d, h, m, s; at most 366d): nodes refuse it
        /// afterwards, so a stale or replaying server cannot hide newer releases for longer. Sign
        /// again before then (`osdeploy serve` warns a day ahead).
        #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_lifetime)]
        expires: std::time::Duration,
    },
    /// Serve an archive repository over HTTP (Range, conditional requests, cache headers).
    Serve {
        /// The archive repository to serve.
        dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Connections open at once; when reached, a new client takes the place of the one that has waited longest for
        /// a request [default: as many as the open files limit allows, two descriptors each, at most 16384].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        max_connections: Option<u64>,
        /// Seconds a client has to send a whole request head, from connecting or from its previous response.
        #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
        header_timeout: u64,
        /// Close a connection that moves no byte in either direction for this many seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
        idle_timeout: u64,
    },
    /// Copy a remote archive repository (all branches, or chosen ones) into a local archive repository that can be
    /// served in turn: packs byte-identical, only new packs fetched on the next run.
    Mirror(mirror_cmd::MirrorArgs),
    /// List branches.
    Refs {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create the deployment layout in the sysroot: bare repository, slots a and b, state file, var/ and home/.
    InitSysroot {
        /// The bootloader backend.
        #[arg(long, value_enum)]
        bootloader: BootloaderKind,
    },
    /// Deploy a commit into the standby slot (reflink checkout, /etc merge) and arm it to boot on trial.
    Switch {
        /// Branch, commit id or unique prefix (default: the followed branch's newest pulled commit).
        target: Option<String>,
        /// Re-hash the release's content before deploying it (as `verify_on_switch = true` in config.toml).
        #[arg(long)]
        verify: bool,
        /// Print the plan (slot, commit, checkout method, /etc merge, bootloader action) and write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// In the initramfs: make the slot named by osdeploy.slot= on the kernel command line the root filesystem
    /// (the slot bound on ROOT with /usr read-only, the sysroot's var/ and home/, the data partitions of the slot's
    /// /etc/osdeploy/config.toml, the sysroot itself at ROOT/sysroot). Refuses an empty or bad slot.
    PrepareRoot {
        /// Where the initramfs mounted the sysroot's filesystem and switches root to.
        #[arg(long, default_value = "/root")]
        root: PathBuf,
        /// Kernel command line to read osdeploy.slot= from.
        #[arg(long, value_name = "FILE", default_value = "/proc/cmdline")]
        cmdline: PathBuf,
        /// An empty directory that holds the sysroot mount meanwhile.
        #[arg(long, default_value = "/run/osdeploy/sysroot")]
        scratch: PathBuf,
        /// Print the mounts it would make and make none.
        #[arg(long)]
        dry_run: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Early at boot: record which slot booted, count a trial's attempt, notice a failed trial.
    BootCheck {
        /// Kernel command line to read osdeploy.slot= from (real bootloaders; default /proc/cmdline).
        #[arg(long, value_name = "FILE")]
        cmdline: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the health checks (CONFIG_DIR/health.d/); if all pass, make the booted slot good and the default.
    MarkGood {
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make the other slot boot from the next boot on.
    Rollback,
    /// Print a shell completion script: `osdeploy completions bash > /usr/share/bash-completion/completions/osdeploy`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (osdeploy.1 and one per subcommand) into DIR; for packaging.
    #[command(hide = true)]
    ManPages {
        /// The directory to write them into.
        dir: PathBuf,
    },
    /// Deflate a gzip delta's plain text again, a request on stdin, the stream on stdout: osdeploy runs itself so to
    /// rebuild a received delta within limits of CPU time and memory.
    #[command(hide = true)]
    RebuildDeflate,
    /// Show a commit as a read-only filesystem at MOUNTPOINT (FUSE), with its exact metadata; file content is read
    /// from the repository, or with --remote fetched from the remote, as it is needed. Returns once mounted, leaving
    /// a background process to serve it; `osdeploy umount MOUNTPOINT` unmounts it.
    Mount {
        /// Branch, commit id or unique prefix; with --remote, a branch of the remote.
        commit: String,
        /// An existing directory with nothing mounted on it.
        mountpoint: PathBuf,
        /// Serve from this process (logs on stderr) until unmounted; SIGINT or SIGTERM unmount it.
        #[arg(long)]
        foreground: bool,
        /// Read the commit from this remote (see `osdeploy remote add`): its metadata at once, each chunk when first
        /// read (with read-ahead), verified, into the cache.
        #[arg(long, value_name = "NAME")]
        remote: Option<String>,
        /// Where a remote mount keeps fetched chunks (kept for the next mount) [default: REPO/cache/mount].
        #[arg(long, value_name = "DIR")]
        cache: Option<PathBuf>,
        /// Chunks the mount keeps: decoded in memory for an archive repository, on disk for a remote (K, M, G).
        #[arg(long, value_name = "BYTES", default_value = "256M", value_parser = crate::http_args::parse_size)]
        cache_size: u64,
        /// How a remote mount uses the network.
        #[command(flatten)]
        http: HttpArgs,
        /// Where the background process appends its warnings and errors, and why it ended if it ended
        /// before the unmount [default: discarded].
        #[arg(long, value_name = "FILE", conflicts_with = "foreground")]
        log_file: Option<PathBuf>,
        /// The background process `mount` starts.
        #[arg(long, hide = true)]
        daemon: bool,
    },
    /// Unmount a commit that `osdeploy mount` mounted; the process serving it ends.
    Umount {
        /// Where it is mounted.
        mountpoint: PathBuf,
    },
    /// Run the update agent (CONFIG_DIR/config.toml [fleet]): follow the sysroot's branch, take each new release
    /// when its rollout policy lets this node, reboot holding one of the fleet's reboot slots (etcd), judge the
    /// boot by the health checks and report it. SIGHUP polls at once; SIGTERM stops (work resumes at the next
    /// start).
    Agent {
        /// Where the node id comes from when [fleet] node_id is not set.
        #[arg(long, value_name = "FILE", default_value = "/etc/machine-id")]
        machine_id: PathBuf,
    },
    /// Fleet rollouts: publish a release's policy on the origin; show, pause, resume or abort it in etcd.
    Rollout {
        /// What to do.
        #[command(subcommand)]
        action: RolloutAction,
    },
    /// Show both slots, the booted, default and next slot, the trial and the recent history.
    Status {
        /// Print JSON (schema in docs/deployments.md).
        #[arg(long)]
        json: bool,
    },
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<()> {
    let sysroot = Sysroot::new(cli.sysroot.unwrap_or_else(|| PathBuf::from(DEFAULT_SYSROOT)));
    // Without --repo, repository commands work on the sysroot's repository, and a pull there follows its branch.
    let on_sysroot = cli.repo.is_none();
    let repo = cli.repo.unwrap_or_else(|| sysroot.repo());
    // A pull on a repository named with --repo (an origin, a mirror) reads a node configuration only when one is
    // named explicitly.
    let node_config = on_sysroot || cli.config_dir.is_some();
    let config_dir = cli.config_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_DIR));
    match cli.command {
        Command::Init { mode, compression_level, chunk_sizes } => {
            repo_cmds::init(&repo, mode, compression_level, chunk_sizes.as_deref())
        }
        Command::Commit(args) => repo_cmds::commit(&repo, args),
        Command::Log { commit, json } => repo_cmds::log(&repo, &commit, json),
        Command::Show { commit, json } => repo_cmds::show(&repo, &commit, json),
        Command::Ls { commit, path, recursive, json } => repo_cmds::ls(&repo, &commit, &path, recursive, json),
        Command::Cat { commit, path } => repo_cmds::cat(&repo, &commit, &path),
        Command::Diff { a, b, json } => repo_cmds::diff(&repo, &a, &b, json),
        Command::Checkout { commit, dir, no_reflink, json } => {
            repo_cmds::checkout(&repo, &commit, &dir, !no_reflink, json)
        }
        Command::Fsck { json } => repo_cmds::fsck(&repo, json),
        Command::Prune { dry_run, json } => repo_cmds::prune(&repo, dry_run, json),
        Command::Refs { json } => repo_cmds::refs(&repo, json),
        Command::Remote { action: RemoteAction::Add { name, urls, keys, insecure } } => {
            transport_cmds::remote_add(&repo, name, urls, &keys, insecure)
        }
        Command::Key { action: KeyAction::Generate { file } } => transport_cmds::key_generate(&file),
        Command::Sign { key, expires } => transport_cmds::sign(&repo, &key, expires),
        Command::Remote { action: RemoteAction::List { json } } => transport_cmds::remote_list(&repo, json),
        Command::Pull { remote, branch, in_flight, allow_downgrade, no_deltas, http, dry_run, json } => {
            let defaults = if node_config {
                osdeploy_deploy::deploy::pull::http_defaults(&osdeploy_deploy::deploy::Config::load(&config_dir)?)
            } else {
                HttpOptions::default()
            };
            let deltas = if no_deltas { DeltaUse::Never } else { DeltaUse::WhereCheaper };
            let http = http.options_over(defaults);
            let options = PullOptions { in_flight, allow_downgrade, http, deltas, ..Default::default() };
            match (on_sysroot, remote.zip(branch)) {
                (true, args) => deploy_cmds::pull(&sysroot, args, options, dry_run, json),
                (false, Some((remote, branch))) => {
                    transport_cmds::pull(&repo, &remote, &branch.parse()?, options, dry_run, json)
                }
                (false, None) => {
                    bail!(
                        "pull without REMOTE BRANCH pulls the branch a sysroot follows; it cannot be used with --repo"
                    )
                }
            }
        }
        Command::InitSysroot { bootloader } => deploy_cmds::init_sysroot(&sysroot, bootloader),
        Command::Switch { target, verify, dry_run, json } => {
            deploy_cmds::switch(&sysroot, &config_dir, target.as_deref(), verify, dry_run, json)
        }
        Command::PrepareRoot { root, cmdline, scratch, dry_run, json } => {
            deploy_cmds::prepare_root(&BootPaths { root, cmdline, scratch }, dry_run, json)
        }
        Command::BootCheck { cmdline, json } => deploy_cmds::boot_check(&sysroot, cmdline.as_deref(), json),
        Command::MarkGood { json } => deploy_cmds::mark_good(&sysroot, &config_dir, json),
        Command::Rollback => deploy_cmds::rollback(&sysroot),
        Command::Status { json } => deploy_cmds::status(&sysroot, json),
        Command::Agent { machine_id } => fleet_cmds::agent(sysroot, config_dir, machine_id),
        Command::Rollout { action } => fleet_cmds::rollout(action, &repo, &config_dir),
        Command::Mount { commit, mountpoint, foreground, remote, cache, cache_size, http, log_file, daemon } => {
            let mode = match (daemon, foreground) {
                (true, _) => MountMode::Daemon { log_file },
                (false, true) => MountMode::Foreground,
                (false, false) => MountMode::Background,
            };
            let options = osdeploy_fuse::MountOptions {
                cache_bytes: cache_size,
                remote,
                cache_dir: cache,
                http: http.options(),
                ..Default::default()
            };
            mount_cmds::mount(&repo, &commit, &mountpoint, &options, mode)
        }
        Command::Umount { mountpoint } => mount_cmds::umount(&mountpoint),
        Command::Completions { shell } => dist_cmds::completions(shell),
        Command::ManPages { dir } => dist_cmds::man_pages(&dir),
        Command::RebuildDeflate => {
            // Started as /proc/self/exe, it would show as "exe" in ps and top (its arguments read
            // "osdeploy rebuild-deflate").
            let _ = rustix::thread::set_name(c"osdeploy");
            Ok(osdeploy_store::delta::deflate::serve_child(
                &mut std::io::stdin().lock(),
                &mut std::io::stdout().lock(),
            )?)
        }
        Command::Serve { dir, listen, max_connections, header_timeout, idle_timeout } => {
            transport_cmds::serve(dir, listen, max_connections, header_timeout, idle_timeout)
        }
        Command::Mirror(args) => mirror_cmd::mirror(args),
        Command::Delta { action: Some(DeltaAction::Generate { from, to, last, json }), .. } => {
            delta_cmds::generate_cmd(&repo, &from, &to, last, json)
        }
        Command::Delta { action: Some(DeltaAction::Report { to, last, svg, json }), .. } => {
            delta_cmds::report(&repo, &to, last, svg.as_deref(), json)
        }
        Command::Delta { action: None, from, to, max_gap, max_request, no_deltas, remote, http, json } => {
            let (from, to) = (from.expect("required"), to.expect("required"));
            let coalesce = osdeploy_transport::plan::CoalesceOptions { max_gap, max_request };
            let deltas = if no_deltas { DeltaUse::Never } else { DeltaUse::WhereCheaper };
            match remote {
                Some(remote) => {
                    let options = PullOptions { coalesce, http: http.options(), deltas, ..Default::default() };
                    delta_cmds::remote_plan(&repo, &remote, &from, &to, options, json)
                }
                None => delta_cmds::plan(&repo, &from, &to, coalesce, deltas, json),
            }
        }
    }
}

/// A signature's lifetime: "7d", "12h", "30m", "90s" or plain seconds; one minute to 366 days.
fn parse_lifetime(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().last() {
        Some((at, unit)) if unit.is_ascii_alphabetic() => (&text[..at], unit),
        _ => (text, 's'),
    };
    let scale = match unit {
        'd' => 86_400,
        'h' => 3_600,
        'm' => 60,
        's' => 1,
        _ => return Err(format!("{text:?}: the unit is d, h, m or s")),
    };
    let seconds = digits.parse::<u64>().ok().and_then(|n| n.checked_mul(scale));
    match seconds {
        Some(s) if (60..=366 * 86_400).contains(&s) => Ok(std::time::Duration::from_secs(s)),
        _ => Err(format!("{text:?} is not a duration from 1m to 366d (such as 7d, 12h)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_args::parse_rate;

    #[test]
    fn parses_signature_lifetimes() {
        assert_eq!(parse_lifetime("7d"), Ok(std::time::Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_lifetime("12h"), Ok(std::time::Duration::from_secs(43_200)));
        assert_eq!(parse_lifetime("3600"), Ok(std::time::Duration::from_secs(3_600)));
        for bad in ["0", "30s", "400d", "7w", "d", ""] {
            assert!(parse_lifetime(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn parses_global_repo_and_commit_args() {
        let cli = Cli::try_parse_from([
            "osdeploy",
            "--repo",
            "/r",
            "commit",
            "-b",
            "stable/x86_64",
            "--version",
            "2",
            "/src",
        ])
        .unwrap();
        assert_eq!(cli.repo, Some(PathBuf::from("/r")));
        match cli.command {
            Command::Commit(repo_cmds::CommitArgs { branch, release_version, dir, .. }) => {
                assert_eq!(
                    (branch.as_str(), release_version.as_str(), dir),
                    ("stable/x86_64", "2", PathBuf::from("/src"))
                );
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(Cli::try_parse_from(["osdeploy", "init"]).is_err(), "init needs --mode");
    }

    #[test]
    fn parses_rates() {
        assert_eq!(parse_rate("1048576"), Ok(1 << 20));
        assert_eq!(parse_rate("500k"), Ok(500 << 10));
        assert_eq!(parse_rate("10M"), Ok(10 << 20));
        assert_eq!(parse_rate("2g"), Ok(2 << 30));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
        let cli = Cli::try_parse_from(["osdeploy", "pull", "o", "b", "--limit-rate", "1M", "--timeout", "5"]).unwrap();
        let Command::Pull { http, .. } = cli.command else { panic!("not a pull") };
        assert_eq!(http.options().limit_rate, Some(1 << 20));
        assert_eq!(http.options().timeout.as_secs(), 5);
        for flag in ["--timeout", "--speed-time", "--deadline"] {
            assert!(Cli::try_parse_from(["osdeploy", "pull", "o", "b", flag, "0"]).is_err(), "{flag} 0 was accepted");
        }
        let cli =
            Cli::try_parse_from(["osdeploy", "pull", "o", "b", "--speed-limit", "0", "--deadline", "60"]).unwrap();
        let Command::Pull { http, .. } = cli.command else { panic!("not a pull") };
        assert_eq!((http.options().speed_limit, http.options().deadline.as_secs()), (0, 60));
    }

    #[test]
    fn parses_sysroot_options_and_optional_pull_arguments() {
        let cli = Cli::try_parse_from(["osdeploy", "--sysroot", "/s", "pull"]).unwrap();
        assert_eq!((cli.sysroot, cli.repo, cli.config_dir), (Some(PathBuf::from("/s")), None, None));
        match cli.command {
            Command::Pull { remote: None, branch: None, .. } => {}
            other => panic!("parsed as {other:?}"),
        }
        assert!(Cli::try_parse_from(["osdeploy", "pull", "origin"]).is_err(), "a remote needs a branch");
        let cli = Cli::try_parse_from(["osdeploy", "switch", "--config-dir", "/c", "stable"]).unwrap();
        assert_eq!(cli.config_dir, Some(PathBuf::from("/c")));
        assert!(Cli::try_parse_from(["osdeploy", "init-sysroot", "--bootloader", "systemd-boot"]).is_ok());
        assert!(Cli::try_parse_from(["osdeploy", "init-sysroot", "--bootloader", "lilo"]).is_err());
    }
}
