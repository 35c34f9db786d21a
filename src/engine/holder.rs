//! The sandbox holder image: a container that holds a task's network namespace (the
//! pod-sandbox pattern) and the one way into it, built without a registry or `docker build`.
//!
//! Owns the holder program (`holder/program.rs`: a static executable that relays the
//! executor's connections on a Unix socket to the task's port 8080 inside the namespace and
//! opens no network socket of its own) and the tar archive of a root filesystem holding only
//! it, which the engine imports as an image. Pure: no I/O.

#[allow(dead_code)] // A program of its own; here for its tests.
mod program;

/// The holder program (`holder/program.rs`), built by `build.rs` as a static executable for
/// the architecture this executor was built for (the holder runs on the same engine, so on
/// the same architecture as the executor's tasks).
static PROGRAM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hold"));

/// The holder program.
pub fn holder_program() -> &'static [u8] {
    PROGRAM
}

/// A tar archive (ustar) of a root filesystem holding only `program`, at `path`.
pub fn rootfs_tar(program: &[u8], path: &str) -> Vec<u8> {
    let mut header = [0u8; 512];
    let name = path.trim_start_matches('/');
    header[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |field: &mut [u8], value: u64| {
        let digits = format!("{:0width$o}", value, width = field.len() - 1);
        field[..digits.len()].copy_from_slice(digits.as_bytes());
    };
    octal(&mut header[100..108], 0o755); // mode
    octal(&mut header[108..116], 0); // uid
    octal(&mut header[116..124], 0); // gid
    octal(&mut header[124..136], program.len() as u64); // size
    octal(&mut header[136..148], 0); // mtime
    header[156] = b'0'; // regular file
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    // Checksum: the header's byte sum with the checksum field read as spaces.
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    let digits = format!("{sum:06o}\0 ");
    header[148..156].copy_from_slice(digits.as_bytes());

    let mut tar = Vec::with_capacity(512 * 4 + program.len());
    tar.extend_from_slice(&header);
    tar.extend_from_slice(program);
    tar.resize(tar.len().div_ceil(512) * 512, 0);
    // End of archive: two zero blocks.
    tar.resize(tar.len() + 1024, 0);
    tar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_greets_with_the_byte_the_task_client_waits_for() {
        assert_eq!(program::GREETING, crate::task_client::GREETING);
    }

    #[test]
    fn the_embedded_program_is_a_static_executable() {
        let program = holder_program();
        assert_eq!(&program[..4], b"\x7fELF");
        // No PT_INTERP: it needs no dynamic loader in its empty image.
        let text = String::from_utf8_lossy(program);
        assert!(
            !text.contains("/lib64/ld-linux"),
            "the holder must be static"
        );
    }

    #[test]
    fn tar_holds_the_program_with_a_valid_checksum() {
        let program = b"abc";
        let tar = rootfs_tar(program, "/hold");
        assert_eq!(tar.len() % 512, 0);
        assert_eq!(&tar[..4], b"hold");
        assert_eq!(&tar[512..515], program);
        let recorded =
            u32::from_str_radix(std::str::from_utf8(&tar[148..154]).unwrap(), 8).unwrap();
        let mut header = tar[..512].to_vec();
        header[148..156].copy_from_slice(b"        ");
        assert_eq!(recorded, header.iter().map(|&b| u32::from(b)).sum::<u32>());
        assert_eq!(&tar[124..135], b"00000000003");
    }
}
