//! How the daemon's heap gives memory back. glibc (the static build's libc too) keeps
//! freed heap mapped, and gives each thread that meets contention an arena of its own: with
//! tokio's workers each rendering a scrape of a 1,000-veth node in turn, freed memory
//! piled up per arena (RSS 47 -> 63 MiB over three scrapes; 47 with one arena). cniguard
//! allocates nowhere near the packet path, so one arena costs it nothing measurable.

/// Before any thread starts (glibc fixes the limit the first time a thread needs an
/// arena): one malloc arena for the whole process.
pub fn one_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator settings; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Hands the heap freed so far back to the kernel: parsing the kernel's BTF and the eBPF
/// object at start takes some 20 MiB that are free once the programs are loaded.
pub fn release_freed() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
