//! Loading a Wasm file into something ready to instantiate: checked, compiled
//! (or found in the compile cache), and linked against the host once.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kelp_core::{Digest, Manifest};
use sha2::{Digest as _, Sha256};
use wasmtime::Module;
use wasmtime::component::Component;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::cache::{CompileCache, Lookup};
use crate::store::{ComponentState, Linkers, ModuleState, ProxyState};

/// Largest Wasm file the supervisor loads. Real services are kilobytes to a
/// few MiB; this bounds the memory and compile time a bad file can cost.
pub const MAX_MODULE_SIZE: u64 = 64 << 20;

/// Whether a file is a component or a core module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProgramKind {
    Component,
    Module,
}

impl std::fmt::Display for ProgramKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProgramKind::Component => "component",
            ProgramKind::Module => "core module",
        })
    }
}

pub(crate) enum Pre {
    Component(CommandPre<ComponentState>),
    Module(wasmtime::InstancePre<ModuleState>),
    /// A component that answers HTTP: one instance per request.
    Proxy(ProxyPre<ProxyState>),
}

/// A loaded, linked program; instantiating it is cheap.
pub struct Program {
    digest: Digest,
    kind: ProgramKind,
    manifest: Option<Manifest>,
    pub(crate) pre: Pre,
}

impl Program {
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The manifest embedded in the file (verified with it, when the device
    /// checks signatures).
    pub fn manifest(&self) -> Option<&Manifest> {
        self.manifest.as_ref()
    }

    pub fn kind(&self) -> ProgramKind {
        self.kind
    }

    /// Whether it answers HTTP (exports `wasi:http/incoming-handler`)
    /// rather than running as a command.
    pub fn answers_http(&self) -> bool {
        matches!(self.pre, Pre::Proxy(_))
    }
}

/// Why a file could not be loaded. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read `{path}`: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("`{path}` is {size} bytes, more than the {max} bytes a module may have")]
    TooLarge { path: String, size: u64, max: u64 },
    #[error("`{path}` is not a WebAssembly file: {why}")]
    NotWasm { path: String, why: String },
    #[error("`{path}` is not a valid WebAssembly {kind}: {message}")]
    Invalid {
        path: String,
        kind: ProgramKind,
        message: String,
    },
    #[error("`{path}` cannot be linked: {message}")]
    Link { path: String, message: String },
    #[error("`{path}` is not a runnable service: {message}")]
    NotRunnable { path: String, message: String },
    #[error("compiling `{path}` did not finish: {message}")]
    Join { path: String, message: String },
    #[error("`{path}` has an invalid manifest: {error}")]
    Manifest {
        path: String,
        error: kelp_core::ManifestError,
    },
    #[error("`{path}` is not signed by a trusted key: {error}")]
    Untrusted {
        path: String,
        error: kelp_core::SignatureError,
    },
}

/// What loading has done so far, for tests, benchmarks and status pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// Programs compiled with Cranelift.
    pub compiled: u64,
    /// Programs read from the on-disk compile cache.
    pub cache_hits: u64,
    /// Cache files that failed their check and were thrown away.
    pub cache_rejected: u64,
    /// Loads answered from programs already in memory.
    pub memory_hits: u64,
}

#[derive(Default)]
struct Counters {
    compiled: AtomicU64,
    cache_hits: AtomicU64,
    cache_rejected: AtomicU64,
    memory_hits: AtomicU64,
}

pub(crate) struct Loader {
    engine: wasmtime::Engine,
    cache: Option<CompileCache>,
    linkers: Linkers,
    loaded: Mutex<HashMap<Digest, std::sync::Weak<Program>>>,
    /// One turn per digest being loaded. Loads of the same bytes at once (a
    /// device's services of one module, started together at boot) take
    /// turns: the first compiles or reads the cache, the others find its
    /// program in `loaded`, rather than each making and keeping a copy.
    loading: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    counters: Counters,
    trusted_keys: Vec<kelp_core::PublicKey>,
}

impl Loader {
    /// Drops the compiled code of every module but `keep` from the compile
    /// cache; returns how many modules' code went.
    pub(crate) fn keep_compiled(&self, keep: &[Digest]) -> usize {
        self.cache.as_ref().map_or(0, |c| c.keep_only(keep))
    }

