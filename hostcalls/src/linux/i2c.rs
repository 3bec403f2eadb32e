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

#[cfg(test)]
mod tests {
    use super::super::i2c_dev::{
        I2C_FUNC_SMBUS_READ_WORD_DATA, I2C_FUNC_SMBUS_WRITE_BYTE_DATA, I2C_SMBUS_BYTE_DATA,
        I2C_SMBUS_READ, I2C_SMBUS_WORD_DATA, I2C_SMBUS_WRITE, SmbusData,
    };
    use super::*;

    /// An adapter that records what reached it and answers every SMBus
    /// read with `reply`.
    #[derive(Default)]
    struct Adapter {
        funcs: u64,
        reply: SmbusData,
        smbus_errno: Option<Errno>,
        targets: Vec<u16>,
        transfers: Vec<(u8, u8, u32, SmbusData)>,
        rdwr: usize,
    }

    impl I2cDev for &mut Adapter {
        fn funcs(&mut self) -> Result<u64, Errno> {
            Ok(self.funcs)
        }
        fn rdwr(&mut self, _address: u16, _ops: &mut [I2cOp<'_>]) -> Result<(), Errno> {
            self.rdwr += 1;
            Ok(())
        }
        fn target(&mut self, address: u16) -> Result<(), Errno> {
            self.targets.push(address);
            Ok(())
        }
        fn smbus(
            &mut self,
            read_write: u8,
            command: u8,
            size: u32,
            data: &mut SmbusData,
        ) -> Result<(), Errno> {
            self.transfers.push((read_write, command, size, *data));
            if let Some(errno) = self.smbus_errno {
                return Err(errno);
            }
            if read_write == I2C_SMBUS_READ {
                *data = self.reply;
            }
            Ok(())
        }
    }

    const SMBUS: u64 = I2C_FUNC_SMBUS_READ_WORD_DATA | I2C_FUNC_SMBUS_WRITE_BYTE_DATA;

    fn run(adapter: &mut Adapter, address: u16, ops: &mut [I2cOp<'_>]) -> Result<(), I2cError> {
        let bus = DevBus::new(adapter).unwrap();
        bus.transaction(address, ops)
    }

    #[test]
    fn a_register_read_on_an_smbus_adapter_is_one_word_read() {
        let mut adapter = Adapter {
            funcs: SMBUS,
            ..Adapter::default()
        };
        // SMBus words travel low byte first: the bytes read are 0x17, 0x80.
        adapter.reply.set_word(0x8017);
        let mut buf = [0u8; 2];
        run(
            &mut adapter,
            0x48,
            &mut [I2cOp::Write(&[0x00]), I2cOp::Read(&mut buf)],
        )
        .unwrap();
        assert_eq!(buf, [0x17, 0x80]);
        assert_eq!(adapter.targets, [0x48]);
        assert_eq!(adapter.transfers.len(), 1);
        let (rw, command, size, _) = adapter.transfers[0];
        assert_eq!(
            (rw, command, size),
            (I2C_SMBUS_READ, 0x00, I2C_SMBUS_WORD_DATA)
        );
        assert_eq!(adapter.rdwr, 0);
    }

    #[test]
    fn a_register_write_on_an_smbus_adapter_is_one_byte_data_write() {
        let mut adapter = Adapter {
            funcs: SMBUS,
            ..Adapter::default()
        };
        run(&mut adapter, 0x48, &mut [I2cOp::Write(&[0x01, 0x60])]).unwrap();
        let (rw, command, size, data) = adapter.transfers[0];
        assert_eq!(
            (rw, command, size, data.0[0]),
            (I2C_SMBUS_WRITE, 0x01, I2C_SMBUS_BYTE_DATA, 0x60)
        );
    }

    #[test]
    fn what_smbus_cannot_express_is_refused_before_the_bus_is_touched() {
        let mut adapter = Adapter {
            funcs: SMBUS,
            ..Adapter::default()
        };
        let mut buf = [0u8; 4];
        match run(&mut adapter, 0x48, &mut [I2cOp::Read(&mut buf)]) {
            Err(I2cError::Other(why)) => {
                assert!(why.contains("SMBus-only adapter"), "{why}");
                assert!(why.contains("plain read of 4 bytes"), "{why}");
            }
            other => panic!("a 4-byte plain read ran on SMBus: {other:?}"),
        }
        // The adapter has no I2C-block write, so a 3-byte write has no transfer.
        match run(&mut adapter, 0x48, &mut [I2cOp::Write(&[1, 2, 3, 4])]) {
            Err(I2cError::Other(why)) => assert!(why.contains("does not do"), "{why}"),
            other => panic!("a block write ran without block support: {other:?}"),
        }
        assert!(adapter.targets.is_empty());
        assert!(adapter.transfers.is_empty());
    }

    #[test]
    fn a_full_i2c_adapter_runs_transactions_as_they_are() {
        let mut adapter = Adapter {
            funcs: I2C_FUNC_I2C | SMBUS,
            ..Adapter::default()
        };
        let mut buf = [0u8; 4];
        run(&mut adapter, 0x48, &mut [I2cOp::Read(&mut buf)]).unwrap();
        assert_eq!(adapter.rdwr, 1);
        assert!(adapter.transfers.is_empty());
    }

    #[test]
    fn an_absent_device_on_an_smbus_adapter_is_a_missing_acknowledge() {
        let mut adapter = Adapter {
            funcs: SMBUS,
            smbus_errno: Some(libc::ENXIO),
            ..Adapter::default()
        };
        let mut buf = [0u8; 2];
        assert_eq!(
            run(
                &mut adapter,
                0x49,
                &mut [I2cOp::Write(&[0x00]), I2cOp::Read(&mut buf)]
            ),
            Err(I2cError::NoAckAddress)
        );
    }

    #[test]
    fn i2c_dev_errors_mean_what_the_kernel_documents() {
        // fault-codes.rst: ENXIO is an address phase without ACK; i2c-stub
        // answers ENODEV for an address with no chip.
        assert_eq!(errno_error(libc::ENXIO), I2cError::NoAckAddress);
        assert_eq!(errno_error(libc::ENODEV), I2cError::NoAckAddress);
        assert_eq!(errno_error(libc::EREMOTEIO), I2cError::NoAck);
        assert_eq!(errno_error(libc::EAGAIN), I2cError::ArbitrationLoss);
        assert_eq!(errno_error(libc::EIO), I2cError::Bus);
        assert!(matches!(errno_error(libc::EINVAL), I2cError::Other(m) if m.contains("nvalid")));
    }

    #[test]
    fn a_bus_that_does_not_exist_is_not_found() {
        match LinuxI2c.open(Path::new("/dev/i2c-none")) {
            Err(HwError::NotFound(what)) => assert_eq!(what, "/dev/i2c-none"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a bus that does not exist was opened"),
        }
    }
}
