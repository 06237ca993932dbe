//! JPEG encoding (libjpeg-turbo through `turbojpeg`), the optional box-filter
//! downscale, and the `FBJ1` framing of JPEG WebSocket messages.

use bytes::{BufMut, Bytes, BytesMut};
use framebroker_client::PixelFormat;

use crate::errors::ApiError;
use crate::models::FrameQuery;

/// One encoding setting. Each setting a client asks for is encoded once per frame
/// and shared by every client that asked for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct JpegSetting {
    /// 1..=100.
    pub quality: u8,
    /// Divide width and height by this: 1, 2, 4 or 8.
    pub divisor: u8,
}

impl JpegSetting {
    /// The setting a query asks for, `default_quality` when it names none.
    pub fn from_query(q: &FrameQuery, default_quality: u8) -> Result<Self, ApiError> {
        let quality = q.quality.unwrap_or(default_quality);
        if !(1..=100).contains(&quality) {
            return Err(ApiError::bad_request(format!(
                "quality {quality} out of range 1..=100"
            )));
        }
        let divisor = match q.scale {
            None => 1,
            Some(1.0) => 1,
            Some(0.5) => 2,
            Some(0.25) => 4,
            Some(0.125) => 8,
            Some(s) => {
                return Err(ApiError::bad_request(format!(
                    "scale {s} not supported: use 1, 0.5, 0.25 or 0.125"
                )))
            }
        };
        Ok(JpegSetting { quality, divisor })
    }

    pub fn scale(&self) -> f64 {
        1.0 / f64::from(self.divisor)
    }
}

/// Why a frame could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("JPEG of {0} frames is not supported (the stream must be bgr24, rgb24, gray, or yuv420p without scale)")]
    Unsupported(PixelFormat),
    #[error("frame of {len} bytes does not match {width}x{height} {format}")]
    Size {
        len: usize,
        width: u32,
        height: u32,
        format: PixelFormat,
    },
    #[error("JPEG encoder: {0}")]
    Turbo(#[from] turbojpeg::Error),
}

/// A reusable encoder (one libjpeg-turbo handle).
pub struct Encoder {
    tj: turbojpeg::Compressor,
    scratch: Vec<u8>,
}

/// Output of [`Encoder::encode`].
pub struct Encoded {
    pub jpeg: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

impl Encoder {
    pub fn new() -> Result<Self, EncodeError> {
        Ok(Encoder {
            tj: turbojpeg::Compressor::new()?,
            scratch: Vec::new(),
        })
    }

