//! Reading one stream's ring.

use std::time::Duration;

use framebroker_proto::control::Attachment;
use framebroker_proto::shm::ReadOnlySegment;
use framebroker_proto::{FrameMeta, Geometry, PixelFormat, ReadMode, RingReader, StreamState};

use crate::{Client, Error};

/// A frame copied out of the ring: yours to keep.
#[derive(Clone, Debug)]
pub struct Frame {
    pub meta: FrameMeta,
    pub data: Vec<u8>,
}

/// A reader of one stream, attached through a [`Client`] session. Dropping it
/// detaches. Not `Sync`: give each thread its own reader.
pub struct Reader {
    client: Client,
    attachment: Attachment,
    ring: RingReader<ReadOnlySegment>,
}

impl Reader {
    pub(crate) fn map(client: Client, attachment: Attachment) -> Result<Self, Error> {
        let ring_err = |source| Error::Ring {
            stream: attachment.id.clone(),
            source,
        };
        let seg =
            ReadOnlySegment::open(&attachment.segment, client.broker_uid()).map_err(ring_err)?;
        let ring = RingReader::open(seg).map_err(ring_err)?;
        let info = ring.info();
        if info.generation != attachment.generation || info.frame_bytes != attachment.frame_bytes {
            return Err(ring_err(framebroker_proto::Error::BadSegment(format!(
                "segment {} does not match the attachment (generation {} vs {})",
                attachment.segment, info.generation, attachment.generation
            ))));
        }
        Ok(Reader {
            client,
            attachment,
            ring,
        })
    }

    fn ring_err(&self, source: framebroker_proto::Error) -> Error {
        Error::Ring {
            stream: self.attachment.id.clone(),
            source,
        }
    }

    pub fn stream_id(&self) -> &str {
        &self.attachment.id
    }
    pub fn attachment(&self) -> &Attachment {
        &self.attachment
    }
    pub fn geometry(&self) -> Geometry {
        self.ring.info().geometry
    }
    pub fn width(&self) -> u32 {
        self.ring.info().geometry.width
    }
    pub fn height(&self) -> u32 {
        self.ring.info().geometry.height
    }
    pub fn pixel_format(&self) -> PixelFormat {
        self.ring.info().geometry.pixel_format
    }
    pub fn frame_bytes(&self) -> usize {
        self.ring.info().frame_bytes as usize
    }
    /// Whether slots carry a CRC-32 of their payload (broker started with `--checksum`).
    pub fn has_checksums(&self) -> bool {
        self.ring.info().checksum
    }
    pub fn state(&self) -> StreamState {
        self.ring.state()
    }
    /// Input rate measured by the broker.
    pub fn fps(&self) -> f64 {
        self.ring.fps()
    }
    /// Number of the newest published frame.
    pub fn last_frame(&self) -> u64 {
        self.ring.last_frame()
    }
    /// How long since the broker last showed it is alive.
    pub fn heartbeat_age(&self) -> Duration {
        self.ring.heartbeat_age()
    }
    /// The ring underneath, for tools that need more.
    pub fn ring(&mut self) -> &mut RingReader<ReadOnlySegment> {
        &mut self.ring
    }

    /// The newest frame not returned before, waiting up to `timeout`: what a
    /// computer-vision loop wants (never a stale frame). `meta.missed` counts the
    /// frames skipped since the previous call.
    pub fn latest(&mut self, timeout: Duration) -> Result<Frame, Error> {
        let mut data = vec![0u8; self.frame_bytes()];
        let meta = self.latest_into(&mut data, timeout)?;
        Ok(Frame { meta, data })
    }

    /// [`latest`](Self::latest) into a buffer of at least `frame_bytes()`: no allocation.
    pub fn latest_into(&mut self, buf: &mut [u8], timeout: Duration) -> Result<FrameMeta, Error> {
        self.ring.latest(buf, timeout).map_err(|e| self.ring_err(e))
    }

    /// The next frame in order; `meta.missed` counts frames overwritten before this
    /// reader got to them.
    pub fn next(&mut self, timeout: Duration) -> Result<Frame, Error> {
        let mut data = vec![0u8; self.frame_bytes()];
        let meta = self.next_into(&mut data, timeout)?;
        Ok(Frame { meta, data })
    }

    /// [`next`](Self::next) into a caller's buffer.
    pub fn next_into(&mut self, buf: &mut [u8], timeout: Duration) -> Result<FrameMeta, Error> {
        self.ring.next(buf, timeout).map_err(|e| self.ring_err(e))
    }

    /// Zero-copy: calls `f` on the frame in shared memory. The result is returned
    /// only if the frame was not overwritten while `f` ran (else `f` runs again on
    /// a newer frame), so `f` must not keep references or have side effects it
    /// cannot repeat.
    pub fn view<T>(
        &mut self,
        mode: ReadMode,
        timeout: Duration,
        f: impl FnMut(&FrameMeta, &[u8]) -> T,
    ) -> Result<(FrameMeta, T), Error> {
        self.ring
            .view(mode, timeout, f)
            .map_err(|e| self.ring_err(e))
    }

    /// The client session this reader belongs to.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("stream", &self.attachment.id)
            .field("segment", &self.attachment.segment)
            .field("geometry", &self.geometry())
            .field("position", &self.ring.position())
            .finish()
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Err(e) = self.client.detach(&self.attachment.id) {
            tracing::debug!(stream = %self.attachment.id, error = %e, "detach on drop failed");
        }
    }
}
