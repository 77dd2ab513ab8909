//! Placing fingerprints among a run's sample: position, cluster and membership probability.

use super::index::SampleIndex;
use super::projection::Projection;
use crate::error::{CoreError, Result};
use crate::fingerprint::FINGERPRINT_DIM;
use crate::layout::Layout;
use crate::parallel::try_for_each_row;
use crate::store::vectors;

/// The fingerprints a run fitted on, with what the fit gave each one.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Rows of 20 floats, as stored.
    pub fingerprints: Vec<f32>,
    pub x: Vec<f32>,
    pub y: Vec<f32>,
    /// HDBSCAN's label, -1 for noise.
    pub cluster_id: Vec<i32>,
    /// HDBSCAN's membership strength, 0 for noise.
    pub probability: Vec<f32>,
}

impl Sample {
    pub fn len(&self) -> usize {
        self.x.len()
    }

    pub fn is_empty(&self) -> bool {
        self.x.is_empty()
    }
}

/// Columns of placements, one entry per fingerprint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Assignments {
    pub x: Vec<f32>,
    pub y: Vec<f32>,
    pub cluster_id: Vec<i32>,
    pub probability: Vec<f32>,
}

/// One placement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Assignment {
    pub x: f32,
    pub y: f32,
    pub cluster_id: i32,
    pub probability: f32,
}

/// The classifier of one discovery run. Immutable once built, so threads share it freely.
#[derive(Debug)]
pub struct Classifier {
    layout: Layout,
    projection: Projection,
    index: SampleIndex,
    sample: Sample,
    neighbours: usize,
    search_leaves: usize,
}

