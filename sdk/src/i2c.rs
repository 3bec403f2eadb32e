//! I2C buses by label, as an embedded-hal bus.

use std::fmt;

use embedded_hal::i2c::{
    ErrorKind, NoAcknowledgeSource, Operation, SevenBitAddress, TenBitAddress,
};

use crate::bindings::kelp::hardware::i2c as kelp;
use crate::bindings::wasi::i2c::i2c::{self as wit, ErrorCode};

pub use kelp::OpenError;

/// A failed transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error(pub ErrorCode);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use embedded_hal::i2c::Error as _;
        write!(f, "i2c: {}", self.kind())
    }
}

impl std::error::Error for Error {}

impl embedded_hal::i2c::Error for Error {
    fn kind(&self) -> ErrorKind {
        match &self.0 {
            ErrorCode::Bus => ErrorKind::Bus,
            ErrorCode::ArbitrationLoss => ErrorKind::ArbitrationLoss,
            ErrorCode::NoAcknowledge(source) => ErrorKind::NoAcknowledge(match source {
                wit::NoAcknowledgeSource::Address => NoAcknowledgeSource::Address,
                wit::NoAcknowledgeSource::Data => NoAcknowledgeSource::Data,
                wit::NoAcknowledgeSource::Unknown => NoAcknowledgeSource::Unknown,
            }),
            ErrorCode::Overrun => ErrorKind::Overrun,
            ErrorCode::Other => ErrorKind::Other,
        }
    }
}

/// The bus granted as a label. Only the addresses granted on it answer.
pub struct I2c {
    bus: wit::I2c,
}

impl I2c {
    pub fn open(label: &str) -> Result<Self, OpenError> {
        Ok(I2c {
            bus: kelp::open_bus(label)?,
        })
    }

    fn run(&mut self, address: u16, operations: &mut [Operation<'_>]) -> Result<(), Error> {
        let ops: Vec<wit::Operation> = operations
            .iter()
            .map(|op| match op {
                Operation::Read(buf) => wit::Operation::Read(buf.len() as u64),
                Operation::Write(bytes) => wit::Operation::Write(bytes.to_vec()),
            })
            .collect();
        let mut reads = self
            .bus
            .transaction(address, &ops)
            .map_err(Error)?
            .into_iter();
        for op in operations {
            if let Operation::Read(buf) = op {
                let data = reads.next().unwrap_or_default();
                if data.len() != buf.len() {
                    return Err(Error(ErrorCode::Other));
                }
                buf.copy_from_slice(&data);
            }
        }
        Ok(())
    }
}

impl embedded_hal::i2c::ErrorType for I2c {
    type Error = Error;
}

impl embedded_hal::i2c::I2c<SevenBitAddress> for I2c {
    fn transaction(&mut self, address: u8, operations: &mut [Operation<'_>]) -> Result<(), Error> {
        self.run(u16::from(address), operations)
    }
}

impl embedded_hal::i2c::I2c<TenBitAddress> for I2c {
    fn transaction(&mut self, address: u16, operations: &mut [Operation<'_>]) -> Result<(), Error> {
        self.run(address, operations)
    }
}
