//! Peak memory, measured as close as candle allows to what reference_bench.py reports:
//! on CUDA `torch.cuda.max_memory_allocated` (tensor memory, not the allocator's reserve),
//! on the CPU the process's peak RSS.
//!
//! - CPU: `VmHWM` from /proc/self/status; writing "5" to /proc/self/clear_refs resets it,
//!   which lets a phase's peak be measured apart from the load's.
//! - CUDA: candle allocates through cudarc with `cuMemAllocAsync` on the device's default
//!   memory pool (when the device supports pools), whose `USED_MEM_HIGH` attribute is the
//!   high-water mark of memory handed out to tensors: the counterpart of torch's figure.
//!   cuBLAS's own workspace is outside it; `cuMemGetInfo` (used − baseline) covers
//!   everything, pool reserve included.

use candle_core::Device;

const GIB: f64 = (1u64 << 30) as f64;

fn status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Peak resident set size since start (or the last `reset_peak_rss`), GiB.
pub fn peak_rss_gib() -> Option<f64> {
    status_kib("VmHWM:").map(|k| k as f64 * 1024.0 / GIB)
}

/// Resets `VmHWM` to the current RSS. Returns false where the kernel refuses.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Device memory counters of one CUDA device.
pub struct GpuMemory {
    #[cfg(feature = "cuda")]
    pool: Option<candle_core::cuda::cudarc::driver::sys::CUmemoryPool>,
    #[cfg(feature = "cuda")]
    ctx: std::sync::Arc<candle_core::cuda::cudarc::driver::CudaContext>,
    /// `total − free` when the counters were created (context, cuBLAS handles).
    pub baseline_used: u64,
}

impl GpuMemory {
    /// `None` for a CPU device.
    #[cfg(feature = "cuda")]
    pub fn new(device: &Device) -> Option<Self> {
        use candle_core::cuda::cudarc::driver::sys;
        let cuda = device.as_cuda_device().ok()?;
        let stream = cuda.cuda_stream();
        let ctx = stream.context().clone();
        ctx.bind_to_thread().ok()?;
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        // SAFETY: plain driver query into a local out-pointer, context bound above.
        let pool = unsafe {
            (sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device())
                == sys::CUresult::CUDA_SUCCESS)
                .then_some(pool)
        };
        let (free, total) = ctx.mem_get_info().ok()?;
        Some(Self {
            pool,
            ctx,
            baseline_used: (total - free) as u64,
        })
    }

    #[cfg(not(feature = "cuda"))]
    pub fn new(_device: &Device) -> Option<Self> {
        None
    }

    /// Device memory in use now beyond the baseline (all allocations, pool reserve included).
    pub fn used_gib(&self) -> Option<f64> {
        #[cfg(feature = "cuda")]
        {
            let (free, total) = self.ctx.mem_get_info().ok()?;
            Some(((total - free) as u64).saturating_sub(self.baseline_used) as f64 / GIB)
        }
        #[cfg(not(feature = "cuda"))]
        None
    }

    /// High-water mark of pool memory handed to tensors since the last reset.
    pub fn peak_allocated_gib(&self) -> Option<f64> {
        #[cfg(feature = "cuda")]
        {
            use candle_core::cuda::cudarc::driver::sys;
            let pool = self.pool?;
            self.ctx.bind_to_thread().ok()?;
            let mut v: u64 = 0;
            // SAFETY: the attribute is a cuuint64_t written into `v`.
            let ok = unsafe {
                sys::cuMemPoolGetAttribute(
                    pool,
                    sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                    &mut v as *mut u64 as *mut std::ffi::c_void,
                )
            } == sys::CUresult::CUDA_SUCCESS;
            ok.then_some(v as f64 / GIB)
        }
        #[cfg(not(feature = "cuda"))]
        None
    }

    /// Resets the high-water mark to the memory in use now (`torch.cuda.reset_peak_memory_stats`).
    pub fn reset_peak(&self) {
        #[cfg(feature = "cuda")]
        {
            use candle_core::cuda::cudarc::driver::sys;
            if let Some(pool) = self.pool {
                let _ = self.ctx.bind_to_thread();
                let mut zero: u64 = 0;
                // SAFETY: setting USED_MEM_HIGH takes a cuuint64_t 0 (the only legal value).
                unsafe {
                    sys::cuMemPoolSetAttribute(
                        pool,
                        sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                        &mut zero as *mut u64 as *mut std::ffi::c_void,
                    );
                }
            }
        }
    }

    /// The GPU's name, for the JSON header.
    pub fn device_name(&self) -> Option<String> {
        #[cfg(feature = "cuda")]
        {
            self.ctx.name().ok()
        }
        #[cfg(not(feature = "cuda"))]
        None
    }
}
