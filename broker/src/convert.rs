//! From the decoder's own format to the ring's, straight into the slot.
//!
//! ffmpeg's decoders put out planar `yuv420p` (`yuvj420p` for full-range
//! streams) or, from hardware decoders, `nv12`. Sending that over the pipe costs
//! half the bytes of `bgr24`; the conversion then happens here, once per frame,
//! into the slot's payload. It has to give what ffmpeg's own `-pix_fmt` would
//! have given, so a reader cannot tell the two paths apart:
//!
//! - **matrix and range** follow the stream's signalling the way ffmpeg 5.1's
//!   scale filter does ([`Colour::from_ffmpeg`]): untagged, `smpte170m`,
//!   `bt470bg` are BT.601; `bt709` is BT.709; `pc` is full range;
//! - **bgr24 / rgb24** through the `yuv` crate's SIMD converters (chroma
//!   replicated, as swscale's unscaled path does). They differ from ffmpeg's x86
//!   output by at most 3 levels where `16 <= Y <= 235`: ffmpeg truncates where
//!   the crate rounds. Below Y = 16 swscale's SIMD clamps `Y - 16` at 0 before
//!   it adds chroma, so dark saturated pixels can differ by more; the crate and
//!   OpenCV agree with each other there. The tests hold both bounds;
//! - **gray, yuv420p, nv12** are exact: plane copies, an interleave, and where
//!   the range changes the same integer range conversion as swscale
//!   ([`luma_to_full`], [`luma_to_limited`], [`chroma_to_limited`]), so gray
//!   from a limited-range stream is full-range luma, and a `yuv420p` or `nv12`
//!   ring of a full-range stream is limited range, as ffmpeg writes them.
//!
//! Sizes are never scaled here: the source and the ring have the same width and
//! height, or [`Converter::new`] refuses. Scaled variants, odd sizes and
//! colourspaces without a matching matrix stay with ffmpeg.

use framebroker_proto::{Geometry, PixelFormat};
use yuv::{YuvBiPlanarImage, YuvConversionMode, YuvPlanarImage, YuvRange, YuvStandardMatrix};

/// The layout of a raw frame as the decoder hands it over (tightly packed planes,
/// as ffmpeg's `rawvideo` writes them: chroma planes `ceil(w/2) × ceil(h/2)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceFormat {
    /// Y, then U, then V (also `yuvj420p`, whose range is in [`Colour`]).
    Yuv420p,
    /// Y, then interleaved U V (hardware decoders).
    Nv12,
}

impl SourceFormat {
    /// The format and its range from ffmpeg's pixel format name: `yuvj420p` is
    /// `yuv420p` in full range. `None` for anything we do not convert ourselves.
    pub fn from_ffmpeg(pix_fmt: &str) -> Option<(SourceFormat, Option<Range>)> {
        match pix_fmt {
            "yuv420p" => Some((SourceFormat::Yuv420p, None)),
            "yuvj420p" => Some((SourceFormat::Yuv420p, Some(Range::Full))),
            "nv12" => Some((SourceFormat::Nv12, None)),
            _ => None,
        }
    }

    /// Bytes of one `width`×`height` frame, `None` on overflow.
    pub fn frame_bytes(self, width: u32, height: u32) -> Option<usize> {
        let luma = (width as usize).checked_mul(height as usize)?;
        let chroma = (width.div_ceil(2) as usize).checked_mul(height.div_ceil(2) as usize)?;
        luma.checked_add(chroma.checked_mul(2)?)
    }
}

/// Luma and chroma range: `tv` (limited, Y 16..235) or `pc` (full, 0..255).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Range {
    Limited,
    Full,
}

/// The YUV→RGB matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Matrix {
    Bt601,
    Bt709,
    Fcc,
    Bt2020,
}

/// How a stream's samples are to be read: matrix and range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Colour {
    pub matrix: Matrix,
    pub range: Range,
}

impl Colour {
    /// Untagged video, as ffmpeg reads it: BT.601, limited range.
    pub const DEFAULT: Colour = Colour {
        matrix: Matrix::Bt601,
        range: Range::Limited,
    };

