//! Progress bars for transfers, drawn only when stderr is a terminal, so
//! pipes and logs get the plain result lines alone.

use std::io::IsTerminal as _;
use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kelp_core::Digest;
use kelp_registry::client::Progress;

/// Leaves `client` as it is, or has it draw a bar per blob, labelled with
/// `verb` (`pushing`, `pulling`), when stderr is a terminal.
pub fn attach(client: kelp_registry::Client, verb: &'static str) -> kelp_registry::Client {
    if std::io::stderr().is_terminal() {
        client.with_progress(Arc::new(Bars {
            verb,
            bar: Mutex::default(),
        }))
    } else {
        client
    }
}

struct Bars {
    verb: &'static str,
    bar: Mutex<Option<ProgressBar>>,
}

impl Bars {
    fn bar(&self) -> std::sync::MutexGuard<'_, Option<ProgressBar>> {
        self.bar.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Progress for Bars {
    fn start(&self, digest: &Digest, total: u64, done: u64) {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        // `sha256:` and the first 12 hex digits, as `docker` shows layers.
        let hex = digest.hex();
        bar.set_message(format!(
            "{} sha256:{}",
            self.verb,
            &hex[..12.min(hex.len())]
        ));
        bar.set_position(done);
        if let Some(old) = self.bar().replace(bar) {
            old.finish_and_clear();
        }
    }

    fn advance(&self, bytes: u64) {
        if let Some(bar) = self.bar().as_ref() {
            bar.inc(bytes);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.bar().take() {
            bar.finish_and_clear();
        }
    }
}
