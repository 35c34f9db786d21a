//! The program of a sandbox holder: the one process of the container whose network
//! namespace a task container joins.
//!
//! A standalone program (std only, no crates), compiled by `build.rs` as a static executable
//! and imported by the executor as the holder image; in the library it is a module only for
//! its unit tests. It owns the one way into a task's namespace: it listens on a Unix socket
//! in a directory shared with the executor (never on a network address: a task in the same
//! namespace must find nothing to connect to), and for each connection the executor opens
//! there it connects to the task at `127.0.0.1:8080` inside the namespace, writes one
//! greeting byte ([`GREETING`]) once that connection stands, and then copies bytes both
//! ways until both sides are done. A connection it cannot make to the task is closed
//! without the greeting, so the executor can tell "the task listens" from "it does not yet".
//!
//! One thread, one epoll set, edge-triggered, non-blocking sockets; bytes the other side
//! cannot take yet are kept per direction, so memory grows only with what is in flight.
//!
//! Under `task_network: internet` the holder is started on a bridge with `CAP_NET_ADMIN`
//! (as root), and before it listens it makes every `--block` prefix unroutable in its
//! namespace (`prohibit` routes: a connect fails at once), its own subnet and gateway
//! included: the default route goes through the gateway `onlink`, so the gateway is a next
//! hop but no destination. It then hands the socket to `--owner` and drops every
//! capability; the task, which joins later with none, cannot change the routes.
//!
//! On a cluster (the swarm engine) a task runs in a namespace of its own on some node, and
//! the holder is its gateway instead: it sits alone with the task on the sandbox's own
//! network, and with `--forward` each connection starts with the task's address (4 bytes of
//! IPv4 and 2 of port, network order), to which the holder connects instead of
//! `127.0.0.1:8080`. Only addresses of the holder's own subnets are taken.
//!
//! ```text
//! hold relay SOCKET_PATH [--owner UID:GID] [--block A.B.C.D/N]... [--forward]
//! hold addrs              print this namespace's own IPv4 addresses, one a line
//! ```

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

/// The byte the relay writes on a new connection once it reached the task.
pub const GREETING: u8 = b'+';
/// Where the task listens, inside the namespace.
const TASK: (Ipv4Addr, u16) = (Ipv4Addr::LOCALHOST, 8080);
/// How long connecting to the task may take (loopback: only a full accept queue is slow;
/// across nodes the first packet also finds its tunnel).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a `--forward` connection may take to name its destination (the executor writes
/// it with the connection).
const TARGET_TIMEOUT: Duration = Duration::from_secs(1);

const EPOLLIN: u32 = 0x001;
const EPOLLOUT: u32 = 0x004;
const EPOLLERR: u32 = 0x008;
const EPOLLHUP: u32 = 0x010;
const EPOLLRDHUP: u32 = 0x2000;
const EPOLLET: u32 = 1 << 31;
const EPOLL_CTL_ADD: i32 = 1;
const EPOLL_CLOEXEC: i32 = 0o2_000_000;

/// `struct epoll_event`; packed on x86-64 only, as the kernel's.
#[repr(C)]
#[cfg_attr(target_arch = "x86_64", repr(packed))]
#[derive(Clone, Copy)]
struct EpollEvent {
    events: u32,
    data: u64,
}

/// `struct __user_cap_header_struct` and one `__user_cap_data_struct` (version 3 takes two).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

extern "C" {
    fn capset(header: *mut CapHeader, data: *const CapData) -> i32;
    fn epoll_create1(flags: i32) -> i32;
    fn epoll_ctl(epfd: i32, op: i32, fd: i32, event: *mut EpollEvent) -> i32;
    fn epoll_wait(epfd: i32, events: *mut EpollEvent, maxevents: i32, timeout: i32) -> i32;
    fn statvfs(path: *const std::ffi::c_char, buf: *mut StatVfs) -> i32;
}

