//! How a blob transfer is reported as it goes.

use kelp_core::Digest;

/// Told how each blob transfer goes, to draw a progress bar.
pub trait Progress: Send + Sync {
    /// A transfer of blob `digest`, `total` bytes, starts with `done` of
    /// them already in place (a resumed pull).
    fn start(&self, digest: &Digest, total: u64, done: u64);
    /// `bytes` more moved.
    fn advance(&self, bytes: u64);
    /// The transfer ended, complete or not.
    fn finish(&self);
}

/// Ends a transfer's progress however the transfer ends.
pub(super) struct Reporting<'a>(Option<&'a dyn Progress>);

impl<'a> Reporting<'a> {
    pub(super) fn start(
        progress: Option<&'a dyn Progress>,
        digest: &Digest,
        total: u64,
        done: u64,
    ) -> Self {
        if let Some(p) = progress {
            p.start(digest, total, done);
        }
        Reporting(progress)
    }

    pub(super) fn advance(&self, bytes: u64) {
        if let Some(p) = self.0 {
            p.advance(bytes);
        }
    }
}

impl Drop for Reporting<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            p.finish();
        }
    }
}
