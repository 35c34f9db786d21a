//! Reading a starting task's output: finds the ready line as frames arrive, on stdout or
//! stderr (or the single stream of a terminal), and keeps the last lines for error messages.
//!
//! Pure and bounded: a line ends at `\n` or `\r` (a progress bar redrawn in place, as tqdm
//! does, is a line per redraw); a line longer than [`MAX_LINE`] cannot be the ready line, so
//! at most that much of an unfinished line is buffered per stream, and the tail quoted in
//! errors is [`TAIL_LINES`] × [`TAIL_CHARS`], whatever the task prints. Each byte is looked
//! at once. It knows nothing of Docker; the engine feeds it frames.

use std::collections::VecDeque;

use super::READY_LINE;

/// The longest unfinished line kept while waiting for its newline. The ready line, with a
/// terminal's `\r` and some surrounding spaces, is far shorter.
pub const MAX_LINE: usize = 4096;
/// How many lines of output an error message quotes, and how many characters of each.
pub const TAIL_LINES: usize = 5;
pub const TAIL_CHARS: usize = 200;

/// Which output a frame came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// The unfinished line of one stream.
#[derive(Default)]
struct LineBuffer {
    pending: Vec<u8>,
    /// The current line outgrew [`MAX_LINE`]: its rest is skipped up to the newline.
    skipping: bool,
}

/// Scans a task's output for the ready line.
#[derive(Default)]
pub struct OutputScanner {
    stdout: LineBuffer,
    stderr: LineBuffer,
    tail: VecDeque<String>,
}

impl OutputScanner {
    /// Feeds one frame; returns true as soon as a complete line of it is the ready line.
    pub fn feed(&mut self, stream: Stream, mut bytes: &[u8]) -> bool {
        while let Some(end) = bytes.iter().position(|b| *b == b'\n' || *b == b'\r') {
            if self.line_done(stream, &bytes[..end]) {
                return true;
            }
            bytes = &bytes[end + 1..];
        }
        let buffer = self.buffer(stream);
        if buffer.skipping {
            return false;
        }
        buffer.pending.extend_from_slice(bytes);
        if buffer.pending.len() > MAX_LINE {
            let head = std::mem::take(&mut buffer.pending);
            buffer.skipping = true;
            self.remember(&head);
        }
        false
    }

    /// At the end of the output (the container stopped): whether an unterminated last line
    /// is the ready line.
    pub fn finish(&mut self) -> bool {
        let mut ready = false;
        for stream in [Stream::Stdout, Stream::Stderr] {
            let buffer = self.buffer(stream);
            let last = std::mem::take(&mut buffer.pending);
            let skipped = std::mem::take(&mut buffer.skipping);
            if !skipped && is_ready_line(&last) {
                ready = true;
            } else {
                self.remember(&last);
            }
        }
        ready
    }

    /// The last lines of output, joined for an error message.
    pub fn tail(&self) -> String {
        self.tail.iter().cloned().collect::<Vec<_>>().join(" | ")
    }

    fn buffer(&mut self, stream: Stream) -> &mut LineBuffer {
        match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        }
    }

    /// Completes the pending line of `stream` with `rest`; true if it is the ready line.
    fn line_done(&mut self, stream: Stream, rest: &[u8]) -> bool {
        let buffer = self.buffer(stream);
        if std::mem::take(&mut buffer.skipping) {
            return false;
        }
        if buffer.pending.len() + rest.len() > MAX_LINE {
            // Too long to be the mark: only its head is quoted, never a copy of all of it.
            let mut head = std::mem::take(&mut buffer.pending);
            let room = MAX_LINE.saturating_sub(head.len());
            head.extend_from_slice(&rest[..room.min(rest.len())]);
            self.remember(&head);
            return false;
        }
        let line = if buffer.pending.is_empty() {
            std::borrow::Cow::Borrowed(rest)
        } else {
            let mut line = std::mem::take(&mut buffer.pending);
            line.extend_from_slice(rest);
            std::borrow::Cow::Owned(line)
        };
        if line.len() <= MAX_LINE && is_ready_line(&line) {
            return true;
        }
        self.remember(&line);
        false
    }

    fn remember(&mut self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        let line = line.trim();
        if line.is_empty() {
            return;
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.chars().take(TAIL_CHARS).collect());
    }
}

/// The ready line, allowing surrounding white space (a terminal ends lines with `\r\n`).
fn is_ready_line(line: &[u8]) -> bool {
    line.trim_ascii() == READY_LINE.as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_is_found_on_either_stream_and_across_frames() {
        let mut s = OutputScanner::default();
        assert!(!s.feed(Stream::Stdout, b"starting\nmeca-"));
        assert!(!s.feed(Stream::Stderr, b"a warning\n"));
        assert!(s.feed(Stream::Stdout, b"init-done\r\nmore"));

        let mut s = OutputScanner::default();
        assert!(s.feed(Stream::Stderr, b"  meca-init-done  \n"));

        // Streams are not mixed: half a mark on each is no mark.
        let mut s = OutputScanner::default();
        assert!(!s.feed(Stream::Stdout, b"meca-"));
        assert!(!s.feed(Stream::Stderr, b"init-done\n"));
    }

    #[test]
    fn only_a_whole_line_is_the_mark() {
        let mut s = OutputScanner::default();
        assert!(!s.feed(Stream::Stdout, b"not meca-init-done\nmeca-init-done yet\n"));
        assert!(!s.finish());
        let mut s = OutputScanner::default();
        assert!(!s.feed(Stream::Stdout, b"meca-init-done"));
        assert!(s.finish(), "an unterminated last line counts at the end");
    }

    #[test]
    fn an_endless_line_is_bounded_and_never_the_mark() {
        let mut s = OutputScanner::default();
        for _ in 0..1000 {
            assert!(!s.feed(Stream::Stdout, &[b'x'; 1000]));
            assert!(s.stdout.pending.len() <= MAX_LINE);
        }
        // The end of the long line is not taken for a line of its own.
        assert!(!s.feed(Stream::Stdout, b"meca-init-done\n"));
        assert!(s.feed(Stream::Stdout, b"meca-init-done\n"));
        assert!(s.tail().starts_with("xxx"));
    }

    #[test]
    fn a_carriage_return_ends_a_line() {
        // A progress bar redrawn in place, then the mark after the last redraw.
        let mut s = OutputScanner::default();
        assert!(!s.feed(Stream::Stdout, b" 10%|#   |\r 20%|##  |\r"));
        assert!(s.feed(Stream::Stdout, b"meca-init-done\r\n"));
        // A mark glued behind a redraw without one is found too.
        let mut s = OutputScanner::default();
        assert!(!s.feed(Stream::Stdout, &[b'#'; 100_000]));
        assert!(s.feed(Stream::Stdout, b"\rmeca-init-done\n"));
    }

    #[test]
    fn a_long_line_in_one_frame_is_quoted_by_its_head_only() {
        let mut s = OutputScanner::default();
        let mut frame = vec![b'y'; 10 * MAX_LINE];
        frame.extend_from_slice(b"\nmeca-init-done\n");
        assert!(s.feed(Stream::Stdout, &frame));
        assert_eq!(s.tail().len(), TAIL_CHARS);
    }

    #[test]
    fn the_tail_keeps_the_last_lines() {
        let mut s = OutputScanner::default();
        s.feed(Stream::Stdout, b"1\n2\n\n3\n4\n");
        s.feed(Stream::Stderr, b"5\n6\nboom");
        assert!(!s.finish());
        assert_eq!(s.tail(), "3 | 4 | 5 | 6 | boom");
    }
}
