//! Times one captured decode step's kernel without Python: rows from queries and keys, then
//! their summaries, for the built-in model's shape (4 layers, 4 query heads over 2 key heads,
//! head size 16) at 300 keys. `cargo run --release --example step_probe`.

use attnfast_core::step::{LayerQueryKeys, query_rows, step_rows_summary};
use ndarray::{Array3, Array4};
use std::hint::black_box;
use std::time::Instant;

fn main() {
    let (batch, heads, kv_heads, keys, dim) = (1, 4, 2, 300, 16);
    let q = Array3::from_shape_fn((batch, heads, dim), |(b, h, d)| {
        ((b + h * 3 + d) % 7) as f32 * 0.1
    });
    let k = Array4::from_shape_fn((batch, kv_heads, keys, dim), |(b, h, n, d)| {
        ((b + h + n * 3 + d) % 11) as f32 * 0.05
    });
    let layers: Vec<_> = (0..4)
        .map(|_| LayerQueryKeys {
            query: q.view(),
            keys: k.view(),
            bias: None,
            scale: 0.25,
        })
        .collect();
    let iters = 20_000;
    let start = Instant::now();
    for _ in 0..iters {
        black_box(query_rows(black_box(&layers), None).unwrap());
    }
    let rows_us = start.elapsed().as_secs_f64() * 1e6 / iters as f64;
    let rows = query_rows(&layers, None).unwrap();
    let start = Instant::now();
    for _ in 0..iters {
        black_box(step_rows_summary(black_box(&rows), &[0], 0).unwrap());
    }
    let summary_us = start.elapsed().as_secs_f64() * 1e6 / iters as f64;
    println!("rows and fingerprints: {rows_us:.2} us; sink summary: {summary_us:.2} us");
}
