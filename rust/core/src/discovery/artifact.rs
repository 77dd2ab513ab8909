//! Reading a run folder's classifier artifacts: `model.json` and `sample.parquet`
//! (`docs/discovery-artifacts.md`). Every problem is an `Artifact` error naming the file.

use std::fs::File;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int32Type};
use arrow_array::{Array, RecordBatch};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Map, Value};

use super::classifier::{Classifier, Sample};
use super::projection::Projection;
use crate::error::{CoreError, Result};
use crate::fingerprint::FINGERPRINT_DIM;
use crate::layout::Layout;

/// The `format` of `model.json`, and the version this build reads.
pub const MODEL_FORMAT: &str = "attnfast-discovery-model";
pub const MODEL_FORMAT_VERSION: u32 = 1;

/// The fields of `model.json`; any other field is refused (a file of a newer format).
const MODEL_FIELDS: [&str; 9] = [
    "format",
    "format_version",
    "layout",
    "scaler_mean",
    "scaler_scale",
    "pca_mean",
    "pca_components",
    "neighbours",
    "search_leaves",
];

fn field<'a>(m: &'a Map<String, Value>, name: &str) -> std::result::Result<&'a Value, String> {
    m.get(name).ok_or_else(|| format!("has no field {name:?}"))
}

fn numbers(v: &Value, name: &str) -> std::result::Result<Vec<f64>, String> {
    v.as_array()
        .and_then(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<_>>>())
        .ok_or_else(|| format!("{name} must be a list of numbers"))
}

/// Loads the classifier of the run folder `dir`.
pub fn load(dir: &Path) -> Result<Classifier> {
    let model_path = dir.join("model.json");
    let sample_path = dir.join("sample.parquet");
    for p in [&model_path, &sample_path] {
        if !p.is_file() {
            return Err(CoreError::Missing(format!(
                "{}: no such file (is {} a discovery run folder?)",
                p.display(),
                dir.display()
            )));
        }
    }
    let text = std::fs::read_to_string(&model_path)
        .map_err(|e| CoreError::Artifact(format!("{}: {e}", model_path.display())))?;
    let bad = |msg: String| CoreError::Artifact(format!("{}: {msg}", model_path.display()));
    let value: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let m = value
        .as_object()
        .ok_or_else(|| bad("is not a JSON object".into()))?;
    if let Some(k) = m.keys().find(|k| !MODEL_FIELDS.contains(&k.as_str())) {
        return Err(bad(format!("has an unknown field {k:?}")));
    }
    let format = field(m, "format")
        .map_err(bad)?
        .as_str()
        .unwrap_or_default();
    if format != MODEL_FORMAT {
        return Err(bad(format!("format is {format:?}, not {MODEL_FORMAT:?}")));
    }
    let version = field(m, "format_version").map_err(bad)?.as_u64();
    if version != Some(u64::from(MODEL_FORMAT_VERSION)) {
        return Err(bad(format!(
            "format_version {} is not {MODEL_FORMAT_VERSION}, the version this attnfast ({}) \
             reads; run discovery again with this version",
            field(m, "format_version").map_err(bad)?,
            crate::VERSION
        )));
    }
    let layout_name = field(m, "layout")
        .map_err(bad)?
        .as_str()
        .unwrap_or_default();
    let layout = Layout::from_name(layout_name).map_err(|e| bad(e.to_string()))?;
    let get = |name: &str| field(m, name).and_then(|v| numbers(v, name)).map_err(bad);
    let rows = field(m, "pca_components")
        .map_err(bad)?
        .as_array()
        .ok_or_else(|| bad("pca_components must be a list of rows".into()))?;
    let mut components = Vec::new();
    for row in rows {
        let row = numbers(row, "each row of pca_components").map_err(bad)?;
        if row.len() != FINGERPRINT_DIM {
            return Err(bad(format!(
                "every row of pca_components must hold {FINGERPRINT_DIM} values"
            )));
        }
        components.extend(row);
    }
    let neighbours = field(m, "neighbours")
        .map_err(bad)?
        .as_u64()
        .ok_or_else(|| bad("neighbours must be a positive integer".into()))?;
    let search_leaves = field(m, "search_leaves")
        .map_err(bad)?
        .as_u64()
        .ok_or_else(|| bad("search_leaves must be a positive integer".into()))?;
    let projection = Projection::new(
        &get("scaler_mean")?,
        &get("scaler_scale")?,
        &get("pca_mean")?,
        &components,
    )
    .map_err(|e| bad(e.to_string()))?;
    let sample = read_sample(&sample_path)?;
    Classifier::new(
        layout,
        projection,
        sample,
        neighbours as usize,
        search_leaves as usize,
    )
    .map_err(|e| {
        CoreError::Artifact(format!(
            "{} with {}: {e}",
            model_path.display(),
            sample_path.display()
        ))
    })
}

fn read_sample(path: &Path) -> Result<Sample> {
    let bad = |msg: String| CoreError::Artifact(format!("{}: {msg}", path.display()));
    let file = File::open(path).map_err(|e| bad(e.to_string()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| bad(format!("not a readable Parquet file ({e})")))?
        .with_batch_size(65536)
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let mut s = Sample::default();
    for batch in reader {
        let batch = batch.map_err(|e| bad(format!("damaged ({e})")))?;
        append(&mut s, &batch).map_err(bad)?;
    }
    Ok(s)
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> std::result::Result<&'a dyn Array, String> {
    let c = batch
        .column_by_name(name)
        .ok_or_else(|| format!("has no column {name:?}"))?;
    if c.null_count() > 0 {
        return Err(format!("column {name:?} has nulls"));
    }
    Ok(c.as_ref())
}

fn floats(batch: &RecordBatch, name: &str) -> std::result::Result<Vec<f32>, String> {
    let c = column(batch, name)?;
    c.as_primitive_opt::<Float32Type>()
        .map(|a| a.values().to_vec())
        .ok_or_else(|| format!("column {name:?} is {}, not float32", c.data_type()))
}

fn append(s: &mut Sample, batch: &RecordBatch) -> std::result::Result<(), String> {
    let fps = column(batch, "fingerprint")?;
    let list = fps
        .as_fixed_size_list_opt()
        .filter(|l| l.value_length() as usize == FINGERPRINT_DIM)
        .ok_or_else(|| {
            format!(
                "column \"fingerprint\" is {}, not fixed_size_list<float32>[20]",
                fps.data_type()
            )
        })?;
    let values = list
        .values()
        .as_primitive_opt::<Float32Type>()
        .ok_or("column \"fingerprint\" does not hold float32 values")?;
    let start = list.offset() * FINGERPRINT_DIM;
    s.fingerprints
        .extend_from_slice(&values.values()[start..start + list.len() * FINGERPRINT_DIM]);
    s.x.extend(floats(batch, "x")?);
    s.y.extend(floats(batch, "y")?);
    s.probability.extend(floats(batch, "probability")?);
    let c = column(batch, "cluster_id")?;
    let ids = c
        .as_primitive_opt::<Int32Type>()
        .ok_or_else(|| format!("column \"cluster_id\" is {}, not int32", c.data_type()))?;
    s.cluster_id.extend_from_slice(ids.values());
    Ok(())
}
