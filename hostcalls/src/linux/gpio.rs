//! GPIO through the kernel's character device (uAPI v2, via `gpiocdev`).
//! A map names a chip by device name, path or label; the label is looked up
//! among `/dev/gpiochip*` with the chip-info ioctl, since chip numbers
//! differ between boards and boots.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use gpiocdev::line::{Bias as CdevBias, EdgeDetection, EdgeKind, Value};
use gpiocdev::request::Request;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::backend::{Bias, GpioBackend, GpioLine, HwError, LineEvents, LineRequest};
use crate::map::LineId;

/// GPIO lines of the kernel's `/dev/gpiochipN` devices.
#[derive(Default)]
pub struct LinuxGpio;

impl GpioBackend for LinuxGpio {
    fn request(&self, id: &LineId, request: &LineRequest) -> Result<Box<dyn GpioLine>, HwError> {
        let chip = resolve(&id.chip, &DevChips)?;
        let mut builder = Request::builder();
        builder
            .on_chip(&chip)
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

/// A chip the kernel has, as its chip-info ioctl describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FoundChip {
    path: PathBuf,
    /// The chip's label, or why it could not be asked.
    label: Result<String, String>,
    lines: u32,
}

/// How chips are found: the kernel's, or a test's.
trait Chips {
    fn exists(&self, path: &Path) -> bool;
    /// The chips there are, in name order.
    fn scan(&self) -> Result<Vec<FoundChip>, String>;
}

/// The kernel's `/dev/gpiochip*`.
struct DevChips;

impl Chips for DevChips {
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn scan(&self) -> Result<Vec<FoundChip>, String> {
        let entries = std::fs::read_dir("/dev").map_err(|e| format!("/dev: {e}"))?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("gpiochip"))
            .map(|e| e.path())
            .collect();
        paths.sort_by(|a, b| gpiocdev::chip::path_compare(a, b));
        Ok(paths
            .into_iter()
            .map(|path| {
                let info = gpiocdev::Chip::from_path(&path).and_then(|chip| chip.info());
                let (label, lines) = match info {
                    Ok(info) => (Ok(info.label), info.num_lines),
                    Err(e) => (Err(e.to_string()), 0),
                };
                FoundChip { path, label, lines }
            })
            .collect())
    }
}

