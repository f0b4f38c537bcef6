use clap::Parser as _;

/// mimalloc: the host allocates and frees a value per column of every
/// event across threads (decode, plugin, sink); glibc's allocator spent
/// about a quarter of the CPU on it and held memory in per-thread arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `arena_eager_commit` option (4 in its `mi_option_t`, v2
/// and v3 alike).
#[cfg(target_os = "linux")]
const MI_OPTION_ARENA_EAGER_COMMIT: std::ffi::c_int = 4;

#[cfg(target_os = "linux")]
unsafe extern "C" {
    /// From the mimalloc library linked in by the `mimalloc` crate.
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// Runs from `.init_array`, before `main` and before the first allocation
/// reserves mimalloc's first arena (an option set in `main` came too late).
#[cfg(target_os = "linux")]
extern "C" fn lazy_arena_commit() {
    // Commit arena memory as it is used, not the whole arena up front: on
    // Linux, eager commit backs the arena with transparent huge pages, and
    // a mirror pipeline's peak RSS went from ~115 MB to ~145 MB with it
    // (same speed). An explicit MIMALLOC_ARENA_EAGER_COMMIT (or its older
    // name, MIMALLOC_EAGER_REGION_COMMIT) still wins.
    if !eager_commit_set_by_user() {
        // SAFETY: sets a process-wide allocator option.
        unsafe { mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
    }
}

/// Whether the environment names the option as mimalloc reads it: either
/// name, any case. Reads `environ` without allocating (before `main`, an
/// allocation would reserve the arena this option is for).
#[cfg(target_os = "linux")]
fn eager_commit_set_by_user() -> bool {
    unsafe extern "C" {
        static environ: *const *const std::ffi::c_char;
    }
    const NAMES: [&[u8]; 2] = [
        b"MIMALLOC_ARENA_EAGER_COMMIT=",
        b"MIMALLOC_EAGER_REGION_COMMIT=",
    ];
    // SAFETY: `environ` is the C runtime's NUL-terminated array of
    // NUL-terminated strings; nothing changes it before `main`.
    unsafe {
        let mut entry = environ;
        while !entry.is_null() && !(*entry).is_null() {
            let var = std::ffi::CStr::from_ptr(*entry).to_bytes();
            if NAMES
                .iter()
                .any(|n| var.len() >= n.len() && var[..n.len()].eq_ignore_ascii_case(n))
            {
                return true;
            }
            entry = entry.add(1);
        }
    }
    false
}

#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static LAZY_ARENA_COMMIT: extern "C" fn() = lazy_arena_commit;

fn main() -> std::process::ExitCode {
    let cli = sluice::cli::Cli::parse();
    sluice::cli::init_logging(&cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(sluice::cli::main(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