    /// The colour ffmpeg 5.1's scale filter would use for a stream line's
    /// `pix_fmt(range, colorspace/primaries/trc, ...)` fields: `range` is `tv`,
    /// `pc` or absent, `colorspace` the first `/`-separated token or absent.
    /// Like `sws_getCoefficients`, unspecified and reserved colourspaces are
    /// BT.601 and an absent range is limited. `None` for a colourspace we have
    /// no matrix for (YCgCo, GBR, ...): leave those to ffmpeg. SMPTE 240M is
    /// one of them: ffmpeg 5.1 reads it 30-50 levels away from the crate's
    /// `Smpte240` coefficients.
    pub fn from_ffmpeg(range: Option<&str>, colorspace: Option<&str>) -> Option<Colour> {
        let range = match range {
            Some("pc") => Range::Full,
            Some("tv") | Some("unknown") | None => Range::Limited,
            Some(_) => return None,
        };
        let matrix = match colorspace {
            None | Some("unknown") | Some("reserved") | Some("bt470bg") | Some("smpte170m") => {
                Matrix::Bt601
            }
            Some("bt709") => Matrix::Bt709,
            Some("fcc") => Matrix::Fcc,
            Some("bt2020nc") | Some("bt2020c") => Matrix::Bt2020,
            Some(_) => return None,
        };
        Some(Colour { matrix, range })
    }

    fn yuv_range(self) -> YuvRange {
        match self.range {
            Range::Limited => YuvRange::Limited,
            Range::Full => YuvRange::Full,
        }
    }

    fn yuv_matrix(self) -> YuvStandardMatrix {
        match self.matrix {
            Matrix::Bt601 => YuvStandardMatrix::Bt601,
            Matrix::Bt709 => YuvStandardMatrix::Bt709,
            Matrix::Fcc => YuvStandardMatrix::Fcc,
            Matrix::Bt2020 => YuvStandardMatrix::Bt2020,
        }
    }
}

/// A source frame as planes, each `(bytes, row stride in bytes)`: Y, then U and
/// V (`yuv420p`), or Y and the interleaved UV plane in `u` (`nv12`; `v` empty).
#[derive(Clone, Copy, Debug)]
pub struct Planes<'a> {
    pub y: (&'a [u8], usize),
    pub u: (&'a [u8], usize),
    pub v: (&'a [u8], usize),
}

/// What went wrong; a converter never writes a partial frame on bad sizes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConvertError {
    #[error("cannot convert {src:?} {src_width}x{src_height} into {dst}: {reason}")]
    Unsupported {
        src: SourceFormat,
        src_width: u32,
        src_height: u32,
        dst: String,
        reason: &'static str,
    },
    #[error("source frame has {got} bytes, {expected} expected for {width}x{height} {format:?}")]
    SourceSize {
        format: SourceFormat,
        width: u32,
        height: u32,
        expected: usize,
        got: usize,
    },
    #[error("source planes do not hold a {width}x{height} {format:?} frame")]
    SourcePlanes {
        format: SourceFormat,
        width: u32,
        height: u32,
    },
    #[error("destination has {got} bytes, {expected} expected for {geometry}")]
    DestinationSize {
        geometry: String,
        expected: usize,
        got: usize,
    },
    #[error("conversion to {dst} failed: {reason}")]
    Converter { dst: PixelFormat, reason: String },
}

/// `(a * m) >> 16`: one `pmulhuw` lane once the loop is vectorised.
#[inline]
fn mulhi(a: u16, m: u16) -> u16 {
    ((u32::from(a) * u32::from(m)) >> 16) as u16
}

/// swscale's luma range conversion, limited → full. Its own formula works on a
/// 15-bit intermediate in 32 bits (`spec::luma_to_full` in the tests); this
/// form gives the same byte for each of the 256 inputs in 16-bit lanes, which
/// the compiler vectorises eight or sixteen at a time.
#[inline]
fn luma_to_full(y: u8) -> u8 {
    let t = u16::from(y.clamp(16, 235) - 16);
    (t + mulhi(t + 3, 10774)) as u8
}

/// swscale's luma range conversion, full → limited (see `luma_to_full`).
#[inline]
fn luma_to_limited(y: u8) -> u8 {
    let v = u16::from(y);
    (16 + v - mulhi(2 * v + 7, 4627)) as u8
}

/// swscale's chroma range conversion, full → limited (see `luma_to_full`).
#[inline]
fn chroma_to_limited(c: u8) -> u8 {
    let v = u16::from(c);
    (16 + v - mulhi(8 * v + 61, 996)) as u8
}

/// A range conversion a plane goes through when the ring's range differs
/// from the source's. Applied as the 16-bit arithmetic above, not as a
/// 256-entry table: a table lookup is one load per sample that the compiler
/// cannot vectorise (`examples/convert_cost.rs` prints what each costs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RangeMap {
    LumaToFull,
    LumaToLimited,
    ChromaToLimited,
}

