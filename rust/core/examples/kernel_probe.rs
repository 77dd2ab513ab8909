//! Throughput probe of the dense fingerprint kernel, one thread, for quick iteration:
//! `ATTNFAST_NUM_THREADS=1 cargo run --release -p attnfast-core --example kernel_probe`.
//! The benchmarks that are reported live in `benches/`.

use attnfast_core::AttnShape;
use attnfast_core::fingerprint::compute_dense;
use std::time::Instant;

fn main() {
    for (steps, layers, heads, keys) in [(8, 32, 32, 4096), (128, 12, 12, 512)] {
        let shape = AttnShape {
            steps,
            layers,
            heads,
            keys,
        };
        let n = steps * layers * heads * keys;
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let data: Vec<f32> = (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32
            })
            .collect();
        let halves: Vec<half::f16> = data.iter().map(|&v| half::f16::from_f32(v)).collect();
        let mut best32 = f64::MAX;
        let mut best16 = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            std::hint::black_box(compute_dense(&data, shape, None).unwrap());
            best32 = best32.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            std::hint::black_box(compute_dense(&halves, shape, None).unwrap());
            best16 = best16.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{shape}: f32 {:.2} Gelem/s ({:.2} GB/s), f16 {:.2} Gelem/s",
            n as f64 / best32 / 1e9,
            n as f64 * 4.0 / best32 / 1e9,
            n as f64 / best16 / 1e9
        );
    }
}
