//! What a hardware backend provides: lines to request and buses to open. The
//! host calls check grants and then talk to one of these; the backends know
//! nothing about services.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;

use crate::map::LineId;

/// A pull resistor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bias {
    PullUp,
    PullDown,
}

/// How to request a line. Levels here are physical (high = voltage).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineRequest {
    /// `Some(level)`: drive the line, starting at `level`.
    pub output: Option<bool>,
    /// Report edges through [`GpioLine::watch`].
    pub edges: bool,
    pub bias: Option<Bias>,
    /// Who holds the line, for the kernel's `gpioinfo`.
    pub consumer: String,
}

/// A line's physical level and how many edges it has seen since it was
/// requested.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LineEvents {
    pub high: bool,
    pub rising: u64,
    pub falling: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HwError {
    #[error("in use by another process")]
    Busy,
    #[error("not found: {0}")]
    NotFound(String),
    #[error("{0}")]
    Fault(String),
}

/// A source of GPIO lines.
pub trait GpioBackend: Send + Sync + 'static {
    fn request(&self, line: &LineId, request: &LineRequest) -> Result<Box<dyn GpioLine>, HwError>;
}

/// A requested line; dropping it releases the line.
pub trait GpioLine: Send + Sync {
    /// Drives the line (output lines only).
    fn set(&self, high: bool) -> Result<(), HwError>;
    /// The line's level.
    fn get(&self) -> Result<bool, HwError>;
    /// Level and edge counts as they change, if the line was requested with
    /// `edges`.
    fn watch(&self) -> Option<watch::Receiver<LineEvents>>;
}

/// One step of an I2C transaction.
#[derive(Debug)]
pub enum I2cOp<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

/// Why an I2C transaction failed, in embedded-hal's terms.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum I2cError {
    #[error("no device acknowledged the address")]
    NoAckAddress,
    #[error("the device did not acknowledge a data byte")]
    NoAckData,
    #[error("not acknowledged")]
    NoAck,
    #[error("bus error")]
    Bus,
    #[error("arbitration lost")]
    ArbitrationLoss,
    #[error("receive overrun")]
    Overrun,
    #[error("{0}")]
    Other(String),
}

/// A source of I2C buses.
pub trait I2cBackend: Send + Sync + 'static {
    fn open(&self, bus: &Path) -> Result<Arc<dyn I2cBus>, HwError>;
}

/// An open bus. Transactions are short (a few bytes at 100–400 kHz) and run
/// on the calling thread.
pub trait I2cBus: Send + Sync {
    /// Runs `ops` against `address` as one transaction: repeated starts
    /// between operations, one stop at the end.
    fn transaction(&self, address: u16, ops: &mut [I2cOp<'_>]) -> Result<(), I2cError>;
}
