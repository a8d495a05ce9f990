//! Disk fault injection for tests (feature `fault-injection`).
//!
//! [`FaultyDisk`] is a [`DiskHook`]: put it in
//! [`crate::LogConfig::disk_hook`] and it can make the log's writes fail
//! with EIO or ENOSPC, its fsyncs fail with EIO, a write tear (a prefix
//! lands, then EIO), a file creation fail — each at the *n*th operation of
//! its kind from now, or from now until [`FaultyDisk::clear`].
//!
//! It also simulates a **power cut**. It follows every file the writer
//! touches: how long it is, how much of it the last successful fsync made
//! durable, and whether its directory entry was fsynced since it was
//! created. After [`FaultyDisk::power_cut`] (or [`FaultyDisk::power_cut_at`])
//! every operation fails; once the log is dropped,
//! [`FaultyDisk::lose_unsynced`] leaves each file as a real power cut may:
//! its durable bytes intact, then a random part of the bytes written after
//! the last fsync, some of it garbled (zeros or random bytes); a file whose
//! creation was never made durable by a directory fsync may vanish.
//!
//! Not modelled: a truncation that was not fsynced coming back (a cut file
//! stays cut), and a removed file coming back.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::disk::{DiskHook, WriteVerdict};

const EIO: i32 = 5;
const ENOSPC: i32 = 28;

/// A tiny seeded generator (splitmix64): reproducible runs without a
/// dependency.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// True one time in `n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// A fault [`FaultyDisk`] can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A write fails with EIO; nothing of it lands.
    WriteEio,
    /// A write fails with ENOSPC; nothing of it lands.
    WriteEnospc,
    /// A write lands partly (a random prefix, possibly empty), then fails
    /// with EIO.
    TornWrite,
    /// An fsync — of a file or of a directory — fails with EIO.
    SyncEio,
    /// An fsync of a directory fails with EIO (the last step of creating a
    /// segment: the file exists, with its header, when this fails).
    DirSyncEio,
    /// Creating a file fails with EIO (the first step of a segment roll).
    CreateEio,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Create,
    Write,
    Sync,
    SyncDir,
    Truncate,
    Remove,
}

impl Fault {
    fn hits(self, op: Op) -> bool {
        match self {
            Fault::WriteEio | Fault::WriteEnospc | Fault::TornWrite => op == Op::Write,
            Fault::SyncEio => matches!(op, Op::Sync | Op::SyncDir),
            Fault::DirSyncEio => op == Op::SyncDir,
            Fault::CreateEio => op == Op::Create,
        }
    }
}

/// When an armed fault fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// At the operation this many matching operations from now (1: the
    /// next one), once.
    Nth(u64),
    /// At every matching operation until cleared.
    Always,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Power {
    On,
    /// Goes off at the operation this many operations from now.
    CutAt(u64),
    Off,
}

/// What [`FaultyDisk`] did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Operations the hook was asked about.
    pub ops: u64,
    /// Writes failed whole (EIO or ENOSPC).
    pub writes_failed: u64,
    /// Writes torn (a prefix landed), the power cut's included.
    pub writes_torn: u64,
    /// Fsyncs failed (files and directories).
    pub syncs_failed: u64,
    /// File creations failed.
    pub creates_failed: u64,
    /// Operations refused because the power was cut (the one it was cut at
    /// included).
    pub refused_without_power: u64,
}

impl FaultCounts {
    /// Every fault injected, power-cut refusals included.
    pub fn injected(&self) -> u64 {
        self.writes_failed
            + self.writes_torn
            + self.syncs_failed
            + self.creates_failed
            + self.refused_without_power
    }
}

/// What [`FaultyDisk::lose_unsynced`] did to the files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PowerLoss {
    /// Files cut back (some unsynced bytes lost).
    pub files_cut: u64,
    /// Files removed: created, but the directory never fsynced after.
    pub files_vanished: u64,
    /// Unsynced bytes that did not survive.
    pub bytes_lost: u64,
    /// Surviving unsynced bytes overwritten with zeros or random bytes.
    pub bytes_garbled: u64,
}

#[derive(Debug, Clone, Copy)]
struct Tracked {
    /// Length as written.
    len: u64,
    /// Length the last successful fsync made durable.
    durable: u64,
    /// The directory was fsynced since the file was created.
    entry_durable: bool,
}

