//! The context switch: saving one task's registers and resuming another's, directly,
//! without passing through the scheduler (symmetric switching, as libtask's
//! swapcontext). This is the runtime's hottest code.
//!
//! Why not corosensei: corosensei's coroutines are asymmetric, so a yield from task A
//! to task B is two switches (A -> scheduler -> B) plus the scheduler loop between
//! them. Measured here with it: 38-42 ns per yield; the symmetric switch below does a
//! yield in one switch (see `tdrv bench taskio`).
//!
//! Inlining matters as much as the switch: after a switch the resumed task returns up
//! its own chain of calls, but the CPU's return-stack predictor holds the chain of
//! the task that switched away, so every `ret` between the switch and the task's own
//! code is mispredicted. The blocking paths (`yield_now`, `park`, `Rendez::sleep`,
//! `WaitQueue::wait`, ...) are therefore `#[inline(always)]`, so the switch sits in
//! the caller's frame (measured: a yield went from 19 ns to 9.5 ns).
//!
//! x86_64 System V only. A suspended context is its stack pointer; the stack holds,
//! from that pointer up:
//!
//! ```text
//!   rsp ->  MXCSR (low 4 bytes) | x87 control word (next 2 bytes)
//!           r15
//!           r14
//!           r13
//!           r12
//!           rbx
//!           rbp
//!           return address   (where `taskio_switch` returns to when resumed)
//! ```
//!
//! Those six are the callee-saved general registers; every other register is
//! caller-saved, so the compiler has already spilled whatever it needed before the
//! call. The System V ABI also makes the control bits of MXCSR (SSE rounding mode,
//! flush-to-zero, exception masks) and the x87 control word callee-saved, so they are
//! switched too: a task that sets a rounding mode (`fesetround`, a numeric library)
//! and then suspends must not hand that mode to whatever runs next, nor lose it when
//! it resumes (libtask does not switch them; Boost.Context does). Two stores and two
//! loads per switch: `tdrv bench taskio`'s yield, interleaved A/B on a loaded
//! machine, 9.1 / 9.1 ns without them against 8.5 / 9.3 ns with them (within noise). A new task starts with the ABI's
//! initial values (MXCSR 0x1F80, x87 control word 0x037F), whatever its spawner set.
//!
//! A new task's stack is laid out so that the first switch to it "returns" into
//! `taskio_trampoline` with the task pointer in r12 and the entry function in r13.
//! The trampoline tells unwinders (`.cfi_undefined rip`) that the call chain ends
//! there: panics never unwind past the task's entry (it catches them), and a
//! backtrace taken inside a task stops cleanly at its root.

/// MXCSR at process start (all exceptions masked, round to nearest).
const MXCSR_INITIAL: usize = 0x1f80;
/// The x87 control word at process start (all exceptions masked, 64-bit precision,
/// round to nearest).
const X87_CW_INITIAL: usize = 0x037f;
/// The word a new task's first switch loads its control registers from.
const INITIAL_CONTROL_WORDS: usize = MXCSR_INITIAL | X87_CW_INITIAL << 32;

#[cfg(not(target_arch = "x86_64"))]
compile_error!("taskio's context switch is written for x86_64 only");

std::arch::global_asm!(
    ".text",
    ".balign 16",
    ".globl taskio_switch",
    ".hidden taskio_switch",
    ".type taskio_switch,@function",
    "taskio_switch:",
    ".cfi_startproc",
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "sub rsp, 8",
    "stmxcsr [rsp]",
    "fnstcw [rsp + 4]",
    "mov [rdi], rsp",
    "mov rsp, rsi",
    "ldmxcsr [rsp]",
    "fldcw [rsp + 4]",
    "add rsp, 8",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    // Resume with an indirect jump, not `ret`: the return address belongs to the
    // other context's call site, which the return-stack predictor never predicts
    // (measured: 9.8 ns per switch with `ret`, 2.6 ns with `pop; jmp`).
    "pop rax",
    "jmp rax",
    ".cfi_endproc",
    ".size taskio_switch, .-taskio_switch",
    "",
    ".balign 16",
    ".globl taskio_trampoline",
    ".hidden taskio_trampoline",
    ".type taskio_trampoline,@function",
    "taskio_trampoline:",
    ".cfi_startproc",
    ".cfi_undefined rip",
    "mov rdi, r12",
    "call r13",
    "ud2",
    ".cfi_endproc",
    ".size taskio_trampoline, .-taskio_trampoline",
);

unsafe extern "C" {
    /// Saves the running context's callee-saved registers on its stack, stores its
    /// stack pointer in `*save`, then resumes the context whose stack pointer is
    /// `resume`. Returns when some other switch resumes the saved context.
    fn taskio_switch(save: *mut usize, resume: usize);
    fn taskio_trampoline();
}

/// Switches from the running context to a suspended one.
///
/// # Safety
/// `save` must be valid for a write and must be where the owner of the running
/// context will look for it. `resume` must be a stack pointer saved by a previous
/// `switch` (or made by [`init_stack`]) whose context has not been resumed since, and
/// whose stack is still mapped. Nothing on the running stack may unwind across this
/// call (it is a plain `extern "C"` call and cannot).
#[inline(always)]
pub(crate) unsafe fn switch(save: *mut usize, resume: usize) {
    debug_assert!(
        resume != 0 && resume.is_multiple_of(8),
        "bad context {resume:#x}"
    );
    // SAFETY: the caller upholds the contract above; taskio_switch follows the
    // System V ABI for a call (callee-saved registers preserved, others clobbered).
    unsafe { taskio_switch(save, resume) }
}

/// Prepares a fresh stack whose top (highest address, exclusive) is `top`, so that
/// the first `switch` to the returned stack pointer calls `entry(arg)` on it.
/// `entry` must never return (the trampoline traps if it does).
///
/// # Safety
/// `top` must be the 16-byte-aligned end of a writable stack of at least 128 bytes
/// that nothing else uses.
pub(crate) unsafe fn init_stack(
    top: usize,
    entry: unsafe extern "C" fn(usize) -> !,
    arg: usize,
) -> usize {
    assert!(top.is_multiple_of(16), "stack top not 16-byte aligned");
    // After the control words, the six pops and the jump's pop, rsp = top - 16:
    // 16-byte aligned, so that the trampoline's `call` gives `entry` the ABI's entry
    // alignment (rsp % 16 == 8).
    let frame: [usize; 10] = [
        INITIAL_CONTROL_WORDS,                   // MXCSR | x87 control word << 32
        0,                                       // r15
        0,                                       // r14
        entry as *const () as usize,             // r13: the function the trampoline calls
        arg,                                     // r12: its argument
        0,                                       // rbx
        0,                                       // rbp: ends frame-pointer chains
        taskio_trampoline as *const () as usize, // return address of the first switch
        0,                                       // padding: rsp lands here + 8 after ret
        0,
    ];
    let sp = top - frame.len() * 8;
    // SAFETY: the caller guarantees [top - 128, top) is writable and unused; the
    // frame is 80 bytes and `sp` is 8-aligned.
    unsafe { std::ptr::copy_nonoverlapping(frame.as_ptr(), sp as *mut usize, frame.len()) };
    debug_assert!((sp + 8 * 8).is_multiple_of(16));
    sp
}
