//! A real `ferry serve` child process for end-to-end tests: its own data
//! directory and loopback ports, kill -9 and restart on demand.

#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_admin::AdminClient;
use ferry_client::ClientConfig;

pub struct Broker {
    child: Option<Child>,
    pub grpc: String,
    pub http: String,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    starts: u32,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

pub fn ferry_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ferry")
}

impl Broker {
    /// Starts a broker with `extra` flags and waits until both listeners
    /// answer.
    pub fn start(extra: &[&str]) -> Broker {
        let mut b = Broker {
            child: None,
            grpc: format!("127.0.0.1:{}", free_port()),
            http: format!("127.0.0.1:{}", free_port()),
            dir: tempfile::tempdir().expect("temp dir"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            starts: 0,
        };
        b.spawn();
        b
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("broker-{}.log", self.starts))
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path()).expect("broker log file");
        let child = Command::new(ferry_bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--grpc-listen", &self.grpc, "--http-listen", &self.http])
            .args(&self.extra)
            .env("FERRY_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn ferry serve");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(up(&self.grpc) && up(&self.http)) {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "ferry serve exited with {status}:\n{}",
                    read(&self.log_path())
                );
            }
            assert!(
                Instant::now() < deadline,
                "ferry serve did not come up:\n{}",
                read(&self.log_path())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// kill -9: no shutdown, no flush beyond what was already acknowledged.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL on Unix
            let _ = c.wait();
        }
    }

    /// Starts again on the same data directory and ports.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn admin(&self) -> AdminClient {
        AdminClient::new(self.http.clone())
    }

    pub fn config(&self) -> ClientConfig {
        ClientConfig::new(self.grpc.clone())
    }

    /// Runs `ferry <args>` against this broker; returns (exit ok, stdout, stderr).
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        use std::io::Write as _;
        let mut cmd = Command::new(ferry_bin());
        cmd.args(args)
            .env("FERRY_SERVER", &self.grpc)
            .env("FERRY_HTTP", &self.http)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn ferry");
        if let Some(input) = stdin {
            let mut s = child.stdin.take().expect("stdin");
            s.write_all(input.as_bytes()).expect("write stdin");
        }
        let out = child.wait_with_output().expect("ferry output");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn up(addr: &str) -> bool {
    TcpStream::connect_timeout(
        &addr.parse().expect("socket address"),
        Duration::from_millis(200),
    )
    .is_ok()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Polls `f` until it returns Some or `within` passes.
pub async fn eventually<T, F, Fut>(within: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
