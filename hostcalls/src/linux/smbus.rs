//! Transactions as SMBus transfers, for adapters that speak only SMBus
//! (i2c-stub, PC SMBus controllers, some SoC controllers). The shapes
//! register drivers use map: a register write, a one-byte command then a
//! read of up to 32 bytes, single-byte reads and writes, and the empty
//! (quick) probe. Anything else SMBus cannot put on the wire, and is refused
//! before the bus is touched.

use crate::backend::{I2cError, I2cOp};

use super::i2c_dev::{
    Errno, I2C_FUNC_10BIT_ADDR, I2C_FUNC_SMBUS_QUICK, I2C_FUNC_SMBUS_READ_BYTE,
    I2C_FUNC_SMBUS_READ_BYTE_DATA, I2C_FUNC_SMBUS_READ_I2C_BLOCK, I2C_FUNC_SMBUS_READ_WORD_DATA,
    I2C_FUNC_SMBUS_WRITE_BYTE, I2C_FUNC_SMBUS_WRITE_BYTE_DATA, I2C_FUNC_SMBUS_WRITE_I2C_BLOCK,
    I2C_FUNC_SMBUS_WRITE_WORD_DATA, I2C_SMBUS_BLOCK_MAX, I2C_SMBUS_BYTE, I2C_SMBUS_BYTE_DATA,
    I2C_SMBUS_I2C_BLOCK_DATA, I2C_SMBUS_QUICK, I2C_SMBUS_READ, I2C_SMBUS_WORD_DATA,
    I2C_SMBUS_WRITE, I2cDev, SmbusData,
};

/// One SMBus transfer, in the SMBus specification's terms. SMBus words
/// travel low byte first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Transfer {
    /// The address alone, write bit set: a probe.
    QuickWrite,
    /// The address alone, read bit set.
    QuickRead,
    SendByte(u8),
    ReceiveByte,
    WriteByte {
        command: u8,
        value: u8,
    },
    ReadByte {
        command: u8,
    },
    WriteWord {
        command: u8,
        value: u16,
    },
    ReadWord {
        command: u8,
    },
    /// A command byte then 1–32 bytes (`I2C_SMBUS_I2C_BLOCK_DATA`; no
    /// count byte on the wire).
    WriteBlock {
        command: u8,
        data: Vec<u8>,
    },
    /// A command byte, a repeated start, then `len` (1–32) bytes read.
    ReadBlock {
        command: u8,
        len: u8,
    },
}

impl Transfer {
    /// The functionality bit the adapter must report, and what it is called
    /// in an error.
    fn needs(&self) -> (u64, &'static str) {
        match self {
            Transfer::QuickWrite | Transfer::QuickRead => (I2C_FUNC_SMBUS_QUICK, "quick commands"),
            Transfer::SendByte(_) => (I2C_FUNC_SMBUS_WRITE_BYTE, "single-byte writes"),
            Transfer::ReceiveByte => (I2C_FUNC_SMBUS_READ_BYTE, "single-byte reads"),
            Transfer::WriteByte { .. } => (I2C_FUNC_SMBUS_WRITE_BYTE_DATA, "byte-data writes"),
            Transfer::ReadByte { .. } => (I2C_FUNC_SMBUS_READ_BYTE_DATA, "byte-data reads"),
            Transfer::WriteWord { .. } => (I2C_FUNC_SMBUS_WRITE_WORD_DATA, "word-data writes"),
            Transfer::ReadWord { .. } => (I2C_FUNC_SMBUS_READ_WORD_DATA, "word-data reads"),
            Transfer::WriteBlock { .. } => (I2C_FUNC_SMBUS_WRITE_I2C_BLOCK, "I2C-block writes"),
            Transfer::ReadBlock { .. } => (I2C_FUNC_SMBUS_READ_I2C_BLOCK, "I2C-block reads"),
        }
    }

