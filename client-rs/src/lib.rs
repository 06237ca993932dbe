//! # framebroker-client
//!
//! Talk to a running framebroker and read its frames straight out of shared
//! memory:
//!
//! ```no_run
//! use std::time::Duration;
//! use framebroker_client::{Client, StartRequest};
//!
//! let mut client = Client::connect()?;
//! client.start(StartRequest::new("door", "rtsp://127.0.0.1:8554/cam"))?;
//! let mut reader = client.attach("door")?;
//! let frame = reader.latest(Duration::from_secs(5))?; // newest frame, never a stale one
//! println!("frame {} {}x{}", frame.meta.number, reader.width(), reader.height());
//! # Ok::<(), framebroker_client::Error>(())
//! ```
//!
//! A [`Client`] is one session with the broker. A [`Reader`] keeps that session
//! alive: the broker counts it as a reader until it is dropped.

mod client;
mod error;
mod reader;
mod subscription;

pub use client::Client;
pub use error::Error;
pub use framebroker_proto::control::{
    Attachment, HwAccel, StartRequest, StreamInfo, StreamStats, Transport, VariantRequest,
};
pub use framebroker_proto::{FrameMeta, Geometry, PixelFormat, ReadMode, StreamState, StreamTime};
pub use reader::{Frame, Reader};
pub use subscription::Subscription;
