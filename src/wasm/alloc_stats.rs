//! Allocation counts for the memory benchmark (feature `alloc-stats`, never in the npm
//! package): the package's allocator (talc) wrapped to count the live allocations of each
//! requested size, which `allocStats` hands to `bench/js/memory.mjs --alloc-stats`. The
//! sizes name what holds the memory (on wasm32 a long id's `Arc<str>` is one size; the item
//! store's pages of 256 slots are over 4 KiB, summed with the other large ones);
//! docs/bench/memory.md has the breakdown it gave.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};

use wasm_bindgen::prelude::*;

/// Sizes counted one by one; larger allocations are summed.
const EXACT: usize = 4096;

static LIVE: [AtomicU32; EXACT + 1] = [const { AtomicU32::new(0) }; EXACT + 1];
static LARGE_COUNT: AtomicUsize = AtomicUsize::new(0);
static LARGE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// The live allocations when the wasm memory last grew (what set its high-water mark), as
/// `LIVE`, `LARGE_COUNT` and `LARGE_BYTES` were just before the allocation that grew it;
/// and that allocation's size.
static AT_GROWTH: [AtomicU32; EXACT + 1] = [const { AtomicU32::new(0) }; EXACT + 1];
static AT_GROWTH_LARGE: [AtomicUsize; 3] = [const { AtomicUsize::new(0) }; 3];

/// The wasm memory's size in pages.
fn pages() -> usize {
    core::arch::wasm32::memory_size(0)
}

/// Called after an allocation of `size` that grew the memory: copies the counts, less that
/// allocation, so they show what was live beside it.
fn snapshot(size: usize) {
    for (at, n) in AT_GROWTH.iter().zip(LIVE.iter()) {
        at.store(n.load(Relaxed), Relaxed);
    }
    AT_GROWTH_LARGE[0].store(LARGE_COUNT.load(Relaxed), Relaxed);
    AT_GROWTH_LARGE[1].store(LARGE_BYTES.load(Relaxed), Relaxed);
    AT_GROWTH_LARGE[2].store(size, Relaxed);
}

fn count(size: usize, add: bool) {
    if size <= EXACT {
        let n = &LIVE[size];
        if add {
            n.fetch_add(1, Relaxed);
        } else {
            n.fetch_sub(1, Relaxed);
        }
    } else if add {
        LARGE_COUNT.fetch_add(1, Relaxed);
        LARGE_BYTES.fetch_add(size, Relaxed);
    } else {
        LARGE_COUNT.fetch_sub(1, Relaxed);
        LARGE_BYTES.fetch_sub(size, Relaxed);
    }
}

/// talc, counting.
struct Counting(talc::wasm::WasmDynamicTalc);

#[global_allocator]
static TALC: Counting = Counting(talc::wasm::new_wasm_dynamic_allocator());

// SAFETY: every call is talc's own; the counts only read the layouts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let before = pages();
        let p = unsafe { self.0.alloc(layout) };
        if pages() != before {
            snapshot(layout.size());
        }
        if !p.is_null() {
            count(layout.size(), true);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { self.0.dealloc(ptr, layout) };
        count(layout.size(), false);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let before = pages();
        let p = unsafe { self.0.realloc(ptr, layout, new_size) };
        if pages() != before {
            snapshot(new_size);
        }
        if !p.is_null() {
            count(layout.size(), false);
            count(new_size, true);
        }
        p
    }
}

/// `[size, count, ...]` for each size of `table` (counts by size up to 4,096 bytes) that
/// has any.
fn by_size(table: &[AtomicU32]) -> Vec<f64> {
    let mut out = Vec::new();
    for (size, n) in table.iter().enumerate() {
        let n = n.load(Relaxed);
        if n > 0 {
            out.extend([size as f64, f64::from(n)]);
        }
    }
    out
}

/// `allocStats`: the live allocations, `[size, count, ...]` for each size up to 4,096
/// bytes that has any, then `[-1, count, bytes]` for the larger ones.
#[wasm_bindgen(js_name = allocStats, skip_typescript)]
pub fn alloc_stats() -> Vec<f64> {
    let mut out = by_size(&LIVE);
    out.extend([
        -1.0,
        LARGE_COUNT.load(Relaxed) as f64,
        LARGE_BYTES.load(Relaxed) as f64,
    ]);
    out
}

/// `allocAtGrowth`: as [`alloc_stats`], the live allocations when the wasm memory last grew
/// (its high-water mark), then `[-2, size]`: the allocation that grew it.
#[wasm_bindgen(js_name = allocAtGrowth, skip_typescript)]
pub fn alloc_at_growth() -> Vec<f64> {
    let mut out = by_size(&AT_GROWTH);
    let [count, bytes, size] = [0, 1, 2].map(|i| AT_GROWTH_LARGE[i].load(Relaxed) as f64);
    out.extend([-1.0, count, bytes, -2.0, size]);
    out
}
