//! `misbehave-task`: a MECAnywhere test task that misbehaves on purpose.
//!
//! The behaviour is chosen by the `MODE` environment variable:
//!
//! | MODE            | behaviour                                                        |
//! |-----------------|------------------------------------------------------------------|
//! | `crash`         | ready; exits with code 3 on the first request, without answering |
//! | `never-ready`   | echoes, but never prints `meca-init-done`                        |
//! | `exit-at-start` | prints `starting`, then `boom: exiting on purpose` on stderr; exit 2 |
//! | `slow-start`    | sleeps `SLOW_START_SECS` (default 3) before binding, then echoes |
//! | `slow-answer`   | ready; echoes after `SLOW_ANSWER_SECS` (default 2) seconds              |
//! | `binary`        | ready; `POST /` answers 200 with bytes that are not UTF-8        |
//! | `hang`          | ready; reads requests but never answers (keeps connections open) |
//! | `huge`          | ready; `POST /` returns `HUGE_MIB` (default 80) MiB of `a`        |
//! | `oom`           | ready; on a request allocates and touches 16 MiB chunks forever  |
//! | `bad-status`    | ready; `POST /` returns 500 `task failed on purpose`             |
//! | `garbage`       | ready; answers every request with `this is not http\r\n\r\n`, closes |
//! | `sgx`           | mock SGX task: `GET /ra`, `POST /run`                            |
//! | `routes`        | ready; `POST /` answers `default route` or `no default route` (from /proc/net/route) |
//! | `kernel`        | ready; `POST /` returns the first line of the kernel log, or why it is unreadable |
//! | `buffered`      | prints the ready line as C stdio and CPython do: line-buffered on a terminal, held in a block buffer (never flushed) on a pipe; echoes |
//! | `mark-first`    | prints the ready line, listens `LISTEN_DELAY_SECS` (default 2) later (as a Flask app does); echoes |
//! | `env`           | ready; `POST /` with a variable's name answers its value in the task's environment, or `(unset)` |
//! | `limits`        | ready; `POST /` answers the cgroup limits the task sees: `{"cpu": cores, "mem_mb": MB}` (null when unlimited) |
//! | `mark-no-listen`| prints the ready line but never listens                          |
//! | `sized-at-start`| reads its cgroup limits once at start (as the JVM, Node or automemlimit do); on `POST /` allocates and touches 85% of the memory limit it read at start, frees it, and answers `{"start": limits at start, "now": limits now, "filled_mb": MB}` |
//! | `chatty`        | before the ready line writes one line of `CHATTY_MIB` (default 64) MiB of `#` to stdout, ended by `\r` (a progress bar redrawn in place) and then the ready line; echoes |
//! | `no-reuseaddr`  | ready; echoes; binds port 8080 without `SO_REUSEADDR` (as a bare C server does), so it cannot start while a closed connection of port 8080 lingers in `TIME_WAIT` in its network namespace |
//! | `listen-first`  | listens at once but answers 503 `not ready yet` until it prints the ready line `MARK_DELAY_SECS` (default 2) later; then echoes |
//! | `probe`         | ready; `POST /` with a JSON array of `"IP:PORT"` strings tries a TCP connect (1 s timeout) to each; answers `{"hostname": .., "interfaces": [..from /proc/net/dev..], "results": {"IP:PORT": "connected" \| "refused" \| "unreachable" \| "timeout" \| "error: <kind>"}}` |
//!
//! Any other (or no) `MODE`: an error on stderr and exit code 64.

#[path = "../../echo/src/http.rs"]
mod http;

use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

const CHUNK: usize = 1 << 20;
const OOM_CHUNK: usize = 16 << 20;

