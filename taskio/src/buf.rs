//! `AlignedBuf`: page-aligned buffers for O_DIRECT and kernel AIO.
//!
//! The storage is reference-counted: a file operation in flight holds its own
//! reference to the buffers the kernel reads from or writes into, so that a task that
//! is torn down (or panics) while its I/O is in flight cannot free memory the kernel
//! is still using; the storage goes when the driver reaps the completion.
//! Mutable access requires that no operation holds the storage (checked).

use std::alloc::{Layout, alloc_zeroed, dealloc, handle_alloc_error};
use std::cell::Cell;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::rc::Rc;

use crate::sync::pool::Pool;

/// Alignment of every buffer, and the granule of O_DIRECT offsets and lengths here.
pub const ALIGN: usize = 4096;

pub(crate) struct Storage {
    ptr: NonNull<u8>,
    cap: usize,
    /// Operations in flight that write into this memory (reads from a file).
    kernel_writes: Cell<u32>,
}

impl Storage {
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

/// A file operation's hold on a buffer: keeps the memory alive until the operation
/// is reaped and, for a read, marks it as being written by the kernel meanwhile.
pub(crate) struct Hold {
    storage: Rc<Storage>,
    kernel_writes: bool,
}

impl Hold {
    pub(crate) fn new(buf: &AlignedBuf, kernel_writes: bool) -> Hold {
        if kernel_writes {
            let n = &buf.storage.kernel_writes;
            n.set(n.get() + 1);
        }
        Hold {
            storage: buf.storage.clone(),
            kernel_writes,
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.kernel_writes {
            let n = &self.storage.kernel_writes;
            n.set(n.get() - 1);
        }
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.cap, ALIGN).expect("layout was valid at alloc");
        // SAFETY: `ptr` was allocated by `alloc_zeroed` with this very layout and is
        // freed once, here, when the last reference goes.
        unsafe { dealloc(self.ptr.as_ptr(), layout) };
    }
}

/// A zeroed, 4 KiB-aligned buffer with a capacity that is a multiple of 4 KiB and a
/// length (the bytes in use) up to it.
pub struct AlignedBuf {
    storage: Rc<Storage>,
    len: usize,
}

impl AlignedBuf {
    /// A buffer of `capacity` bytes rounded up to 4 KiB (at least 4 KiB), with its
    /// length set to the capacity.
    pub fn new(capacity: usize) -> AlignedBuf {
        let Some(cap) = capacity.max(1).checked_next_multiple_of(ALIGN) else {
            panic!("AlignedBuf of {capacity} bytes: size overflow")
        };
        let layout = match Layout::from_size_align(cap, ALIGN) {
            Ok(l) => l,
            Err(_) => panic!("AlignedBuf of {capacity} bytes: size overflow"),
        };
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            handle_alloc_error(layout)
        };
        AlignedBuf {
            storage: Rc::new(Storage {
                ptr,
                cap,
                kernel_writes: Cell::new(0),
            }),
            len: cap,
        }
    }

    /// A pool of `count` buffers of `capacity` bytes each.
    pub fn pool(count: usize, capacity: usize) -> Pool<AlignedBuf> {
        Pool::new(count, || AlignedBuf::new(capacity))
    }

    pub fn capacity(&self) -> usize {
        self.storage.cap
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets the length (bytes in use); panics above the capacity.
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.storage.cap,
            "AlignedBuf length {len} over capacity {}",
            self.storage.cap
        );
        self.len = len;
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.storage.as_ptr()
    }

    pub(crate) fn as_ptr(&self) -> *const u8 {
        self.storage.as_ptr()
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // A read whose task was torn down may still be filling this buffer: the
        // storage outlives the task, but nobody may look at it until it is reaped.
        assert_eq!(
            self.storage.kernel_writes.get(),
            0,
            "AlignedBuf read while a file read still fills it"
        );
        // SAFETY: the storage holds `cap >= len` initialised (zeroed) bytes, and no
        // operation writes into it (checked above); the kernel may read it (a write
        // operation), which is compatible with shared access.
        unsafe { std::slice::from_raw_parts(self.storage.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        assert_eq!(
            Rc::strong_count(&self.storage),
            1,
            "AlignedBuf written while a file operation still holds it"
        );
        // SAFETY: as in `deref`, and the count of one means no operation holds the
        // storage, so this is the only access.
        unsafe { std::slice::from_raw_parts_mut(self.storage.as_ptr(), self.len) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("capacity", &self.storage.cap)
            .finish()
    }
}