    pub(crate) fn new(
        engine: wasmtime::Engine,
        cache: Option<CompileCache>,
        trusted_keys: Vec<kelp_core::PublicKey>,
    ) -> wasmtime::Result<Self> {
        let linkers = Linkers::new(&engine)?;
        Ok(Loader {
            engine,
            cache,
            linkers,
            loaded: Mutex::default(),
            loading: Mutex::default(),
            counters: Counters::default(),
            trusted_keys,
        })
    }

    pub(crate) fn stats(&self) -> LoadStats {
        let c = &self.counters;
        LoadStats {
            compiled: c.compiled.load(Ordering::Relaxed),
            cache_hits: c.cache_hits.load(Ordering::Relaxed),
            cache_rejected: c.cache_rejected.load(Ordering::Relaxed),
            memory_hits: c.memory_hits.load(Ordering::Relaxed),
        }
    }

    pub(crate) async fn load_file(
        self: &Arc<Self>,
        path: &Path,
    ) -> Result<Arc<Program>, LoadError> {
        let name = path.display().to_string();
        let bytes = read_module(path).await?;
        self.load_bytes(&name, bytes).await
    }

    pub(crate) async fn load_bytes(
        self: &Arc<Self>,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<Arc<Program>, LoadError> {
        let kind = sniff(name, &bytes)?;
        let digest = Digest::from_bytes(Sha256::digest(&bytes).into());
        let turn = lock(&self.loading).entry(digest).or_default().clone();
        let loaded = {
            let _turn = turn.lock().await;
            // A program in memory was checked when it was loaded: the same
            // bytes under the same keys verify the same way.
            match self.lookup(&digest) {
                Some(program) => {
                    self.counters.memory_hits.fetch_add(1, Ordering::Relaxed);
                    Ok(program)
                }
                None => self.load_new(name, kind, digest, bytes).await,
            }
        };
        let mut loading = lock(&self.loading);
        // Nobody else holds this turn (the map's and ours are the only
        // references, and new ones are made only under this lock).
        if loading
            .get(&digest)
            .is_some_and(|t| Arc::ptr_eq(t, &turn) && Arc::strong_count(&turn) == 2)
        {
            loading.remove(&digest);
        }
        loaded
    }

    /// Verifies, compiles (or takes from the cache) and links bytes no
    /// program in memory has.
    async fn load_new(
        self: &Arc<Self>,
        name: &str,
        kind: ProgramKind,
        digest: Digest,
        bytes: Vec<u8>,
    ) -> Result<Arc<Program>, LoadError> {
        // A verified file's manifest comes with the verification (checked
        // against the file's kind); an unchecked file's is read as it is.
        let manifest = if self.trusted_keys.is_empty() {
            kelp_core::extract(&bytes).map_err(|error| match error {
                // Not a manifest problem: the file itself is broken.
                kelp_core::ManifestError::Wasm(e) => LoadError::Invalid {
                    path: name.to_owned(),
                    kind,
                    message: e.to_string(),
                },
                error => LoadError::Manifest {
                    path: name.to_owned(),
                    error,
                },
            })?
        } else {
            let verified = kelp_core::verify(&bytes, &self.trusted_keys).map_err(|error| {
                LoadError::Untrusted {
                    path: name.to_owned(),
                    error,
                }
            })?;
            tracing::debug!(module = name, signers = ?verified.key_ids, "signature verified");
            verified.manifest
        };
        // Compiling is CPU work measured in milliseconds to seconds: keep it
        // off the threads that run services and the supervisor.
        let this = self.clone();
        let owned = name.to_owned();
        let program = tokio::task::spawn_blocking(move || {
            this.prepare(&owned, kind, digest, manifest, &bytes)
        })
        .await
        .map_err(|e| LoadError::Join {
            path: name.to_owned(),
            message: e.to_string(),
        })??;
        let program = Arc::new(program);
        lock(&self.loaded).insert(digest, Arc::downgrade(&program));
        if self.counters.compiled.load(Ordering::Relaxed) > 0 {
            release_freed_memory();
        }
        Ok(program)
    }

    pub(crate) fn trusted_keys(&self) -> &[kelp_core::PublicKey] {
        &self.trusted_keys
    }

    fn lookup(&self, digest: &Digest) -> Option<Arc<Program>> {
        let mut loaded = lock(&self.loaded);
        let found = loaded.get(digest).and_then(std::sync::Weak::upgrade);
        if found.is_none() {
            loaded.remove(digest);
        }
        found
    }

    fn prepare(
        &self,
        name: &str,
        kind: ProgramKind,
        digest: Digest,
        manifest: Option<Manifest>,
        bytes: &[u8],
    ) -> Result<Program, LoadError> {
        let invalid = |e: wasmtime::Error| LoadError::Invalid {
            path: name.to_owned(),
            kind,
            message: root_message(&e),
        };
        let link = |e: wasmtime::Error| LoadError::Link {
            path: name.to_owned(),
            message: root_message(&e),
        };
        let cached = self.cached(&digest);
        let pre = match kind {
            ProgramKind::Component => {
                let component = match cached.and_then(|code| {
                    // SAFETY: `code` passed the cache's HMAC check, so it is
                    // exactly what this supervisor's own engine serialized
                    // for this module digest and compatibility hash.
                    unsafe { Component::deserialize(&self.engine, &code) }.ok()
                }) {
                    Some(c) => c,
                    None => {
                        let c = Component::new(&self.engine, bytes).map_err(invalid)?;
                        self.counters.compiled.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(module = name, %digest, "compiled");
                        self.store(&digest, c.serialize());
                        c
                    }
                };
                if is_proxy(&self.engine, &component) {
                    let pre = self
                        .linkers
                        .proxy
                        .instantiate_pre(&component)
                        .map_err(link)?;
                    return Ok(Program {
                        digest,
                        kind,
                        manifest,
                        pre: Pre::Proxy(ProxyPre::new(pre).map_err(|e| {
                            LoadError::NotRunnable {
                                path: name.to_owned(),
                                message: root_message(&e),
                            }
                        })?),
                    });
                }
                let pre = self
                    .linkers
                    .component
                    .instantiate_pre(&component)
                    .map_err(link)?;
                Pre::Component(CommandPre::new(pre).map_err(|e| LoadError::NotRunnable {
                    path: name.to_owned(),
                    message: format!(
                        "a component service must export `wasi:cli/run` (build it as a binary for wasm32-wasip2) or `wasi:http/incoming-handler`: {}",
                        root_message(&e)
                    ),
                })?)
            }
            ProgramKind::Module => {
                let module = match cached.and_then(|code| {
                    // SAFETY: as above; the HMAC proves we wrote this code.
                    unsafe { Module::deserialize(&self.engine, &code) }.ok()
                }) {
                    Some(m) => m,
                    None => {
                        let m = Module::new(&self.engine, bytes).map_err(invalid)?;
                        self.counters.compiled.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(module = name, %digest, "compiled");
                        self.store(&digest, m.serialize());
                        m
                    }
                };
                if module.get_export("_start").is_none() {
                    return Err(LoadError::NotRunnable {
                        path: name.to_owned(),
                        message: "a core module service must export `_start` (a WASI command)"
                            .into(),
                    });
                }
                Pre::Module(self.linkers.module.instantiate_pre(&module).map_err(link)?)
            }
        };
        Ok(Program {
            digest,
            kind,
            manifest,
            pre,
        })
    }

    fn cached(&self, digest: &Digest) -> Option<Vec<u8>> {
        let cache = self.cache.as_ref()?;
        match cache.get(digest) {
            Lookup::Hit(code) => {
                self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%digest, "compile cache hit");
                Some(code)
            }
            Lookup::Miss => None,
            Lookup::Rejected(why) => {
                self.counters.cache_rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%digest, why, "discarded compile cache entry");
                None
            }
        }
    }

    fn store(&self, digest: &Digest, code: wasmtime::Result<Vec<u8>>) {
        let Some(cache) = &self.cache else { return };
        match code {
            Ok(code) => cache.put(digest, &code),
            Err(error) => tracing::warn!(%digest, %error, "cannot serialize compiled code"),
        }
    }
}

