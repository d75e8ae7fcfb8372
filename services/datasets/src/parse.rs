//! Push parsers that cut decoded UTF-8 text into records with their line numbers.
//!
//! Both take text in arbitrary chunks and hand each complete record to a [`RecordSink`],
//! so neither ever holds more than one record.

use crate::DatasetError;

/// Receives records as they are parsed.
pub(crate) trait RecordSink {
    /// A CSV record that starts on `line`.
    fn csv_record(&mut self, line: u64, fields: &[&str]) -> Result<(), DatasetError>;
    /// A JSONL line (without its line break).
    fn json_line(&mut self, line: u64, text: &str) -> Result<(), DatasetError>;
    /// A quoted value opened on `line` never closed before the end of the file.
    fn unterminated_quote(&mut self, line: u64);
}

/// The delimiters that are detected, in the order ties are broken.
const DELIMITERS: [u8; 4] = [b',', b'\t', b';', b'|'];

/// The delimiter used most (outside quotes) in the header line; `,` when none is.
pub(crate) fn sniff_delimiter(header_line: &[u8]) -> u8 {
    let mut counts = [0usize; 4];
    let mut in_quotes = false;
    for &b in header_line {
        if b == b'"' {
            in_quotes = !in_quotes;
        } else if b == b'\n' {
            break;
        } else if !in_quotes && let Some(i) = DELIMITERS.iter().position(|&d| d == b) {
            counts[i] += 1;
        }
    }
    let mut best = 0;
    for i in 1..DELIMITERS.len() {
        if counts[i] > counts[best] {
            best = i;
        }
    }
    DELIMITERS[best]
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    StartField,
    Unquoted,
    Quoted,
    /// A `"` inside a quoted value: either the end of it or the first of `""`.
    QuoteInQuoted,
}

/// RFC 4180 CSV with any one-byte delimiter, CRLF or LF line breaks, quoted values that
/// may hold delimiters, `""` and line breaks. Lenient where Excel is: a quote in the
/// middle of an unquoted value is kept as a character.
pub(crate) struct CsvParser {
    delimiter: u8,
    state: State,
    record: Vec<u8>,
    ends: Vec<usize>,
    /// Whether the current field was quoted (a quoted field keeps a trailing `\r`).
    field_quoted: bool,
    line: u64,
    record_line: u64,
    /// Line where the open quoted value started.
    quote_line: u64,
    in_record: bool,
    max_row_bytes: usize,
}

impl CsvParser {
    pub fn new(delimiter: u8, max_row_bytes: usize) -> Self {
        CsvParser {
            delimiter,
            state: State::StartField,
            record: Vec::new(),
            ends: Vec::new(),
            field_quoted: false,
            line: 1,
            record_line: 1,
            quote_line: 1,
            in_record: false,
            max_row_bytes,
        }
    }

    /// The line being read (1-based).
    pub fn line(&self) -> u64 {
        self.line
    }

    pub fn feed(&mut self, input: &[u8], sink: &mut impl RecordSink) -> Result<(), DatasetError> {
        let delimiter = self.delimiter;
        let mut i = 0;
        while i < input.len() {
            if !self.in_record {
                self.in_record = true;
                self.record_line = self.line;
            }
            match self.state {
                State::StartField | State::Unquoted => {
                    if self.state == State::StartField && input[i] == b'"' {
                        self.state = State::Quoted;
                        self.field_quoted = true;
                        self.quote_line = self.line;
                        i += 1;
                        continue;
                    }
                    // Copy the run of plain bytes at once.
                    let rest = &input[i..];
                    let stop = memchr::memchr2(delimiter, b'\n', rest).unwrap_or(rest.len());
                    self.record.extend_from_slice(&rest[..stop]);
                    i += stop;
                    self.state = State::Unquoted;
                    if stop < rest.len() {
                        let b = rest[stop];
                        i += 1;
                        if b == delimiter {
                            self.end_field();
                        } else {
                            self.end_record(sink)?;
                            self.line += 1;
                        }
                    }
                }
                State::Quoted => {
                    let rest = &input[i..];
                    let stop = memchr::memchr2(b'"', b'\n', rest).unwrap_or(rest.len());
                    self.record.extend_from_slice(&rest[..stop]);
                    i += stop;
                    if stop < rest.len() {
                        i += 1;
                        if rest[stop] == b'"' {
                            self.state = State::QuoteInQuoted;
                        } else {
                            self.record.push(b'\n');
                            self.line += 1;
                        }
                    }
                }
                State::QuoteInQuoted => {
                    let b = input[i];
                    i += 1;
                    if b == b'"' {
                        self.record.push(b'"');
                        self.state = State::Quoted;
                    } else if b == delimiter {
                        self.end_field();
                    } else if b == b'\n' {
                        self.end_record(sink)?;
                        self.line += 1;
                    } else if b != b'\r' {
                        // `"abc"def`: keep the text, as spreadsheet programs do.
                        self.record.push(b);
                        self.state = State::Unquoted;
                    }
                }
            }
            if self.record.len() > self.max_row_bytes {
                return Err(DatasetError::RowTooLong {
                    line: self.record_line,
                    limit: self.max_row_bytes,
                });
            }
        }
        Ok(())
    }

    pub fn finish(&mut self, sink: &mut impl RecordSink) -> Result<(), DatasetError> {
        match self.state {
            State::Quoted => {
                sink.unterminated_quote(self.quote_line);
                self.reset();
                Ok(())
            }
            _ if self.in_record => self.end_record(sink),
            _ => Ok(()),
        }
    }

    fn end_field(&mut self) {
        if !self.field_quoted && self.record.last() == Some(&b'\r') {
            self.record.pop();
        }
        self.ends.push(self.record.len());
        self.field_quoted = false;
        self.state = State::StartField;
    }

