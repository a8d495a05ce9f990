//! Child processes of a run: started, killed with SIGKILL or stopped
//! with SIGTERM, started again with the same arguments.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::ChaosError;

/// A child process and how to start it again.
pub struct Proc {
    pub name: String,
    args: Vec<String>,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    pub fn new(name: &str, args: Vec<String>, logs: &Path) -> Proc {
        Proc {
            name: name.to_string(),
            args,
            log: logs.join(format!("{name}.log")),
            child: None,
        }
    }

    pub fn start(&mut self, bin: &Path) -> Result<(), ChaosError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| ChaosError::io(&self.log, e))?;
        let err = log.try_clone().map_err(|e| ChaosError::io(&self.log, e))?;
        let child = Command::new(bin)
            .args(&self.args)
            .env("FERRY_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| ChaosError::io(bin, e))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (the broker closes its log cleanly), then reap.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus, ChaosError> {
        let Some(mut c) = self.child.take() else {
            return Err(ChaosError::Failed(format!("{} is not running", self.name)));
        };
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .map_err(|e| ChaosError::io("kill", e))?;
        c.wait().map_err(|e| ChaosError::io("wait", e))
    }

    /// A worker that exited by itself has failed (workers run until
    /// killed); its log says why.
    pub fn exited(&mut self) -> Option<String> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(status)) => Some(format!(
                "{} exited by itself ({status}); see {}",
                self.name,
                self.log.display()
            )),
            _ => None,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_port() -> Result<u16, ChaosError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| ChaosError::io("bind", e))?;
    Ok(l.local_addr()
        .map_err(|e| ChaosError::io("bind", e))?
        .port())
}
