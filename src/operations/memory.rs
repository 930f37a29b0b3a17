//! The process's memory allocator: jemalloc (through `tikv-jemallocator`) with background
//! purging, so that memory freed when connections leave (their rules, queues, buffers) is
//! given back to the operating system within seconds instead of staying in the
//! allocator's free lists.
//!
//! Why: with glibc's allocator the freed heap of departed connections stayed resident (the
//! live heap fell back to its baseline, RSS did not: freed chunks between long-lived ones
//! are only returned by `malloc_trim`, which safe Rust cannot call). jemalloc returns
//! unused dirty pages after its decay time (10 s by default) from background threads.
//!
//! Owns the allocator choice (the binaries declare it with [`Allocator`]) and reading the
//! live heap size. Does not own what is allocated.

/// The global allocator of the `eventgate` binaries: `#[global_allocator] static GLOBAL:
/// eventgate::memory::Allocator = eventgate::memory::Allocator;`.
pub use tikv_jemallocator::Jemalloc as Allocator;

/// Starts jemalloc's background threads, which return freed memory to the operating
/// system (decay of about 10 s). Call once at start; harmless when another allocator is
/// the global one. Returns false when jemalloc refused.
pub fn start_background_purging() -> bool {
    tikv_jemalloc_ctl::background_thread::write(true).is_ok()
}

/// Bytes of heap in use by the program, as jemalloc counts them (`None` when its
/// statistics are unavailable).
pub fn heap_in_use() -> Option<u64> {
    tikv_jemalloc_ctl::epoch::advance().ok()?;
    tikv_jemalloc_ctl::stats::allocated::read()
        .ok()
        .map(|n| n as u64)
}
