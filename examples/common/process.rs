//! What the demo drivers share: logging for the child processes, and the
//! child processes themselves — this same executable started with a role
//! subcommand, killed with SIGKILL, started again.

// Included by each demo, which uses its own part of it.
#![allow(dead_code)]

use std::ffi::OsString;
use std::process::{Child, Command, ExitStatus};

/// Logs to stderr at `warn` (sqlx's slow-statement notes left out), or as
/// `FERRY_LOG` says.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,sqlx::query=error")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Kills this process with SIGKILL: no destructors, no flush — a crash.
pub fn kill_self() -> ! {
    let _ = Command::new("kill")
        .args(["-9", &std::process::id().to_string()])
        .status();
    std::process::abort()
}

/// One service run as a child process: `<this exe> <base> <args>`.
pub struct Service {
    pub name: &'static str,
    /// Global flags, the same for every start.
    base: Vec<OsString>,
    /// The role and its flags; may change between starts.
    pub args: Vec<String>,
    child: Option<Child>,
}

impl Service {
    pub fn new(name: &'static str, base: &[OsString], args: Vec<String>) -> Self {
        Service {
            name,
            base: base.to_vec(),
            args,
            child: None,
        }
    }

    pub fn start(&mut self) -> std::io::Result<()> {
        let child = Command::new(std::env::current_exe()?)
            .args(&self.base)
            .args(&self.args)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// Started and not killed by [`Service::kill`] since (it may have died
    /// on its own, though: see [`Service::revive`]).
    pub fn started(&self) -> bool {
        self.child.is_some()
    }

    /// How it ended, if it has: `None` while running or when not started.
    pub fn exit_status(&mut self) -> std::io::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => c.try_wait(),
            None => Ok(None),
        }
    }

    /// SIGKILL: no destructors, no flush — a crash. Waits for the process.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again if it is not running (killed, or died on its own);
    /// `true` when it had to.
    pub fn revive(&mut self) -> std::io::Result<bool> {
        let dead = match self.child.as_mut() {
            None => true,
            Some(c) => c.try_wait()?.is_some(),
        };
        if dead {
            self.child = None;
            self.start()?;
        }
        Ok(dead)
    }
}

/// A driver that gives up early leaves no services behind.
impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}
