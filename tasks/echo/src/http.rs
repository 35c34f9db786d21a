//! A minimal, dependency-free HTTP/1.1 server for MECAnywhere task images.
//!
//! Shared by `echo-task` and `misbehave-task` (the latter includes this file
//! with `#[path = "../../echo/src/http.rs"] mod http;`).
//!
//! Features: a thread per connection, keep-alive (HTTP/1.1 default, honours
//! `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`),
//! pipelining (one `BufReader` per connection keeps any read-ahead),
//! `Content-Length` and `Transfer-Encoding: chunked` request bodies,
//! `Expect: 100-continue`, case-insensitive header names.
//! Malformed requests get a `400` and the connection is closed.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// The line a task prints on stdout once it is ready to serve.
pub const READY_LINE: &str = "meca-init-done";

/// Longest request line / header line accepted.
const MAX_LINE: usize = 16 * 1024;
/// Most header fields accepted in one request (or chunked trailer).
const MAX_HEADERS: usize = 128;
/// Largest request body accepted.
const MAX_BODY: u64 = 1 << 30;
/// Read/write buffer size per connection.
const BUF_SIZE: usize = 64 * 1024;

/// A parsed request, body included.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The request target without its query string (`/run?x=1` -> `/run`).
    pub path: String,
    /// The full request target as sent.
    pub target: String,
    /// `true` for HTTP/1.0, `false` for HTTP/1.1.
    pub http10: bool,
    /// Header fields in order; names as sent (compare case-insensitively).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the client wants the connection kept open after this request.
    pub keep_alive: bool,
}

impl Request {
    /// The first header value called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The writing half of a connection, handed to request handlers.
pub struct Conn {
    w: BufWriter<TcpStream>,
    keep_alive: bool,
    http10: bool,
}

impl Conn {
    /// Sends a complete response (head and body leave in one write when they
    /// fit in the buffer).
    pub fn respond(&mut self, status: u16, content_type: &str, body: &[u8]) -> io::Result<()> {
        self.write_head(status, content_type, body.len() as u64)?;
        self.w.write_all(body)?;
        self.w.flush()
    }

    /// Sends the head of a response whose `len`-byte body the caller then
    /// streams with [`Conn::body`]; call [`Conn::flush`] at the end.
    pub fn write_head(&mut self, status: u16, content_type: &str, len: u64) -> io::Result<()> {
        let connection = match (self.keep_alive, self.http10) {
            (false, _) => "Connection: close\r\n",
            (true, true) => "Connection: keep-alive\r\n",
            (true, false) => "",
        };
        write!(
            self.w,
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}\r\n",
            status,
            reason(status),
            content_type,
            len,
            connection
        )
    }

    /// The response body writer (buffered).
    pub fn body(&mut self) -> &mut impl Write {
        &mut self.w
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }

    /// Writes raw bytes (no HTTP framing) and marks the connection for closing.
    pub fn write_raw_and_close(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.keep_alive = false;
        self.w.write_all(bytes)?;
        self.w.flush()
    }

    /// Closes the connection after the current request.
    pub fn close(&mut self) {
        self.keep_alive = false;
    }

    /// Whether the connection stays open after the current request.
    pub fn keep_alive(&self) -> bool {
        self.keep_alive
    }
}

/// The standard reason phrase for the status codes used here.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Why reading a request failed.
#[derive(Debug)]
pub enum ReadError {
    /// The peer went away or the socket failed: just drop the connection.
    Io(io::Error),
    /// The request is malformed: answer with this status and close.
    Bad(u16, &'static str),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::InvalidData => ReadError::Bad(400, "invalid request\n"),
            _ => ReadError::Io(e),
        }
    }
}

fn bad(msg: &'static str) -> ReadError {
    ReadError::Bad(400, msg)
}

/// Reads one line (up to `\n`), without its `\r\n` / `\n`.
/// `Ok(None)` on EOF before any byte.
fn read_line<R: BufRead>(r: &mut R, buf: &mut Vec<u8>) -> Result<Option<()>, ReadError> {
    buf.clear();
    let n = r.take(MAX_LINE as u64 + 1).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        if buf.len() > MAX_LINE {
            return Err(ReadError::Bad(431, "line too long\n"));
        }
        // EOF in the middle of a line.
        return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(()))
}