    /// Encodes one frame of `width`×`height` in `format` with `setting`.
    pub fn encode(
        &mut self,
        data: &[u8],
        width: u32,
        height: u32,
        format: PixelFormat,
        setting: JpegSetting,
    ) -> Result<Encoded, EncodeError> {
        let expected = format.frame_bytes(width, height).unwrap_or(u64::MAX);
        if data.len() as u64 != expected {
            return Err(EncodeError::Size {
                len: data.len(),
                width,
                height,
                format,
            });
        }
        self.tj.set_quality(i32::from(setting.quality))?;
        let (tj_format, channels, subsamp) = match format {
            PixelFormat::Bgr24 => (turbojpeg::PixelFormat::BGR, 3, turbojpeg::Subsamp::Sub2x2),
            PixelFormat::Rgb24 => (turbojpeg::PixelFormat::RGB, 3, turbojpeg::Subsamp::Sub2x2),
            PixelFormat::Gray => (turbojpeg::PixelFormat::GRAY, 1, turbojpeg::Subsamp::Gray),
            PixelFormat::Yuv420p if setting.divisor == 1 => {
                self.tj.set_subsamp(turbojpeg::Subsamp::Sub2x2)?;
                let jpeg = self.tj.compress_yuv_to_vec(turbojpeg::YuvImage {
                    pixels: data,
                    width: width as usize,
                    align: 1,
                    height: height as usize,
                    subsamp: turbojpeg::Subsamp::Sub2x2,
                })?;
                return Ok(Encoded {
                    jpeg,
                    width,
                    height,
                });
            }
            other => return Err(EncodeError::Unsupported(other)),
        };
        self.tj.set_subsamp(subsamp)?;
        let (pixels, w, h) = if setting.divisor > 1 {
            let (w, h) = downscale(
                data,
                width as usize,
                height as usize,
                channels,
                usize::from(setting.divisor),
                &mut self.scratch,
            );
            (&self.scratch[..], w, h)
        } else {
            (data, width as usize, height as usize)
        };
        let jpeg = self.tj.compress_to_vec(turbojpeg::Image {
            pixels,
            width: w,
            pitch: w * channels,
            height: h,
            format: tj_format,
        })?;
        Ok(Encoded {
            jpeg,
            width: w as u32,
            height: h as u32,
        })
    }
}

/// Box-filter downscale of a packed image by `d` (each output pixel is the mean of
/// a `d`×`d` block; a remainder at the right and bottom edges is dropped).
/// Returns the output size; the pixels are in `out`.
pub fn downscale(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    d: usize,
    out: &mut Vec<u8>,
) -> (usize, usize) {
    let (ow, oh) = ((width / d).max(1), (height / d).max(1));
    let (bw, bh) = (d.min(width), d.min(height));
    out.clear();
    out.resize(ow * oh * channels, 0);
    let stride = width * channels;
    let area = (bw * bh) as u32;
    let mut acc = vec![0u32; ow * channels];
    for oy in 0..oh {
        acc.iter_mut().for_each(|a| *a = 0);
        for dy in 0..bh {
            let row = &src[(oy * bh + dy) * stride..][..stride];
            for ox in 0..ow {
                let px = &row[ox * bw * channels..][..bw * channels];
                let a = &mut acc[ox * channels..][..channels];
                for p in px.chunks_exact(channels) {
                    for c in 0..channels {
                        a[c] += u32::from(p[c]);
                    }
                }
            }
        }
        let dst = &mut out[oy * ow * channels..][..ow * channels];
        for (o, a) in dst.iter_mut().zip(&acc) {
            *o = ((a + area / 2) / area) as u8;
        }
    }
    (ow, oh)
}

/// Magic of a JPEG WebSocket message.
pub const WS_MAGIC: &[u8; 4] = b"FBJ1";
/// Bytes of the header before the JPEG.
pub const WS_HEADER_LEN: usize = 40;
/// `format` field value of a JPEG payload.
pub const WS_FORMAT_JPEG: u32 = 1;

/// The header fields of a JPEG WebSocket message (see the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsHeader {
    pub frame_number: u64,
    pub capture_wall_ns: u64,
    pub width: u32,
    pub height: u32,
    pub format: u32,
    pub payload_len: u32,
}

/// `header` followed by `jpeg`, in one buffer: sent as is on every JPEG socket.
pub fn ws_message(h: &WsHeader, jpeg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(WS_HEADER_LEN + jpeg.len());
    b.put_slice(WS_MAGIC);
    b.put_u32_le(WS_HEADER_LEN as u32);
    b.put_u64_le(h.frame_number);
    b.put_u64_le(h.capture_wall_ns);
    b.put_u32_le(h.width);
    b.put_u32_le(h.height);
    b.put_u32_le(h.format);
    b.put_u32_le(jpeg.len() as u32);
    b.put_slice(jpeg);
    b.freeze()
}

