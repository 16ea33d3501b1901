//! The memory allocator's settings the binary needs (docs/performance.md, "Round two"):
//! mimalloc is the global allocator, and two of its defaults cost a sidecar most of its
//! memory. Applied first thing in `main`, before the runtime and any connection allocate.
//!
//! - **Transparent huge pages off.** mimalloc reserves its first 1 GiB arena before `main`
//!   runs and, with its default `allow_thp`, marks it `MADV_HUGEPAGE`: on a kernel whose THP
//!   mode is `madvise` (the common default) every touched 2 MiB of it then becomes resident
//!   whole. mimalloc reads its options (`MIMALLOC_ALLOW_THP=0` and the like) in its own
//!   constructor, before `main`; so [`DEFAULTS`] runs just before that constructor and sets
//!   the binary's defaults with `mi_option_set_default`, which a `MIMALLOC_*` variable still
//!   overrides. Should the linker not order it first, [`tune`] in `main` turns THP off with
//!   the same `prctl(PR_SET_THP_DISABLE)` mimalloc makes for `allow_thp` 0.
//! - **Freed pages given back at once** (`purge_delay` 0 instead of 1000 ms). mimalloc purges
//!   expired pages only when the thread that freed them allocates again, so a worker that
//!   goes idle after a burst (10,000 connections answered, then parked without buffers)
//!   keeps every page it freed.
//!
//! A `MIMALLOC_*` variable set by the operator wins: its setting is left alone.

use std::ffi::{c_int, c_long};

/// mimalloc's `mi_option_purge_delay` (the same index in mimalloc v2 and v3).
const MI_OPTION_PURGE_DELAY: c_int = 15;
/// mimalloc v3's `mi_option_allow_thp` (v2 has no such option).
const MI_OPTION_ALLOW_THP_V3: c_int = 43;

extern "C" {
    // mimalloc's public C API (`mimalloc.h`), linked by `libmimalloc-sys`.
    fn mi_option_set_default(option: c_int, value: c_long);
    fn mi_version() -> c_int;
}

/// Runs before mimalloc's constructor (priority 101: `.init_array` entries run in ascending
/// priority order), so mimalloc initialises with these defaults.
#[used]
#[link_section = ".init_array.00100"]
static DEFAULTS: extern "C" fn() = set_defaults;

extern "C" fn set_defaults() {
    // SAFETY: both calls only read a constant or store into mimalloc's static option table,
    // which needs no initialisation; the indices are those of the linked version (checked).
    unsafe {
        mi_option_set_default(MI_OPTION_PURGE_DELAY, 0);
        if mi_version() / 10_000 == 3 {
            mi_option_set_default(MI_OPTION_ALLOW_THP_V3, 0);
        }
    }
}

/// Call first in `main`: turns THP off should [`DEFAULTS`] not have run first. Never fails:
/// a setting the kernel refuses only costs memory.
pub fn tune() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // Refused only by kernels before 3.15 or without THP: nothing to turn off then.
        let _ = rustix::thread::disable_transparent_huge_pages(true);
    }
}