    fn end_record(&mut self, sink: &mut impl RecordSink) -> Result<(), DatasetError> {
        self.end_field();
        let text = std::str::from_utf8(&self.record)
            .expect("fields are cut at ASCII bytes of valid UTF-8");
        let mut fields = Vec::with_capacity(self.ends.len());
        let mut start = 0;
        for &end in &self.ends {
            fields.push(&text[start..end]);
            start = end;
        }
        let result = sink.csv_record(self.record_line, &fields);
        self.reset();
        result
    }

    fn reset(&mut self) {
        self.record.clear();
        self.ends.clear();
        self.field_quoted = false;
        self.state = State::StartField;
        self.in_record = false;
    }
}

/// JSON Lines: one JSON value per line.
pub(crate) struct JsonlParser {
    partial: Vec<u8>,
    line: u64,
    max_row_bytes: usize,
}

impl JsonlParser {
    pub fn new(max_row_bytes: usize) -> Self {
        JsonlParser {
            partial: Vec::new(),
            line: 1,
            max_row_bytes,
        }
    }

    pub fn line(&self) -> u64 {
        self.line
    }

    pub fn feed(&mut self, input: &[u8], sink: &mut impl RecordSink) -> Result<(), DatasetError> {
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', input) {
            if self.partial.is_empty() {
                self.emit(&input[start..end], sink)?;
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&input[start..end]);
                self.emit(&line, sink)?;
                line.clear();
                self.partial = line;
            }
            start = end + 1;
        }
        self.partial.extend_from_slice(&input[start..]);
        if self.partial.len() > self.max_row_bytes {
            return Err(DatasetError::RowTooLong {
                line: self.line,
                limit: self.max_row_bytes,
            });
        }
        Ok(())
    }

    pub fn finish(&mut self, sink: &mut impl RecordSink) -> Result<(), DatasetError> {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.emit(&line, sink)?;
        }
        Ok(())
    }

    fn emit(&mut self, bytes: &[u8], sink: &mut impl RecordSink) -> Result<(), DatasetError> {
        if bytes.len() > self.max_row_bytes {
            return Err(DatasetError::RowTooLong {
                line: self.line,
                limit: self.max_row_bytes,
            });
        }
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let text = std::str::from_utf8(bytes).expect("lines are cut at ASCII bytes of valid UTF-8");
        let line = self.line;
        self.line += 1;
        sink.json_line(line, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect {
        records: Vec<(u64, Vec<String>)>,
        unterminated: Option<u64>,
    }

    impl RecordSink for Collect {
        fn csv_record(&mut self, line: u64, fields: &[&str]) -> Result<(), DatasetError> {
            self.records
                .push((line, fields.iter().map(|s| s.to_string()).collect()));
            Ok(())
        }
        fn json_line(&mut self, line: u64, text: &str) -> Result<(), DatasetError> {
            self.records.push((line, vec![text.to_string()]));
            Ok(())
        }
        fn unterminated_quote(&mut self, line: u64) {
            self.unterminated = Some(line);
        }
    }

    fn parse_csv(text: &str, chunk: usize) -> Collect {
        let mut p = CsvParser::new(b',', 1 << 20);
        let mut sink = Collect::default();
        for piece in text.as_bytes().chunks(chunk) {
            p.feed(piece, &mut sink).unwrap();
        }
        p.finish(&mut sink).unwrap();
        sink
    }

    #[test]
    fn quotes_line_breaks_and_crlf_in_any_chunking() {
        let text = "a,b\r\n\"x, \"\"y\"\"\",\"two\nlines\"\r\nlast,row";
        for chunk in [1, 2, 5, 100] {
            let got = parse_csv(text, chunk);
            assert_eq!(
                got.records,
                vec![
                    (1, vec!["a".into(), "b".into()]),
                    (2, vec!["x, \"y\"".into(), "two\nlines".into()]),
                    (4, vec!["last".into(), "row".into()]),
                ]
            );
        }
    }

    #[test]
    fn an_unclosed_quote_is_reported_at_its_line() {
        let got = parse_csv("a,b\nx,\"open\ny,z\n", 3);
        assert_eq!(got.records.len(), 1);
        assert_eq!(got.unterminated, Some(2));
    }

    #[test]
    fn a_row_over_the_limit_is_fatal() {
        let mut p = CsvParser::new(b',', 10);
        let err = p
            .feed(b"a,\"bbbbbbbbbbbbbbbbb", &mut Collect::default())
            .unwrap_err();
        assert!(matches!(err, DatasetError::RowTooLong { line: 1, .. }));
    }

    #[test]
    fn delimiter_is_the_most_used_outside_quotes() {
        assert_eq!(sniff_delimiter(b"text,label\n"), b',');
        assert_eq!(sniff_delimiter(b"text\tlabel\ttags\n"), b'\t');
        assert_eq!(sniff_delimiter(b"\"a,b\";label;x\n"), b';');
        assert_eq!(sniff_delimiter(b"text\n"), b',');
    }

    #[test]
    fn jsonl_lines_keep_their_numbers() {
        let mut p = JsonlParser::new(1 << 20);
        let mut sink = Collect::default();
        for piece in b"{\"a\":1}\r\n\n{\"a\":2}".chunks(3) {
            p.feed(piece, &mut sink).unwrap();
        }
        p.finish(&mut sink).unwrap();
        assert_eq!(
            sink.records,
            vec![
                (1, vec!["{\"a\":1}".into()]),
                (2, vec!["".into()]),
                (3, vec!["{\"a\":2}".into()])
            ]
        );
    }
}
