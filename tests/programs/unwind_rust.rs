//! A Rust release binary for the unwinding tests, built with and without frame pointers
//! (`unwind_rust_fp`, `unwind_rust_nofp`): main -> outer_call -> middle_call -> leaf_spin.
use std::{
    hint::black_box,
    time::{Duration, Instant},
};

#[inline(never)]
fn leaf_spin(seed: u64) -> u64 {
    let mut local = seed;
    for round in 0..200_000u64 {
        local = local.wrapping_add(round ^ (local >> 3));
    }
    local
}

#[inline(never)]
fn middle_call(end: Instant) -> u64 {
    let mut sum = 0u64;
    while Instant::now() < end {
        sum = sum.wrapping_add(leaf_spin(black_box(sum)));
    }
    black_box(sum)
}

#[inline(never)]
fn outer_call(end: Instant) -> u64 {
    black_box(middle_call(end)).wrapping_add(1)
}

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|arg| arg.parse().ok())
        .expect("usage: unwind_rust SECONDS");
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    println!("{}", black_box(outer_call(end)));
}
