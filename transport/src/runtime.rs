//! The one async runtime a process runs its transport work on: the commands of the binary, a
//! mount serving remote content, the fleet agent. Entry points of this crate are async; a
//! synchronous caller drives them with `runtime()?.block_on(…)` (never from inside the runtime).
//! The work needs a multi-thread runtime: the writes of a pull leave their worker with
//! `block_in_place` (decoding runs on rayon's pool).

use std::sync::OnceLock;

use tokio::runtime::{Builder, Runtime};

use crate::error::TransportError;

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The process's runtime, started on first use with two worker threads: the transfers wait on
/// the network, and CPU and disk work runs elsewhere (rayon's pool, `block_in_place`).
pub fn runtime() -> Result<&'static Runtime, TransportError> {
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime);
    }
    // Rayon's threads would otherwise inherit the name of the thread that started them (a
    // runtime worker's); named, `top -H` tells them apart. A pool started before keeps its names.
    let _ = rayon::ThreadPoolBuilder::new().thread_name(|at| format!("rayon-{at}")).build_global();
    let built = Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| TransportError::Setup { what: "the async runtime", reason: e.to_string() })?;
    // Two threads starting it at once: one runtime is kept, the other dropped unused.
    Ok(RUNTIME.get_or_init(|| built))
}
