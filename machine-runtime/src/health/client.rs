//! The client behind `machine-runtime health` (Docker's HEALTHCHECK): `GET /health` on this machine.

use std::time::Duration;

use serde_json::Value;

use crate::http::{self, HttpUrl};

/// `machine-runtime health`: Ok when `GET /health` on `127.0.0.1:port` answers 200; the error
/// carries the reasons the endpoint gave.
pub async fn check(port: u16, timeout: Duration) -> Result<(), String> {
    let url = HttpUrl::local(port, "/health");
    let response = http::get(&url, timeout).await?;
    if response.status == 200 {
        return Ok(());
    }
    let reasons = serde_json::from_str::<Value>(&response.body)
        .ok()
        .and_then(|v| v.get("reasons").cloned())
        .and_then(|r| serde_json::from_value::<Vec<String>>(r).ok())
        .unwrap_or_default();
    Err(if reasons.is_empty() {
        format!("{url} answered {}", response.status)
    } else {
        format!("{url} answered {}: {}", response.status, reasons.join("; "))
    })
}
