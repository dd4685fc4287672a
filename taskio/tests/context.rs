//! The context switch keeps each task's floating-point control state: MXCSR (SSE
//! rounding, flush-to-zero, exception masks) and the x87 control word are
//! callee-saved in the System V ABI, so a task that changes them and suspends must
//! neither leak its mode into the next task nor lose it when it resumes.

mod common;

use std::arch::asm;
use std::cell::Cell;
use std::hint::black_box;
use std::rc::Rc;

use common::run;
use taskio::{spawn, yield_now};

/// MXCSR at process start: every exception masked, round to nearest.
const MXCSR_INITIAL: u32 = 0x1f80;
/// MXCSR's rounding-control bits set to "toward zero".
const MXCSR_ROUND_TO_ZERO: u32 = MXCSR_INITIAL | 0x6000;
/// The x87 control word at process start.
const X87_CW_INITIAL: u16 = 0x037f;
/// The x87 control word's rounding-control bits set to "toward zero".
const X87_CW_ROUND_TO_ZERO: u16 = X87_CW_INITIAL | 0x0c00;

/// MXCSR's sticky exception flags (bits 0-5): status, not mode; any float op sets them.
const MXCSR_FLAGS: u32 = 0x3f;

/// MXCSR's control bits (the flags masked off).
fn mxcsr() -> u32 {
    let mut v: u32 = 0;
    // SAFETY: stmxcsr stores the 4-byte MXCSR into `v`, a valid, writable u32.
    unsafe { asm!("stmxcsr [{}]", in(reg) &mut v, options(nostack)) };
    v & !MXCSR_FLAGS
}

fn set_mxcsr(v: u32) {
    // SAFETY: ldmxcsr loads a valid MXCSR value (no reserved bits set: every value
    // used here is the initial one with rounding bits changed) from a readable u32.
    unsafe { asm!("ldmxcsr [{}]", in(reg) &v, options(nostack)) };
}

fn x87_cw() -> u16 {
    let mut v: u16 = 0;
    // SAFETY: fnstcw stores the 2-byte control word into `v`, a valid, writable u16.
    unsafe { asm!("fnstcw [{}]", in(reg) &mut v, options(nostack)) };
    v
}

fn set_x87_cw(v: u16) {
    // SAFETY: fldcw loads a control word from a readable u16; the values used are
    // the initial word with only its rounding bits changed.
    unsafe { asm!("fldcw [{}]", in(reg) &v, options(nostack)) };
}

/// 1/10 in f64: round-to-nearest rounds up (0.1000000000000000055...), toward zero
/// rounds down: the last bits differ.
fn one_tenth() -> f64 {
    black_box(1.0f64) / black_box(10.0f64)
}

#[test]
fn a_tasks_rounding_mode_stays_with_it_across_switches() {
    let nearest = one_tenth();
    assert_eq!(
        mxcsr(),
        MXCSR_INITIAL,
        "the test thread starts with the ABI's MXCSR"
    );
    let (seen_by_b, seen_by_a) = run(|| {
        let seen_by_b = Rc::new(Cell::new((0u32, 0u16, 0.0f64)));
        let seen_by_a = Rc::new(Cell::new((0u32, 0u16, 0.0f64)));
        let (sb, sa) = (seen_by_b.clone(), seen_by_a.clone());
        let a = spawn(move || {
            set_mxcsr(MXCSR_ROUND_TO_ZERO);
            set_x87_cw(X87_CW_ROUND_TO_ZERO);
            // B runs while A is suspended with its mode set.
            yield_now();
            yield_now();
            sa.set((mxcsr(), x87_cw(), one_tenth()));
            set_mxcsr(MXCSR_INITIAL);
            set_x87_cw(X87_CW_INITIAL);
        })
        .expect("spawn a");
        let b = spawn(move || {
            yield_now();
            sb.set((mxcsr(), x87_cw(), one_tenth()));
        })
        .expect("spawn b");
        a.join().expect("a");
        b.join().expect("b");
        (seen_by_b.get(), seen_by_a.get())
    });
    assert_eq!(
        seen_by_b.0, MXCSR_INITIAL,
        "B must not run in A's SSE rounding mode"
    );
    assert_eq!(
        seen_by_b.1, X87_CW_INITIAL,
        "B must not run in A's x87 rounding mode"
    );
    assert_eq!(seen_by_b.2, nearest);
    assert_eq!(
        seen_by_a.0, MXCSR_ROUND_TO_ZERO,
        "A resumes in its own SSE mode"
    );
    assert_eq!(
        seen_by_a.1, X87_CW_ROUND_TO_ZERO,
        "A resumes in its own x87 mode"
    );
    assert_ne!(seen_by_a.2, nearest, "A's division rounds toward zero");
    assert!(seen_by_a.2 < nearest);
    assert_eq!(
        mxcsr(),
        MXCSR_INITIAL,
        "the runtime's thread gets its own mode back"
    );
    assert_eq!(x87_cw(), X87_CW_INITIAL);
}

#[test]
fn a_new_task_starts_with_the_abis_initial_mode_whatever_its_spawner_set() {
    let seen = run(|| {
        set_mxcsr(MXCSR_ROUND_TO_ZERO);
        set_x87_cw(X87_CW_ROUND_TO_ZERO);
        let child = spawn(|| (mxcsr(), x87_cw())).expect("spawn");
        let seen = child.join().expect("child");
        assert_eq!(
            mxcsr(),
            MXCSR_ROUND_TO_ZERO,
            "the spawner keeps its own mode"
        );
        set_mxcsr(MXCSR_INITIAL);
        set_x87_cw(X87_CW_INITIAL);
        seen
    });
    assert_eq!(seen, (MXCSR_INITIAL, X87_CW_INITIAL));
}
