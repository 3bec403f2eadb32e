//! I2C through i2c-dev. An adapter that does plain I2C runs each
//! transaction with `I2C_RDWR` (its operations share one stop); one that
//! speaks only SMBus runs the transactions SMBus can express as SMBus
//! transfers, and refuses the rest with an error the guest sees.

use std::io::ErrorKind;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::backend::{HwError, I2cBackend, I2cBus, I2cError, I2cOp};
use crate::locks::lock;

use super::i2c_dev::{Errno, I2C_FUNC_I2C, I2cDev, KernelDev};
use super::smbus;

/// The kernel's `/dev/i2c-N` buses.
#[derive(Default)]
pub struct LinuxI2c;

impl I2cBackend for LinuxI2c {
    fn open(&self, bus: &Path) -> Result<Arc<dyn I2cBus>, HwError> {
        let dev = match KernelDev::open(bus) {
            Ok(dev) => dev,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(HwError::NotFound(bus.display().to_string()));
            }
            Err(e) => return Err(HwError::Fault(format!("{}: {e}", bus.display()))),
        };
        Ok(Arc::new(DevBus::new(dev).map_err(|errno| {
            HwError::Fault(format!(
                "{}: not an I2C adapter: {}",
                bus.display(),
                std::io::Error::from_raw_os_error(errno)
            ))
        })?))
    }
}

/// An open adapter and what it can do.
struct DevBus<D> {
    funcs: u64,
    dev: Mutex<D>,
}

impl<D: I2cDev> DevBus<D> {
    fn new(mut dev: D) -> Result<Self, Errno> {
        Ok(DevBus {
            funcs: dev.funcs()?,
            dev: Mutex::new(dev),
        })
    }
}

impl<D: I2cDev> I2cBus for DevBus<D> {
    fn transaction(&self, address: u16, ops: &mut [I2cOp<'_>]) -> Result<(), I2cError> {
        let mut dev = lock(&self.dev);
        if self.funcs & I2C_FUNC_I2C != 0 {
            dev.rdwr(address, ops).map_err(errno_error)
        } else {
            smbus::run(&mut *dev, self.funcs, address, ops, errno_error)
        }
    }
}

/// What i2c-dev's errno values mean (Documentation/i2c/fault-codes.rst).
fn errno_error(errno: Errno) -> I2cError {
    match errno {
        // ENXIO: the address phase got no ACK. ENODEV: i2c-stub's answer
        // for an address with no chip.
        libc::ENXIO | libc::ENODEV => I2cError::NoAckAddress,
        libc::EREMOTEIO => I2cError::NoAck,
        libc::EAGAIN => I2cError::ArbitrationLoss,
        libc::EPROTO | libc::EIO => I2cError::Bus,
        libc::EOVERFLOW => I2cError::Overrun,
        _ => I2cError::Other(std::io::Error::from_raw_os_error(errno).to_string()),
    }
}
