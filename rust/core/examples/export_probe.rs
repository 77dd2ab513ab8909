//! Times a Parquet export of an existing database: `cargo run --release --example
//! export_probe -- DB`. For profiling the export without Python in the way.
use attnfast_core::store::{Query, Store, StoreOptions};
use std::time::Instant;

fn main() {
    let path = std::env::args().nth(1).expect("usage: export_probe DB");
    let store = Store::open(std::path::Path::new(&path), StoreOptions::default()).unwrap();
    let out = std::env::temp_dir().join("attnfast_export_probe");
    let t = Instant::now();
    let r = store
        .export_parquet(&out, &Query::default(), true, &mut |_| {})
        .unwrap();
    let dt = t.elapsed().as_secs_f64();
    println!(
        "export: {} rows in {dt:.3} s, {:.2} M rows/s",
        r.rows,
        r.rows as f64 / dt / 1e6
    );
    std::fs::remove_dir_all(out).unwrap();
}