/// Evaluates `$body` with `$f` bound to the function of `$map` (the identity
/// for `None`): one copy of the body per map, so that each loop is vectorised
/// with its own arithmetic inlined.
macro_rules! with_map {
    ($map:expr, |$f:ident| $body:expr) => {
        match $map {
            None => {
                let $f = |c: u8| c;
                $body
            }
            Some(RangeMap::LumaToFull) => {
                let $f = luma_to_full;
                $body
            }
            Some(RangeMap::LumaToLimited) => {
                let $f = luma_to_limited;
                $body
            }
            Some(RangeMap::ChromaToLimited) => {
                let $f = chroma_to_limited;
                $body
            }
        }
    };
}

impl RangeMap {
    /// `dst[i] = map(src[i])`.
    fn row(map: Option<RangeMap>, src: &[u8], dst: &mut [u8]) {
        if map.is_none() {
            return dst.copy_from_slice(src);
        }
        with_map!(map, |f| dst
            .iter_mut()
            .zip(src)
            .for_each(|(d, s)| *d = f(*s)))
    }

    /// Copies `rows` rows of `row` bytes of a strided plane into the packed
    /// `dst`, through `map` when set.
    fn plane(
        map: Option<RangeMap>,
        (src, stride): (&[u8], usize),
        row: usize,
        rows: usize,
        dst: &mut [u8],
    ) {
        if stride == row {
            RangeMap::row(map, &src[..row * rows], &mut dst[..row * rows]);
        } else {
            for (r, d) in dst.chunks_exact_mut(row).take(rows).enumerate() {
                RangeMap::row(map, &src[r * stride..r * stride + row], d);
            }
        }
    }

    /// Splits an interleaved `uv` row into `u` and `v` through `map`.
    fn split_row(map: Option<RangeMap>, uv: &[u8], u: &mut [u8], v: &mut [u8]) {
        with_map!(map, |f| {
            for ((uv, u), v) in uv.chunks_exact(2).zip(u).zip(v) {
                *u = f(uv[0]);
                *v = f(uv[1]);
            }
        })
    }

    /// Interleaves a `u` and a `v` row into `uv` through `map`.
    fn join_row(map: Option<RangeMap>, u: &[u8], v: &[u8], uv: &mut [u8]) {
        with_map!(map, |f| {
            for ((d, u), v) in uv.chunks_exact_mut(2).zip(u).zip(v) {
                d[0] = f(*u);
                d[1] = f(*v);
            }
        })
    }
}

/// One stream's conversion, set up once (range maps, sizes) and run per frame.
#[derive(Clone, Debug)]
pub struct Converter {
    src: SourceFormat,
    colour: Colour,
    dst: Geometry,
    src_bytes: usize,
    dst_bytes: usize,
    /// Applied to Y when the ring's range differs from the source's.
    luma: Option<RangeMap>,
    /// Applied to U and V when the ring's range differs from the source's.
    chroma: Option<RangeMap>,
}

impl Converter {
    /// A converter from `src` frames of the ring's width and height, read as
    /// `colour`, into frames of the ring's geometry `dst`.
    pub fn new(src: SourceFormat, colour: Colour, dst: Geometry) -> Result<Self, ConvertError> {
        let unsupported = |reason| ConvertError::Unsupported {
            src,
            src_width: dst.width,
            src_height: dst.height,
            dst: dst.pixel_format.to_string(),
            reason,
        };
        // At odd sizes ffmpeg 5.1's own bgr24 is far (up to 248 levels) from
        // every exact conversion of the same samples, so there is nothing to
        // match: such streams keep ffmpeg's conversion.
        if dst.width % 2 != 0 || dst.height % 2 != 0 {
            return Err(unsupported("odd width or height"));
        }
        let dst_bytes = dst
            .validate()
            .map_err(|_| unsupported("not a valid ring geometry"))?;
        let dst_bytes = usize::try_from(dst_bytes).map_err(|_| unsupported("too large"))?;
        let src_bytes = src
            .frame_bytes(dst.width, dst.height)
            .ok_or_else(|| unsupported("too large"))?;
        let full = colour.range == Range::Full;
        let (luma, chroma) = match dst.pixel_format {
            // ffmpeg's gray is full-range luma.
            PixelFormat::Gray if !full => (Some(RangeMap::LumaToFull), None),
            // ffmpeg's yuv420p and nv12 are limited range.
            PixelFormat::Yuv420p | PixelFormat::Nv12 if full => (
                Some(RangeMap::LumaToLimited),
                Some(RangeMap::ChromaToLimited),
            ),
            _ => (None, None),
        };
        Ok(Converter {
            src,
            colour,
            dst,
            src_bytes,
            dst_bytes,
            luma,
            chroma,
        })
    }