fn main() {
    let mode = std::env::var("MODE").unwrap_or_default();
    http::exit_on_term_signals();
    match mode.as_str() {
        "crash" => ready_and_serve(|_req, _conn| {
            eprintln!("crash: exiting with code 3 on purpose");
            std::process::exit(3)
        }),
        "never-ready" => {
            let listener = http::bind();
            println!("serving, but never reporting ready");
            let _ = io::stdout().flush();
            http::serve(listener, echo)
        }
        "exit-at-start" => {
            println!("starting");
            let _ = io::stdout().flush();
            eprintln!("boom: exiting on purpose");
            std::process::exit(2)
        }
        "slow-start" => {
            let secs = env_u64("SLOW_START_SECS", 3);
            println!("starting slowly ({secs} s)");
            let _ = io::stdout().flush();
            std::thread::sleep(Duration::from_secs(secs));
            ready_and_serve(echo)
        }
        "slow-answer" => {
            let secs = env_u64("SLOW_ANSWER_SECS", 2);
            ready_and_serve(move |req, conn| {
                std::thread::sleep(Duration::from_secs(secs));
                echo(req, conn)
            })
        }
        "binary" => ready_and_serve(|req, conn| {
            if req.method == "POST" && req.path == "/" {
                conn.respond(200, "application/octet-stream", b"\xff\xfe not text")
            } else {
                not_found(conn)
            }
        }),
        "hang" => ready_and_serve(|_req, _conn| {
            // Never answer; the connection stays open and its next read blocks.
            Ok(())
        }),
        "huge" => {
            let mib = env_u64("HUGE_MIB", 80);
            ready_and_serve(move |req, conn| {
                if !(req.method == "POST" && req.path == "/") {
                    return not_found(conn);
                }
                conn.write_head(200, "application/json", mib * CHUNK as u64)?;
                let chunk = vec![b'a'; CHUNK];
                for _ in 0..mib {
                    conn.body().write_all(&chunk)?;
                }
                conn.flush()
            })
        }
        "oom" => ready_and_serve(|_req, _conn| {
            eprintln!("oom: allocating memory until killed");
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                // A non-zero fill writes (touches) every page.
                let chunk = vec![0xa5u8; OOM_CHUNK];
                hoard.push(std::hint::black_box(chunk));
                eprintln!("oom: {} MiB allocated", hoard.len() * (OOM_CHUNK >> 20));
            }
        }),
        "bad-status" => ready_and_serve(|req, conn| {
            if req.method == "POST" && req.path == "/" {
                conn.respond(500, "text/plain", b"task failed on purpose")
            } else {
                not_found(conn)
            }
        }),
        "garbage" => {
            ready_and_serve(|_req, conn| conn.write_raw_and_close(b"this is not http\r\n\r\n"))
        }
        "sgx" => ready_and_serve(|req, conn| match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/ra") => {
                conn.respond(200, "application/json", br#"{"report":"mock-ra-report"}"#)
            }
            ("POST", "/run") => {
                let mut out = String::with_capacity(req.body.len() + 64);
                out.push_str("{\"input\":");
                push_json_string(&mut out, &String::from_utf8_lossy(&req.body));
                out.push_str(",\"enclave\":");
                out.push_str(bool_str(Path::new("/dev/sgx/enclave").exists()));
                out.push_str(",\"aesmd\":");
                out.push_str(bool_str(Path::new("/var/run/aesmd").exists()));
                out.push('}');
                conn.respond(200, "application/json", out.as_bytes())
            }
            _ => not_found(conn),
        }),
        "routes" => ready_and_serve(|req, conn| {
            if req.method == "POST" && req.path == "/" {
                let table = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
                // Destination 00000000 = the default route.
                let default = table
                    .lines()
                    .skip(1)
                    .any(|line| line.split_whitespace().nth(1) == Some("00000000"));
                let answer: &[u8] = if default {
                    b"default route"
                } else {
                    b"no default route"
                };
                conn.respond(200, "text/plain", answer)
            } else {
                not_found(conn)
            }
        }),
        "kernel" => ready_and_serve(|req, conn| {
            if req.method == "POST" && req.path == "/" {
                conn.respond(200, "text/plain", first_kernel_log_line().as_bytes())
            } else {
                not_found(conn)
            }
        }),
        "buffered" => {
            let listener = http::bind();
            print_like_stdio(&format!("starting\n{}\n", http::READY_LINE));
            http::serve(listener, echo)
        }
        "env" => ready_and_serve(|req, conn| {
            let name = String::from_utf8_lossy(&req.body);
            let value = std::env::var(name.trim()).unwrap_or_else(|_| "(unset)".into());
            conn.respond(200, "text/plain", value.as_bytes())
        }),
        "no-reuseaddr" => {
            let listener = bind_without_reuseaddr();
            http::print_ready();
            http::serve(listener, echo)
        }
        "limits" => ready_and_serve(|req, conn| {
            if req.method == "POST" && req.path == "/" {
                conn.respond(200, "application/json", cgroup_limits().as_bytes())
            } else {
                not_found(conn)
            }
        }),
        "sized-at-start" => {
            let at_start = cgroup_limits();
            let start_mb = mem_mb_of(&at_start);
            ready_and_serve(move |req, conn| {
                if req.method != "POST" || req.path != "/" {
                    return not_found(conn);
                }
                let filled_mb = start_mb.map_or(0, |mb| mb * 85 / 100);
                fill(filled_mb << 20);
                let body = format!(
                    "{{\"start\":{at_start},\"now\":{},\"filled_mb\":{filled_mb}}}",
                    cgroup_limits()
                );
                conn.respond(200, "application/json", body.as_bytes())
            })
        }
        "chatty" => {
            let mib = env_u64("CHATTY_MIB", 64) as usize;
            let line = vec![b'#'; CHUNK];
            let mut out = io::stdout().lock();
            for _ in 0..mib {
                let _ = out.write_all(&line);
            }
            let _ = out.write_all(b"\r");
            let _ = out.flush();
            drop(out);
            ready_and_serve(echo)
        }
        "mark-no-listen" => {
            http::print_ready();
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        "mark-first" => {
            let secs = env_u64("LISTEN_DELAY_SECS", 2);
            http::print_ready();
            std::thread::sleep(Duration::from_secs(secs));
            http::serve(http::bind(), echo)
        }
        "listen-first" => {
            use std::sync::atomic::{AtomicBool, Ordering};
            static READY: AtomicBool = AtomicBool::new(false);
            let secs = env_u64("MARK_DELAY_SECS", 2);
            let listener = http::bind();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(secs));
                READY.store(true, Ordering::SeqCst);
                http::print_ready();
            });
            http::serve(listener, |req, conn| {
                if READY.load(Ordering::SeqCst) {
                    echo(req, conn)
                } else {
                    conn.respond(503, "text/plain", b"not ready yet")
                }
            })
        }
        "probe" => ready_and_serve(|req, conn| {
            if req.method == "POST" && req.path == "/" {
                conn.respond(200, "application/json", probe(&req.body).as_bytes())
            } else {
                not_found(conn)
            }
        }),
        other => {
            eprintln!(
                "misbehave-task: unknown MODE {other:?} (expected one of: crash, never-ready, \
                 exit-at-start, slow-start, slow-answer, binary, hang, huge, oom, bad-status, garbage, sgx, routes, \
                 kernel, buffered, mark-first, listen-first, env, limits, mark-no-listen, no-reuseaddr, \
                 probe)"
            );
            std::process::exit(64)
        }
    }
}