/// `struct statvfs` on 64-bit Linux (glibc and musl agree), with room to spare at its end.
#[repr(C)]
#[derive(Default)]
struct StatVfs {
    bsize: u64,
    frsize: u64,
    blocks: u64,
    bfree: u64,
    bavail: u64,
    files: u64,
    ffree: u64,
    favail: u64,
    fsid: u64,
    flag: u64,
    namemax: u64,
    spare: [u64; 8],
}

/// `statfs PATH`: prints the size of the filesystem holding `path` and what of it is
/// free and available (to others than root), in bytes, and its id:
/// `TOTAL FREE AVAILABLE FSID`.
fn print_filesystem(path: &str) -> io::Result<()> {
    let c_path = std::ffi::CString::new(path)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the path"))?;
    let mut buf = StatVfs::default();
    if unsafe { statvfs(c_path.as_ptr(), &mut buf) } < 0 {
        return Err(io::Error::last_os_error());
    }
    println!(
        "{} {} {} {}",
        buf.blocks * buf.frsize,
        buf.bfree * buf.frsize,
        buf.bavail * buf.frsize,
        buf.fsid
    );
    Ok(())
}

#[allow(dead_code)] // In the library, only the tests call it.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("relay") if args.len() >= 3 => match RelayArgs::parse(&args[2..]) {
            Ok(relay_args) => relay(&relay_args),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(2);
            }
        },
        Some("addrs") if args.len() == 2 => std::fs::read_to_string("/proc/net/fib_trie")
            .map(|trie| local_addresses(&trie).iter().for_each(|a| println!("{a}"))),
        Some("statfs") if args.len() == 3 => print_filesystem(&args[2]),
        _ => {
            eprintln!(
                "usage: {} relay SOCKET_PATH [--owner UID:GID] [--block PREFIX]... [--forward] | addrs | statfs PATH",
                args[0]
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("sandbox holder: {e}");
        std::process::exit(1);
    }
}

/// The addresses of this namespace's own interfaces, from the kernel's FIB
/// (`/proc/net/fib_trie`: an address line `|-- A.B.C.D` followed by `/32 host LOCAL`).
fn local_addresses(trie: &str) -> Vec<Ipv4Addr> {
    let mut found = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in trie.lines() {
        let line = line.trim();
        if let Some(addr) = line.strip_prefix("|-- ") {
            last = addr.parse().ok();
        } else if line.starts_with("/32 host LOCAL") {
            if let Some(addr) = last {
                if !found.contains(&addr) {
                    found.push(addr);
                }
            }
        }
    }
    found
}

/// What `relay` was asked to do.
#[derive(Debug, PartialEq)]
struct RelayArgs {
    socket: String,
    owner: Option<(u32, u32)>,
    blocked: Vec<(Ipv4Addr, u8)>,
    /// Each connection names its destination (see the module doc).
    forward: bool,
}

impl RelayArgs {
    fn parse(args: &[String]) -> Result<RelayArgs, String> {
        let mut parsed = RelayArgs {
            socket: args[0].clone(),
            owner: None,
            blocked: Vec::new(),
            forward: false,
        };
        let mut rest = args[1..].iter();
        while let Some(flag) = rest.next() {
            if flag == "--forward" {
                parsed.forward = true;
                continue;
            }
            let value = rest.next().ok_or(format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--owner" => {
                    let (uid, gid) = value
                        .split_once(':')
                        .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
                        .ok_or(format!("bad --owner {value:?}"))?;
                    parsed.owner = Some((uid, gid));
                }
                "--block" => parsed.blocked.push(parse_prefix(value)?),
                other => return Err(format!("unknown option {other}")),
            }
        }
        Ok(parsed)
    }
}

fn parse_prefix(text: &str) -> Result<(Ipv4Addr, u8), String> {
    let bad = || format!("bad prefix {text:?}");
    let (addr, len) = text.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if len > 32 {
        return Err(bad());
    }
    Ok((addr, len))
}

