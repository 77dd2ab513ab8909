//! Capture files: round trips, random access, and damage (truncation, flipped bytes) that
//! leaves the intact chunks readable and names the damaged one.

use attnfast_core::capture::{CaptureReader, CaptureWriter, Record, StepHeader, WriterOptions};

fn header(step: u32, ctx: u32) -> StepHeader {
    StepHeader {
        sequence: 0,
        step,
        token_id: step as i64 + 100,
        position: 10 + step,
        timestamp_ms: 1_700_000_000_000 + step as i64,
        layers: 2,
        heads: 3,
        context_len: ctx,
        text: format!("tok{step}"),
    }
}

fn values(step: u32, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as u32 * 7 + step) % 13) as f32 / 13.0)
        .collect()
}

/// Writes `steps` steps with small chunks (several per file).
fn write(path: &std::path::Path, steps: u32) {
    let opts = WriterOptions {
        chunk_bytes: 2000,
        level: 3,
    };
    let mut w = CaptureWriter::create(path, r#"{"model": "m"}"#, opts).unwrap();
    for s in 0..steps {
        let h = header(s, 10 + s);
        w.write_step_f32(&h, &values(s, h.values())).unwrap();
        if s == 3 {
            w.write_meta(r#"{"prompt": "late"}"#).unwrap();
        }
    }
    w.close().unwrap();
}

fn check_step(r: &mut CaptureReader, i: usize) {
    let h = r.header(i).unwrap().clone();
    assert_eq!(h, header(h.step, 10 + h.step));
    let mut out = Vec::new();
    r.read(i, &mut out).unwrap();
    let want = values(h.step, h.values());
    for (a, b) in out.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-3 * b.max(1e-3), "{a} vs {b}");
    }
}

#[test]
fn round_trip_random_access() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.attn");
    write(&path, 40);
    let mut r = CaptureReader::open(&path).unwrap();
    assert!(r.indexed());
    assert!(r.problems().is_empty());
    assert_eq!(r.len(), 40);
    assert_eq!(r.meta()["model"], "m");
    assert_eq!(r.meta()["prompt"], "late");
    for i in [39, 0, 17, 18, 5] {
        check_step(&mut r, i);
    }
    assert!(r.verify().is_empty());
}

#[test]
fn missing_index_is_scanned() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.attn");
    write(&path, 40);
    // Cut the footer off: the reader must scan and still find every step.
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 3).unwrap();
    let mut r = CaptureReader::open(&path).unwrap();
    assert!(!r.indexed());
    assert_eq!(r.len(), 40);
    check_step(&mut r, 39);
}

#[test]
fn truncated_file_keeps_whole_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.attn");
    write(&path, 40);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let mut r = CaptureReader::open(&path).unwrap();
    assert!(r.len() > 5 && r.len() < 40, "{}", r.len());
    let p = &r.problems()[0];
    assert!(p.message.contains("truncated"), "{p:?}");
    for i in 0..r.len() {
        check_step(&mut r, i);
    }
}

#[test]
fn flipped_byte_names_the_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.attn");
    write(&path, 40);
    let mut bytes = std::fs::read(&path).unwrap();
    // Damage one byte a third of the way in: inside some steps chunk's payload.
    let at = bytes.len() / 3;
    bytes[at] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let mut r = CaptureReader::open(&path).unwrap();
    assert!(r.indexed());
    let problems = r.verify();
    assert_eq!(problems.len(), 1, "{problems:?}");
    let bad = problems[0].chunk;
    let mut errors = 0;
    let mut out = Vec::new();
    for i in 0..r.len() {
        match r.read(i, &mut out) {
            Ok(()) => check_step(&mut r, i),
            Err(e) => {
                errors += 1;
                let m = e.to_string();
                assert!(m.contains(&format!("chunk {bad} ")), "{m}");
                assert!(m.contains("checksum"), "{m}");
            }
        }
    }
    assert!(errors > 0 && errors < 40);
}

#[test]
fn not_a_capture_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.attn");
    std::fs::write(&path, b"{\"metadata\": {}} and more bytes").unwrap();
    let e = CaptureReader::open(&path).err().unwrap().to_string();
    assert!(e.contains("not an attnfast capture file"), "{e}");
}

#[test]
fn bad_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.attn");
    let mut w = CaptureWriter::create(&path, "{}", WriterOptions::default()).unwrap();
    let h = header(0, 2);
    let e = w.write_step_f32(&h, &[0.5; 3]).err().unwrap().to_string();
    assert!(
        e.contains("3 attention values given for 2 layers x 3 heads x 2 keys"),
        "{e}"
    );
    let mut v = vec![0.1; 12];
    v[4] = f32::NAN;
    let e = w.write_step_f32(&h, &v).err().unwrap().to_string();
    assert!(e.contains("index 4"), "{e}");
    assert_eq!(w.steps(), 0);
    w.close().unwrap();
}

#[test]
fn prompt_rows_are_kept_apart_from_steps() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.attn");
    let opts = WriterOptions {
        chunk_bytes: 600,
        level: 3,
    };
    let mut w = CaptureWriter::create(&path, r#"{"model": "m"}"#, opts).unwrap();
    // Prompt rows of a first generation, its steps, then another generation's prompt rows.
    for q in 0..5u32 {
        let h = header(q, q + 1);
        w.write_f32(Record::Prompt, &h, &values(q, h.values()))
            .unwrap();
    }
    for s in 0..6 {
        let h = header(s, 10 + s);
        w.write_step_f32(&h, &values(s, h.values())).unwrap();
    }
    for q in 5..8u32 {
        let h = header(q, q + 1);
        w.write_f32(Record::Prompt, &h, &values(q, h.values()))
            .unwrap();
    }
    assert_eq!((w.steps(), w.prompt_rows()), (6, 8));
    w.close().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    for (indexed, len) in [(true, bytes.len()), (false, bytes.len() - 5)] {
        std::fs::write(&path, &bytes[..len]).unwrap(); // cut the footer: scanned
        let mut r = CaptureReader::open(&path).unwrap();
        assert_eq!(r.indexed(), indexed);
        assert_eq!((r.len(), r.count(Record::Prompt)), (6, 8));
        for i in 0..6 {
            check_step(&mut r, i);
        }
        let mut out = Vec::new();
        for q in 0..8 {
            let h = r.record_header(Record::Prompt, q).unwrap().clone();
            assert_eq!(h, header(q as u32, q as u32 + 1));
            r.read_record(Record::Prompt, q, &mut out).unwrap();
            assert_eq!(out.len(), h.values());
        }
        assert!(r.verify().is_empty());
    }
}

#[test]
fn a_damaged_metadata_header_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.attn");
    write(&path, 10);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[16 + 32 + 1] ^= 0x55; // inside the first chunk's payload
    std::fs::write(&path, &bytes).unwrap();
    let e = CaptureReader::open(&path).err().unwrap().to_string();
    assert!(
        e.contains("metadata header (chunk 0, byte 16) is damaged"),
        "{e}"
    );
    let e = CaptureReader::open(&dir.path().join("none.attn"))
        .err()
        .unwrap();
    assert!(matches!(e, attnfast_core::CoreError::Missing(_)), "{e:?}");
}
