//! Reading an import file line by line, each line capped at
//! [`MAX_LINE_BYTES`].

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use super::MAX_LINE_BYTES;

/// One line read from the file.
pub(super) enum RawLine {
    Text(Vec<u8>),
    TooLong,
}

/// Reads lines of at most [`MAX_LINE_BYTES`] without ever buffering more.
pub(super) struct LineReader<R> {
    pub(super) inner: R,
    pub(super) offset: u64,
    pub(super) number: u64,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    /// `(line number, offset after the line, line)`, `None` at the end.
    pub(super) async fn next(&mut self) -> std::io::Result<Option<(u64, u64, RawLine)>> {
        let mut line = Vec::new();
        let mut too_long = false;
        let mut read_any = false;
        loop {
            let available = self.inner.fill_buf().await?;
            if available.is_empty() {
                if !read_any {
                    return Ok(None);
                }
                break;
            }
            read_any = true;
            let newline = available.iter().position(|b| *b == b'\n');
            let chunk = &available[..newline.unwrap_or(available.len())];
            if !too_long {
                if line.len() + chunk.len() > MAX_LINE_BYTES {
                    too_long = true;
                    line = Vec::new();
                } else {
                    line.extend_from_slice(chunk);
                }
            }
            let consumed = newline.map_or(available.len(), |at| at + 1);
            self.inner.consume(consumed);
            self.offset += consumed as u64;
            if newline.is_some() {
                break;
            }
        }
        self.number += 1;
        let raw = if too_long {
            RawLine::TooLong
        } else {
            RawLine::Text(line)
        };
        Ok(Some((self.number, self.offset, raw)))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::BufReader;

    use super::*;

    async fn read_all(input: &[u8]) -> Vec<(u64, u64, Option<Vec<u8>>)> {
        let mut reader = LineReader {
            inner: BufReader::with_capacity(16, input),
            offset: 0,
            number: 0,
        };
        let mut lines = Vec::new();
        while let Some((number, end, raw)) = reader.next().await.unwrap() {
            let text = match raw {
                RawLine::Text(text) => Some(text),
                RawLine::TooLong => None,
            };
            lines.push((number, end, text));
        }
        lines
    }

    #[tokio::test]
    async fn lines_are_read_with_offsets_and_a_length_cap() {
        let long = "x".repeat(MAX_LINE_BYTES + 1);
        let input = format!("first line spanning buffers\n\n{long}\nlast");
        let lines = read_all(input.as_bytes()).await;
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[0],
            (1, 28, Some(b"first line spanning buffers".to_vec()))
        );
        assert_eq!(lines[1], (2, 29, Some(Vec::new())));
        assert_eq!(lines[2], (3, 29 + long.len() as u64 + 1, None));
        assert_eq!(lines[3], (4, input.len() as u64, Some(b"last".to_vec())));
        assert!(read_all(b"").await.is_empty());
        assert_eq!(read_all(b"a\n").await.len(), 1, "no phantom last line");
    }
}