    /// The `I2C_SMBUS` ioctl's `read_write`, `command`, `size` and data.
    pub(super) fn call(&self) -> (u8, u8, u32, SmbusData) {
        let mut data = SmbusData::default();
        let (read_write, command, size) = match self {
            Transfer::QuickWrite => (I2C_SMBUS_WRITE, 0, I2C_SMBUS_QUICK),
            Transfer::QuickRead => (I2C_SMBUS_READ, 0, I2C_SMBUS_QUICK),
            // A sent byte travels as the command.
            Transfer::SendByte(byte) => (I2C_SMBUS_WRITE, *byte, I2C_SMBUS_BYTE),
            Transfer::ReceiveByte => (I2C_SMBUS_READ, 0, I2C_SMBUS_BYTE),
            Transfer::WriteByte { command, value } => {
                data.0[0] = *value;
                (I2C_SMBUS_WRITE, *command, I2C_SMBUS_BYTE_DATA)
            }
            Transfer::ReadByte { command } => (I2C_SMBUS_READ, *command, I2C_SMBUS_BYTE_DATA),
            Transfer::WriteWord { command, value } => {
                data.set_word(*value);
                (I2C_SMBUS_WRITE, *command, I2C_SMBUS_WORD_DATA)
            }
            Transfer::ReadWord { command } => (I2C_SMBUS_READ, *command, I2C_SMBUS_WORD_DATA),
            Transfer::WriteBlock {
                command,
                data: bytes,
            } => {
                // `plan` keeps blocks within I2C_SMBUS_BLOCK_MAX.
                let n = bytes.len().min(I2C_SMBUS_BLOCK_MAX);
                data.0[0] = n as u8;
                data.0[1..=n].copy_from_slice(&bytes[..n]);
                (I2C_SMBUS_WRITE, *command, I2C_SMBUS_I2C_BLOCK_DATA)
            }
            Transfer::ReadBlock { command, len } => {
                data.0[0] = *len;
                (I2C_SMBUS_READ, *command, I2C_SMBUS_I2C_BLOCK_DATA)
            }
        };
        (read_write, command, size, data)
    }

    /// Puts what a read transfer returned in the transaction's read buffer,
    /// in wire order.
    pub(super) fn reply(&self, data: &SmbusData, buf: &mut [u8]) -> Result<(), I2cError> {
        match self {
            Transfer::ReceiveByte | Transfer::ReadByte { .. } => {
                if let Some(b) = buf.first_mut() {
                    *b = data.0[0];
                }
            }
            Transfer::ReadWord { .. } => {
                let bytes = data.word().to_le_bytes();
                let n = buf.len().min(2);
                buf[..n].copy_from_slice(&bytes[..n]);
            }
            Transfer::ReadBlock { len, .. } => {
                let got = usize::from(data.0[0]);
                if got < usize::from(*len) || got > I2C_SMBUS_BLOCK_MAX {
                    return Err(I2cError::Other(format!(
                        "the adapter returned {got} bytes of the {len} asked for"
                    )));
                }
                let n = buf.len().min(got);
                buf[..n].copy_from_slice(&data.0[1..=n]);
            }
            _ => {}
        }
        Ok(())
    }
}

