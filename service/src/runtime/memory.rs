//! Process memory: how the allocator treats the service's large buffers.
//!
//! Streams and cache fills move data in buffers of megabytes (`limits.stream_chunk_size`
//! ranges, whole objects), allocated on one thread (often a blocking-pool thread reading a
//! local file) and freed on another. glibc's malloc gives each thread that allocates an
//! arena of its own (up to eight per core), and a buffer freed into an arena stays resident
//! there for that arena's next allocation: with the blocking pool's many threads, a 1 GiB
//! GetStream measured 126 MiB peak RSS with a 64 MiB cache, most of it freed memory parked
//! in arenas. Two arenas bound that: freed buffers are reused instead of parked (83 MiB in
//! the debug test, 71 MiB in release). Forcing large buffers into their own mappings
//! instead (`M_MMAP_THRESHOLD` at 1 MiB) gave 44 MiB but cost a page fault per 4 KiB of
//! every fresh buffer: GetStream ran at 558 MiB/s against 698 MiB/s with two arenas
//! (`scripts/bench --only stream`). Throughput won; the bound holds either way.

/// Limits glibc's malloc to two arenas (no-op elsewhere). Call once, before threads start.
pub fn bound_allocator_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
