//! Lines from a child's output, read forever without trusting it: a line ends at `\n` or
//! `\r` (progress bars redraw with `\r`), is cut at [`MAX_LINE`] bytes, and invalid UTF-8
//! becomes U+FFFD. Memory stays bounded whatever the child writes, and the pipe is always
//! drained, so the child never blocks on a full pipe.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest line kept; the rest of a longer line is dropped.
pub const MAX_LINE: usize = 8 * 1024;

/// Reads `stream` to its end, calling `each` with every non-empty line.
pub async fn for_each_line(mut stream: impl AsyncRead + Unpin, mut each: impl FnMut(String)) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut overlong = false;
    let flush = |line: &mut Vec<u8>, each: &mut dyn FnMut(String)| {
        if !line.is_empty() {
            each(String::from_utf8_lossy(line).trim_end().to_string());
            line.clear();
        }
    };
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in buf.get(..n).unwrap_or_default() {
            if b == b'\n' || b == b'\r' {
                flush(&mut line, &mut each);
                overlong = false;
            } else if overlong {
                // The rest of a line already cut: dropped.
            } else if line.len() < MAX_LINE {
                line.push(b);
            } else {
                overlong = true;
                flush(&mut line, &mut each);
            }
        }
    }
    flush(&mut line, &mut each);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines_of(bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for_each_line(bytes, |l| out.push(l)).await;
        out
    }

    #[tokio::test]
    async fn splits_on_newline_and_carriage_return() {
        let got = lines_of(b"one\ntwo\r\nthree\r 50%\r100%\nlast").await;
        assert_eq!(got, ["one", "two", "three", " 50%", "100%", "last"]);
    }

    #[tokio::test]
    async fn long_lines_are_cut_and_bad_utf8_replaced() {
        let mut input = vec![b'x'; MAX_LINE * 3];
        input.extend_from_slice(b"\n\xff\xfe ok\n");
        let got = lines_of(&input).await;
        assert_eq!(
            got.len(),
            2,
            "{:?}",
            got.iter().map(|l| l.len()).collect::<Vec<_>>()
        );
        assert_eq!(got[0].len(), MAX_LINE);
        assert_eq!(got[1], "\u{fffd}\u{fffd} ok");
    }

    #[tokio::test]
    async fn multibyte_first_word_is_fine() {
        let got = lines_of("█▌ warming up\n".as_bytes()).await;
        assert_eq!(got, ["█▌ warming up"]);
    }
}
