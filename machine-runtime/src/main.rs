//! machine-runtime: the container entrypoint.
fn main() {}