    /// The source layout this converter reads.
    pub fn source(&self) -> SourceFormat {
        self.src
    }

    /// Bytes of one source frame.
    pub fn source_bytes(&self) -> usize {
        self.src_bytes
    }

    /// Bytes of one ring frame.
    pub fn frame_bytes(&self) -> usize {
        self.dst_bytes
    }

    /// The ring's geometry.
    pub fn geometry(&self) -> Geometry {
        self.dst
    }

    /// True when a frame is copied unchanged (no per-pixel work).
    pub fn is_copy(&self) -> bool {
        self.luma.is_none()
            && matches!(
                (self.src, self.dst.pixel_format),
                (SourceFormat::Yuv420p, PixelFormat::Yuv420p)
                    | (SourceFormat::Nv12, PixelFormat::Nv12)
            )
    }

    /// Converts one source frame into `dst` (the slot's payload). Both sizes are
    /// checked first; on an error `dst` is untouched.
    pub fn convert(&self, src: &[u8], dst: &mut [u8]) -> Result<(), ConvertError> {
        let (w, h) = (self.dst.width, self.dst.height);
        if src.len() != self.src_bytes {
            return Err(ConvertError::SourceSize {
                format: self.src,
                width: w,
                height: h,
                expected: self.src_bytes,
                got: src.len(),
            });
        }
        let ys = w as usize * h as usize;
        let (cw, ch) = (w.div_ceil(2) as usize, h.div_ceil(2) as usize);
        let cs = cw * ch;
        let (y, chroma) = src.split_at(ys);
        let planes = match self.src {
            SourceFormat::Yuv420p => Planes {
                y: (y, w as usize),
                u: (&chroma[..cs], cw),
                v: (&chroma[cs..], cw),
            },
            SourceFormat::Nv12 => Planes {
                y: (y, w as usize),
                u: (chroma, 2 * cw),
                v: (&[], 0),
            },
        };
        self.convert_planes(&planes, dst)
    }