/// Parses a JPEG WebSocket message: its header and payload.
pub fn parse_ws_message(msg: &[u8]) -> Option<(WsHeader, &[u8])> {
    if msg.len() < WS_HEADER_LEN || &msg[0..4] != WS_MAGIC {
        return None;
    }
    let u32_at = |o: usize| u32::from_le_bytes(msg[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(msg[o..o + 8].try_into().unwrap());
    let header_len = u32_at(4) as usize;
    if header_len < WS_HEADER_LEN || header_len > msg.len() {
        return None;
    }
    let h = WsHeader {
        frame_number: u64_at(8),
        capture_wall_ns: u64_at(16),
        width: u32_at(24),
        height: u32_at(28),
        format: u32_at(32),
        payload_len: u32_at(36),
    };
    let payload = &msg[header_len..];
    (payload.len() == h.payload_len as usize).then_some((h, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: usize, h: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                v.extend_from_slice(&[(x % 256) as u8, (y % 256) as u8, 128]);
            }
        }
        v
    }

    #[test]
    fn encodes_bgr_and_decodes_to_the_same_size() {
        let data = gradient(64, 48);
        let mut enc = Encoder::new().unwrap();
        let setting = JpegSetting {
            quality: 80,
            divisor: 1,
        };
        let out = enc
            .encode(&data, 64, 48, PixelFormat::Bgr24, setting)
            .unwrap();
        assert_eq!(&out.jpeg[..2], &[0xFF, 0xD8]);
        let h = turbojpeg::read_header(&out.jpeg).unwrap();
        assert_eq!((h.width, h.height), (64, 48));
        let half = enc
            .encode(
                &data,
                64,
                48,
                PixelFormat::Bgr24,
                JpegSetting {
                    quality: 50,
                    divisor: 2,
                },
            )
            .unwrap();
        let h = turbojpeg::read_header(&half.jpeg).unwrap();
        assert_eq!(
            (h.width, h.height, half.width, half.height),
            (32, 24, 32, 24)
        );
    }

    #[test]
    fn wrong_size_and_unsupported_formats_are_errors() {
        let mut enc = Encoder::new().unwrap();
        let s = JpegSetting {
            quality: 80,
            divisor: 1,
        };
        assert!(matches!(
            enc.encode(&[0; 10], 64, 48, PixelFormat::Bgr24, s),
            Err(EncodeError::Size { .. })
        ));
        let nv12 = vec![0u8; 64 * 48 * 3 / 2];
        assert!(matches!(
            enc.encode(&nv12, 64, 48, PixelFormat::Nv12, s),
            Err(EncodeError::Unsupported(PixelFormat::Nv12))
        ));
        let yuv = vec![128u8; 64 * 48 * 3 / 2];
        let out = enc.encode(&yuv, 64, 48, PixelFormat::Yuv420p, s).unwrap();
        assert_eq!(turbojpeg::read_header(&out.jpeg).unwrap().width, 64);
        let gray = vec![7u8; 64 * 48];
        let out = enc.encode(&gray, 64, 48, PixelFormat::Gray, s).unwrap();
        assert_eq!(turbojpeg::read_header(&out.jpeg).unwrap().height, 48);
    }

    #[test]
    fn downscale_averages_blocks() {
        // 4x2, 1 channel: blocks [0,2;4,6] -> 3 and [10,20;30,40] -> 25.
        let src = [0, 2, 10, 20, 4, 6, 30, 40];
        let mut out = Vec::new();
        assert_eq!(downscale(&src, 4, 2, 1, 2, &mut out), (2, 1));
        assert_eq!(out, vec![3, 25]);
        // 3 channels keep their channels apart.
        let src: Vec<u8> = [[10, 100, 200]; 4].concat();
        assert_eq!(downscale(&src, 2, 2, 3, 2, &mut out), (1, 1));
        assert_eq!(out, vec![10, 100, 200]);
    }

    #[test]
    fn settings_from_queries() {
        let q = |quality, scale| FrameQuery {
            quality,
            scale,
            ..FrameQuery::default()
        };
        assert_eq!(
            JpegSetting::from_query(&q(None, None), 80).unwrap(),
            JpegSetting {
                quality: 80,
                divisor: 1
            }
        );
        assert_eq!(
            JpegSetting::from_query(&q(Some(50), Some(0.25)), 80)
                .unwrap()
                .divisor,
            4
        );
        assert!(JpegSetting::from_query(&q(Some(0), None), 80).is_err());
        assert!(JpegSetting::from_query(&q(Some(101), None), 80).is_err());
        assert!(JpegSetting::from_query(&q(None, Some(0.3)), 80).is_err());
    }

    #[test]
    fn ws_header_round_trips() {
        let h = WsHeader {
            frame_number: 42,
            capture_wall_ns: 1_700_000_000_123_456_789,
            width: 640,
            height: 480,
            format: WS_FORMAT_JPEG,
            payload_len: 3,
        };
        let m = ws_message(&h, &[1, 2, 3]);
        assert_eq!(m.len(), WS_HEADER_LEN + 3);
        assert_eq!(&m[..4], b"FBJ1");
        let (back, payload) = parse_ws_message(&m).unwrap();
        assert_eq!(back, h);
        assert_eq!(payload, &[1, 2, 3]);
        assert!(parse_ws_message(&m[..20]).is_none());
    }
}
