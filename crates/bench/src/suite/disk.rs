//! The disk under the brokers, measured in the same run: raw sequential
//! write bandwidth (1 MiB writes, one fdatasync at the end, so the figure
//! includes getting the bytes to stable storage) and the latency of a
//! 4 KiB write followed by fdatasync — the floor under any durable ack.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Disk {
    pub sequential_mib: u64,
    pub sequential_mb_per_s: f64,
    pub fsync_4k_p50_ms: f64,
    pub fsync_4k_p99_ms: f64,
}

/// Writes `mib` MiB then `syncs` small synced writes in a temporary file
/// under `dir` (removed afterwards).
pub fn measure(dir: &Path, mib: u64, syncs: u32) -> std::io::Result<Disk> {
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    let mut f = tmp.as_file().try_clone()?;
    let chunk = vec![0xA5u8; 1 << 20];
    let t0 = Instant::now();
    for _ in 0..mib {
        f.write_all(&chunk)?;
    }
    f.sync_data()?;
    let secs = t0.elapsed().as_secs_f64();
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    let small = [0x5Au8; 4096];
    for _ in 0..syncs {
        let t = Instant::now();
        f.write_all(&small)?;
        f.sync_data()?;
        let _ = h.record(t.elapsed().as_micros() as u64);
    }
    Ok(Disk {
        sequential_mib: mib,
        sequential_mb_per_s: (mib << 20) as f64 / secs / 1e6,
        fsync_4k_p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
        fsync_4k_p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
    })
}
