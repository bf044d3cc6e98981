//! What keeps the operator's memory small beyond its caches' own projections: one shared
//! copy of the strings many entries repeat ([`SharedStrings`]), and, on builds that use
//! glibc's allocator, the heap's free pages and every large buffer given back to the
//! operating system.
//!
//! glibc keeps memory freed by the program inside its heaps (one per thread that
//! allocates, up to 8 per core) and returns it only from the top of each heap. A burst of
//! reconciles or a relist frees many buffers between long-lived cached objects, so their
//! pages stay resident though nothing uses them: after a restart at 10k keys that listed
//! everything at once, 93 MB resident without trimming, 80 MB with it. `malloc_trim`
//! releases every whole free page inside the heaps too. musl's allocator (the production
//! image) returns freed memory by itself, so there this is a no-op.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// One shared copy of each string a table repeats across its entries (namespaces, provider
/// names): an `Arc<str>` per entry instead of a heap string each.
#[derive(Debug, Default)]
pub struct SharedStrings(HashSet<Arc<str>>);

impl SharedStrings {
    /// The shared copy of `value`, made on first use.
    pub fn share(&mut self, value: &str) -> Arc<str> {
        if let Some(shared) = self.0.get(value) {
            return shared.clone();
        }
        let shared: Arc<str> = value.into();
        self.0.insert(shared.clone());
        shared
    }

    /// The shared copy of `value`, if one was made.
    pub fn get(&self, value: &str) -> Option<Arc<str>> {
        self.0.get(value).cloned()
    }

    /// How many strings are shared.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A 128-bit digest of `bytes` (SHA-256's head), for map keys that stand in for a long
/// string: two different strings share one with a chance of 2^-128 per pair.
pub fn digest128(bytes: &[u8]) -> u128 {
    use sha2::{Digest, Sha256};
    let mut head = [0u8; 16];
    head.copy_from_slice(&Sha256::digest(bytes)[..16]);
    u128::from_le_bytes(head)
}

/// How often the free pages go back.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// Gives the free pages back every [`TRIM_INTERVAL`] for as long as the runtime runs.
pub fn spawn_trimmer() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(async {
        let mut tick = tokio::time::interval(TRIM_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // It walks every heap under its lock: not on a worker thread.
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    });
}

/// Allocations at least this large get a mapping of their own.
pub const MMAP_THRESHOLD: usize = 256 << 10;

/// Makes glibc give every buffer of [`MMAP_THRESHOLD`] or more a mapping of its own, which
/// goes back to the operating system the moment it is freed. glibc does so from 128 KiB
/// by default, but raises that threshold to the size of each such buffer freed (up to
/// 32 MiB), so after the first large list (a restart's 10k key pairs, the ThreatWinds key
/// list of every poll interval) the next ones were carved from a heap, and their pages
/// stayed resident between live objects. Setting the threshold turns that adjustment off:
/// `make bench` at 10k keys, 70.6 → 55.6 MB after a restart (peak 94.6 → 71.4 MB), and
/// 59.9 → 56.3 MB at 10k ThreatWinds keys awaiting their code.
pub fn map_large_buffers_apart() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt sets one parameter of glibc's allocator; the value is in range.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
    }
}

/// Gives the free pages of every heap back; true if any were.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim() -> bool {
    // SAFETY: malloc_trim only walks glibc's own heap bookkeeping, under its locks; it
    // reads nothing of ours.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// The tests below read the whole process's resident pages: one at a time.
    static RESIDENT: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Resident pages of this process, in KiB.
    fn resident_kib() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .expect("resident pages");
        pages * 4
    }

    #[test]
    fn free_pages_between_live_objects_go_back_to_the_os() {
        let _alone = RESIDENT.lock();
        // 40 MB of 4 KB blocks (each from the heap, not mmap), then all but every 16th
        // freed: the heap cannot shrink from its top, since a block near it stays live.
        let mut blocks: Vec<Option<Box<[u8; 4096]>>> =
            (0..10_000).map(|_| Some(Box::new([1u8; 4096]))).collect();
        for (i, block) in blocks.iter_mut().enumerate() {
            if i % 16 != 15 {
                *block = None;
            }
        }
        let before = resident_kib();
        assert!(trim(), "nothing was given back");
        let after = resident_kib();
        assert!(
            after + 20 * 1024 < before,
            "resident {before} KiB before the trim, {after} KiB after"
        );
        drop(blocks);
    }

    #[test]
    fn a_large_buffer_goes_back_to_the_os_when_freed_even_after_a_larger_one() {
        let _alone = RESIDENT.lock();
        map_large_buffers_apart();
        // Left to itself, glibc would raise its threshold to this buffer's size when it
        // is freed, and carve the next, smaller one from a heap.
        drop(std::hint::black_box(vec![1u8; 30 << 20]));
        let before = resident_kib();
        let buffer = std::hint::black_box(vec![1u8; 24 << 20]);
        assert!(
            resident_kib() > before + 16 * 1024,
            "the buffer is resident"
        );
        drop(buffer);
        let after = resident_kib();
        assert!(
            after < before + 8 * 1024,
            "resident {before} KiB before the buffer, {after} KiB after it was freed"
        );
    }
}