/// Whether a component answers HTTP rather than running as a command: it
/// exports `wasi:http/incoming-handler`. Such a component may export
/// `wasi:cli/run` as well (a Rust binary for wasm32-wasip2 always does, with
/// an empty `main`); as with `wasmtime serve`, the handler is what it is for.
fn is_proxy(engine: &wasmtime::Engine, component: &Component) -> bool {
    component
        .component_type()
        .exports(engine)
        .any(|(name, _)| name.starts_with("wasi:http/incoming-handler@0.2"))
}

/// Compiling allocates tens of MiB across Cranelift's threads and frees it
/// again, but allocators keep freed memory for reuse: a supervisor that
/// compiled once would hold it for ever. Hand it back to the kernel, from
/// glibc's arenas and from mimalloc's (kelpd allocates with mimalloc).
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap memory to the kernel; it
    // touches no memory in use and is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
    // SAFETY: mi_collect frees only what mimalloc holds unused, from any
    // thread; in a process allocating with another allocator it has nothing
    // to free.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads a `.wasm` file for [`crate::Runtime::load_bytes`], refusing what
/// cannot be a module (a directory, a file over [`MAX_MODULE_SIZE`]).
pub async fn read_module(path: &Path) -> Result<Vec<u8>, LoadError> {
    // One trip to the blocking pool for the whole read: each trip is a
    // wake-up from another thread, which a busy executor serves late.
    let owned = path.to_owned();
    let name = path.display().to_string();
    tokio::task::spawn_blocking(move || read_module_blocking(&owned))
        .await
        .map_err(|e| LoadError::Join {
            path: name,
            message: e.to_string(),
        })?
}

