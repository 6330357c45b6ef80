//! `osdeploy`: the command-line front end. Parses arguments, sets up logging, runs the command,
//! and prints errors with their full chain of causes.

mod chart;
mod cli;
mod delta_cmds;
mod deploy_cmds;
mod dist_cmds;
mod fleet_cmds;
mod http_args;
mod mirror_cmd;
mod mount_cmds;
mod output;
mod repo_cmds;
mod reports;
mod transfer_bar;
mod transport_cmds;
mod views;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    // A received gzip delta is deflated again by this same program in a child with limits (this file, not whatever
    // the path names now: an update may have replaced it).
    osdeploy_store::delta::deflate::isolate_in("/proc/self/exe", &["rebuild-deflate"]);
    // The agent is a daemon: its steps are its log (the journal's).
    let level = if matches!(cli.command, cli::Command::Agent { .. }) { "info" } else { "warn" };
    // Colour only on a terminal: a pipe, a file or the journal gets plain text (NO_COLOR: never).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("OSDEPLOY_LOG").unwrap_or_else(|_| level.into()))
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .init();
    if let Err(err) = cli::run(cli) {
        // A reader that went away (`osdeploy ls … | head`) is not an error.
        let broken_pipe = err
            .chain()
            .any(|e| e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe));
        if broken_pipe {
            std::process::exit(0);
        }
        eprintln!("osdeploy: error: {err:#}");
        std::process::exit(1);
    }
}
