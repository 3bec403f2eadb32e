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
