//! A reader that outlives what goes wrong around it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use framebroker_proto::FrameMeta;

use crate::{Client, Error, Frame, Reader};

/// Reads one stream and re-attaches by itself when the stream is restarted with
/// a new segment, or when the broker dies and a new one comes up on the same
/// socket.
///
/// A read that hits the end of the current attachment (stream stopped, broker
/// gone: noticed within a second through the heartbeat) returns that error once,
/// so the caller knows; the next read reconnects, retrying until its timeout.
pub struct Subscription {
    socket: PathBuf,
    id: String,
    reader: Option<Reader>,
    retry_interval: Duration,
}

impl Subscription {
    /// Does not connect yet: the first read does.
    pub fn new(socket: impl Into<PathBuf>, id: impl Into<String>) -> Self {
        Subscription {
            socket: socket.into(),
            id: id.into(),
            reader: None,
            retry_interval: Duration::from_millis(100),
        }
    }

    /// The current reader, if attached.
    pub fn reader(&mut self) -> Option<&mut Reader> {
        self.reader.as_mut()
    }

    pub fn is_attached(&self) -> bool {
        self.reader.is_some()
    }

    fn ensure(&mut self, deadline: Instant) -> Result<&mut Reader, Error> {
        while self.reader.is_none() {
            let attempt = Client::connect_to(&self.socket).and_then(|c| {
                c.attach_wait(&self.id, deadline.saturating_duration_since(Instant::now()))
            });
            match attempt {
                Ok(r) => {
                    tracing::info!(stream = %self.id, generation = r.attachment().generation, "attached");
                    self.reader = Some(r);
                }
                Err(e) if Instant::now() + self.retry_interval < deadline => {
                    tracing::debug!(stream = %self.id, "attach failed, retrying: {e}");
                    std::thread::sleep(self.retry_interval);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(self.reader.as_mut().expect("the loop above attached"))
    }

    fn read(
        &mut self,
        timeout: Duration,
        read: impl Fn(&mut Reader, &mut [u8], Duration) -> Result<FrameMeta, Error>,
        buf: Option<&mut [u8]>,
    ) -> Result<(FrameMeta, Option<Vec<u8>>), Error> {
        let deadline = Instant::now() + timeout;
        let reader = self.ensure(deadline)?;
        let left = deadline.saturating_duration_since(Instant::now());
        let result = match buf {
            Some(b) => read(reader, b, left).map(|m| (m, None)),
            None => {
                let mut data = vec![0u8; reader.frame_bytes()];
                read(reader, &mut data, left).map(|m| (m, Some(data)))
            }
        };
        if let Err(e) = &result {
            if !e.is_timeout() {
                tracing::info!(stream = %self.id, "attachment ended: {e}");
                self.reader = None;
            }
        }
        result
    }

    /// [`Reader::latest`], re-attaching as needed.
    pub fn latest(&mut self, timeout: Duration) -> Result<Frame, Error> {
        let (meta, data) = self.read(timeout, |r, b, t| r.latest_into(b, t), None)?;
        Ok(Frame {
            meta,
            data: data.unwrap_or_default(),
        })
    }

    /// [`Reader::next`], re-attaching as needed.
    pub fn next(&mut self, timeout: Duration) -> Result<Frame, Error> {
        let (meta, data) = self.read(timeout, |r, b, t| r.next_into(b, t), None)?;
        Ok(Frame {
            meta,
            data: data.unwrap_or_default(),
        })
    }

    /// [`Reader::latest_into`]; the buffer must fit the current geometry
    /// (check `reader().frame_bytes()` after a re-attach).
    pub fn latest_into(&mut self, buf: &mut [u8], timeout: Duration) -> Result<FrameMeta, Error> {
        self.read(timeout, |r, b, t| r.latest_into(b, t), Some(buf))
            .map(|(m, _)| m)
    }
}