/// Reads header fields up to the empty line.
fn read_fields<R: BufRead>(
    r: &mut R,
    line: &mut Vec<u8>,
    out: &mut Vec<(String, String)>,
) -> Result<(), ReadError> {
    loop {
        if read_line(r, line)?.is_none() {
            return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        if line.is_empty() {
            return Ok(());
        }
        if out.len() >= MAX_HEADERS {
            return Err(ReadError::Bad(431, "too many header fields\n"));
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(bad("obsolete header folding\n"));
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| bad("header field without ':'\n"))?;
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(bad("invalid header field name\n"));
        }
        let value = std::str::from_utf8(&line[colon + 1..])
            .map_err(|_| bad("header value is not UTF-8\n"))?
            .trim_matches(|c| c == ' ' || c == '\t');
        // The name is ASCII (tchar), so this cannot fail.
        let name = String::from_utf8_lossy(name).into_owned();
        out.push((name, value.to_owned()));
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What the head says about the body.
enum BodyKind {
    None,
    Length(u64),
    Chunked,
}

/// Reads the request line and header fields. `Ok(None)` on a clean EOF
/// between requests.
fn read_head<R: BufRead>(r: &mut R) -> Result<Option<(Request, BodyKind, bool)>, ReadError> {
    let mut line = Vec::with_capacity(256);
    // Tolerate empty lines before a request line (RFC 9112 §2.2).
    loop {
        if read_line(r, &mut line)?.is_none() {
            return Ok(None);
        }
        if !line.is_empty() {
            break;
        }
    }
    let request_line =
        std::str::from_utf8(&line).map_err(|_| bad("request line is not UTF-8\n"))?;
    let mut parts = request_line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) if !m.is_empty() && !t.is_empty() => (m, t, v),
        _ => return Err(bad("malformed request line\n")),
    };
    if !method.bytes().all(is_tchar) {
        return Err(bad("malformed method\n"));
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        v if v.starts_with("HTTP/") => {
            return Err(ReadError::Bad(505, "HTTP version not supported\n"))
        }
        _ => return Err(bad("malformed request line\n")),
    };
    let method = method.to_owned();
    let target = target.to_owned();
    let path = target.split(['?', '#']).next().unwrap_or("").to_owned();

    let mut headers = Vec::with_capacity(16);
    read_fields(r, &mut line, &mut headers)?;

    let mut keep_alive = !http10;
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut expect_continue = false;
    for (name, value) in &headers {
        if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") && http10 {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("invalid Content-Length\n"));
            }
            let n: u64 = value.parse().map_err(|_| bad("invalid Content-Length\n"))?;
            if content_length.is_some_and(|old| old != n) {
                return Err(bad("conflicting Content-Length\n"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let codings: Vec<&str> = value
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect();
            match codings.last() {
                Some(last) if last.eq_ignore_ascii_case("chunked") => {
                    if codings.len() > 1 || chunked {
                        return Err(ReadError::Bad(501, "unsupported transfer coding\n"));
                    }
                    chunked = true;
                }
                _ => return Err(ReadError::Bad(501, "unsupported transfer coding\n")),
            }
        } else if name.eq_ignore_ascii_case("expect") && value.eq_ignore_ascii_case("100-continue")
        {
            expect_continue = !http10;
        }
    }
    let body = if chunked {
        if content_length.is_some() {
            // Both framings: use chunked, but never reuse this connection.
            keep_alive = false;
        }
        BodyKind::Chunked
    } else {
        match content_length {
            Some(n) if n > MAX_BODY => return Err(ReadError::Bad(413, "body too large\n")),
            Some(0) | None => BodyKind::None,
            Some(n) => BodyKind::Length(n),
        }
    };
    if matches!(body, BodyKind::None) {
        expect_continue = false;
    }
    let req = Request {
        method,
        path,
        target,
        http10,
        headers,
        body: Vec::new(),
        keep_alive,
    };
    Ok(Some((req, body, expect_continue)))
}

/// Reads the body announced by the head into `out`.
fn read_body<R: BufRead>(r: &mut R, kind: BodyKind, out: &mut Vec<u8>) -> Result<(), ReadError> {
    match kind {
        BodyKind::None => Ok(()),
        BodyKind::Length(n) => {
            out.reserve_exact(n as usize);
            let got = r.take(n).read_to_end(out)?;
            if got as u64 != n {
                return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(())
        }
        BodyKind::Chunked => {
            let mut line = Vec::with_capacity(64);
            loop {
                if read_line(r, &mut line)?.is_none() {
                    return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
                }
                let size_end = line
                    .iter()
                    .position(|&b| b == b';' || b == b' ' || b == b'\t')
                    .unwrap_or(line.len());
                let hex = &line[..size_end];
                if hex.is_empty() || hex.len() > 15 || !hex.iter().all(u8::is_ascii_hexdigit) {
                    return Err(bad("invalid chunk size\n"));
                }
                // Validated hex digits: cannot fail.
                let size = u64::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap();
                if size == 0 {
                    // Trailer fields (discarded) up to the empty line.
                    let mut trailers = Vec::new();
                    return read_fields(r, &mut line, &mut trailers);
                }
                if out.len() as u64 + size > MAX_BODY {
                    return Err(ReadError::Bad(413, "body too large\n"));
                }
                let got = r.take(size).read_to_end(out)?;
                if got as u64 != size {
                    return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
                }
                if read_line(r, &mut line)?.is_none() || !line.is_empty() {
                    return Err(bad("missing CRLF after chunk data\n"));
                }
            }
        }
    }
}

/// Serves requests on one connection until it closes; `handler` answers each.
pub fn serve_connection<H>(stream: TcpStream, handler: &H)
where
    H: Fn(&Request, &mut Conn) -> io::Result<()>,
{
    let _ = stream.set_nodelay(true);
    let write_half = match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    };
    let mut reader = BufReader::with_capacity(BUF_SIZE, stream);
    let mut conn = Conn {
        w: BufWriter::with_capacity(BUF_SIZE, write_half),
        keep_alive: true,
        http10: false,
    };
    loop {
        let result = read_head(&mut reader).and_then(|head| match head {
            None => Ok(None),
            Some((mut req, body, expect_continue)) => {
                if expect_continue {
                    conn.w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
                    conn.w.flush()?;
                }
                read_body(&mut reader, body, &mut req.body)?;
                Ok(Some(req))
            }
        });
        let req = match result {
            Ok(Some(req)) => req,
            Ok(None) | Err(ReadError::Io(_)) => break,
            Err(ReadError::Bad(status, msg)) => {
                conn.keep_alive = false;
                conn.http10 = false;
                let _ = conn.respond(status, "text/plain", msg.as_bytes());
                break;
            }
        };
        conn.keep_alive = req.keep_alive;
        conn.http10 = req.http10;
        if handler(&req, &mut conn).is_err() {
            break;
        }
        if conn.w.flush().is_err() || !conn.keep_alive {
            break;
        }
    }
    let _ = conn.w.flush();
    let _ = conn.w.get_ref().shutdown(Shutdown::Write);
}

/// The address to listen on: `0.0.0.0:$PORT`, `PORT` defaulting to 8080.
pub fn listen_addr() -> String {
    let port = std::env::var("PORT")
        .ok()
        .filter(|p| p.parse::<u16>().is_ok())
        .unwrap_or_else(|| "8080".to_owned());
    format!("0.0.0.0:{port}")
}

/// Binds the listener, exiting with code 1 on failure.
pub fn bind() -> TcpListener {
    let addr = listen_addr();
    match TcpListener::bind(&addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    }
}

/// Prints the ready line on stdout and flushes it.
pub fn print_ready() {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{READY_LINE}");
    let _ = out.flush();
}

/// Accepts connections forever, serving each on its own thread.
pub fn serve<H>(listener: TcpListener, handler: H) -> !
where
    H: Fn(&Request, &mut Conn) -> io::Result<()> + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let handler = Arc::clone(&handler);
                let spawned = std::thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn(move || serve_connection(stream, &*handler));
                if let Err(e) = spawned {
                    eprintln!("cannot spawn a connection thread: {e}");
                }
            }
            Err(e) => {
                // E.g. EMFILE: back off instead of spinning.
                eprintln!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Makes SIGTERM and SIGINT end the process at once (exit code 0).
///
/// A task runs as PID 1 in its container, where signals without a handler
/// are ignored; without this, `docker stop` would wait for its timeout.
pub fn exit_on_term_signals() {
    extern "C" {
        fn signal(signum: i32, handler: usize) -> usize;
        fn _exit(status: i32) -> !;
    }
    extern "C" fn on_signal(_: i32) {
        // Only async-signal-safe calls here.
        unsafe { _exit(0) }
    }
    const SIGINT: i32 = 2;
    const SIGTERM: i32 = 15;
    let handler = on_signal as extern "C" fn(i32) as usize;
    unsafe {
        signal(SIGTERM, handler);
        signal(SIGINT, handler);
    }
}
