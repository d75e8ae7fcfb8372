//! Streaming text decoding: UTF-8 (with or without BOM) or GB18030, decided from the bytes.
//!
//! Output is always UTF-8. The encoding is decided at the first non-ASCII bytes (ASCII is
//! the same in both): a window after them that is valid UTF-8 means UTF-8, otherwise
//! valid GB18030 means GB18030, otherwise the upload is refused with the byte offset.
//! After that decision any invalid byte is a fatal error naming its offset.

use encoding_rs::{DecoderResult, Encoding, GB18030, UTF_8};
use serde::{Deserialize, Serialize};

/// The text encoding an upload was read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextEncoding {
    Utf8,
    /// UTF-8 starting with a byte order mark (as Excel writes "CSV UTF-8").
    Utf8Bom,
    Gb18030,
}

/// How many bytes after the first non-ASCII byte are looked at to decide the encoding.
const DECIDE_WINDOW: usize = 4096;
/// How many bytes at the start are checked for NUL bytes (a sign of a binary file).
const BINARY_SNIFF_BYTES: u64 = 8192;

pub(crate) struct DecodeError {
    pub offset: u64,
    pub expected: &'static str,
}

enum State {
    /// Fewer than 4 bytes seen: waiting to check for a BOM or a ZIP signature.
    Start(Vec<u8>),
    /// Only ASCII so far; `pending` holds bytes from the first non-ASCII byte on.
    Ascii {
        pending: Vec<u8>,
    },
    Committed(encoding_rs::Decoder),
}

pub(crate) struct TextDecoder {
    state: State,
    /// Raw bytes handed to the decoder so far (offset of the next input byte).
    consumed: u64,
    encoding: Option<TextEncoding>,
    /// Bytes checked for NUL so far.
    sniffed: u64,
}

pub(crate) enum StartError {
    Utf16,
    Zip,
    Binary,
}

impl TextDecoder {
    pub fn new() -> Self {
        TextDecoder {
            state: State::Start(Vec::new()),
            consumed: 0,
            encoding: None,
            sniffed: 0,
        }
    }

    /// The encoding decided so far (`Utf8` for pure ASCII).
    pub fn encoding(&self) -> TextEncoding {
        self.encoding.unwrap_or(TextEncoding::Utf8)
    }

    /// Decodes `input`, appending UTF-8 to `out`. On a decoding error, `out` holds the text
    /// before the bad byte.
    pub fn decode(
        &mut self,
        input: &[u8],
        last: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), Result<DecodeError, StartError>> {
        if let State::Start(buf) = &mut self.state {
            buf.extend_from_slice(input);
            if buf.len() < 4 && !last {
                return Ok(());
            }
            let buf = std::mem::take(buf);
            if buf.starts_with(b"PK\x03\x04") || buf.starts_with(b"PK\x05\x06") {
                return Err(Err(StartError::Zip));
            }
            if buf.starts_with(&[0xFF, 0xFE]) || buf.starts_with(&[0xFE, 0xFF]) {
                return Err(Err(StartError::Utf16));
            }
            if buf.starts_with(&[0xEF, 0xBB, 0xBF]) {
                self.encoding = Some(TextEncoding::Utf8Bom);
                self.consumed = 3;
                self.state = State::Committed(UTF_8.new_decoder_without_bom_handling());
                return self.decode(&buf[3..], last, out);
            }
            self.state = State::Ascii {
                pending: Vec::new(),
            };
            return self.decode(&buf, last, out);
        }
        // Text never holds NUL bytes; images, PDFs and spreadsheets do, early on.
        if self.sniffed < BINARY_SNIFF_BYTES {
            let n = input
                .len()
                .min((BINARY_SNIFF_BYTES - self.sniffed) as usize);
            if memchr::memchr(0, &input[..n]).is_some() {
                return Err(Err(StartError::Binary));
            }
            self.sniffed += n as u64;
        }
        if let State::Ascii { pending } = &mut self.state {
            if pending.is_empty() {
                let ascii = input
                    .iter()
                    .position(|b| !b.is_ascii())
                    .unwrap_or(input.len());
                out.extend_from_slice(&input[..ascii]);
                self.consumed += ascii as u64;
                pending.extend_from_slice(&input[ascii..]);
            } else {
                pending.extend_from_slice(input);
            }
            if pending.is_empty() || (pending.len() < DECIDE_WINDOW && !last) {
                return Ok(());
            }
            let pending = std::mem::take(pending);
            return self.decide(&pending, last, out).map_err(Ok);
        }
        let State::Committed(decoder) = &mut self.state else {
            unreachable!("every other state returned above")
        };
        let (result, read) = run(decoder, input, last, out);
        match result {
            Ok(()) => {
                self.consumed += read as u64;
                Ok(())
            }
            Err(bad_at) => Err(Ok(DecodeError {
                offset: self.consumed + bad_at as u64,
                expected: match self.encoding {
                    Some(TextEncoding::Gb18030) => "GB18030",
                    _ => "UTF-8",
                },
            })),
        }
    }

