//! Zigbee adapter: a TI Z-Stack 3.x ZNP coordinator on a serial port.
pub mod mt;
