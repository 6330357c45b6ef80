//! A progress bar over a transfer's live counters (bytes, objects, requests, rate, ETA), redrawn
//! by a thread while the transfer runs; nothing is drawn when stderr is not a terminal.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use osdeploy_transport::client::Progress;

/// Draws until dropped.
pub struct TransferBar {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TransferBar {
    /// Starts drawing `progress` (if stderr is a terminal).
    pub fn start(progress: Arc<Progress>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::io::stderr().is_terminal().then(|| {
            let stop = stop.clone();
            std::thread::spawn(move || draw(&progress, &stop))
        });
        TransferBar { stop, thread }
    }
}

fn draw(progress: &Progress, stop: &AtomicBool) {
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{spinner} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    while !stop.load(Ordering::Relaxed) {
        bar.set_length(progress.bytes_expected.load(Ordering::Relaxed).max(progress.bytes.load(Ordering::Relaxed)));
        bar.set_position(progress.bytes.load(Ordering::Relaxed));
        bar.set_message(format!(
            "{}/{} objects, {} requests",
            progress.objects.load(Ordering::Relaxed),
            progress.objects_expected.load(Ordering::Relaxed),
            progress.requests.load(Ordering::Relaxed)
        ));
        std::thread::sleep(Duration::from_millis(100));
    }
    bar.finish_and_clear();
}

impl Drop for TransferBar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
