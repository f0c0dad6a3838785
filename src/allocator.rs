//! The process's allocator: mimalloc, asked the way a C program asks it. Part of the binary,
//! not of the library, which forbids `unsafe`.
//!
//! `mimalloc::MiMalloc` hands every allocation to `mi_malloc_aligned`, whose fast path first
//! checks the alignment and whether the next free block happens to meet it; most of Rust's
//! allocations ask for no more than `mi_malloc` gives anyway (blocks of 16 bytes and up are
//! 16-byte aligned: mimalloc rounds their sizes to 16, `MI_MAX_ALIGN_SIZE`). Those take
//! `mi_malloc` here, the rest the aligned calls: what glibc's `System` does with `malloc`.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment `mi_malloc` gives a block at least this large (`MI_MAX_ALIGN_SIZE`).
const PLAIN_ALIGN: usize = 16;

/// mimalloc as the global allocator.
pub struct MiMalloc;

/// True when `mi_malloc`'s own alignment meets `align` for a block of `size` bytes.
#[inline]
fn plain(size: usize, align: usize) -> bool {
    align <= PLAIN_ALIGN && align <= size
}

// SAFETY: each call forwards to mimalloc, whose blocks meet the layout's alignment (`plain`),
// and `dealloc`/`realloc` only get blocks mimalloc made.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if plain(layout.size(), layout.align()) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if plain(layout.size(), layout.align()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: see the impl.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if plain(new_size, layout.align()) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size and alignment a Rust program asks for small blocks comes back aligned, from
    /// both calls, through growth and shrinking.
    #[test]
    fn blocks_meet_their_layouts_alignment() {
        let alloc = MiMalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in (1..=300).chain([1000, 4096, 65_536, 1 << 20]) {
                let Ok(layout) = Layout::from_size_align(size, align) else { continue };
                // SAFETY: a non-zero size; every block is freed with the layout it was made with.
                unsafe {
                    for ptr in [alloc.alloc(layout), alloc.alloc_zeroed(layout)] {
                        assert!(!ptr.is_null());
                        assert_eq!(ptr as usize % align, 0, "size {size}, align {align}");
                        ptr.write_bytes(0xa5, size);
                        let grown = alloc.realloc(ptr, layout, size * 3);
                        assert_eq!(grown as usize % align, 0, "grown from {size}, align {align}");
                        assert_eq!(*grown.add(size - 1), 0xa5, "realloc keeps the bytes");
                        let grown_layout = Layout::from_size_align(size * 3, align).unwrap_or(layout);
                        let shrunk = alloc.realloc(grown, grown_layout, size.div_ceil(2));
                        assert_eq!(shrunk as usize % align, 0, "shrunk, align {align}");
                        alloc.dealloc(shrunk, Layout::from_size_align(size.div_ceil(2), align).unwrap_or(layout));
                    }
                }
            }
        }
    }

    #[test]
    fn zeroed_blocks_are_zero() {
        let alloc = MiMalloc;
        for (size, align) in [(24, 8), (100, 16), (1000, 64)] {
            let layout = Layout::from_size_align(size, align).unwrap_or(Layout::new::<u8>());
            // SAFETY: a non-zero size, freed with its layout.
            unsafe {
                let ptr = alloc.alloc_zeroed(layout);
                assert!((0..size).all(|i| *ptr.add(i) == 0));
                alloc.dealloc(ptr, layout);
            }
        }
    }
}