#[derive(Debug)]
struct Inner {
    rng: SplitMix64,
    armed: Vec<(Fault, Trigger)>,
    power: Power,
    counts: FaultCounts,
    files: BTreeMap<PathBuf, Tracked>,
}

/// A [`DiskHook`] injecting faults and simulating power loss. See the
/// module documentation.
#[derive(Debug)]
pub struct FaultyDisk {
    inner: Mutex<Inner>,
}

fn os_error(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl FaultyDisk {
    /// A disk without faults; `seed` decides how torn writes tear.
    pub fn new(seed: u64) -> Self {
        FaultyDisk {
            inner: Mutex::new(Inner {
                rng: SplitMix64::new(seed),
                armed: Vec::new(),
                power: Power::On,
                counts: FaultCounts::default(),
                files: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Injects `fault` at the `n`th matching operation from now (1: the
    /// next), once.
    pub fn fail_nth(&self, fault: Fault, n: u64) {
        self.lock().armed.push((fault, Trigger::Nth(n.max(1))));
    }

    /// Injects `fault` at every matching operation until [`Self::clear`].
    pub fn fail_from_now(&self, fault: Fault) {
        self.lock().armed.push((fault, Trigger::Always));
    }

    /// Disarms every fault (not a power cut: power does not come back).
    pub fn clear(&self) {
        self.lock().armed.clear();
    }

    /// Cuts the power now: every further operation fails with EIO.
    pub fn power_cut(&self) {
        self.lock().power = Power::Off;
    }

    /// Cuts the power at the `n`th operation from now (1: the next), of
    /// whatever kind: that operation fails — a write landing a random
    /// prefix first — and so does every later one.
    pub fn power_cut_at(&self, n: u64) {
        let mut g = self.lock();
        if g.power != Power::Off {
            g.power = Power::CutAt(n.max(1));
        }
    }

    /// The power was cut.
    pub fn power_is_cut(&self) -> bool {
        self.lock().power == Power::Off
    }

    pub fn counts(&self) -> FaultCounts {
        self.lock().counts
    }

    /// Every fault injected so far.
    pub fn faults_injected(&self) -> u64 {
        self.lock().counts.injected()
    }

    /// Leaves every file the log wrote as a power cut may: see the module
    /// documentation. Cuts the power first if it is still on. Call it once
    /// the log is dropped (nothing may write the files meanwhile).
    pub fn lose_unsynced(&self, seed: u64) -> io::Result<PowerLoss> {
        let mut g = self.lock();
        g.power = Power::Off;
        let mut rng = SplitMix64::new(seed ^ 0x005E_ED0F_D15C);
        let mut out = PowerLoss::default();
        let files = std::mem::take(&mut g.files);
        for (path, t) in files {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !t.entry_durable && rng.one_in(2) {
                std::fs::remove_file(&path)?;
                out.files_vanished += 1;
                continue;
            }
            let len = meta.len();
            if len <= t.durable {
                continue;
            }
            let unsynced = len - t.durable;
            let kept = rng.below(unsynced + 1);
            let new_len = t.durable + kept;
            let f = OpenOptions::new().write(true).open(&path)?;
            f.set_len(new_len)?;
            out.files_cut += u64::from(kept < unsynced);
            out.bytes_lost += unsynced - kept;
            if kept > 0 && rng.one_in(2) {
                let from = t.durable + rng.below(kept);
                let to = from + 1 + rng.below(new_len - from);
                let garbage: Vec<u8> = if rng.one_in(2) {
                    vec![0; (to - from) as usize]
                } else {
                    (from..to).map(|_| rng.next_u64() as u8).collect()
                };
                f.write_all_at(&garbage, from)?;
                out.bytes_garbled += to - from;
            }
            f.sync_all()?;
        }
        Ok(out)
    }

    /// Counts an operation and decides whether it fails: `Ok(None)` it
    /// proceeds, `Ok(Some(n))` a write lands `n` bytes then fails, `Err`
    /// it fails whole. `len` is a write's length.
    fn decide(g: &mut Inner, op: Op, len: usize) -> Result<Option<usize>, io::Error> {
        g.counts.ops += 1;
        match g.power {
            Power::Off => {
                g.counts.refused_without_power += 1;
                return Err(os_error(EIO));
            }
            Power::CutAt(1) => {
                g.power = Power::Off;
                g.counts.refused_without_power += 1;
                if op == Op::Write {
                    let n = g.rng.below(len as u64 + 1) as usize;
                    if n > 0 {
                        g.counts.writes_torn += 1;
                    }
                    return Ok(Some(n));
                }
                return Err(os_error(EIO));
            }
            Power::CutAt(n) => g.power = Power::CutAt(n - 1),
            Power::On => {}
        }
        let mut fired = None;
        g.armed.retain_mut(|(fault, trigger)| {
            if !fault.hits(op) {
                return true;
            }
            match trigger {
                Trigger::Always => {
                    fired = fired.or(Some(*fault));
                    true
                }
                Trigger::Nth(1) => {
                    fired = fired.or(Some(*fault));
                    false
                }
                Trigger::Nth(n) => {
                    *n -= 1;
                    true
                }
            }
        });
        match fired {
            None => Ok(None),
            Some(Fault::TornWrite) => {
                g.counts.writes_torn += 1;
                Ok(Some(g.rng.below(len as u64) as usize))
            }
            Some(Fault::WriteEio) => {
                g.counts.writes_failed += 1;
                Err(os_error(EIO))
            }
            Some(Fault::WriteEnospc) => {
                g.counts.writes_failed += 1;
                Err(os_error(ENOSPC))
            }
            Some(Fault::SyncEio) | Some(Fault::DirSyncEio) => {
                g.counts.syncs_failed += 1;
                Err(os_error(EIO))
            }
            Some(Fault::CreateEio) => {
                g.counts.creates_failed += 1;
                Err(os_error(EIO))
            }
        }
    }

    /// The file as tracked, first seen now if it was not: what is on disk
    /// then counts as durable.
    fn tracked<'a>(g: &'a mut Inner, path: &Path) -> &'a mut Tracked {
        g.files.entry(path.to_path_buf()).or_insert_with(|| {
            let len = std::fs::metadata(path).map_or(0, |m| m.len());
            Tracked {
                len,
                durable: len,
                entry_durable: true,
            }
        })
    }
}

impl DiskHook for FaultyDisk {
    fn create(&self, path: &Path) -> io::Result<()> {
        let mut g = self.lock();
        Self::decide(&mut g, Op::Create, 0)?;
        g.files.insert(
            path.to_path_buf(),
            Tracked {
                len: 0,
                durable: 0,
                entry_durable: false,
            },
        );
        Ok(())
    }

    fn write(&self, path: &Path, pos: u64, len: usize) -> WriteVerdict {
        let mut g = self.lock();
        let verdict = match Self::decide(&mut g, Op::Write, len) {
            Ok(None) => WriteVerdict::Full,
            Ok(Some(n)) => WriteVerdict::Torn(n, os_error(EIO)),
            Err(e) => return WriteVerdict::Fail(e),
        };
        let landed = match &verdict {
            WriteVerdict::Torn(n, _) => *n,
            _ => len,
        };
        let t = Self::tracked(&mut g, path);
        t.len = t.len.max(pos + landed as u64);
        verdict
    }

    fn sync(&self, _path: &Path) -> io::Result<()> {
        Self::decide(&mut self.lock(), Op::Sync, 0).map(|_| ())
    }

    fn synced(&self, path: &Path, len: u64) {
        let mut g = self.lock();
        let t = Self::tracked(&mut g, path);
        t.len = len;
        t.durable = len;
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Self::decide(&mut self.lock(), Op::SyncDir, 0).map(|_| ())
    }

    fn dir_synced(&self, dir: &Path) {
        for (path, t) in self.lock().files.iter_mut() {
            if path.parent() == Some(dir) {
                t.entry_durable = true;
            }
        }
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut g = self.lock();
        Self::decide(&mut g, Op::Truncate, 0)?;
        let t = Self::tracked(&mut g, path);
        t.len = len;
        t.durable = t.durable.min(len);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut g = self.lock();
        Self::decide(&mut g, Op::Remove, 0)?;
        g.files.remove(path);
        Ok(())
    }
}
