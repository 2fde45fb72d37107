//! The fuzz targets' entry points and checks, one module per target. Each module is also
//! included, file for file, by the test suite (coordinator/tests/properties.rs,
//! gateway-client/tests/properties.rs), which replays every committed corpus file through it.

pub mod gateway;
pub mod journal;
pub mod requests;
