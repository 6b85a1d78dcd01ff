//! Memory given back after big work. glibc's malloc keeps what a burst of big messages freed
//! (each thread's arena is trimmed from its top only, and a large block freed raises the size
//! below which it stops returning blocks to the kernel). Once a second has gone by with no big
//! message (256 KiB or more) after one, the proxy asks it to return every free page, on a
//! blocking thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A message at least this big marks work worth giving memory back after (a transaction
/// tagging 5000 ports is 850 KB, and took 40 MB more than the proxy needed once it was done).
pub const BIG: usize = 256 * 1024;

static BIG_WORK: AtomicBool = AtomicBool::new(false);

/// Notes that a message of `len` bytes went through (a relaxed store, for big ones only).
pub fn note(len: usize) {
    if len >= BIG {
        BIG_WORK.store(true, Ordering::Relaxed);
    }
}

/// Gives memory back once each burst of big messages is over, until `shutdown`; counts each
/// time in `trims`.
pub async fn give_back_after_bursts(
    shutdown: CancellationToken,
    trims: prometheus_client::metrics::counter::Counter,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if BIG_WORK.swap(false, Ordering::Relaxed) {
            pending = true;
        } else if pending {
            pending = false;
            if tokio::task::spawn_blocking(trim).await.is_ok() {
                trims.inc();
            }
        }
    }
}

/// Returns the allocator's free pages to the kernel (glibc; elsewhere nothing).
#[allow(unsafe_code)]
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes no pointer and may run on any thread at any time: it only
    // releases memory the allocator holds free; no allocation the program holds is touched.
    unsafe {
        libc::malloc_trim(0);
    }
}
