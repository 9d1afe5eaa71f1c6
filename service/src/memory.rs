//! Process memory: how the allocator treats the service's large buffers.
//!
//! Streams and cache fills move data in buffers of megabytes (`limits.stream_chunk_size`
//! ranges, whole objects), allocated on one thread (often a blocking-pool thread reading a
//! local file) and freed on another. glibc's malloc keeps such buffers in per-thread
//! arenas after they are freed, and raises its mmap threshold to the largest buffer freed
//! so far, so every arena a buffer ever passed through keeps megabytes resident: a 1 GiB
//! GetStream measured 126 MiB peak RSS with a 64 MiB cache, most of it freed memory
//! parked in arenas. Fixing the threshold at 1 MiB makes every larger buffer its own
//! mapping, returned to the OS when freed, so peak RSS follows the bytes actually live.
//! The cost is one mmap/munmap per large buffer, small beside the copy that fills it.

/// Fixes glibc's mmap threshold at 1 MiB (no-op elsewhere). Call once, before threads start.
pub fn return_large_buffers_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