/// Writes `text` to stdout buffered as C stdio (and CPython) buffer it: flushed line by
/// line when stdout is a terminal; otherwise kept in an 8 KiB block buffer that is never
/// flushed, since the process serves until it is killed.
fn print_like_stdio(text: &str) {
    use std::io::IsTerminal;
    use std::os::fd::FromRawFd;
    if io::stdout().is_terminal() {
        let mut out = io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    } else {
        // SAFETY: fd 1 is open for the life of the process; the file is leaked, never closed.
        let fd1 = unsafe { std::fs::File::from_raw_fd(1) };
        let mut block = io::BufWriter::with_capacity(8192, fd1);
        let _ = block.write_all(text.as_bytes());
        std::mem::forget(block);
    }
}

/// Binds, prints the ready line, and serves with `handler`.
fn ready_and_serve<H>(handler: H) -> !
where
    H: Fn(&http::Request, &mut http::Conn) -> io::Result<()> + Send + Sync + 'static,
{
    let listener = http::bind();
    http::print_ready();
    http::serve(listener, handler)
}

fn echo(req: &http::Request, conn: &mut http::Conn) -> io::Result<()> {
    if req.method == "POST" && req.path == "/" {
        conn.respond(200, "application/json", &req.body)
    } else {
        not_found(conn)
    }
}

