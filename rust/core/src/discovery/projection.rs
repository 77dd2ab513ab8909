//! The scaler and PCA of a discovery run, folded into one affine map.

use crate::error::{CoreError, Result};
use crate::fingerprint::FINGERPRINT_DIM;

/// `StandardScaler` then `PCA`: `p = ((v - mean) / scale - pca_mean) @ components.T`, computed
/// as `p = v @ w + b`. Why folded: one pass of 20 multiply-adds per output instead of three
/// passes, and the same arithmetic in the job and the classifier, so a sample fingerprint
/// projects to exactly the point the index holds.
#[derive(Debug, Clone)]
pub struct Projection {
    dims: usize,
    /// `FINGERPRINT_DIM` rows of `dims` weights: input-major, so the loop over outputs
    /// vectorises without reordering a sum.
    weights: Vec<f32>,
    bias: Vec<f32>,
}

fn check(name: &str, values: &[f64], len: usize) -> Result<()> {
    if values.len() != len {
        return Err(CoreError::Artifact(format!(
            "{name} must hold {len} values, got {}",
            values.len()
        )));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(CoreError::Artifact(format!(
            "{name} has {} at index {i}",
            values[i]
        )));
    }
    Ok(())
}

impl Projection {
    /// From the fitted parameters: `scaler_mean`, `scaler_scale` (20 each), `pca_mean` (20)
    /// and `components` (`dims` rows of 20, row-major), as sklearn stores them.
    pub fn new(
        scaler_mean: &[f64],
        scaler_scale: &[f64],
        pca_mean: &[f64],
        components: &[f64],
    ) -> Result<Self> {
        check("scaler_mean", scaler_mean, FINGERPRINT_DIM)?;
        check("scaler_scale", scaler_scale, FINGERPRINT_DIM)?;
        check("pca_mean", pca_mean, FINGERPRINT_DIM)?;
        if let Some(i) = scaler_scale.iter().position(|&s| s <= 0.0) {
            return Err(CoreError::Artifact(format!(
                "scaler_scale must be positive, got {} at index {i}",
                scaler_scale[i]
            )));
        }
        let dims = components.len() / FINGERPRINT_DIM;
        if dims == 0 || dims > FINGERPRINT_DIM || components.len() % FINGERPRINT_DIM != 0 {
            return Err(CoreError::Artifact(format!(
                "pca_components must be 1 to {FINGERPRINT_DIM} rows of {FINGERPRINT_DIM} values, \
                 got {} values",
                components.len()
            )));
        }
        check("pca_components", components, dims * FINGERPRINT_DIM)?;
        let mut weights = vec![0f32; FINGERPRINT_DIM * dims];
        let mut bias = vec![0f32; dims];
        for (i, row) in components.chunks_exact(FINGERPRINT_DIM).enumerate() {
            let mut b = 0f64;
            for j in 0..FINGERPRINT_DIM {
                weights[j * dims + i] = (row[j] / scaler_scale[j]) as f32;
                b -= (scaler_mean[j] / scaler_scale[j] + pca_mean[j]) * row[j];
            }
            bias[i] = b as f32;
        }
        Ok(Self {
            dims,
            weights,
            bias,
        })
    }

    /// Output dimensions (PCA components kept).
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Projects one fingerprint into `out[..dims]`; the rest of `out` is set to zero.
    #[inline]
    pub fn project_into(&self, fp: &[f32], out: &mut [f32; FINGERPRINT_DIM]) {
        let dims = self.dims;
        out.fill(0.0);
        let acc = &mut out[..dims];
        acc.copy_from_slice(&self.bias);
        for (j, &v) in fp.iter().enumerate().take(FINGERPRINT_DIM) {
            let w = &self.weights[j * dims..(j + 1) * dims];
            for (a, &wi) in acc.iter_mut().zip(w) {
                *a += v * wi;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_scaler_then_pca() {
        let mean: Vec<f64> = (0..20).map(|j| j as f64 * 0.1).collect();
        let scale: Vec<f64> = (0..20).map(|j| 0.5 + j as f64 * 0.05).collect();
        let pca_mean: Vec<f64> = (0..20).map(|j| (j as f64 - 10.0) * 0.01).collect();
        let components: Vec<f64> = (0..60)
            .map(|k| ((k * 7 % 11) as f64 - 5.0) / 10.0)
            .collect();
        let p = Projection::new(&mean, &scale, &pca_mean, &components).unwrap();
        assert_eq!(p.dims(), 3);
        let fp: Vec<f32> = (0..20).map(|j| (j as f32 * 0.37).sin()).collect();
        let mut out = [0f32; 20];
        p.project_into(&fp, &mut out);
        for i in 0..3 {
            let want: f64 = (0..20)
                .map(|j| {
                    ((fp[j] as f64 - mean[j]) / scale[j] - pca_mean[j]) * components[i * 20 + j]
                })
                .sum();
            assert!(
                (out[i] as f64 - want).abs() < 1e-4,
                "{i}: {} vs {want}",
                out[i]
            );
        }
        assert!(out[3..].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn refuses_bad_parameters() {
        let ok = vec![1.0; 20];
        let e = Projection::new(&ok, &[0.0; 20], &ok, &ok).unwrap_err();
        assert!(
            e.to_string().contains("scaler_scale must be positive"),
            "{e}"
        );
        let e = Projection::new(&ok, &ok, &ok, &[1.0; 30]).unwrap_err();
        assert!(e.to_string().contains("pca_components"), "{e}");
        let e = Projection::new(&ok[..19], &ok, &ok, &ok).unwrap_err();
        assert!(e.to_string().contains("scaler_mean must hold 20"), "{e}");
    }
}
