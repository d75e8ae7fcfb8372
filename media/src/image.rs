//! Still images: JPEG, PNG and WebP decoded to 8-bit RGB, with the EXIF orientation
//! applied (a phone photo taken upright arrives upright), and the square crop and resize an
//! image encoder needs.
//!
//! The width and height are read from the header and checked against [`Limits`] before any
//! pixel is decoded, so a small file that declares a huge image (a decompression bomb) is
//! refused without allocating for it; the `image` crate's own allocation limit backs this
//! up. Decoding runs through [`guarded`].

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader};

use crate::{Limits, MediaError, check_size, guarded};

/// A decoded image: `rgb` holds `width × height` pixels, row by row, 3 bytes each.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

/// The formats [`decode`] reads, by lower-case file extension.
pub const EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// Decodes a JPEG, PNG or WebP file (recognized by its content) to RGB, upright.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Image, MediaError> {
    check_size(bytes, limits)?;
    guarded(|| {
        let mut reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(MediaError::malformed)?;
        match reader.format() {
            Some(ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP) => {}
            Some(other) => {
                return Err(MediaError::Unsupported(format!(
                    "{} images (JPEG, PNG and WebP are read)",
                    other.extensions_str().first().unwrap_or(&"these")
                )));
            }
            None => {
                return Err(MediaError::Unsupported(
                    "not a JPEG, PNG or WebP image".into(),
                ));
            }
        }
        // A backstop behind our own check of the header's dimensions (which names the
        // limit): RGBA at 16 bits per channel is the most a decoder holds per pixel.
        let mut decoder_limits = image::Limits::default();
        decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(16).max(64 << 20));
        reader.limits(decoder_limits);
        let mut decoder = reader.into_decoder().map_err(|e| image_error(e, limits))?;
        let (width, height) = decoder.dimensions();
        check_dimensions(width, height, limits)?;
        let orientation = decoder
            .orientation()
            .unwrap_or(image::metadata::Orientation::NoTransforms);
        let mut image = DynamicImage::from_decoder(decoder).map_err(|e| image_error(e, limits))?;
        image.apply_orientation(orientation);
        let rgb = image.into_rgb8();
        Ok(Image {
            width: rgb.width(),
            height: rgb.height(),
            rgb: rgb.into_raw(),
        })
    })
}

/// Refuses an image whose declared size exceeds the limits.
pub fn check_dimensions(width: u32, height: u32, limits: &Limits) -> Result<(), MediaError> {
    if width == 0 || height == 0 {
        return Err(MediaError::malformed(format!(
            "the image is {width}×{height} pixels"
        )));
    }
    let side = width.max(height);
    if side > limits.max_side {
        return Err(MediaError::too_large(
            "the image's longest side",
            format!("{side} pixels ({width}×{height})"),
            format!("{} pixels", limits.max_side),
        ));
    }
    let pixels = width as u64 * height as u64;
    if pixels > limits.max_pixels {
        return Err(MediaError::too_large(
            "the image",
            format!("{width}×{height} = {pixels} pixels"),
            format!("{} pixels", limits.max_pixels),
        ));
    }
    Ok(())
}

fn image_error(e: ImageError, limits: &Limits) -> MediaError {
    match e {
        ImageError::Limits(e) => MediaError::too_large(
            "the image",
            format!("more than the decoder may allocate ({e})"),
            format!("{} pixels", limits.max_pixels),
        ),
        ImageError::Unsupported(e) => MediaError::Unsupported(e.to_string()),
        ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            MediaError::malformed("the image is truncated")
        }
        other => MediaError::malformed(other),
    }
}