extern "C" {
    /// glibc's wrapper of syslog(2).
    fn klogctl(kind: i32, buf: *mut u8, len: i32) -> i32;
    fn socket(domain: i32, kind: i32, protocol: i32) -> i32;
    fn bind(fd: i32, addr: *const SockaddrIn, len: u32) -> i32;
    fn listen(fd: i32, backlog: i32) -> i32;
}

/// `struct sockaddr_in`.
#[repr(C)]
struct SockaddrIn {
    family: u16,
    port_be: u16,
    addr_be: u32,
    zero: [u8; 8],
}

/// A listener on 0.0.0.0:8080 made with socket(2), bind(2) and listen(2) alone: unlike
/// `std::net::TcpListener::bind`, it does not set `SO_REUSEADDR`. Exits 1 if bind fails.
fn bind_without_reuseaddr() -> std::net::TcpListener {
    use std::os::fd::FromRawFd;
    const AF_INET: i32 = 2;
    const SOCK_STREAM: i32 = 1;
    let addr = SockaddrIn {
        family: AF_INET as u16,
        port_be: 8080u16.to_be(),
        addr_be: 0,
        zero: [0; 8],
    };
    // SAFETY: plain syscalls on a descriptor this function owns; `addr` outlives the call.
    unsafe {
        let fd = socket(AF_INET, SOCK_STREAM, 0);
        if fd < 0
            || bind(fd, &addr, std::mem::size_of::<SockaddrIn>() as u32) != 0
            || listen(fd, 128) != 0
        {
            eprintln!(
                "cannot listen on 0.0.0.0:8080: {}",
                io::Error::last_os_error()
            );
            std::process::exit(1);
        }
        std::net::TcpListener::from_raw_fd(fd)
    }
}

/// The first line of the kernel log (syslog(2) READ_ALL). Under gVisor it is
/// "Starting gVisor..."; under runc Docker's seccomp profile denies the call.
fn first_kernel_log_line() -> String {
    const SYSLOG_ACTION_READ_ALL: i32 = 3;
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: the buffer is valid for `len` bytes and outlives the call.
    let n = unsafe { klogctl(SYSLOG_ACTION_READ_ALL, buf.as_mut_ptr(), buf.len() as i32) };
    if n < 0 {
        return format!("kernel log unavailable: {}", io::Error::last_os_error());
    }
    let text = String::from_utf8_lossy(&buf[..n as usize]).into_owned();
    text.lines().next().unwrap_or("").to_string()
}

/// The CPU and memory limits of the task's own cgroup, as JSON (cgroup v1 or v2).
/// The `mem_mb` of a [`cgroup_limits`] answer, whole megabytes; `None` when unlimited.
fn mem_mb_of(limits: &str) -> Option<usize> {
    let rest = &limits[limits.find("\"mem_mb\":")? + 9..];
    let end = rest.find(['}', ',']).unwrap_or(rest.len());
    rest[..end].parse::<f64>().ok().map(|mb| mb as usize)
}

/// Allocates `bytes`, touches every page (so they count against the memory limit), frees them.
fn fill(bytes: usize) {
    let mut block = vec![0u8; bytes];
    for i in (0..block.len()).step_by(4096) {
        block[i] = 1;
    }
    std::hint::black_box(&block);
}