fn read_module_blocking(path: &Path) -> Result<Vec<u8>, LoadError> {
    use std::io::Read;
    let name = || path.display().to_string();
    let read_err = |error| LoadError::Read {
        path: name(),
        error,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if meta.is_dir() {
        return Err(read_err(std::io::Error::other("it is a directory")));
    }
    if meta.len() > MAX_MODULE_SIZE {
        return Err(LoadError::TooLarge {
            path: name(),
            size: meta.len(),
            max: MAX_MODULE_SIZE,
        });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // The size was checked above, but the file may grow meanwhile.
    file.take(MAX_MODULE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    Ok(bytes)
}

/// Tells a component from a core module by the preamble, before anything
/// heavier looks at the bytes.
pub(crate) fn sniff(name: &str, bytes: &[u8]) -> Result<ProgramKind, LoadError> {
    let not_wasm = |why: String| LoadError::NotWasm {
        path: name.to_owned(),
        why,
    };
    if bytes.len() as u64 > MAX_MODULE_SIZE {
        return Err(LoadError::TooLarge {
            path: name.to_owned(),
            size: bytes.len() as u64,
            max: MAX_MODULE_SIZE,
        });
    }
    if bytes.is_empty() {
        return Err(not_wasm("the file is empty".into()));
    }
    if !bytes.starts_with(b"\0asm") {
        let head: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
        return Err(not_wasm(format!(
            "it starts with bytes {} instead of 00 61 73 6d (`\\0asm`)",
            head.join(" ")
        )));
    }
    match bytes.get(4..8) {
        Some([1, 0, 0, 0]) => Ok(ProgramKind::Module),
        Some([0x0d, 0, 1, 0]) => Ok(ProgramKind::Component),
        Some(other) => Err(not_wasm(format!(
            "unknown WebAssembly version/layer {other:02x?}"
        ))),
        None => Err(not_wasm("the file ends inside its 8-byte header".into())),
    }
}

/// wasmtime errors carry a chain; the last link says what was wrong in the
/// file, the first what wasmtime was doing. Both, once.
fn root_message(e: &wasmtime::Error) -> String {
    let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    match chain.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [first, .., last] if first.contains(last.as_str()) => first.clone(),
        [first, .., last] => format!("{first}: {last}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_kind_and_names_what_is_wrong() {
        assert_eq!(sniff("a", b"\0asm\x01\0\0\0").unwrap(), ProgramKind::Module);
        assert_eq!(
            sniff("a", b"\0asm\x0d\0\x01\0").unwrap(),
            ProgramKind::Component
        );
        let e = sniff("elf.bin", b"\x7fELF\x02\x01")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`elf.bin`") && e.contains("7f 45 4c 46"), "{e}");
        let e = sniff("t.wasm", b"\0asm\x01").unwrap_err().to_string();
        assert!(e.contains("ends inside its 8-byte header"), "{e}");
        let e = sniff("e.wasm", b"").unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
    }
}
