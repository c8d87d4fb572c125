//! Shared pieces of the fuzz properties (`tests/fuzz_*.rs`): a counting global allocator that
//! measures the peak heap use of one call, the proptest configuration (case counts that keep
//! the whole suite short, overridable with `PROPTEST_CASES`), byte-level mutations and a JSON
//! value generator.
//!
//! Every test binary that declares `mod fuzz_support;` (geostream-filter's includes this file
//! by path) gets the counting allocator. zstd's own
//! contexts and windows are counted too: the crate enables zstd's `with-rust-allocator`
//! feature, so the C library allocates through Rust's global allocator.

#![allow(dead_code)] // each test file uses part of this module

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Map, Number, Value};

// ---------------------------------------------------------------------------------------------
// Allocation meter

/// The system allocator, with per-thread accounting of live and peak bytes.
///
/// Counters are per thread because the test harness runs properties in parallel, and the code
/// under test never hands work to another thread. Memory freed on another thread than the one
/// that allocated it only makes this thread's count lower, never higher.
struct CountingAlloc;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    /// While a measured call runs: refuse any allocation that would take the thread's live
    /// bytes above this, so a runaway allocation fails fast (the process aborts with
    /// "memory allocation failed") instead of taking the machine's memory.
    static CEILING: Cell<isize> = const { Cell::new(isize::MAX) };
}

/// Bytes no measured call may go beyond (above what was live when it started).
const HARD_CEILING: isize = 1 << 30;

fn grow(n: usize) -> bool {
    LIVE.try_with(|live| {
        let now = live.get().saturating_add(n as isize);
        if now > CEILING.try_with(Cell::get).unwrap_or(isize::MAX) {
            return false;
        }
        live.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
        true
    })
    .unwrap_or(true)
}

fn shrink(n: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(n as isize)));
}

