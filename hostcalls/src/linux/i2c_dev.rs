//! The i2c-dev ioctls (`include/uapi/linux/i2c-dev.h` and `i2c.h`), behind
//! a trait so that what is built on them is tested without a kernel.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::backend::I2cOp;

/// The adapter does plain I2C: any transaction, through `I2C_RDWR`.
pub(super) const I2C_FUNC_I2C: u64 = 0x0000_0001;
pub(super) const I2C_FUNC_10BIT_ADDR: u64 = 0x0000_0002;
pub(super) const I2C_FUNC_SMBUS_QUICK: u64 = 0x0001_0000;
pub(super) const I2C_FUNC_SMBUS_READ_BYTE: u64 = 0x0002_0000;
pub(super) const I2C_FUNC_SMBUS_WRITE_BYTE: u64 = 0x0004_0000;
pub(super) const I2C_FUNC_SMBUS_READ_BYTE_DATA: u64 = 0x0008_0000;
pub(super) const I2C_FUNC_SMBUS_WRITE_BYTE_DATA: u64 = 0x0010_0000;
pub(super) const I2C_FUNC_SMBUS_READ_WORD_DATA: u64 = 0x0020_0000;
pub(super) const I2C_FUNC_SMBUS_WRITE_WORD_DATA: u64 = 0x0040_0000;
pub(super) const I2C_FUNC_SMBUS_READ_I2C_BLOCK: u64 = 0x0400_0000;
pub(super) const I2C_FUNC_SMBUS_WRITE_I2C_BLOCK: u64 = 0x0800_0000;

/// `read_write` of an SMBus transfer.
pub(super) const I2C_SMBUS_WRITE: u8 = 0;
pub(super) const I2C_SMBUS_READ: u8 = 1;

/// `size` of an SMBus transfer: its shape on the wire.
pub(super) const I2C_SMBUS_QUICK: u32 = 0;
pub(super) const I2C_SMBUS_BYTE: u32 = 1;
pub(super) const I2C_SMBUS_BYTE_DATA: u32 = 2;
pub(super) const I2C_SMBUS_WORD_DATA: u32 = 3;
pub(super) const I2C_SMBUS_I2C_BLOCK_DATA: u32 = 8;

/// Most data bytes in one SMBus block (`I2C_SMBUS_BLOCK_MAX`).
pub(super) const I2C_SMBUS_BLOCK_MAX: usize = 32;

const I2C_SLAVE: u32 = 0x0703;
const I2C_TENBIT: u32 = 0x0704;
const I2C_FUNCS: u32 = 0x0705;
const I2C_RDWR: u32 = 0x0707;
const I2C_SMBUS: u32 = 0x0720;

const I2C_M_RD: u16 = 0x0001;
const I2C_M_TEN: u16 = 0x0010;

/// The kernel's `union i2c_smbus_data`: a byte, a word (native byte order)
/// or a block whose first byte is its length.
#[repr(C, align(2))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SmbusData(pub(super) [u8; I2C_SMBUS_BLOCK_MAX + 2]);

impl Default for SmbusData {
    fn default() -> Self {
        SmbusData([0; I2C_SMBUS_BLOCK_MAX + 2])
    }
}

impl SmbusData {
    pub(super) fn word(&self) -> u16 {
        u16::from_ne_bytes([self.0[0], self.0[1]])
    }

    pub(super) fn set_word(&mut self, word: u16) {
        self.0[..2].copy_from_slice(&word.to_ne_bytes());
    }
}

/// An errno value.
pub(super) type Errno = i32;

