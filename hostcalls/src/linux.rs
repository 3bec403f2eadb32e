//! The Linux backend: GPIO through the kernel's character device (uAPI v2),
//! I2C through i2c-dev, on full I2C adapters and SMBus-only ones alike.

mod gpio;
mod i2c;
mod i2c_dev;
mod smbus;

pub use gpio::LinuxGpio;
pub use i2c::LinuxI2c;