/// Serves the socket until the process is killed (after making the blocked prefixes
/// unroutable, when asked).
fn relay(args: &RelayArgs) -> io::Result<()> {
    if !args.blocked.is_empty() {
        routes::block(&args.blocked)?;
    }
    let listener = listen(&args.socket)?;
    if let Some((uid, gid)) = args.owner {
        std::os::unix::fs::chown(&args.socket, Some(uid), Some(gid))?;
    }
    if !args.blocked.is_empty() || args.owner.is_some() {
        drop_capabilities()?;
    }
    let mut relay = Relay::new(listener)?;
    if args.forward {
        relay.destinations = Destinations::Named(own_subnets()?);
    }
    loop {
        relay.turn(-1)?;
    }
}

/// Drops every capability of this process (its setup is done).
fn drop_capabilities() -> io::Result<()> {
    let mut header = CapHeader {
        version: 0x2008_0522,
        pid: 0,
    };
    let none = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: a valid header and the two data structs version 3 reads.
    if unsafe { capset(&mut header, none.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Routes of this namespace, over rtnetlink.
mod routes {
    use std::io::{self, ErrorKind};
    use std::net::Ipv4Addr;

    const AF_NETLINK: i32 = 16;
    const AF_INET: u8 = 2;
    const SOCK_RAW: i32 = 3;
    const SOCK_CLOEXEC: i32 = 0o2_000_000;
    const NETLINK_ROUTE: i32 = 0;
    const RTM_NEWROUTE: u16 = 24;
    const RTM_DELROUTE: u16 = 25;
    const NLM_F_REQUEST: u16 = 0x1;
    const NLM_F_ACK: u16 = 0x4;
    const NLM_F_REPLACE: u16 = 0x100;
    const NLM_F_EXCL: u16 = 0x200;
    const NLM_F_CREATE: u16 = 0x400;
    const NLMSG_ERROR: u16 = 2;
    const RT_TABLE_MAIN: u8 = 254;
    const RTPROT_STATIC: u8 = 4;
    const RT_SCOPE_UNIVERSE: u8 = 0;
    const RT_SCOPE_NOWHERE: u8 = 255;
    const RTN_UNICAST: u8 = 1;
    const RTN_PROHIBIT: u8 = 8;
    const RTNH_F_ONLINK: u32 = 4;
    const RTA_DST: u16 = 1;
    const RTA_OIF: u16 = 4;
    const RTA_GATEWAY: u16 = 5;

    extern "C" {
        fn socket(domain: i32, kind: i32, protocol: i32) -> i32;
        fn send(fd: i32, buf: *const u8, len: usize, flags: i32) -> isize;
        fn recv(fd: i32, buf: *mut u8, len: usize, flags: i32) -> isize;
        fn close(fd: i32) -> i32;
    }

    /// The interface, gateway and subnet of this namespace's default route, from
    /// `/proc/net/route`.
    #[derive(Debug, PartialEq)]
    pub(super) struct Uplink {
        pub iface: String,
        pub gateway: Ipv4Addr,
        pub subnet: Option<(Ipv4Addr, u8)>,
    }

    pub(super) fn uplink(table: &str) -> Option<Uplink> {
        // The kernel prints each address as the u32 in memory (network byte order), in the
        // host's byte order.
        let hex = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::to_le_bytes);
        let rows: Vec<Vec<&str>> = table
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .filter(|r: &Vec<&str>| r.len() >= 8)
            .collect();
        let default = rows
            .iter()
            .find(|r| r[1] == "00000000" && r[7] == "00000000")?;
        let iface = default[0].to_string();
        let gateway = Ipv4Addr::from(hex(default[2])?);
        let subnet = rows
            .iter()
            .filter(|r| r[0] == iface && r[2] == "00000000" && r[7] != "00000000")
            .find_map(|r| {
                let mask = u32::from_be_bytes(hex(r[7])?);
                Some((Ipv4Addr::from(hex(r[1])?), mask.count_ones() as u8))
            });
        Some(Uplink {
            iface,
            gateway,
            subnet,
        })
    }

    /// One rtnetlink route message.
    pub(super) fn message(
        kind: u16,
        flags: u16,
        dst: (Ipv4Addr, u8),
        route_type: u8,
        scope: u8,
        rt_flags: u32,
        attrs: &[(u16, [u8; 4])],
    ) -> Vec<u8> {
        let mut m = Vec::with_capacity(64);
        m.extend_from_slice(&0u32.to_ne_bytes()); // length, set below
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
        m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
                                                  // struct rtmsg
        m.extend_from_slice(&[AF_INET, dst.1, 0, 0, RT_TABLE_MAIN]);
        m.push(if kind == RTM_DELROUTE {
            0
        } else {
            RTPROT_STATIC
        });
        m.extend_from_slice(&[scope, route_type]);
        m.extend_from_slice(&rt_flags.to_ne_bytes());
        let mut all = vec![(RTA_DST, dst.0.octets())];
        all.extend_from_slice(attrs);
        for (kind, value) in all {
            m.extend_from_slice(&8u16.to_ne_bytes());
            m.extend_from_slice(&kind.to_ne_bytes());
            m.extend_from_slice(&value);
        }
        let len = m.len() as u32;
        m[..4].copy_from_slice(&len.to_ne_bytes());
        m
    }

    /// Sends one request and reads the kernel's acknowledgement.
    fn request(fd: i32, message: &[u8]) -> io::Result<()> {
        // SAFETY: `message` is valid for its length.
        if unsafe { send(fd, message.as_ptr(), message.len(), 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut answer = [0u8; 1024];
        // SAFETY: `answer` has room for what the kernel writes.
        let n = unsafe { recv(fd, answer.as_mut_ptr(), answer.len(), 0) };
        if n < 20 {
            return Err(io::Error::last_os_error());
        }
        let kind = u16::from_ne_bytes([answer[4], answer[5]]);
        let code = i32::from_ne_bytes([answer[16], answer[17], answer[18], answer[19]]);
        if kind == NLMSG_ERROR && code != 0 {
            return Err(io::Error::from_raw_os_error(-code));
        }
        Ok(())
    }

    /// Makes every prefix in `blocked`, this namespace's own subnet and its gateway
    /// unroutable, keeping the default route through the gateway.
    pub(super) fn block(blocked: &[(Ipv4Addr, u8)]) -> io::Result<()> {
        let table = std::fs::read_to_string("/proc/net/route")?;
        let up = uplink(&table).ok_or_else(|| {
            io::Error::new(ErrorKind::NotFound, "the sandbox has no default route")
        })?;
        let index: u32 = std::fs::read_to_string(format!("/sys/class/net/{}/ifindex", up.iface))?
            .trim()
            .parse()
            .map_err(|_| io::Error::new(ErrorKind::InvalidData, "bad ifindex"))?;
        // SAFETY: a plain system call without pointers.
        let fd = unsafe { socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let oif = (RTA_OIF, index.to_ne_bytes());
        let steps = || -> io::Result<()> {
            // The gateway stays the next hop without a route to it.
            let default = message(
                RTM_NEWROUTE,
                NLM_F_CREATE | NLM_F_REPLACE,
                (Ipv4Addr::UNSPECIFIED, 0),
                RTN_UNICAST,
                RT_SCOPE_UNIVERSE,
                RTNH_F_ONLINK,
                &[(RTA_GATEWAY, up.gateway.octets()), oif],
            );
            request(fd, &default).map_err(|e| context(e, "the default route"))?;
            let mut prohibited: Vec<(Ipv4Addr, u8)> = blocked.to_vec();
            if let Some(subnet) = up.subnet {
                let delete = message(RTM_DELROUTE, 0, subnet, 0, RT_SCOPE_NOWHERE, 0, &[oif]);
                request(fd, &delete).map_err(|e| context(e, "the subnet route"))?;
                prohibited.push(subnet);
            }
            prohibited.push((up.gateway, 32));
            for prefix in prohibited {
                let add = message(
                    RTM_NEWROUTE,
                    NLM_F_CREATE | NLM_F_EXCL,
                    prefix,
                    RTN_PROHIBIT,
                    RT_SCOPE_UNIVERSE,
                    0,
                    &[],
                );
                match request(fd, &add) {
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                    other => other
                        .map_err(|e| context(e, &format!("blocking {}/{}", prefix.0, prefix.1)))?,
                }
            }
            Ok(())
        };
        let result = steps();
        // SAFETY: `fd` is ours.
        unsafe { close(fd) };
        result
    }

    fn context(e: io::Error, what: &str) -> io::Error {
        io::Error::new(e.kind(), format!("setting {what}: {e}"))
    }
}

/// Binds the socket at `path` (a stale one is replaced), readable by its owner only.
fn listen(path: &str) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {path}: {e}")))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Bytes read from one side that the other has not taken yet.
#[derive(Default)]
struct Pipe {
    pending: Vec<u8>,
    /// The source sent its last byte.
    eof: bool,
    /// The destination was told so (its write side shut).
    shut: bool,
}

impl Pipe {
    fn done(&self) -> bool {
        self.eof && self.pending.is_empty()
    }
}

/// What happened to one direction during a pump.
enum Flow {
    Open,
    Broken,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == ErrorKind::WouldBlock
}

/// Moves what `src` has to `dst` until one of them would block (edge-triggered: the next
/// readiness of either brings the next pump). `scratch` is shared by all connections.
fn pump(mut src: impl Read, mut dst: impl Write, pipe: &mut Pipe, scratch: &mut [u8]) -> Flow {
    loop {
        while !pipe.pending.is_empty() {
            match dst.write(&pipe.pending) {
                Ok(n) => drop(pipe.pending.drain(..n)),
                Err(e) if would_block(&e) => return Flow::Open,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Flow::Broken,
            }
        }
        if pipe.pending.capacity() > 0 {
            pipe.pending = Vec::new();
        }
        if pipe.eof {
            return Flow::Open;
        }
        let n = match src.read(scratch) {
            Ok(0) => {
                pipe.eof = true;
                return Flow::Open;
            }
            Ok(n) => n,
            Err(e) if would_block(&e) => return Flow::Open,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Flow::Broken,
        };
        let mut written = 0;
        while written < n {
            match dst.write(&scratch[written..n]) {
                Ok(m) => written += m,
                Err(e) if would_block(&e) => {
                    pipe.pending.extend_from_slice(&scratch[written..n]);
                    return Flow::Open;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Flow::Broken,
            }
        }
    }
}

/// One connection of the executor, relayed to one connection to the task.
struct Conn {
    executor: UnixStream,
    task: TcpStream,
    to_task: Pipe,
    to_executor: Pipe,
}

impl Conn {
    /// Moves bytes both ways; false once the connection is over (both sides done, a side
    /// broken, or the executor gone).
    fn advance(&mut self, scratch: &mut [u8], executor_hung_up: bool) -> bool {
        let a = pump(&self.executor, &self.task, &mut self.to_task, scratch);
        let b = pump(&self.task, &self.executor, &mut self.to_executor, scratch);
        if matches!(a, Flow::Broken) || matches!(b, Flow::Broken) || executor_hung_up {
            return false;
        }
        // A side that sent its last byte, all of it delivered: the other side is told.
        if self.to_task.done() && !self.to_task.shut {
            self.to_task.shut = true;
            let _ = self.task.shutdown(Shutdown::Write);
        }
        if self.to_executor.done() && !self.to_executor.shut {
            self.to_executor.shut = true;
            let _ = self.executor.shutdown(Shutdown::Write);
        }
        !(self.to_task.done() && self.to_executor.done())
    }
}

/// The relay's state: the listener, the connections by slot, the epoll set.
struct Relay {
    listener: UnixListener,
    epoll: RawFd,
    conns: Vec<Option<Conn>>,
    scratch: Vec<u8>,
    destinations: Destinations,
}

/// Where the relay connects each connection.
enum Destinations {
    /// The task at `127.0.0.1:8080` in this namespace.
    Local,
    /// The address the connection names, when it is in one of these subnets.
    Named(Vec<(Ipv4Addr, u8)>),
}

/// The epoll token of the listener; a connection's are `slot << 1 | side`.
const LISTENER: u64 = u64::MAX;

impl Relay {
    fn new(listener: UnixListener) -> io::Result<Relay> {
        // SAFETY: a plain system call without pointers.
        let epoll = unsafe { epoll_create1(EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(io::Error::last_os_error());
        }
        let relay = Relay {
            listener,
            epoll,
            conns: Vec::new(),
            scratch: vec![0; 64 * 1024],
            destinations: Destinations::Local,
        };
        relay.watch(relay.listener.as_raw_fd(), LISTENER)?;
        Ok(relay)
    }

    fn watch(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut event = EpollEvent {
            events: EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
            data: token,
        };
        // SAFETY: `event` is a valid epoll_event for the duration of the call.
        if unsafe { epoll_ctl(self.epoll, EPOLL_CTL_ADD, fd, &mut event) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits for events (at most `timeout_ms`, -1: forever) and handles them.
    fn turn(&mut self, timeout_ms: i32) -> io::Result<()> {
        let mut events = [EpollEvent { events: 0, data: 0 }; 64];
        // SAFETY: `events` has room for the 64 events the kernel may write.
        let n = unsafe { epoll_wait(self.epoll, events.as_mut_ptr(), 64, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        for event in &events[..n as usize] {
            let (token, flags) = (event.data, event.events);
            if token == LISTENER {
                self.accept_all();
                continue;
            }
            let slot = (token >> 1) as usize;
            let from_executor = token & 1 == 0;
            let hung_up = from_executor && flags & (EPOLLHUP | EPOLLERR) != 0;
            let scratch = &mut self.scratch;
            if let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) {
                if !conn.advance(scratch, hung_up) {
                    // Dropping closes both sockets (removed from the epoll set with them).
                    self.conns[slot] = None;
                }
            }
        }
        Ok(())
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((executor, _)) => {
                    if let Some(conn) = connect_task(executor, &self.destinations) {
                        self.add(conn);
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // Would block, or out of files: the executor retries.
                Err(_) => return,
            }
        }
    }

    fn add(&mut self, conn: Conn) {
        let slot = match self.conns.iter().position(Option::is_none) {
            Some(slot) => slot,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        let token = (slot as u64) << 1;
        let watched = self
            .watch(conn.executor.as_raw_fd(), token)
            .and_then(|()| self.watch(conn.task.as_raw_fd(), token | 1));
        if watched.is_ok() {
            self.conns[slot] = Some(conn);
        }
    }
}

/// Connects `executor`'s new connection to the task and greets it; `None` (the executor's
/// connection closed without a greeting) when the task does not listen, or the connection
/// named a destination it may not have.
fn connect_task(mut executor: UnixStream, destinations: &Destinations) -> Option<Conn> {
    let to = match destinations {
        Destinations::Local => SocketAddr::from(TASK),
        Destinations::Named(subnets) => {
            let to = named_destination(&mut executor)?;
            if !subnets.iter().any(|&net| in_subnet(*to.ip(), net)) {
                return None;
            }
            SocketAddr::V4(to)
        }
    };
    let task = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT).ok()?;
    task.set_nodelay(true).ok()?;
    executor.set_nonblocking(false).ok()?;
    executor.write_all(&[GREETING]).ok()?;
    executor.set_nonblocking(true).ok()?;
    task.set_nonblocking(true).ok()?;
    Some(Conn {
        executor,
        task,
        to_task: Pipe::default(),
        to_executor: Pipe::default(),
    })
}

/// The destination a `--forward` connection names first (IPv4, port; network order).
fn named_destination(executor: &mut UnixStream) -> Option<std::net::SocketAddrV4> {
    let mut named = [0u8; 6];
    executor.set_nonblocking(false).ok()?;
    executor.set_read_timeout(Some(TARGET_TIMEOUT)).ok()?;
    executor.read_exact(&mut named).ok()?;
    executor.set_read_timeout(None).ok()?;
    let ip = Ipv4Addr::new(named[0], named[1], named[2], named[3]);
    Some(std::net::SocketAddrV4::new(
        ip,
        u16::from_be_bytes([named[4], named[5]]),
    ))
}

fn in_subnet(addr: Ipv4Addr, (net, len): (Ipv4Addr, u8)) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    u32::from(addr) & mask == u32::from(net) & mask
}

/// The subnets of this namespace's own interfaces, loopback left out, from
/// `/proc/net/route` (destination and mask in host order, hex).
fn own_subnets() -> io::Result<Vec<(Ipv4Addr, u8)>> {
    let table = std::fs::read_to_string("/proc/net/route")?;
    Ok(subnets_in_route_table(&table))
}

fn subnets_in_route_table(table: &str) -> Vec<(Ipv4Addr, u8)> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let hex = |i: usize| u32::from_str_radix(fields.get(i)?, 16).ok();
            let (dest, gateway, mask) = (hex(1)?, hex(2)?, hex(7)?);
            // Directly connected subnets only: no gateway, and not the default route.
            if gateway != 0 || mask == 0 {
                return None;
            }
            let dest = Ipv4Addr::from(u32::from_be(dest));
            let len = u32::from_be(mask).leading_ones() as u8;
            (!dest.is_loopback()).then_some((dest, len))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn a_forwarding_relay_takes_only_its_own_subnets() {
        // /proc/net/route of a holder on an overlay 10.0.1.0/24 (and a default route).
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t0001000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth1\t00000000\t010012AC\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        let subnets = subnets_in_route_table(table);
        assert_eq!(subnets, vec![(Ipv4Addr::new(10, 0, 1, 0), 24)]);
        assert!(in_subnet(Ipv4Addr::new(10, 0, 1, 7), subnets[0]));
        assert!(!in_subnet(Ipv4Addr::new(10, 0, 2, 7), subnets[0]));
        assert!(!in_subnet(Ipv4Addr::new(172, 18, 0, 1), subnets[0]));
    }

    /// A writer that takes at most `room` bytes, then would block.
    struct Tight {
        taken: Vec<u8>,
        room: usize,
    }

    impl Write for Tight {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.taken.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn what_the_destination_cannot_take_is_kept_and_delivered_later() {
        let mut pipe = Pipe::default();
        let mut scratch = vec![0; 4];
        let mut dst = Tight {
            taken: Vec::new(),
            room: 3,
        };
        let mut src = Cursor::new(b"abcdefgh".to_vec());
        assert!(matches!(
            pump(&mut src, &mut dst, &mut pipe, &mut scratch),
            Flow::Open
        ));
        assert_eq!(dst.taken, b"abc");
        assert_eq!(pipe.pending, b"d", "the rest of the first read waits");
        assert!(!pipe.eof);
        dst.room = 100;
        pump(&mut src, &mut dst, &mut pipe, &mut scratch);
        assert_eq!(dst.taken, b"abcdefgh");
        assert!(pipe.done(), "source ended and everything was delivered");
        assert_eq!(pipe.pending.capacity(), 0, "the buffer is freed once empty");
    }

    #[test]
    fn finds_the_local_addresses_in_the_fib() {
        let trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n\
                    \x20    |-- 192.0.2.2\n        /32 host LOCAL\n     |-- 192.0.2.255\n\
                    \x20       /32 link BROADCAST\nLocal:\n     |-- 127.0.0.1\n        /32 host LOCAL\n\
                    \x20    |-- 192.0.2.2\n        /32 host LOCAL\n";
        assert_eq!(
            local_addresses(trie),
            [Ipv4Addr::new(192, 0, 2, 2), Ipv4Addr::LOCALHOST]
        );
    }

    #[test]
    fn relay_arguments_are_parsed_and_bad_ones_refused() {
        let args: Vec<String> = ["/run/meca/a", "--owner", "7:8", "--block", "10.0.0.0/8"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            RelayArgs::parse(&args).unwrap(),
            RelayArgs {
                socket: "/run/meca/a".into(),
                owner: Some((7, 8)),
                blocked: vec![(Ipv4Addr::new(10, 0, 0, 0), 8)],
                forward: false,
            }
        );
        let forwarding = ["/s".to_string(), "--forward".to_string()];
        assert!(RelayArgs::parse(&forwarding).unwrap().forward);
        for bad in [
            ["--block", "10.0.0.0/33"],
            ["--block", "x/8"],
            ["--owner", "a:b"],
        ] {
            let mut args = vec!["/s".to_string()];
            args.extend(bad.iter().map(|s| s.to_string()));
            assert!(RelayArgs::parse(&args).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_uplink_is_read_from_the_route_table() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t00000000\t010011AC\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                     eth0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        assert_eq!(
            routes::uplink(table),
            Some(routes::Uplink {
                iface: "eth0".into(),
                gateway: Ipv4Addr::new(172, 17, 0, 1),
                subnet: Some((Ipv4Addr::new(172, 17, 0, 0), 16)),
            })
        );
    }

    #[test]
    fn a_prohibit_route_message_is_laid_out_as_the_kernel_reads_it() {
        let m = routes::message(24, 0x600, (Ipv4Addr::new(10, 0, 0, 0), 8), 8, 0, 0, &[]);
        assert_eq!(m.len(), 16 + 12 + 8);
        assert_eq!(u32::from_ne_bytes(m[..4].try_into().unwrap()), 36);
        assert_eq!(
            &m[16..21],
            &[2, 8, 0, 0, 254],
            "family, dst_len, src, tos, table"
        );
        assert_eq!(m[23], 8, "type prohibit");
        assert_eq!(&m[32..36], &[10, 0, 0, 0]);
    }

    #[test]
    fn a_broken_destination_ends_the_connection() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut pipe = Pipe::default();
        let flow = pump(Cursor::new(b"x".to_vec()), Broken, &mut pipe, &mut [0; 8]);
        assert!(matches!(flow, Flow::Broken));
    }

    #[test]
    fn relays_both_ways_and_greets_only_when_the_task_listens() {
        // The relay's own loop, on a socket in a temp dir and the real port 8080 of this
        // machine's loopback: skipped when something else holds that port.
        let Ok(task) = std::net::TcpListener::bind(SocketAddr::from(TASK)) else {
            return;
        };
        let dir = std::env::temp_dir().join(format!("meca-relay-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.sock");
        let mut relay = Relay::new(listen(path.to_str().unwrap()).unwrap()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut client = UnixStream::connect(&path).unwrap();
        relay.turn(1000).unwrap();
        let (mut served, _) = task.accept().unwrap();
        let mut greeting = [0u8; 1];
        client.read_exact(&mut greeting).unwrap();
        assert_eq!(greeting[0], GREETING);
        client.write_all(b"ping").unwrap();
        relay.turn(1000).unwrap();
        let mut got = [0u8; 4];
        served.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        served.write_all(b"pong").unwrap();
        relay.turn(1000).unwrap();
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"pong");
        // The task closes: the executor reads the end, then the connection is dropped.
        drop(served);
        relay.turn(1000).unwrap();
        assert_eq!(client.read(&mut got).unwrap(), 0);
        drop(client);
        relay.turn(100).unwrap();
        // Without a listener, a connection is closed without a greeting.
        drop(task);
        let mut client = UnixStream::connect(&path).unwrap();
        relay.turn(1000).unwrap();
        assert_eq!(client.read(&mut greeting).unwrap(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