thread_local! {
    /// The neighbours of the row being placed, per thread (no allocation per row).
    static NEIGHBOURS: std::cell::RefCell<Vec<(f32, u32)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Most sample points that vote on one placement.
pub const MAX_NEIGHBOURS: usize = 64;

/// Rows per parallel task: a placement costs about as much as a few thousand multiply-adds.
const WORK_PER_ROW: usize = 4096;

impl Classifier {
    /// Builds the index over `sample` projected by `projection`. `neighbours` is how many sample
    /// points vote (capped at the sample's size); `search_leaves` how many leaves of the index
    /// a search may visit (`usize::MAX`: exact neighbours).
    pub fn new(
        layout: Layout,
        projection: Projection,
        sample: Sample,
        neighbours: usize,
        search_leaves: usize,
    ) -> Result<Self> {
        let n = sample.len();
        if n == 0 {
            return Err(CoreError::Artifact(
                "the sample holds no fingerprints".into(),
            ));
        }
        if sample.fingerprints.len() != n * FINGERPRINT_DIM
            || sample.y.len() != n
            || sample.cluster_id.len() != n
            || sample.probability.len() != n
        {
            return Err(CoreError::Artifact(format!(
                "sample columns disagree: {} fingerprint values, {n} x, {} y, {} cluster_id, \
                 {} probability",
                sample.fingerprints.len(),
                sample.y.len(),
                sample.cluster_id.len(),
                sample.probability.len()
            )));
        }
        if let Some(i) = (0..n).find(|&i| {
            !(sample.x[i].is_finite()
                && sample.y[i].is_finite()
                && (0.0..=1.0).contains(&sample.probability[i])
                && sample.cluster_id[i] >= -1)
        }) {
            return Err(CoreError::Artifact(format!(
                "sample row {i} is not a placement: x {}, y {}, cluster_id {}, probability {}",
                sample.x[i], sample.y[i], sample.cluster_id[i], sample.probability[i]
            )));
        }
        let dims = projection.dims();
        let mut points = Vec::with_capacity(n * dims);
        let mut p = [0f32; FINGERPRINT_DIM];
        for fp in sample.fingerprints.chunks_exact(FINGERPRINT_DIM) {
            projection.project_into(fp, &mut p);
            points.extend_from_slice(&p[..dims]);
        }
        if let Some(i) = points
            .chunks_exact(dims)
            .position(|p| p.iter().any(|v| !v.is_finite()))
        {
            return Err(CoreError::Artifact(format!(
                "sample fingerprint {i} does not project to finite coordinates"
            )));
        }
        if !(1..=MAX_NEIGHBOURS).contains(&neighbours) {
            return Err(CoreError::Artifact(format!(
                "neighbours must be 1 to {MAX_NEIGHBOURS}, got {neighbours}"
            )));
        }
        if search_leaves == 0 {
            return Err(CoreError::Artifact(
                "search_leaves must be at least 1".into(),
            ));
        }
        Ok(Self {
            layout,
            index: SampleIndex::new(&points, dims),
            projection,
            sample,
            neighbours: neighbours.min(n),
            search_leaves,
        })
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub fn dims(&self) -> usize {
        self.projection.dims()
    }

    pub fn neighbours(&self) -> usize {
        self.neighbours
    }

    pub fn search_leaves(&self) -> usize {
        self.search_leaves
    }

    pub fn sample(&self) -> &Sample {
        &self.sample
    }

    /// The projected coordinates (`dims` per row) of rows of 20 floats.
    pub fn project(&self, fps: &[f32]) -> Result<Vec<f32>> {
        check_rows(fps)?;
        let dims = self.dims();
        let mut out = vec![0f32; fps.len() / FINGERPRINT_DIM * dims];
        let mut p = [0f32; FINGERPRINT_DIM];
        for (fp, o) in fps
            .chunks_exact(FINGERPRINT_DIM)
            .zip(out.chunks_exact_mut(dims))
        {
            self.projection.project_into(fp, &mut p);
            o.copy_from_slice(&p[..dims]);
        }
        Ok(out)
    }

    /// Places one fingerprint, refusing one that is not a vector of the run's layout.
    pub fn assign_one(&self, fp: &[f32]) -> Result<Assignment> {
        if fp.len() != FINGERPRINT_DIM {
            return Err(CoreError::Shape(format!(
                "a fingerprint has {FINGERPRINT_DIM} values, got {}",
                fp.len()
            )));
        }
        if let Some(why) = vectors::problem(self.layout, fp) {
            return Err(CoreError::Invalid(format!(
                "not a {} fingerprint: it {why}",
                self.layout.name()
            )));
        }
        Ok(NEIGHBOURS.with(|buf| self.place(fp, &mut buf.borrow_mut())))
    }

    /// Places rows of 20 floats, on every core when there are enough of them. A row that is
    /// not a vector of the run's layout fails the call, naming the lowest such row.
    pub fn assign(&self, fps: &[f32]) -> Result<Assignments> {
        check_rows(fps)?;
        let rows = fps.len() / FINGERPRINT_DIM;
        let mut packed = vec![0f32; rows * 4];
        try_for_each_row(&mut packed, 4, WORK_PER_ROW, |i, out| {
            let fp = &fps[i * FINGERPRINT_DIM..(i + 1) * FINGERPRINT_DIM];
            if let Some(why) = vectors::problem(self.layout, fp) {
                return Err(CoreError::Invalid(format!(
                    "row {i} is not a {} fingerprint: it {why}",
                    self.layout.name()
                )));
            }
            let a = NEIGHBOURS.with(|buf| self.place(fp, &mut buf.borrow_mut()));
            out.copy_from_slice(&[a.x, a.y, a.cluster_id as f32, a.probability]);
            Ok(())
        })?;
        let mut a = Assignments {
            x: Vec::with_capacity(rows),
            y: Vec::with_capacity(rows),
            cluster_id: Vec::with_capacity(rows),
            probability: Vec::with_capacity(rows),
        };
        for r in packed.chunks_exact(4) {
            a.x.push(r[0]);
            a.y.push(r[1]);
            // Exact: cluster ids are small integers, far below 2^24.
            a.cluster_id.push(r[2] as i32);
            a.probability.push(r[3]);
        }
        Ok(a)
    }

    /// The vote of the nearest sample points, each weighted by its inverse squared distance
    /// (no square root per neighbour).
    fn place(&self, fp: &[f32], buf: &mut Vec<(f32, u32)>) -> Assignment {
        let mut q = [0f32; FINGERPRINT_DIM];
        self.projection.project_into(fp, &mut q);
        self.index
            .nearest(&q[..self.dims()], self.neighbours, self.search_leaves, buf);
        let s = &self.sample;
        let (d0, i0) = buf[0];
        if d0 == 0.0 {
            // The fingerprint is a sample point (or its exact twin): it keeps its fit.
            let i = i0 as usize;
            return Assignment {
                x: s.x[i],
                y: s.y[i],
                cluster_id: s.cluster_id[i],
                probability: s.probability[i],
            };
        }
        // Votes per label; at most `neighbours` distinct labels, so a linear list is fastest.
        let mut votes = [(0i32, 0f32); MAX_NEIGHBOURS];
        let mut labels = 0usize;
        for &(d2, i) in buf.iter() {
            let w = 1.0 / d2;
            let c = s.cluster_id[i as usize];
            match votes[..labels].iter_mut().find(|v| v.0 == c) {
                Some(v) => v.1 += w,
                None => {
                    votes[labels] = (c, w);
                    labels += 1;
                }
            }
        }
        // Ties go to the label of the nearer neighbour (listed first).
        let mut best = votes[0];
        for &v in &votes[1..labels] {
            if v.1 > best.1 {
                best = v;
            }
        }
        let (mut wsum, mut x, mut y, mut p) = (0f32, 0f32, 0f32, 0f32);
        for &(d2, i) in buf.iter() {
            let i = i as usize;
            if s.cluster_id[i] == best.0 {
                let w = 1.0 / d2;
                wsum += w;
                x += w * s.x[i];
                y += w * s.y[i];
                p += w * s.probability[i];
            }
        }
        Assignment {
            x: x / wsum,
            y: y / wsum,
            cluster_id: best.0,
            probability: if best.0 < 0 {
                0.0
            } else {
                (p / wsum).clamp(0.0, 1.0)
            },
        }
    }
}

fn check_rows(fps: &[f32]) -> Result<()> {
    if fps.len() % FINGERPRINT_DIM != 0 {
        return Err(CoreError::Shape(format!(
            "fingerprints must be rows of {FINGERPRINT_DIM} floats, got {} values",
            fps.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two tight groups of valid v1 fingerprints, labelled 0 and 1, plus one noise point.
    fn two_groups() -> (Projection, Sample) {
        let mut fps = Vec::new();
        let (mut x, mut y, mut c, mut p) = (vec![], vec![], vec![], vec![]);
        for g in 0..2 {
            for k in 0..50 {
                let e = k as f32 * 1e-3;
                let local = if g == 0 { 0.8 - e } else { 0.1 + e };
                let mut fp = [0f32; 20];
                fp[0] = local;
                fp[1] = 1.0 - local;
                fp[3] = 1.0 + g as f32;
                fp[4] = 1.0;
                fps.extend_from_slice(&fp);
                x.push(g as f32 * 10.0 + e);
                y.push(0.0);
                c.push(g);
                p.push(0.9);
            }
        }
        let mut noise = [0f32; 20];
        noise[0] = 0.45;
        noise[1] = 0.55;
        noise[3] = 1.5;
        noise[4] = 1.0;
        fps.extend_from_slice(&noise);
        x.push(5.0);
        y.push(5.0);
        c.push(-1);
        p.push(0.0);
        let mut components = vec![0.0; 40];
        components[0] = 1.0;
        components[20 + 3] = 1.0;
        let proj = Projection::new(&[0.0; 20], &[1.0; 20], &[0.0; 20], &components).unwrap();
        let sample = Sample {
            fingerprints: fps,
            x,
            y,
            cluster_id: c,
            probability: p,
        };
        (proj, sample)
    }

    #[test]
    fn sample_points_keep_their_fit_and_others_take_the_vote() {
        let (proj, sample) = two_groups();
        let cl = Classifier::new(Layout::V1, proj, sample.clone(), 5, usize::MAX).unwrap();
        let all = cl.assign(&sample.fingerprints).unwrap();
        assert_eq!(all.cluster_id, sample.cluster_id);
        assert_eq!(all.x, sample.x);
        let mut near0 = [0f32; 20];
        near0[0] = 0.79;
        near0[1] = 0.21;
        near0[3] = 1.0;
        near0[4] = 1.0;
        let a = cl.assign_one(&near0).unwrap();
        assert_eq!(a.cluster_id, 0);
        assert!(a.x >= 0.0 && a.x < 0.05, "{a:?}");
        assert!((a.probability - 0.9).abs() < 1e-6);
    }

    #[test]
    fn refuses_vectors_of_another_shape_or_layout() {
        let (proj, sample) = two_groups();
        let cl = Classifier::new(Layout::V1, proj, sample, 5, usize::MAX).unwrap();
        let e = cl.assign_one(&[0.5; 19]).unwrap_err();
        assert!(e.to_string().contains("20 values, got 19"), "{e}");
        let e = cl.assign(&[0.5; 40]).unwrap_err();
        assert!(
            e.to_string().starts_with("row 0 is not a v1 fingerprint"),
            "{e}"
        );
        let mut bad = [0f32; 20];
        bad[0] = f32::NAN;
        assert!(cl.assign_one(&bad).is_err());
    }

    #[test]
    fn refuses_a_broken_sample() {
        let (proj, mut sample) = two_groups();
        sample.probability[3] = 2.0;
        let e = Classifier::new(Layout::V1, proj, sample, 5, usize::MAX).unwrap_err();
        assert!(e.to_string().contains("sample row 3"), "{e}");
    }
}
