//! `attnfast._core`: thin bindings over `attnfast-core`. Each function converts its arguments,
//! releases the interpreter around the core call, and maps errors; nothing else lives here.

mod capture;
mod discovery;
mod error;
mod fingerprint;
mod graph;
mod messages;
mod pack;
mod step;
mod store;
mod torch_view;
mod zone;

use pyo3::prelude::*;

#[pymodule]
mod _core {
    use super::*;

    #[pymodule_export]
    use capture::{PyCaptureReader, PyCaptureWriter};
    #[pymodule_export]
    use discovery::PyClassifier;
    #[pymodule_export]
    use fingerprint::{fingerprints_f16, fingerprints_f32, fingerprints_topk, set_simd_limit};
    #[pymodule_export]
    use graph::{PyComponentIndex, PyGraphBlob, encode_graph, order_layers, seed_pairs_graph};
    #[pymodule_export]
    use messages::PyMessageDecoder;
    #[pymodule_export]
    use pack::{pack_fingerprints, unpack_fingerprints};
    #[pymodule_export]
    use step::{attention_step, step_summary};
    #[pymodule_export]
    use store::{PyStore, PyTicket};
    #[pymodule_export]
    use zone::zone_codes;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        use attnfast_core::{FINGERPRINT_FIELDS, Layout, Zone};
        m.add("__version__", attnfast_core::VERSION)?;
        m.add("FINGERPRINT_FIELDS", FINGERPRINT_FIELDS.to_vec())?;
        m.add(
            "ZONE_NAMES",
            Zone::ALL.iter().map(|z| z.name()).collect::<Vec<_>>(),
        )?;
        let layouts: Vec<(String, u32, usize, Vec<&str>)> = Layout::ALL
            .iter()
            .map(|l| (l.name().to_string(), l.code(), l.dim(), l.fields().to_vec()))
            .collect();
        m.add("LAYOUTS", layouts)?;
        m.add_function(wrap_pyfunction!(build_info, m)?)?;
        m.add_function(wrap_pyfunction!(release_memory, m)?)?;
        Ok(())
    }

    /// Hands memory freed since to the operating system (glibc keeps freed heap pages for
    /// reuse; after decoding a large body that is hundreds of megabytes of resident memory).
    #[pyfunction]
    fn release_memory() {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // Safety: malloc_trim only returns free pages; it does not touch live allocations.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// The vector path and thread count in use: `{"simd": ..., "threads": ...}`.
    #[pyfunction]
    fn build_info() -> (String, usize) {
        (
            attnfast_core::fingerprint::simd::level().name().to_string(),
            attnfast_core::parallel::num_threads(),
        )
    }
}
