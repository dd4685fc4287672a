#[allow(dead_code)] // each test binary uses its own part
pub mod clients;
#[allow(dead_code)]
pub mod dev;
