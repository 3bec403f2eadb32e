//! The Linux backend: GPIO through the kernel's character device (uAPI v2,
//! via `gpiocdev`), I2C through `i2c-dev` (the `I2C_RDWR` ioctl, via
//! `i2cdev`, so a transaction's operations share one stop).

use std::io::ErrorKind;
use std::path::Path;
use std::sync::{Arc, Mutex};

use gpiocdev::line::{Bias as CdevBias, EdgeDetection, EdgeKind, Value};
use gpiocdev::request::Request;
use i2cdev::core::{I2CMessage, I2CTransfer};
use i2cdev::linux::{I2CMessageFlags, LinuxI2CBus, LinuxI2CError, LinuxI2CMessage};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::backend::{
    Bias, GpioBackend, GpioLine, HwError, I2cBackend, I2cBus, I2cError, I2cOp, LineEvents,
    LineRequest,
};
use crate::device::lock;
use crate::map::LineId;

/// GPIO lines of the kernel's `/dev/gpiochipN` devices.
#[derive(Default)]
pub struct LinuxGpio;

impl GpioBackend for LinuxGpio {
    fn request(&self, id: &LineId, request: &LineRequest) -> Result<Box<dyn GpioLine>, HwError> {
        let mut builder = Request::builder();
        builder
            .on_chip(&id.chip)
            .with_consumer(request.consumer.as_str())
            .with_line(id.line);
        match request.output {
            Some(level) => builder.as_output(Value::from(level)),
            None => builder.as_input(),
        };
        builder.with_bias(request.bias.map(|b| match b {
            Bias::PullUp => CdevBias::PullUp,
            Bias::PullDown => CdevBias::PullDown,
        }));
        if request.edges {
            builder.with_edge_detection(EdgeDetection::BothEdges);
        }
        let req = Arc::new(builder.request().map_err(|e| gpio_error(id, e))?);
        let level = req.value(id.line).map_err(|e| gpio_error(id, e))?.into();
        let (events, _) = watch::channel(LineEvents {
            high: level,
            ..LineEvents::default()
        });
        let watcher = if request.edges {
            // SAFETY: `Fd` owns a reference to the request, which owns the
            // descriptor: it stays open, and the same, as long as the
            // `AsyncFd` lives.
            let fd =
                unsafe { AsyncFd::register_with_interest(Fd(req.clone()), Interest::READABLE) }
                    .map_err(|e| HwError::Fault(format!("{id}: cannot watch edges: {e}")))?;
            Some(tokio::spawn(watch_edges(fd, events.clone())))
        } else {
            None
        };
        Ok(Box::new(CdevLine {
            req,
            offset: id.line,
            events,
            watcher,
        }))
    }
}

fn gpio_error(id: &LineId, e: gpiocdev::Error) -> HwError {
    use gpiocdev::Error as E;
    let errno = match &e {
        E::Uapi(_, gpiocdev_uapi::Error::Os(errno)) | E::Os(errno) => Some(errno.0),
        _ => None,
    };
    match errno {
        Some(libc::EBUSY) => HwError::Busy,
        Some(libc::ENOENT | libc::ENODEV) => HwError::NotFound(format!("{id}: {e}")),
        _ => HwError::Fault(format!("{id}: {e}")),
    }
}

/// A request's descriptor, for the reactor.
struct Fd(Arc<Request>);

impl std::os::fd::AsRawFd for Fd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// Counts edges as the kernel reports them, until the line is released.
async fn watch_edges(fd: AsyncFd<Fd>, events: watch::Sender<LineEvents>) {
    loop {
        let Ok(mut ready) = fd.readable().await else {
            return;
        };
        let req = &ready.get_inner().0;
        while let Ok(true) = req.has_edge_event() {
            let Ok(event) = req.read_edge_event() else {
                return;
            };
            events.send_modify(|e| match event.kind {
                EdgeKind::Rising => {
                    e.rising += 1;
                    e.high = true;
                }
                EdgeKind::Falling => {
                    e.falling += 1;
                    e.high = false;
                }
            });
        }
        ready.clear_ready();
    }
}

struct CdevLine {
    req: Arc<Request>,
    offset: u32,
    events: watch::Sender<LineEvents>,
    watcher: Option<tokio::task::JoinHandle<()>>,
}

impl GpioLine for CdevLine {
    fn set(&self, high: bool) -> Result<(), HwError> {
        self.req
            .set_value(self.offset, Value::from(high))
            .map_err(|e| HwError::Fault(e.to_string()))
    }

    fn get(&self) -> Result<bool, HwError> {
        self.req
            .value(self.offset)
            .map(bool::from)
            .map_err(|e| HwError::Fault(e.to_string()))
    }

