//! What a task is, once a request has been validated: the [`TaskKey`] that identifies a
//! warm container, and the [`Call`] made to the task.
//!
//! Pure data. Parsing and validation of the wire format live in `api::request`; policy
//! (budget, runtimes available) lives in the executor.

use std::fmt;

use crate::resources::Demand;

/// How the task is isolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Runtime {
    /// The engine's default container runtime (runc).
    Container,
    /// The host's micro-VM / sandbox runtime (`microVM_runtime` in the config).
    MicroVm,
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Runtime::Container => "container",
            Runtime::MicroVm => "microVM",
        })
    }
}

/// Identifies interchangeable task containers: requests with equal keys share one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaskKey {
    pub image: String,
    pub runtime: Runtime,
    pub demand: Demand,
    pub gpu_count: u32,
    pub use_sgx: bool,
}

/// An order of keys (image, runtime, CPU, memory, GPUs, SGX), so that maps of keys iterate
/// the same way in every run. It means nothing else: whether one demand fits in another is
/// not an order (and `Demand` has none).
impl Ord for TaskKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let fields = |k: &TaskKey| {
            (
                k.runtime,
                k.demand.milli_cpu,
                k.demand.mem_mb,
                k.gpu_count,
                k.use_sgx,
            )
        };
        self.image
            .cmp(&other.image)
            .then_with(|| fields(self).cmp(&fields(other)))
    }
}

impl PartialOrd for TaskKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl TaskKey {
    /// A plain container: no micro-VM runtime, GPUs or SGX. Only such keys may join a pooled
    /// network sandbox or be resized from a spare (both proven for plain containers only).
    pub fn is_plain_container(&self) -> bool {
        self.runtime == Runtime::Container && self.gpu_count == 0 && !self.use_sgx
    }
}

impl fmt::Display for TaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} runtime={} cpu={} mem={}MB gpus={} sgx={}",
            self.image,
            self.runtime,
            self.demand.cores(),
            self.demand.mem_mb,
            self.gpu_count,
            self.use_sgx
        )
    }
}

/// The input line that asks an SGX task for its remote-attestation report.
pub const SGX_RA_REQUEST: &[u8] = b"SGXRAREQUEST";

/// The HTTP call made to a task container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `POST /` with the input (ordinary tasks).
    Run,
    /// `GET /ra` (SGX task, input `SGXRAREQUEST`).
    SgxAttest,
    /// `POST /run` with the input (SGX task).
    SgxRun,
}

impl Call {
    pub fn for_input(use_sgx: bool, input: &[u8]) -> Call {
        match (use_sgx, input == SGX_RA_REQUEST) {
            (false, _) => Call::Run,
            (true, true) => Call::SgxAttest,
            (true, false) => Call::SgxRun,
        }
    }

    pub fn method_and_path(self) -> (&'static str, &'static str) {
        match self {
            Call::Run => ("POST", "/"),
            Call::SgxAttest => ("GET", "/ra"),
            Call::SgxRun => ("POST", "/run"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgx_routes() {
        assert_eq!(Call::for_input(false, b"SGXRAREQUEST"), Call::Run);
        assert_eq!(Call::for_input(true, b"SGXRAREQUEST"), Call::SgxAttest);
        assert_eq!(Call::for_input(true, b"{}"), Call::SgxRun);
        assert_eq!(Call::SgxAttest.method_and_path(), ("GET", "/ra"));
        assert_eq!(Call::SgxRun.method_and_path(), ("POST", "/run"));
    }
}