impl Image {
    /// The image's central square covering `fraction` of its shorter side, resized to
    /// `size × size` (a triangle filter, widened when shrinking so it averages rather than
    /// skips pixels). `fraction = 224/256` is the crop ImageNet models are evaluated with.
    pub fn center_crop_resize(&self, size: u32, fraction: f64) -> Result<Image, MediaError> {
        let buffer = image::RgbImage::from_raw(self.width, self.height, self.rgb.clone())
            .ok_or_else(|| {
                MediaError::malformed(format!(
                    "{} bytes do not make a {}×{} RGB image",
                    self.rgb.len(),
                    self.width,
                    self.height
                ))
            })?;
        let short = self.width.min(self.height) as f64;
        let side = ((short * fraction.clamp(0.0, 1.0)).round() as u32).max(1);
        let x = (self.width - side.min(self.width)) / 2;
        let y = (self.height - side.min(self.height)) / 2;
        let crop = image::imageops::crop_imm(&buffer, x, y, side, side).to_image();
        let resized =
            image::imageops::resize(&crop, size, size, image::imageops::FilterType::Triangle);
        Ok(Image {
            width: size,
            height: size,
            rgb: resized.into_raw(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, RgbImage};

    /// A 6×4 image whose every pixel is distinct: red = x·40, green = y·60, blue = 200.
    fn gradient(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 40) as u8, (y * 60) as u8, 200])
        })
    }

    fn encode(image: &RgbImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    /// A baseline JPEG with an EXIF APP1 segment holding `Orientation = orientation`.
    fn jpeg_with_orientation(image: &RgbImage, orientation: u16) -> Vec<u8> {
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 100)
            .write_image(
                image.as_raw(),
                image.width(),
                image.height(),
                image::ExtendedColorType::Rgb8,
            )
            .unwrap();
        // TIFF header (little-endian), IFD0 with one entry: tag 0x0112, SHORT, count 1.
        let mut tiff = b"II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0".to_vec();
        tiff.extend_from_slice(&orientation.to_le_bytes());
        tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        let len = (app1.len() + 2) as u16;
        let mut out = jpeg[..2].to_vec(); // SOI
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&app1);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    /// PNG's CRC-32 (polynomial 0xEDB88320), bit by bit.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in bytes {
            crc ^= byte as u32;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    fn pixel(image: &Image, x: u32, y: u32) -> [u8; 3] {
        let at = ((y * image.width + x) * 3) as usize;
        [image.rgb[at], image.rgb[at + 1], image.rgb[at + 2]]
    }

    #[test]
    fn png_and_lossless_webp_decode_to_the_exact_pixels() {
        let source = gradient(6, 4);
        for format in [ImageFormat::Png, ImageFormat::WebP] {
            let image = decode(&encode(&source, format), &Limits::default()).unwrap();
            assert_eq!((image.width, image.height), (6, 4), "{format:?}");
            assert_eq!(image.rgb, source.as_raw().clone(), "{format:?}");
        }
    }

    #[test]
    fn jpeg_exif_orientation_is_applied() {
        // A 16×8 image, left half black, right half white.
        let source = RgbImage::from_fn(16, 8, |x, _| {
            if x < 8 {
                image::Rgb([0, 0, 0])
            } else {
                image::Rgb([255, 255, 255])
            }
        });
        let upright = decode(&jpeg_with_orientation(&source, 1), &Limits::default()).unwrap();
        assert_eq!((upright.width, upright.height), (16, 8));
        assert!(pixel(&upright, 1, 4)[0] < 30 && pixel(&upright, 14, 4)[0] > 225);
        // Orientation 6: the stored image must be turned 90° clockwise to be upright, so
        // the left (black) half ends up on top.
        let turned = decode(&jpeg_with_orientation(&source, 6), &Limits::default()).unwrap();
        assert_eq!((turned.width, turned.height), (8, 16));
        assert!(pixel(&turned, 4, 1)[0] < 30, "{:?}", pixel(&turned, 4, 1));
        assert!(
            pixel(&turned, 4, 14)[0] > 225,
            "{:?}",
            pixel(&turned, 4, 14)
        );
    }

    #[test]
    fn a_truncated_file_is_malformed() {
        let png = encode(&gradient(64, 64), ImageFormat::Png);
        let err = decode(&png[..png.len() / 2], &Limits::default()).unwrap_err();
        assert!(matches!(err, MediaError::Malformed(_)), "{err}");
        let jpeg = jpeg_with_orientation(&gradient(64, 64), 1);
        let err = decode(&jpeg[..jpeg.len() / 2], &Limits::default());
        // JPEG decoders may fill a cut scan with grey; either it is refused or it decodes
        // to the declared size, never a panic or a wrong size.
        if let Ok(image) = err {
            assert_eq!((image.width, image.height), (64, 64));
        }
    }

    #[test]
    fn huge_declared_dimensions_are_refused_before_decoding() {
        // A valid PNG header declaring 100000×100000 pixels, with almost no data behind it.
        let mut png = encode(&gradient(1, 1), ImageFormat::Png);
        // IHDR's width and height are bytes 16..24, its CRC (over type and data) 29..33.
        png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = decode(&png, &Limits::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the image's longest side is 100000 pixels (100000×100000); the limit is 16384 pixels"
        );

        let limits = Limits {
            max_pixels: 100,
            ..Limits::default()
        };
        let err = decode(&encode(&gradient(20, 10), ImageFormat::Png), &limits).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the image is 20×10 = 200 pixels; the limit is 100 pixels"
        );
        let limits = Limits {
            max_side: 16,
            ..Limits::default()
        };
        let err = decode(&encode(&gradient(20, 10), ImageFormat::Png), &limits).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("the image's longest side is 20 pixels"),
            "{err}"
        );
    }

    #[test]
    fn other_formats_and_garbage_are_refused() {
        let gif_like = b"GIF89a\x01\0\x01\0\0\0\0;".to_vec();
        assert!(matches!(
            decode(&gif_like, &Limits::default()),
            Err(MediaError::Unsupported(_))
        ));
        assert!(matches!(
            decode(b"not an image at all", &Limits::default()),
            Err(MediaError::Unsupported(_))
        ));
    }

    #[test]
    fn center_crop_resize_takes_the_middle() {
        // 30×10: the centre square is x in 10..20; left third red, middle green, right blue.
        let source = RgbImage::from_fn(30, 10, |x, _| match x {
            0..10 => image::Rgb([255, 0, 0]),
            10..20 => image::Rgb([0, 255, 0]),
            _ => image::Rgb([0, 0, 255]),
        });
        let image = Image {
            width: 30,
            height: 10,
            rgb: source.into_raw(),
        };
        let out = image.center_crop_resize(4, 1.0).unwrap();
        assert_eq!((out.width, out.height, out.rgb.len()), (4, 4, 48));
        assert!(out.rgb.chunks(3).all(|p| p == [0, 255, 0]), "{:?}", out.rgb);
    }
}
