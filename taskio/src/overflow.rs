//! Stack overflow reporting: a task that runs off the end of its stack hits the
//! guard page below it; the SIGSEGV handler recognises the address as the running
//! task's guard and writes "task NAME overflowed its stack" before aborting, instead
//! of leaving a bare segfault.
//!
//! The handler runs on an alternate signal stack (the faulting stack is exhausted).
//! Rust's standard library already gives the main thread and the threads it spawns
//! one; [`AltStack::ensure`] installs one on any thread that lacks it.
//! A fault that is not a task's guard page is handed to the previous handler (the
//! standard library's, which reports its own thread overflows, or the default).

use std::ptr;
use std::sync::{Once, OnceLock};

use crate::sched::current_guard;

/// Faults this far below the guard page still count as an overflow: a function with a
/// large frame may probe just past it.
const GUARD_SLACK_BYTES: usize = 64 * 1024;
const ALTSTACK_BYTES: usize = 64 * 1024;

static INSTALL: Once = Once::new();
/// The handlers that were installed before ours, for SIGSEGV and SIGBUS. Written
/// once, before our handler can run.
static PREVIOUS: OnceLock<[libc::sigaction; 2]> = OnceLock::new();

pub(crate) fn install_handler() {
    INSTALL.call_once(|| {
        // SAFETY: an all-zero sigaction is a valid value (SIG_DFL, empty mask).
        let mut prev: [libc::sigaction; 2] = unsafe { std::mem::zeroed() };
        for (i, sig) in [libc::SIGSEGV, libc::SIGBUS].into_iter().enumerate() {
            // SAFETY: as above.
            let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
            act.sa_sigaction = on_fault as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            // SAFETY: `act.sa_mask` is a valid sigset_t to initialise.
            unsafe { libc::sigemptyset(&mut act.sa_mask) };
            // SAFETY: `act` and `prev[i]` are valid sigaction structs; installing a
            // handler for a synchronous fault signal is what sigaction is for.
            let rc = unsafe { libc::sigaction(sig, &act, &mut prev[i]) };
            assert_eq!(rc, 0, "sigaction({sig}) failed");
        }
        let _ = PREVIOUS.set(prev);
    });
}

extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler; for
    // SIGSEGV and SIGBUS si_addr is the faulting address.
    let addr = unsafe { (*info).si_addr() } as usize;
    if let Some((guard, name, id)) = current_guard() {
        let page = 4096;
        if addr < guard + page && addr + GUARD_SLACK_BYTES >= guard {
            report_overflow(name, id);
        }
    }
    // Not a task's guard page: restore the previous handler and return; the faulting
    // instruction runs again and faults under it.
    let idx = if sig == libc::SIGSEGV { 0 } else { 1 };
    match PREVIOUS.get() {
        // SAFETY: `prev` is a sigaction that was installed for this signal before.
        Some(prev) => unsafe {
            libc::sigaction(sig, &prev[idx], ptr::null_mut());
        },
        // SAFETY: resetting to the default action is always valid.
        None => unsafe {
            libc::signal(sig, libc::SIG_DFL);
        },
    }
}

/// Writes the report with async-signal-safe calls only and aborts.
fn report_overflow(name: Option<&[u8]>, id: u64) -> ! {
    write_stderr(b"task ");
    match name {
        Some(n) => write_stderr(n),
        None => {
            write_stderr(b"task-");
            let mut digits = [0u8; 20];
            let mut i = digits.len();
            let mut v = id;
            loop {
                i -= 1;
                digits[i] = b'0' + (v % 10) as u8;
                v /= 10;
                if v == 0 {
                    break;
                }
            }
            write_stderr(&digits[i..]);
        }
    }
    write_stderr(b" overflowed its stack\n");
    // SAFETY: abort is async-signal-safe and never returns.
    unsafe { libc::abort() }
}

fn write_stderr(bytes: &[u8]) {
    // SAFETY: write(2) with a valid buffer and length is async-signal-safe; a short or
    // failed write of a diagnostic is acceptable.
    unsafe {
        libc::write(2, bytes.as_ptr().cast(), bytes.len());
    }
}

/// An alternate signal stack this runtime installed, removed on drop. Empty when the
/// thread already had one.
pub(crate) struct AltStack {
    map: *mut libc::c_void,
}

impl AltStack {
    pub(crate) fn ensure() -> AltStack {
        // SAFETY: an all-zero stack_t is valid to pass for the old-stack output.
        let mut old: libc::stack_t = unsafe { std::mem::zeroed() };
        // SAFETY: querying the current alternate stack with a valid out pointer.
        let rc = unsafe { libc::sigaltstack(ptr::null(), &mut old) };
        if rc != 0 || old.ss_flags & libc::SS_DISABLE == 0 {
            return AltStack {
                map: ptr::null_mut(),
            };
        }
        // SAFETY: an anonymous private mapping with no address hint has no
        // preconditions; failure is checked below.
        let map = unsafe {
            libc::mmap(
                ptr::null_mut(),
                ALTSTACK_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            // Without an alternate stack an overflow is a plain SIGSEGV: worse
            // reporting, not a failure of the runtime.
            return AltStack {
                map: ptr::null_mut(),
            };
        }
        let st = libc::stack_t {
            ss_sp: map,
            ss_flags: 0,
            ss_size: ALTSTACK_BYTES,
        };
        // SAFETY: `st` describes the mapping above, which stays mapped until drop.
        let rc = unsafe { libc::sigaltstack(&st, ptr::null_mut()) };
        if rc != 0 {
            // SAFETY: unmapping the mapping we just made and nobody uses.
            unsafe { libc::munmap(map, ALTSTACK_BYTES) };
            return AltStack {
                map: ptr::null_mut(),
            };
        }
        AltStack { map }
    }
}

impl Drop for AltStack {
    fn drop(&mut self) {
        if self.map.is_null() {
            return;
        }
        let st = libc::stack_t {
            ss_sp: ptr::null_mut(),
            ss_flags: libc::SS_DISABLE,
            ss_size: 0,
        };
        // SAFETY: disabling the alternate stack we installed on this thread (the
        // runtime is not Send, so this is the same thread), then unmapping it.
        unsafe {
            libc::sigaltstack(&st, ptr::null_mut());
            libc::munmap(self.map, ALTSTACK_BYTES);
        }
    }
}
