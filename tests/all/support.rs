//! Fixtures shared by the tests.

use std::future::Future;
use std::time::Duration;

use kelp_runtime::{
    AllocatorChoice, Backoff, EngineConfig, LogEvent, LogLine, Runtime, RuntimeConfig, ServiceSpec,
    Supervisor,
};

/// Longest any single wait in a test may take before the test fails: far
/// beyond what the awaited thing needs, so a slow machine does not fail it,
/// while a hang still ends.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

pub fn runtime_with(allocator: AllocatorChoice) -> Runtime {
    Runtime::new(RuntimeConfig {
        engine: EngineConfig {
            allocator,
            pool_slots: 64,
            ..EngineConfig::default()
        },
        cache_dir: None,
        trusted_keys: Vec::new(),
        hardware: None,
    })
    .unwrap()
}

/// A service spec with a short stop grace period, so that tests which stop
/// services that ignore stdin do not wait ten seconds each.
pub fn spec(name: impl Into<String>, module: &str) -> ServiceSpec {
    ServiceSpec {
        stop_grace: Duration::from_millis(200),
        ..ServiceSpec::new(name, module)
    }
}

/// A supervisor whose backoff is quick enough for tests.
pub fn supervisor() -> Supervisor {
    Supervisor::with_backoff(runtime_with(AllocatorChoice::Auto), quick_backoff())
}

pub fn quick_backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(400),
        healthy_after: Duration::from_secs(5),
        crash_loop_after: 3,
    }
}

/// The output lines taken from a service's log buffer.
pub fn lines(events: Vec<LogEvent>) -> Vec<LogLine> {
    events
        .into_iter()
        .filter_map(|e| match e {
            LogEvent::Line(l) => Some(l),
            LogEvent::Dropped(_) => None,
        })
        .collect()
}

pub fn texts(events: Vec<LogEvent>) -> Vec<String> {
    lines(events).into_iter().map(|l| l.text).collect()
}

/// A free TCP port on 127.0.0.1, for a server that cannot be told to pick
/// one: bound, read and let go.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCP listener on loopback that counts the connections that reached it.
pub struct Watch(std::net::TcpListener);

impl Watch {
    pub fn on(addr: &str) -> Self {
        let l = std::net::TcpListener::bind(addr).unwrap();
        l.set_nonblocking(true).unwrap();
        Watch(l)
    }

    pub fn port(&self) -> u16 {
        self.0.local_addr().unwrap().port()
    }

    /// Connections the kernel completed since the last call, accepted or
    /// not. A connect that returned before the guest went on has already
    /// been queued here.
    pub fn connections(&self) -> usize {
        let mut n = 0;
        loop {
            match self.0.accept() {
                Ok(_) => n += 1,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return n,
                Err(e) => panic!("accept: {e}"),
            }
        }
    }
}

/// A `kelp.toml` like the sample's, granting `connect` instead of what it
/// grants (nothing, for an empty list); the sample's other network grants
/// stay. Returns the file's path.
pub fn manifest_granting(dir: &std::path::Path, sample: &str, connect: &[String]) -> String {
    let sample_toml = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../sample-modules")
            .join(sample)
            .join("kelp.toml"),
    )
    .unwrap();
    let mut manifest: toml::Table = sample_toml.parse().unwrap();
    let grants = manifest
        .entry("grants")
        .or_insert(toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .unwrap();
    let network = grants
        .entry("network")
        .or_insert(toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .unwrap();
    network.remove("connect");
    if !connect.is_empty() {
        let list = connect.iter().cloned().map(toml::Value::String).collect();
        network.insert("connect".into(), toml::Value::Array(list));
    }
    if network.is_empty() {
        grants.remove("network");
    }
    let path = dir.join(format!("{sample}-{}.toml", connect.len()));
    std::fs::write(&path, toml::to_string(&manifest).unwrap()).unwrap();
    path.display().to_string()
}