    fn watch(&self) -> Option<watch::Receiver<LineEvents>> {
        self.watcher.as_ref().map(|_| self.events.subscribe())
    }
}

impl Drop for CdevLine {
    fn drop(&mut self) {
        // The watcher holds the request too; the line is released when both
        // are gone.
        if let Some(watcher) = &self.watcher {
            watcher.abort();
        }
    }
}

/// The kernel's `/dev/i2c-N` buses.
#[derive(Default)]
pub struct LinuxI2c;

impl I2cBackend for LinuxI2c {
    fn open(&self, bus: &Path) -> Result<Arc<dyn I2cBus>, HwError> {
        match LinuxI2CBus::new(bus) {
            Ok(dev) => Ok(Arc::new(DevBus(Mutex::new(dev)))),
            Err(LinuxI2CError::Io(e)) if e.kind() == ErrorKind::NotFound => {
                Err(HwError::NotFound(bus.display().to_string()))
            }
            Err(e) => Err(HwError::Fault(format!("{}: {e}", bus.display()))),
        }
    }
}

struct DevBus(Mutex<LinuxI2CBus>);

impl I2cBus for DevBus {
    fn transaction(&self, address: u16, ops: &mut [I2cOp<'_>]) -> Result<(), I2cError> {
        let ten_bit = if address > 0x7f {
            I2CMessageFlags::TEN_BIT_ADDRESS.bits()
        } else {
            0
        };
        let flags =
            |extra: I2CMessageFlags| I2CMessageFlags::from_bits_truncate(extra.bits() | ten_bit);
        let mut messages: Vec<LinuxI2CMessage<'_>> = ops
            .iter_mut()
            .map(|op| match op {
                I2cOp::Read(buf) => LinuxI2CMessage::read(buf)
                    .with_address(address)
                    .with_flags(flags(I2CMessageFlags::READ)),
                I2cOp::Write(bytes) => LinuxI2CMessage::write(bytes)
                    .with_address(address)
                    .with_flags(flags(I2CMessageFlags::empty())),
            })
            .collect();
        let mut bus = lock(&self.0);
        bus.transfer(&mut messages).map(drop).map_err(|e| match e {
            LinuxI2CError::Errno(errno) => errno_error(errno),
            LinuxI2CError::Io(e) => e
                .raw_os_error()
                .map_or_else(|| I2cError::Other(e.to_string()), errno_error),
        })
    }
}

/// What i2c-dev's errno values mean (Documentation/i2c/fault-codes.rst).
fn errno_error(errno: i32) -> I2cError {
    match errno {
        libc::ENXIO | libc::EREMOTEIO => I2cError::NoAck,
        libc::EAGAIN => I2cError::ArbitrationLoss,
        libc::EPROTO | libc::EIO => I2cError::Bus,
        libc::EOVERFLOW => I2cError::Overrun,
        _ => I2cError::Other(std::io::Error::from_raw_os_error(errno).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_chip_or_bus_is_not_found_not_a_fault() {
        let line = LineId {
            chip: "/dev/gpiochip-none".into(),
            line: 3,
        };
        let request = LineRequest {
            output: Some(false),
            edges: false,
            bias: None,
            consumer: "test".into(),
        };
        match LinuxGpio.request(&line, &request) {
            Err(HwError::NotFound(what)) => assert!(what.contains("/dev/gpiochip-none"), "{what}"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a chip that does not exist was opened"),
        }
        match LinuxI2c.open(Path::new("/dev/i2c-none")) {
            Err(HwError::NotFound(what)) => assert_eq!(what, "/dev/i2c-none"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a bus that does not exist was opened"),
        }
    }

    #[test]
    fn a_file_that_is_not_a_gpio_chip_is_refused() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let line = LineId {
            chip: file.path().to_owned(),
            line: 0,
        };
        let request = LineRequest {
            output: None,
            edges: true,
            bias: None,
            consumer: "test".into(),
        };
        assert!(LinuxGpio.request(&line, &request).is_err());
    }

    #[test]
    fn i2c_dev_errors_mean_what_the_kernel_documents() {
        assert_eq!(errno_error(libc::ENXIO), I2cError::NoAck);
        assert_eq!(errno_error(libc::EREMOTEIO), I2cError::NoAck);
        assert_eq!(errno_error(libc::EAGAIN), I2cError::ArbitrationLoss);
        assert_eq!(errno_error(libc::EIO), I2cError::Bus);
        assert!(matches!(errno_error(libc::EINVAL), I2cError::Other(m) if m.contains("nvalid")));
    }
}