/// The device of the chip a map names: a name (`gpiochip0`, meaning
/// `/dev/gpiochip0`) or path that exists wins; otherwise the one chip with
/// that label. None, or more than one, is an error that lists the chips
/// there are.
fn resolve(chip: &Path, chips: &dyn Chips) -> Result<PathBuf, HwError> {
    let (path, label) = if chip.is_absolute() {
        // The map turns a name into a path; a name may be a label too.
        let name = chip
            .strip_prefix("/dev")
            .ok()
            .filter(|rest| rest.components().count() == 1)
            .and_then(Path::to_str);
        (chip.to_owned(), name)
    } else {
        (Path::new("/dev").join(chip), chip.to_str())
    };
    if chips.exists(&path) {
        return Ok(path);
    }
    let Some(label) = label else {
        return Err(HwError::NotFound(format!(
            "{}: no such chip",
            chip.display()
        )));
    };
    let found = chips
        .scan()
        .map_err(|e| HwError::Fault(format!("cannot list GPIO chips: {e}")))?;
    let matching: Vec<&FoundChip> = found
        .iter()
        .filter(|c| c.label.as_deref() == Ok(label))
        .collect();
    match matching[..] {
        [one] => Ok(one.path.clone()),
        [] => Err(HwError::NotFound(format!(
            "no GPIO chip named or labelled `{}`; {}",
            chip.display(),
            listing(&found)
        ))),
        _ => Err(HwError::Fault(format!(
            "GPIO chip label `{label}` is ambiguous: {} all have it; name one by its path",
            matching
                .iter()
                .map(|c| c.path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// `found /dev/gpiochip0 `gpio-sim.0-node0` (8 lines), …`, for errors.
fn listing(found: &[FoundChip]) -> String {
    if found.is_empty() {
        return "found no GPIO chips".to_owned();
    }
    let chips: Vec<String> = found
        .iter()
        .map(|c| match &c.label {
            Ok(label) => format!("{} `{label}` ({} lines)", c.path.display(), c.lines),
            Err(e) => format!("{} (cannot be read: {e})", c.path.display()),
        })
        .collect();
    format!("found {}", chips.join(", "))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Chips as a board might have them.
    struct Board {
        devices: Vec<&'static str>,
        chips: Vec<FoundChip>,
    }

    impl Chips for Board {
        fn exists(&self, path: &Path) -> bool {
            self.devices.iter().any(|d| Path::new(d) == path)
        }

        fn scan(&self) -> Result<Vec<FoundChip>, String> {
            Ok(self.chips.clone())
        }
    }

    fn chip(path: &str, label: &str, lines: u32) -> FoundChip {
        FoundChip {
            path: path.into(),
            label: Ok(label.into()),
            lines,
        }
    }

    /// gpio-sim beside a Raspberry Pi 4's controllers, and a chip this
    /// process may not open.
    fn board() -> Board {
        Board {
            devices: vec!["/dev/gpiochip0", "/dev/gpiochip1", "/dev/gpiochip2"],
            chips: vec![
                chip("/dev/gpiochip0", "pinctrl-bcm2711", 58),
                chip("/dev/gpiochip1", "gpio-sim.0-node0", 8),
                FoundChip {
                    path: "/dev/gpiochip2".into(),
                    label: Err("Permission denied (os error 13)".into()),
                    lines: 0,
                },
            ],
        }
    }

    #[test]
    fn a_chip_is_found_by_name_path_or_label() {
        let board = board();
        let found = |chip: &str| resolve(Path::new(chip), &board);
        assert_eq!(found("/dev/gpiochip1"), Ok("/dev/gpiochip1".into()));
        assert_eq!(found("gpio-sim.0-node0"), Ok("/dev/gpiochip1".into()));
        assert_eq!(found("pinctrl-bcm2711"), Ok("/dev/gpiochip0".into()));
    }

    #[test]
    fn a_device_that_exists_wins_over_a_label() {
        // gpiochip1's label is the name of another chip's device.
        let board = Board {
            devices: vec!["/dev/gpiochip0", "/dev/gpiochip1"],
            chips: vec![
                chip("/dev/gpiochip0", "pinctrl", 8),
                chip("/dev/gpiochip1", "gpiochip0", 8),
            ],
        };
        assert_eq!(
            resolve(Path::new("/dev/gpiochip0"), &board),
            Ok("/dev/gpiochip0".into())
        );
        // A name whose device is gone is still looked up as a label.
        let board = Board {
            devices: vec!["/dev/gpiochip1"],
            chips: vec![chip("/dev/gpiochip1", "gpiochip0", 8)],
        };
        assert_eq!(
            resolve(Path::new("/dev/gpiochip0"), &board),
            Ok("/dev/gpiochip1".into())
        );
    }

    #[test]
    fn an_unknown_chip_is_named_beside_the_chips_there_are() {
        let Err(HwError::NotFound(message)) = resolve(Path::new("gpio-sim.1-node0"), &board())
        else {
            panic!("an unknown label resolved");
        };
        assert_eq!(
            message,
            "no GPIO chip named or labelled `gpio-sim.1-node0`; found \
             /dev/gpiochip0 `pinctrl-bcm2711` (58 lines), \
             /dev/gpiochip1 `gpio-sim.0-node0` (8 lines), \
             /dev/gpiochip2 (cannot be read: Permission denied (os error 13))"
        );
        let none = Board {
            devices: vec![],
            chips: vec![],
        };
        let Err(HwError::NotFound(message)) = resolve(Path::new("/dev/gpiochip4"), &none) else {
            panic!("a missing chip resolved");
        };
        assert_eq!(
            message,
            "no GPIO chip named or labelled `/dev/gpiochip4`; found no GPIO chips"
        );
    }

    #[test]
    fn an_ambiguous_label_is_refused_with_the_chips_that_have_it() {
        let board = Board {
            devices: vec!["/dev/gpiochip0", "/dev/gpiochip1"],
            chips: vec![
                chip("/dev/gpiochip0", "mcp23017", 16),
                chip("/dev/gpiochip1", "mcp23017", 16),
            ],
        };
        assert_eq!(
            resolve(Path::new("mcp23017"), &board),
            Err(HwError::Fault(
                "GPIO chip label `mcp23017` is ambiguous: /dev/gpiochip0, /dev/gpiochip1 \
                 all have it; name one by its path"
                    .into()
            ))
        );
    }

    #[test]
    fn a_missing_chip_is_not_found_not_a_fault() {
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
}
