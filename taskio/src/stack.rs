//! Task stacks: mmap'd with a guard page below, pooled per runtime. Mapping a fresh
//! stack costs about 10 us here (mmap + mprotect + the first page fault); taking one
//! from the pool costs a `Vec::pop`.
//!
//! ```text
//!   low address                                             high address
//!   | guard page (PROT_NONE) | usable stack (RW), grows downward <- | top
//!   ^ base                   ^ base + page                           ^ base + len
//! ```
//!
//! Only stacks of the runtime's default size are pooled, at most `max` of them
//! counting those kept inside recycled task blocks; a returned stack beyond that is
//! unmapped. A pooled stack keeps the pages its last
//! task touched resident: that is the price of reuse, bounded by `max`.

use std::io;
use std::ptr;

pub(crate) const PAGE_SIZE: usize = 4096;
/// The smallest stack a task may ask for: room for the entry frames and a panic.
pub(crate) const MIN_STACK_SIZE: usize = 16 * 1024;

/// One mapped stack; unmapped on drop.
pub(crate) struct Stack {
    base: usize,
    len: usize,
}

impl Stack {
    /// Maps a stack of at least `size` usable bytes plus a guard page.
    pub(crate) fn map(size: usize) -> io::Result<Stack> {
        let size = size.max(MIN_STACK_SIZE).next_multiple_of(PAGE_SIZE);
        let len = size + PAGE_SIZE;
        // SAFETY: an anonymous private mapping with no address hint has no
        // preconditions; failure is checked below. MAP_NORESERVE: stacks are mostly
        // untouched address space, they should not count against overcommit.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Stack {
            base: p as usize,
            len,
        };
        // SAFETY: [base + PAGE_SIZE, base + len) lies inside the mapping just made.
        let rc = unsafe {
            libc::mprotect(
                (stack.base + PAGE_SIZE) as *mut libc::c_void,
                size,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()); // drop unmaps
        }
        Ok(stack)
    }

    /// One past the highest usable byte: where the stack starts growing down from.
    pub(crate) fn top(&self) -> usize {
        self.base + self.len
    }

    /// Lowest address of the guard page.
    pub(crate) fn guard(&self) -> usize {
        self.base
    }

    /// Usable bytes.
    pub(crate) fn size(&self) -> usize {
        self.len - PAGE_SIZE
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` describe a mapping this value owns; no task runs on it
        // (the runtime drops a stack only after its task has ended or been abandoned).
        let rc = unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
        debug_assert_eq!(rc, 0, "munmap of a task stack failed");
    }
}

pub(crate) struct StackPool {
    size: usize,
    max: usize,
    free: Vec<Stack>,
}

impl StackPool {
    pub(crate) fn new(size: usize, max: usize) -> StackPool {
        assert!(
            size >= MIN_STACK_SIZE,
            "stack size {size} below {MIN_STACK_SIZE}"
        );
        StackPool {
            size: size.next_multiple_of(PAGE_SIZE),
            max,
            free: Vec::with_capacity(max.min(1024)),
        }
    }

    pub(crate) fn take(&mut self, size: usize) -> io::Result<Stack> {
        if size.next_multiple_of(PAGE_SIZE) == self.size
            && let Some(s) = self.free.pop()
        {
            return Ok(s);
        }
        Stack::map(size)
    }

    /// Keeps `stack` for reuse unless `kept_elsewhere` (stacks the runtime keeps in
    /// recycled task blocks) plus the pool's own would exceed the limit.
    pub(crate) fn give(&mut self, stack: Stack, kept_elsewhere: usize) {
        if stack.size() == self.size && self.free.len() + kept_elsewhere < self.max {
            self.free.push(stack);
        }
        // Otherwise dropping `stack` unmaps it.
    }

    pub(crate) fn pooled(&self) -> usize {
        self.free.len()
    }
}