/// The SMBus transfer that does what `ops` asks, on an adapter reporting
/// `funcs`, or why there is none. Where two transfers fit (a two-byte
/// register write is a byte-data write and an I2C-block write), the plainer
/// one the adapter has is used.
pub(super) fn plan(ops: &[I2cOp<'_>], funcs: u64) -> Result<Transfer, String> {
    use I2cOp::{Read, Write};
    let candidates: Vec<Transfer> = match ops {
        [] => return Err("an empty transaction has nothing to send".into()),
        [Write([])] => vec![Transfer::QuickWrite],
        [Read([])] => vec![Transfer::QuickRead],
        [Write([byte])] => vec![Transfer::SendByte(*byte)],
        [Read(buf)] if buf.len() == 1 => vec![Transfer::ReceiveByte],
        [Read(buf)] => {
            return Err(format!(
                "SMBus reads more than one byte only after a command byte; \
                 this is a plain read of {} bytes",
                buf.len()
            ));
        }
        [Write([command, value])] => vec![
            Transfer::WriteByte {
                command: *command,
                value: *value,
            },
            Transfer::WriteBlock {
                command: *command,
                data: vec![*value],
            },
        ],
        [Write([command, low, high])] => vec![
            Transfer::WriteWord {
                command: *command,
                value: u16::from_le_bytes([*low, *high]),
            },
            Transfer::WriteBlock {
                command: *command,
                data: vec![*low, *high],
            },
        ],
        [Write([command, data @ ..])] if data.len() <= I2C_SMBUS_BLOCK_MAX => {
            vec![Transfer::WriteBlock {
                command: *command,
                data: data.to_vec(),
            }]
        }
        [Write(bytes)] => {
            return Err(format!(
                "SMBus writes at most {} bytes (a command and {I2C_SMBUS_BLOCK_MAX} data \
                 bytes); this write is {} bytes",
                I2C_SMBUS_BLOCK_MAX + 1,
                bytes.len()
            ));
        }
        [Write([command]), Read(buf)] => {
            let command = *command;
            match buf.len() {
                1 => vec![
                    Transfer::ReadByte { command },
                    Transfer::ReadBlock { command, len: 1 },
                ],
                2 => vec![
                    Transfer::ReadWord { command },
                    Transfer::ReadBlock { command, len: 2 },
                ],
                n @ 3..=I2C_SMBUS_BLOCK_MAX => vec![Transfer::ReadBlock {
                    command,
                    len: n as u8,
                }],
                n => {
                    return Err(format!(
                        "SMBus reads 1 to {I2C_SMBUS_BLOCK_MAX} bytes after a command; \
                         this read is {n} bytes"
                    ));
                }
            }
        }
        [Write(bytes), Read(_)] => {
            return Err(format!(
                "SMBus writes exactly one command byte before a read; \
                 this transaction writes {} bytes",
                bytes.len()
            ));
        }
        _ => {
            let shape: Vec<String> = ops
                .iter()
                .map(|op| match op {
                    Read(buf) => format!("read {}", buf.len()),
                    Write(bytes) => format!("write {}", bytes.len()),
                })
                .collect();
            return Err(format!(
                "SMBus has no transfer for a transaction of {}",
                shape.join(", ")
            ));
        }
    };
    let names: Vec<&str> = candidates.iter().map(|t| t.needs().1).collect();
    candidates
        .into_iter()
        .find(|t| funcs & t.needs().0 != 0)
        .ok_or_else(|| format!("the adapter does not do {}", names.join(" or ")))
}

/// Runs `ops` on an SMBus-only adapter as one SMBus transfer to `address`.
/// A transaction SMBus cannot express is refused with nothing sent.
pub(super) fn run(
    dev: &mut dyn I2cDev,
    funcs: u64,
    address: u16,
    ops: &mut [I2cOp<'_>],
    errno: fn(Errno) -> I2cError,
) -> Result<(), I2cError> {
    let refused = |why: String| I2cError::Other(format!("SMBus-only adapter: {why}"));
    let transfer = plan(ops, funcs).map_err(refused)?;
    if address > 0x7f && funcs & I2C_FUNC_10BIT_ADDR == 0 {
        return Err(refused(format!(
            "address {address:#05x} is 10-bit and the adapter has only 7-bit addressing"
        )));
    }
    dev.target(address).map_err(|e| match e {
        libc::EBUSY => {
            I2cError::Other(format!("address {address:#04x} is held by a kernel driver"))
        }
        e => errno(e),
    })?;
    let (read_write, command, size, mut data) = transfer.call();
    dev.smbus(read_write, command, size, &mut data)
        .map_err(errno)?;
    if let Some(I2cOp::Read(buf)) = ops.last_mut() {
        transfer.reply(&data, buf)?;
    }
    Ok(())
}