fn cgroup_limits() -> String {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let num = |text: Option<String>| text.and_then(|t| t.trim().parse::<f64>().ok());
    let (quota, period) = match read("/sys/fs/cgroup/cpu.max") {
        // v2: "<quota|max> <period>"
        Some(line) => {
            let mut parts = line.split_whitespace();
            let quota = parts.next().and_then(|q| q.parse::<f64>().ok());
            (quota, parts.next().and_then(|p| p.parse::<f64>().ok()))
        }
        None => (
            num(read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")).filter(|q| *q > 0.0),
            num(read("/sys/fs/cgroup/cpu/cpu.cfs_period_us")),
        ),
    };
    let memory = num(read("/sys/fs/cgroup/memory.max"))
        .or_else(|| num(read("/sys/fs/cgroup/memory/memory.limit_in_bytes")))
        // v1 reports "no limit" as a huge number.
        .filter(|m| *m < 1e18);
    let cpu = match (quota, period) {
        (Some(q), Some(p)) if p > 0.0 => format!("{}", q / p),
        _ => "null".into(),
    };
    let mem = memory.map_or("null".into(), |m| format!("{}", m / 1048576.0));
    format!("{{\"cpu\":{cpu},\"mem_mb\":{mem}}}")
}

/// `probe`: the task's hostname (in a joined network namespace Docker gives the task the
/// hostname of the container it joined), the network interfaces of its namespace and, for
/// each `IP:PORT` of the JSON array `body`, what a TCP connect to it (1 s timeout) does.
/// As JSON.
fn probe(body: &[u8]) -> String {
    let targets = match parse_string_array(&String::from_utf8_lossy(body)) {
        Some(targets) => targets,
        None => return "{\"error\":\"the body is not a JSON array of strings\"}".into(),
    };
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut out = String::from("{\"hostname\":");
    push_json_string(&mut out, hostname.trim());
    out.push_str(",\"interfaces\":[");
    for (i, name) in interfaces().iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(&mut out, name);
    }
    out.push_str("],\"results\":{");
    for (i, target) in targets.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(&mut out, target);
        out.push(':');
        push_json_string(&mut out, &connect_outcome(target));
    }
    out.push_str("}}");
    out
}

/// The interface names in /proc/net/dev (after its two header lines).
fn interfaces() -> Vec<String> {
    std::fs::read_to_string("/proc/net/dev")
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|line| {
            line.split_once(':')
                .map(|(name, _)| name.trim().to_string())
        })
        .filter(|name| !name.is_empty())
        .collect()
}

/// What a TCP connect to `target` (`IP:PORT`) does within 1 s.
fn connect_outcome(target: &str) -> String {
    let addr: std::net::SocketAddr = match target.trim().parse() {
        Ok(addr) => addr,
        Err(_) => return "error: not an IP:PORT".into(),
    };
    match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        Ok(_) => "connected".into(),
        Err(e) => match e.kind() {
            io::ErrorKind::ConnectionRefused => "refused".into(),
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timeout".into(),
            io::ErrorKind::NetworkUnreachable | io::ErrorKind::HostUnreachable => {
                "unreachable".into()
            }
            kind => format!("error: {kind:?} ({e})"),
        },
    }
}

/// Parses a JSON array of strings (escapes `\"`, `\\`, `\/`, `\n`, `\r`, `\t`, `\b`, `\f`,
/// `\uXXXX` of the basic plane). `None` when `text` is anything else.
fn parse_string_array(text: &str) -> Option<Vec<String>> {
    let mut chars = text.trim().chars().peekable();
    let skip_ws = |chars: &mut std::iter::Peekable<std::str::Chars>| {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
    };
    if chars.next()? != '[' {
        return None;
    }
    let mut items = Vec::new();
    skip_ws(&mut chars);
    if chars.peek() == Some(&']') {
        chars.next();
        return chars.next().is_none().then_some(items);
    }
    loop {
        skip_ws(&mut chars);
        if chars.next()? != '"' {
            return None;
        }
        let mut item = String::new();
        loop {
            match chars.next()? {
                '"' => break,
                '\\' => match chars.next()? {
                    '"' => item.push('"'),
                    '\\' => item.push('\\'),
                    '/' => item.push('/'),
                    'n' => item.push('\n'),
                    'r' => item.push('\r'),
                    't' => item.push('\t'),
                    'b' => item.push('\u{8}'),
                    'f' => item.push('\u{c}'),
                    'u' => {
                        let hex: String = (0..4).filter_map(|_| chars.next()).collect();
                        item.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                    }
                    _ => return None,
                },
                c => item.push(c),
            }
        }
        items.push(item);
        skip_ws(&mut chars);
        match chars.next()? {
            ',' => continue,
            ']' => break,
            _ => return None,
        }
    }
    skip_ws(&mut chars);
    chars.next().is_none().then_some(items)
}

fn not_found(conn: &mut http::Conn) -> io::Result<()> {
    conn.respond(404, "text/plain", b"not found\n")
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("{name}={v:?} is not a number; using {default}");
            default
        }),
        _ => default,
    }
}

fn bool_str(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

/// Appends `s` as a JSON string literal.
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || c == '\u{7f}' || c == '\u{2028}' || c == '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
