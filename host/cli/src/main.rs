//! The `tvs` command-line tool. Exit codes: 0 success, 1 nothing found where that matters
//! (a search without hits, a missing document), 2 error (the whole cause chain is printed).

mod cli;

use std::io::Write as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    one_inference_thread_per_request();
    cli::main()
}

/// candle splits every matrix product over `RAYON_NUM_THREADS` threads (default: all cores),
/// reading the variable at each call. On 2 cores that made two concurrent embedding requests
/// together no faster than one (`cargo bench --bench embed`: 135 vs 200 sentences/s with one
/// thread per request), so the server runs each request on its own thread unless told otherwise.
fn one_inference_thread_per_request() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // SAFETY: called first thing in `main`, before this process starts any thread, so no
        // other thread can read the environment while it changes.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("RAYON_NUM_THREADS", "1");
        }
    }
}

/// Limits of the child that compiles an uploaded plugin: CPU seconds and address space. A
/// compile bomb then kills this child (SIGXCPU, SIGKILL, or an allocation failure), and the
/// server's upload answers with an error; the server's own wall-clock timeout covers the rest.
pub(crate) fn limit_compiler_resources() {
    const CPU_SECONDS: u64 = 60;
    const ADDRESS_SPACE: u64 = 4 << 30;
    for (resource, limit) in [(libc::RLIMIT_CPU, CPU_SECONDS), (libc::RLIMIT_AS, ADDRESS_SPACE)] {
        let rlimit = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        // SAFETY: setrlimit only reads the struct passed by reference, which lives across the
        // call; lowering this process's own limits cannot break memory safety.
        #[allow(unsafe_code)]
        let failed = unsafe { libc::setrlimit(resource, &rlimit) } != 0;
        if failed {
            let _ = writeln!(
                std::io::stderr(),
                "warning: cannot limit the plugin compiler's resources"
            );
        }
    }
}
