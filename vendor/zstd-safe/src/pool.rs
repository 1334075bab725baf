//! Tocsin's addition to zstd-safe: each thread keeps a few contexts that
//! were dropped, and the next context it creates is one of them.
//!
//! Why: `ZSTD_createCCtx` and `ZSTD_createDCtx` each run the `cpuid`
//! instruction three times to learn whether the CPU has BMI2. Under a
//! hypervisor `cpuid` traps; on the Firecracker VM Tocsin is benchmarked on
//! one context costs about 19 µs. The Parquet reader makes a compressor and
//! a decompressor for every ZSTD column chunk it reads, so a small query
//! reading 4 columns of 5 files spent a quarter of its CPU creating
//! contexts (see docs/benchmarks.md, "PromQL against Prometheus").
//!
//! A context comes back reset with `ZSTD_reset_session_and_parameters`:
//! no session, every parameter at its default, no dictionary. That is the
//! state `ZSTD_createCCtx` / `ZSTD_createDCtx` leave a new context in (they
//! end by resetting the parameters), and the way zstd documents reusing a
//! context; only its allocated buffers remain, which is the point of
//! reusing it. A context whose reset fails is freed. The callers in
//! `lib.rs` do not return a compression context that ever had worker
//! threads, nor a decompression context that referenced several
//! dictionaries. Each pool holds contexts of at most `BUDGET` bytes
//! (`ZSTD_sizeof_CCtx` / `ZSTD_sizeof_DCtx`) per kind; the rest are freed,
//! and a thread's pool is freed when the thread ends.

use core::ptr::NonNull;
use std::cell::RefCell;
use std::thread_local;
use std::vec::Vec;

/// Bytes of contexts kept per thread and kind. A reader opening a file
/// builds one codec per column before dropping any, so the pool must hold
/// a query's worth: a decompression context is about 160 KiB (some 25
/// fit), a compression context that never compressed a few KiB, one that
/// did keeps its workspace (about 1 MiB at level 3).
const BUDGET: usize = 4 << 20;

struct Pool {
    cctx: Vec<NonNull<zstd_sys::ZSTD_CCtx>>,
    cctx_bytes: usize,
    dctx: Vec<NonNull<zstd_sys::ZSTD_DCtx>>,
    dctx_bytes: usize,
}

impl Drop for Pool {
    fn drop(&mut self) {
        for c in self.cctx.drain(..) {
            // Safety: Just FFI, on a context this pool owns.
            unsafe {
                zstd_sys::ZSTD_freeCCtx(c.as_ptr());
            }
        }
        for d in self.dctx.drain(..) {
            // Safety: Just FFI, on a context this pool owns.
            unsafe {
                zstd_sys::ZSTD_freeDCtx(d.as_ptr());
            }
        }
    }
}

thread_local! {
    static POOL: RefCell<Pool> = const {
        RefCell::new(Pool { cctx: Vec::new(), cctx_bytes: 0, dctx: Vec::new(), dctx_bytes: 0 })
    };
}

fn reset_ok(code: usize) -> bool {
    // Safety: Just FFI
    unsafe { zstd_sys::ZSTD_isError(code) == 0 }
}

fn cctx_size(c: NonNull<zstd_sys::ZSTD_CCtx>) -> usize {
    // Safety: Just FFI, on a live context.
    unsafe { zstd_sys::ZSTD_sizeof_CCtx(c.as_ptr()) }
}

fn dctx_size(d: NonNull<zstd_sys::ZSTD_DCtx>) -> usize {
    // Safety: Just FFI, on a live context.
    unsafe { zstd_sys::ZSTD_sizeof_DCtx(d.as_ptr()) }
}

pub(crate) fn take_cctx() -> Option<NonNull<zstd_sys::ZSTD_CCtx>> {
    POOL.try_with(|p| {
        let mut p = p.borrow_mut();
        let c = p.cctx.pop()?;
        p.cctx_bytes = p.cctx_bytes.saturating_sub(cctx_size(c));
        Some(c)
    })
    .ok()
    .flatten()
}

pub(crate) fn take_dctx() -> Option<NonNull<zstd_sys::ZSTD_DCtx>> {
    POOL.try_with(|p| {
        let mut p = p.borrow_mut();
        let d = p.dctx.pop()?;
        p.dctx_bytes = p.dctx_bytes.saturating_sub(dctx_size(d));
        Some(d)
    })
    .ok()
    .flatten()
}

/// Keeps `c` (reset) for this thread's next compression context; false if
/// it is not kept and the caller must free it.
pub(crate) fn give_cctx(c: NonNull<zstd_sys::ZSTD_CCtx>) -> bool {
    // Safety: Just FFI, on the context the caller is dropping.
    let code = unsafe {
        zstd_sys::ZSTD_CCtx_reset(
            c.as_ptr(),
            zstd_sys::ZSTD_ResetDirective::ZSTD_reset_session_and_parameters,
        )
    };
    if !reset_ok(code) {
        return false;
    }
    let size = cctx_size(c);
    POOL.try_with(|p| {
        let mut p = p.borrow_mut();
        if p.cctx_bytes + size > BUDGET {
            return false;
        }
        p.cctx_bytes += size;
        p.cctx.push(c);
        true
    })
    .unwrap_or(false)
}

/// Keeps `d` (reset) for this thread's next decompression context; false
/// if it is not kept and the caller must free it.
pub(crate) fn give_dctx(d: NonNull<zstd_sys::ZSTD_DCtx>) -> bool {
    // Safety: Just FFI, on the context the caller is dropping.
    let code = unsafe {
        zstd_sys::ZSTD_DCtx_reset(
            d.as_ptr(),
            zstd_sys::ZSTD_ResetDirective::ZSTD_reset_session_and_parameters,
        )
    };
    if !reset_ok(code) {
        return false;
    }
    let size = dctx_size(d);
    POOL.try_with(|p| {
        let mut p = p.borrow_mut();
        if p.dctx_bytes + size > BUDGET {
            return false;
        }
        p.dctx_bytes += size;
        p.dctx.push(d);
        true
    })
    .unwrap_or(false)
}