// The one place that needs `unsafe`: a global allocator. It only forwards to `System` and
// counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !grow(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if p.is_null() {
            shrink(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !grow(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if p.is_null() {
            shrink(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout (every allocation goes through us).
        unsafe { System.dealloc(ptr, layout) };
        shrink(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() && !grow(new_size - layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: as for `dealloc`; the caller upholds `GlobalAlloc::realloc`'s contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            if new_size > layout.size() {
                shrink(new_size - layout.size());
            }
        } else if new_size < layout.size() {
            shrink(layout.size() - new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Runs `f` and returns its result with the peak number of heap bytes that were live during the
/// call, counted from what was live when it started (so the result's own allocations count).
pub(crate) fn peak_alloc<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let outer = CEILING.with(|c| c.replace(base.saturating_add(HARD_CEILING)));
    let r = f();
    CEILING.with(|c| c.set(outer));
    let peak = PEAK.with(Cell::get);
    (r, usize::try_from(peak - base).unwrap_or(0))
}

// ---------------------------------------------------------------------------------------------
// Configuration

/// Cases for one property: `default` (chosen so that every fuzz test together stays within
/// about a minute on two cores in the dev profile), unless `PROPTEST_CASES` asks for more.
pub(crate) fn config(default: u32) -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = default;
    }
    // Shrinking a 100k-level input one byte at a time is slow and tells little; a failure is
    // reported with its case already, and a regression test pins it.
    c.max_shrink_iters = 256;
    c
}

// ---------------------------------------------------------------------------------------------
// Byte mutations

/// One edit of a byte string. Positions are proptest `Index`es, resolved against the
/// length of the string at the time the edit applies.
#[derive(Debug, Clone)]
pub(crate) enum Mutation {
    /// XOR one byte with a non-zero mask.
    Flip(Index, u8),
    /// Set one byte.
    Set(Index, u8),
    /// Insert bytes.
    Insert(Index, Vec<u8>),
    /// Overwrite bytes from a position (extending the string if needed).
    Overwrite(Index, Vec<u8>),
    /// Remove up to `n` bytes.
    Remove(Index, usize),
    /// Cut the string at a position.
    Truncate(Index),
    /// Repeat the `len` bytes at a position `times` times in place.
    Repeat(Index, usize, usize),
}

/// Zero to `max` mutations, each an arbitrary edit or the insertion or overwrite of one of
/// `tokens` (format-specific fragments that are likely to matter).
pub(crate) fn mutations(
    tokens: &'static [&'static [u8]],
    max: usize,
) -> impl Strategy<Value = Vec<Mutation>> {
    let token = proptest::sample::select(tokens).prop_map(<[u8]>::to_vec);
    let one = prop_oneof![
        3 => (any::<Index>(), 1u8..).prop_map(|(i, m)| Mutation::Flip(i, m)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        2 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        3 => (any::<Index>(), token.clone()).prop_map(|(i, t)| Mutation::Insert(i, t)),
        3 => (any::<Index>(), token).prop_map(|(i, t)| Mutation::Overwrite(i, t)),
        1 => (any::<Index>(), 1usize..16).prop_map(|(i, n)| Mutation::Remove(i, n)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), 1usize..8, prop_oneof![2..10usize, 1000..20_000usize])
            .prop_map(|(i, l, t)| Mutation::Repeat(i, l, t)),
    ];
    proptest::collection::vec(one, 0..=max)
}

/// Applies `ms` to a copy of `base`.
pub(crate) fn apply(base: &[u8], ms: &[Mutation]) -> Vec<u8> {
    let mut v = base.to_vec();
    for m in ms {
        // Positions over the string plus one (an insertion may go at the end).
        let at = |i: &Index, len: usize| i.index(len + 1);
        match m {
            Mutation::Flip(i, mask) if !v.is_empty() => {
                let p = i.index(v.len());
                v[p] ^= mask;
            }
            Mutation::Set(i, b) if !v.is_empty() => {
                let p = i.index(v.len());
                v[p] = *b;
            }
            Mutation::Insert(i, bytes) => {
                let p = at(i, v.len());
                v.splice(p..p, bytes.iter().copied());
            }
            Mutation::Overwrite(i, bytes) => {
                let p = at(i, v.len());
                let end = (p + bytes.len()).min(v.len());
                v.splice(p..end, bytes.iter().copied());
            }
            Mutation::Remove(i, n) if !v.is_empty() => {
                let p = i.index(v.len());
                let end = (p + n).min(v.len());
                v.drain(p..end);
            }
            Mutation::Truncate(i) => {
                let p = at(i, v.len());
                v.truncate(p);
            }
            Mutation::Repeat(i, len, times) if !v.is_empty() => {
                let p = i.index(v.len());
                let end = (p + len).min(v.len());
                let piece = v[p..end].to_vec();
                let rep: Vec<u8> = piece.repeat(*times);
                v.splice(p..end, rep);
            }
            _ => {}
        }
    }
    v
}

// ---------------------------------------------------------------------------------------------
// JSON values

/// Strings that tend to matter to parsers and validators.
pub(crate) const AWKWARD_STRINGS: &[&str] = &[
    "",
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "\u{0}",
    "\u{7f}",
    "\u{fffd}",
    "\u{1F600}",
    "\\",
    "\"",
    "é",
    "Feature",
    "Point",
    "Polygon",
    "2.0",
];

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1000i32..1000).prop_map(Value::from),
        // Finite doubles only: JSON has no NaN or infinity (a NaN becomes null).
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        proptest::sample::select(
            &[
                0.0,
                -0.0,
                1e308,
                -1e308,
                5e-324,
                180.0,
                -180.0,
                90.0,
                -90.0,
                180.000_000_1
            ][..]
        )
        .prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
    ]
}

fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z]{0,6}",
        1 => "\\PC{0,12}",
        1 => ".{0,8}",
        1 => proptest::sample::select(AWKWARD_STRINGS).prop_map(str::to_string),
    ]
}

/// Arbitrary JSON values: up to `depth` levels, `size` nodes in all.
pub(crate) fn json_value(depth: u32, size: u32) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        3 => number(),
        3 => string().prop_map(Value::String),
    ];
    leaf.prop_recursive(depth, size, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((string(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Whether two JSON values are equal, allowing floats to differ in their last bits (serde_json
/// does not promise an exact round trip of every float without its `float_roundtrip`
/// feature).
pub(crate) fn json_close(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x == y {
                return true;
            }
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => (x - y).abs() <= x.abs().max(y.abs()) * 1e-15,
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_close(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_close(v, w)))
        }
        _ => a == b,
    }
}

/// `n` levels of nesting around `inner`: `open` repeated `n` times, then `inner`, then `close`
/// repeated `n` times.
pub(crate) fn nest(open: &str, inner: &str, close: &str, n: usize) -> String {
    let mut s = String::with_capacity((open.len() + close.len()) * n + inner.len());
    for _ in 0..n {
        s.push_str(open);
    }
    s.push_str(inner);
    for _ in 0..n {
        s.push_str(close);
    }
    s
}
