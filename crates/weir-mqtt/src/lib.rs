//! weir-mqtt
