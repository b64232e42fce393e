//! Stack memory without library calls.
//!
//! LLVM turns a run of zero stores (`[0; N]`, `mem::zeroed()`, a struct
//! literal of zeros) into a call to `memset`, which bpf-linker emits as a
//! BPF subprogram of its own. Every call adds a frame to the deepest call
//! chain, whose frames together must fit the 512 bytes of stack the
//! verifier allows; Linux 6.1 counts even `memset`'s empty frame as 32
//! bytes, so `from_uplink` (224) → `sluice_lb4_from_uplink` (288) →
//! `memset` came to 544 there and the program did not load. Volatile
//! stores are never merged: zeroing through them stays inline.

/// Zero `*p` one 32-bit word at a time, with stores LLVM may not merge.
///
/// # Safety
/// `p` points to writable memory of `T`, which is 4-byte aligned, a
/// multiple of 4 bytes long, and valid when all zero (plain integers).
#[inline(always)]
pub unsafe fn zero_words<T>(p: *mut T) {
    const { assert!(core::mem::size_of::<T>() % 4 == 0 && core::mem::align_of::<T>() >= 4) };
    let words = p as *mut u32;
    let mut i = 0;
    while i < core::mem::size_of::<T>() / 4 {
        // SAFETY: in bounds (the loop's bound), aligned (asserted above).
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
        i += 1;
    }
}
