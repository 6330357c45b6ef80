//! What a package ships besides the binary: shell completions and man pages, generated from the
//! command-line definition so that they never drift from it.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

/// `completions SHELL`: the completion script on standard output.
pub fn completions(shell: Shell) -> Result<()> {
    // Generated in memory: clap_complete panics when its writer fails (`… | head`).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "osdeploy", &mut script);
    std::io::stdout().write_all(&script).context("writing the completion script")
}

/// `man-pages DIR`: osdeploy.1 and one page per subcommand (osdeploy-switch.1, …) in DIR.
pub fn man_pages(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir).with_context(|| format!("writing man pages into {}", dir.display()))
}
