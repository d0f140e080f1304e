//! The developer CLI.
fn main() {}