    /// Converts one source frame given as planes with row strides (a decoder's
    /// own frame, rows padded) into `dst`. The planes are checked to hold every
    /// row first; on an error `dst` is untouched.
    pub fn convert_planes(&self, p: &Planes<'_>, dst: &mut [u8]) -> Result<(), ConvertError> {
        let (w, h) = (self.dst.width, self.dst.height);
        if dst.len() != self.dst_bytes {
            return Err(ConvertError::DestinationSize {
                geometry: format!("{w}x{h} {}", self.dst.pixel_format),
                expected: self.dst_bytes,
                got: dst.len(),
            });
        }
        let (wu, hu) = (w as usize, h as usize);
        let (cw, ch) = (wu.div_ceil(2), hu.div_ceil(2));
        // Row widths of each plane in bytes.
        let (uw, vw) = match self.src {
            SourceFormat::Yuv420p => (cw, cw),
            SourceFormat::Nv12 => (2 * cw, 0),
        };
        let holds = |(plane, stride): (&[u8], usize), row: usize, rows: usize| {
            rows == 0 || row == 0 || (stride >= row && plane.len() >= (rows - 1) * stride + row)
        };
        if !(holds(p.y, wu, hu) && holds(p.u, uw, ch) && holds(p.v, vw, ch)) {
            return Err(ConvertError::SourcePlanes {
                format: self.src,
                width: w,
                height: h,
            });
        }
        let failed = |e: yuv::YuvError| ConvertError::Converter {
            dst: self.dst.pixel_format,
            reason: e.to_string(),
        };
        let stride32 = |s: usize| u32::try_from(s).unwrap_or(u32::MAX);
        match self.dst.pixel_format {
            PixelFormat::Bgr24 | PixelFormat::Rgb24 => {
                let bgr = self.dst.pixel_format == PixelFormat::Bgr24;
                let (range, matrix) = (self.colour.yuv_range(), self.colour.yuv_matrix());
                match self.src {
                    SourceFormat::Yuv420p => {
                        let img = YuvPlanarImage {
                            y_plane: p.y.0,
                            y_stride: stride32(p.y.1),
                            u_plane: p.u.0,
                            u_stride: stride32(p.u.1),
                            v_plane: p.v.0,
                            v_stride: stride32(p.v.1),
                            width: w,
                            height: h,
                        };
                        if bgr {
                            yuv::yuv420_to_bgr(&img, dst, w * 3, range, matrix)
                        } else {
                            yuv::yuv420_to_rgb(&img, dst, w * 3, range, matrix)
                        }
                    }
                    SourceFormat::Nv12 => {
                        let img = YuvBiPlanarImage {
                            y_plane: p.y.0,
                            y_stride: stride32(p.y.1),
                            uv_plane: p.u.0,
                            uv_stride: stride32(p.u.1),
                            width: w,
                            height: h,
                        };
                        let mode = YuvConversionMode::Balanced;
                        if bgr {
                            yuv::yuv_nv12_to_bgr(&img, dst, w * 3, range, matrix, mode)
                        } else {
                            yuv::yuv_nv12_to_rgb(&img, dst, w * 3, range, matrix, mode)
                        }
                    }
                }
                .map_err(failed)
            }
            PixelFormat::Gray => {
                RangeMap::plane(self.luma, p.y, wu, hu, dst);
                Ok(())
            }
            PixelFormat::Yuv420p => {
                // Even sizes only (the ring's geometry says so): cs == ys / 4.
                let (dy, dc) = dst.split_at_mut(wu * hu);
                RangeMap::plane(self.luma, p.y, wu, hu, dy);
                let (du, dv) = dc.split_at_mut(cw * ch);
                match self.src {
                    SourceFormat::Yuv420p => {
                        RangeMap::plane(self.chroma, p.u, cw, ch, du);
                        RangeMap::plane(self.chroma, p.v, cw, ch, dv);
                    }
                    SourceFormat::Nv12 => {
                        for r in 0..ch {
                            let uv = &p.u.0[r * p.u.1..r * p.u.1 + 2 * cw];
                            let (u, v) =
                                (&mut du[r * cw..(r + 1) * cw], &mut dv[r * cw..(r + 1) * cw]);
                            RangeMap::split_row(self.chroma, uv, u, v);
                        }
                    }
                }
                Ok(())
            }
            PixelFormat::Nv12 => {
                let (dy, duv) = dst.split_at_mut(wu * hu);
                RangeMap::plane(self.luma, p.y, wu, hu, dy);
                match self.src {
                    SourceFormat::Yuv420p => {
                        for r in 0..ch {
                            let u = &p.u.0[r * p.u.1..r * p.u.1 + cw];
                            let v = &p.v.0[r * p.v.1..r * p.v.1 + cw];
                            let d = &mut duv[r * 2 * cw..(r + 1) * 2 * cw];
                            RangeMap::join_row(self.chroma, u, v, d);
                        }
                    }
                    SourceFormat::Nv12 => RangeMap::plane(self.chroma, p.u, 2 * cw, ch, duv),
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// swscale's own range conversions, as it computes them: on the 15-bit
    /// intermediate (`lumRangeToJpeg`, `lumRangeFromJpeg`, `chrRangeFromJpeg`),
    /// then the 8-bit output's `(x + 64) >> 7`, rounded and clipped.
    mod spec {
        fn out8(x: i32) -> u8 {
            ((x + 64) >> 7).clamp(0, 255) as u8
        }

        pub fn luma_to_full(y: u8) -> u8 {
            let x = i32::from(y) << 7;
            out8((x.min(30189) * 19077 - 39057361) >> 14)
        }

        pub fn luma_to_limited(y: u8) -> u8 {
            out8(((i32::from(y) << 7) * 14071 + 33561947) >> 14)
        }

        pub fn chroma_to_limited(c: u8) -> u8 {
            out8(((i32::from(c) << 7) * 1799 + 4081085) >> 11)
        }
    }

    #[test]
    fn range_conversions_are_swscales_on_every_value() {
        for v in 0..=255u8 {
            assert_eq!(luma_to_full(v), spec::luma_to_full(v), "luma {v} to full");
            assert_eq!(
                luma_to_limited(v),
                spec::luma_to_limited(v),
                "luma {v} to limited"
            );
            assert_eq!(
                chroma_to_limited(v),
                spec::chroma_to_limited(v),
                "chroma {v} to limited"
            );
        }
    }

    /// A frame of `format` with every sample different, packed.
    fn packed(format: SourceFormat, w: u32, h: u32) -> Vec<u8> {
        let n = format.frame_bytes(w, h).unwrap();
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// The same frame with every row padded to `row + pad` bytes.
    fn strided(src: &[u8], format: SourceFormat, w: u32, h: u32, pad: usize) -> Vec<Vec<u8>> {
        let (w, h) = (w as usize, h as usize);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let dims: Vec<(usize, usize)> = match format {
            SourceFormat::Yuv420p => vec![(w, h), (cw, ch), (cw, ch)],
            SourceFormat::Nv12 => vec![(w, h), (2 * cw, ch)],
        };
        let mut at = 0;
        dims.iter()
            .map(|&(row, rows)| {
                let mut p = vec![0xAAu8; (row + pad) * rows];
                for r in 0..rows {
                    p[r * (row + pad)..r * (row + pad) + row].copy_from_slice(&src[at..at + row]);
                    at += row;
                }
                p
            })
            .collect()
    }

    #[test]
    fn padded_rows_convert_as_packed_ones() {
        let (w, h) = (64, 34);
        for format in [SourceFormat::Yuv420p, SourceFormat::Nv12] {
            for range in [Range::Limited, Range::Full] {
                for pf in [
                    PixelFormat::Bgr24,
                    PixelFormat::Rgb24,
                    PixelFormat::Gray,
                    PixelFormat::Yuv420p,
                    PixelFormat::Nv12,
                ] {
                    let colour = Colour {
                        matrix: Matrix::Bt709,
                        range,
                    };
                    let g = Geometry {
                        width: w,
                        height: h,
                        pixel_format: pf,
                    };
                    let c = Converter::new(format, colour, g).unwrap();
                    let src = packed(format, w, h);
                    let mut want = vec![0u8; c.frame_bytes()];
                    c.convert(&src, &mut want).unwrap();
                    let planes = strided(&src, format, w, h, 13);
                    let (cw, row) = ((w as usize).div_ceil(2), w as usize);
                    let p = match format {
                        SourceFormat::Yuv420p => Planes {
                            y: (&planes[0], row + 13),
                            u: (&planes[1], cw + 13),
                            v: (&planes[2], cw + 13),
                        },
                        SourceFormat::Nv12 => Planes {
                            y: (&planes[0], row + 13),
                            u: (&planes[1], 2 * cw + 13),
                            v: (&[], 0),
                        },
                    };
                    let mut got = vec![0u8; c.frame_bytes()];
                    c.convert_planes(&p, &mut got).unwrap();
                    assert!(got == want, "{format:?} {range:?} -> {pf}");
                }
            }
        }
    }

    #[test]
    fn planes_too_short_are_refused_and_change_nothing() {
        let g = Geometry {
            width: 16,
            height: 16,
            pixel_format: PixelFormat::Bgr24,
        };
        let c = Converter::new(SourceFormat::Yuv420p, Colour::DEFAULT, g).unwrap();
        let y = vec![16u8; 16 * 15]; // one row short
        let uv = vec![128u8; 64];
        let p = Planes {
            y: (&y, 16),
            u: (&uv, 8),
            v: (&uv, 8),
        };
        let mut dst = vec![7u8; c.frame_bytes()];
        assert!(matches!(
            c.convert_planes(&p, &mut dst),
            Err(ConvertError::SourcePlanes { .. })
        ));
        assert!(dst.iter().all(|b| *b == 7));
        // A stride shorter than the row is refused too.
        let y = vec![16u8; 16 * 16];
        let p = Planes {
            y: (&y, 8),
            u: (&uv, 8),
            v: (&uv, 8),
        };
        assert!(c.convert_planes(&p, &mut dst).is_err());
    }
}