/// An open `/dev/i2c-N`.
pub(super) trait I2cDev: Send {
    /// `I2C_FUNCS`: what the adapter can do.
    fn funcs(&mut self) -> Result<u64, Errno>;
    /// `I2C_RDWR`: `ops` to `address` as one transaction.
    fn rdwr(&mut self, address: u16, ops: &mut [I2cOp<'_>]) -> Result<(), Errno>;
    /// `I2C_TENBIT` and `I2C_SLAVE`: where the next SMBus transfers go.
    fn target(&mut self, address: u16) -> Result<(), Errno>;
    /// `I2C_SMBUS`: one SMBus transfer to the target.
    fn smbus(
        &mut self,
        read_write: u8,
        command: u8,
        size: u32,
        data: &mut SmbusData,
    ) -> Result<(), Errno>;
}

#[repr(C)]
struct I2cMsg {
    addr: u16,
    flags: u16,
    len: u16,
    buf: *mut u8,
}

#[repr(C)]
struct I2cRdwrIoctlData {
    msgs: *mut I2cMsg,
    nmsgs: u32,
}

#[repr(C)]
struct I2cSmbusIoctlData {
    read_write: u8,
    command: u8,
    size: u32,
    data: *mut SmbusData,
}

/// The kernel's i2c-dev.
pub(super) struct KernelDev {
    file: File,
    /// Whether the target is set with 10-bit addressing.
    ten_bit: bool,
}

fn check(ret: libc::c_int) -> Result<(), Errno> {
    if ret < 0 {
        Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO))
    } else {
        Ok(())
    }
}

impl KernelDev {
    pub(super) fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::options().read(true).write(true).open(path)?;
        Ok(KernelDev {
            file,
            ten_bit: false,
        })
    }

    fn set(&mut self, request: u32, value: libc::c_ulong) -> Result<(), Errno> {
        // SAFETY: I2C_SLAVE and I2C_TENBIT take an integer argument, not a
        // pointer; the descriptor is open for as long as `self.file`.
        check(unsafe { libc::ioctl(self.file.as_raw_fd(), request as _, value) })
    }
}

impl I2cDev for KernelDev {
    fn funcs(&mut self) -> Result<u64, Errno> {
        let mut funcs: libc::c_ulong = 0;
        // SAFETY: I2C_FUNCS writes one `unsigned long` through the pointer,
        // which points at `funcs`, alive for the call.
        check(unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                I2C_FUNCS as _,
                &mut funcs as *mut libc::c_ulong,
            )
        })?;
        Ok(funcs)
    }

    fn rdwr(&mut self, address: u16, ops: &mut [I2cOp<'_>]) -> Result<(), Errno> {
        let ten = if address > 0x7f { I2C_M_TEN } else { 0 };
        let mut msgs = Vec::with_capacity(ops.len());
        for op in ops.iter_mut() {
            let (flags, len, buf) = match op {
                I2cOp::Read(buf) => (I2C_M_RD, buf.len(), buf.as_mut_ptr()),
                // The kernel only reads a buffer without I2C_M_RD.
                I2cOp::Write(bytes) => (0, bytes.len(), bytes.as_ptr().cast_mut()),
            };
            msgs.push(I2cMsg {
                addr: address,
                flags: flags | ten,
                len: u16::try_from(len).map_err(|_| libc::EINVAL)?,
                buf,
            });
        }
        let mut data = I2cRdwrIoctlData {
            msgs: msgs.as_mut_ptr(),
            nmsgs: u32::try_from(msgs.len()).map_err(|_| libc::EINVAL)?,
        };
        // SAFETY: `data` points at `msgs`, each of whose `buf` points at
        // `len` bytes of a buffer borrowed from `ops` (writable for reads);
        // all of them outlive the call, and the kernel touches nothing else.
        check(unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                I2C_RDWR as _,
                &mut data as *mut I2cRdwrIoctlData,
            )
        })
    }

    fn target(&mut self, address: u16) -> Result<(), Errno> {
        let ten_bit = address > 0x7f;
        if ten_bit != self.ten_bit {
            self.set(I2C_TENBIT, libc::c_ulong::from(ten_bit))?;
            self.ten_bit = ten_bit;
        }
        self.set(I2C_SLAVE, libc::c_ulong::from(address))
    }

    fn smbus(
        &mut self,
        read_write: u8,
        command: u8,
        size: u32,
        data: &mut SmbusData,
    ) -> Result<(), Errno> {
        let mut args = I2cSmbusIoctlData {
            read_write,
            command,
            size,
            data: data as *mut SmbusData,
        };
        // SAFETY: `args` points at `data`, laid out as the kernel's
        // `union i2c_smbus_data` (34 bytes, 2-aligned) and alive for the
        // call; the kernel reads or writes at most that union.
        check(unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                I2C_SMBUS as _,
                &mut args as *mut I2cSmbusIoctlData,
            )
        })
    }
}