    /// Chooses the encoding from the bytes after the first non-ASCII byte.
    fn decide(&mut self, pending: &[u8], last: bool, out: &mut Vec<u8>) -> Result<(), DecodeError> {
        let start = out.len();
        let mut utf8_error_at = 0;
        for (encoding, kind) in [
            (UTF_8, TextEncoding::Utf8),
            (GB18030, TextEncoding::Gb18030),
        ] {
            let mut decoder = encoding_for(encoding);
            match run(&mut decoder, pending, last, out) {
                (Ok(()), read) => {
                    self.consumed += read as u64;
                    self.encoding = Some(kind);
                    self.state = State::Committed(decoder);
                    return Ok(());
                }
                (Err(bad_at), _) => {
                    if kind == TextEncoding::Utf8 {
                        utf8_error_at = bad_at;
                    }
                    out.truncate(start);
                }
            }
        }
        Err(DecodeError {
            offset: self.consumed + utf8_error_at as u64,
            expected: "UTF-8 (nor GB18030)",
        })
    }
}

fn encoding_for(encoding: &'static Encoding) -> encoding_rs::Decoder {
    encoding.new_decoder_without_bom_handling()
}

/// Decodes all of `input`; on malformed input returns the offset of the first bad byte
/// within `input` (the text before it is in `out`).
fn run(
    decoder: &mut encoding_rs::Decoder,
    input: &[u8],
    last: bool,
    out: &mut Vec<u8>,
) -> (Result<(), usize>, usize) {
    let mut total_read = 0;
    loop {
        let needed = decoder
            .max_utf8_buffer_length_without_replacement(input.len() - total_read)
            .unwrap_or(input.len() * 3 + 16);
        let start = out.len();
        out.resize(start + needed.max(16), 0);
        let (result, read, written) = decoder.decode_to_utf8_without_replacement(
            &input[total_read..],
            &mut out[start..],
            last,
        );
        out.truncate(start + written);
        total_read += read;
        match result {
            DecoderResult::InputEmpty => return (Ok(()), total_read),
            DecoderResult::OutputFull => continue,
            DecoderResult::Malformed(bad, extra) => {
                let at = total_read - extra as usize - bad as usize;
                return (Err(at), total_read);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8], chunk: usize) -> Result<(String, TextEncoding), u64> {
        let mut d = TextDecoder::new();
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk) {
            if let Err(Ok(e)) = d.decode(piece, false, &mut out) {
                return Err(e.offset);
            }
        }
        if let Err(Ok(e)) = d.decode(&[], true, &mut out) {
            return Err(e.offset);
        }
        Ok((String::from_utf8(out).unwrap(), d.encoding()))
    }

    #[test]
    fn utf8_gb18030_and_bom_are_told_apart_in_any_chunking() {
        let text = "text,label\n合同条款,违约\n";
        let (gb, _, _) = GB18030.encode(text);
        for chunk in [1, 2, 3, 7, 4096] {
            assert_eq!(
                decode_all(text.as_bytes(), chunk).unwrap(),
                (text.into(), TextEncoding::Utf8)
            );
            assert_eq!(
                decode_all(&gb, chunk).unwrap(),
                (text.into(), TextEncoding::Gb18030)
            );
            let bom = [&[0xEF, 0xBB, 0xBF][..], text.as_bytes()].concat();
            assert_eq!(
                decode_all(&bom, chunk).unwrap(),
                (text.into(), TextEncoding::Utf8Bom)
            );
        }
    }

    #[test]
    fn invalid_bytes_report_their_offset() {
        // 0xFF is neither UTF-8 nor a GB18030 lead byte.
        let bytes = b"text,label\nabc\xFF\xFF,x\n";
        assert_eq!(decode_all(bytes, 5), Err(14));
        // UTF-8 decided first, then a GB18030 byte pair later: fatal at that byte.
        let mut mixed = "a,b\n合,x\n".as_bytes().to_vec();
        mixed.extend(std::iter::repeat_n(b'a', 5000));
        let at = mixed.len() as u64;
        mixed.extend_from_slice(&[0xD6, 0xD0, b'\n']);
        assert_eq!(decode_all(&mixed, 100), Err(at));
    }
}
