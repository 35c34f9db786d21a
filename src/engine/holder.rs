//! The sandbox holder image: a container that only holds a network namespace for task
//! containers to join (the pod-sandbox pattern), built without a registry or `docker build`.
//!
//! Owns the holder program (a minimal static ELF executable, written here byte by byte: it
//! sleeps in `pause(2)` forever and opens no socket, so port 8080 stays free for the task)
//! and the tar archive of a root filesystem holding only it, which the engine imports as an
//! image. Pure: no I/O.

/// Where the holder program lives in its image.
pub const HOLDER_PATH: &str = "/hold";

/// Machine code of the holder for x86-64: `loop { pause() }`.
const X86_64_CODE: [u8; 9] = [
    0xb8, 0x22, 0x00, 0x00, 0x00, // mov eax, 34 (pause)
    0x0f, 0x05, // syscall
    0xeb, 0xf7, // jmp back to the mov
];
const EM_X86_64: u16 = 0x3e;

/// Where the program is loaded.
const BASE: u64 = 0x40_0000;
const ELF_HEADER_LEN: u64 = 64;
const PROGRAM_HEADER_LEN: u64 = 56;

/// The holder program for the architecture this executor was built for, if there is one.
/// (The holder runs on the same engine, so on the same architecture as the executor's
/// tasks; an executor built for another architecture simply runs without sandbox pooling.)
pub fn holder_program() -> Option<Vec<u8>> {
    if cfg!(target_arch = "x86_64") {
        Some(elf(EM_X86_64, &X86_64_CODE))
    } else {
        None
    }
}

/// A static little-endian ELF64 executable with one loadable segment: headers, then `code`,
/// entered at its first byte.
fn elf(machine: u16, code: &[u8]) -> Vec<u8> {
    let headers = ELF_HEADER_LEN + PROGRAM_HEADER_LEN;
    let total = headers + code.len() as u64;
    let mut out = Vec::with_capacity(total as usize);
    // e_ident: magic, 64-bit, little endian, version 1, System V ABI, padding.
    out.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&2u16.to_le_bytes()); // e_type: executable
    out.extend_from_slice(&machine.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes()); // e_version
    out.extend_from_slice(&(BASE + headers).to_le_bytes()); // e_entry
    out.extend_from_slice(&ELF_HEADER_LEN.to_le_bytes()); // e_phoff
    out.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no sections
    out.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    out.extend_from_slice(&(ELF_HEADER_LEN as u16).to_le_bytes()); // e_ehsize
    out.extend_from_slice(&(PROGRAM_HEADER_LEN as u16).to_le_bytes()); // e_phentsize
    out.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    out.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
                                    // The one program header: load the whole file read + execute at BASE.
    out.extend_from_slice(&1u32.to_le_bytes()); // p_type: PT_LOAD
    out.extend_from_slice(&5u32.to_le_bytes()); // p_flags: R + X
    out.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    out.extend_from_slice(&BASE.to_le_bytes()); // p_vaddr
    out.extend_from_slice(&BASE.to_le_bytes()); // p_paddr
    out.extend_from_slice(&total.to_le_bytes()); // p_filesz
    out.extend_from_slice(&total.to_le_bytes()); // p_memsz
    out.extend_from_slice(&0x1_0000u64.to_le_bytes()); // p_align
    out.extend_from_slice(code);
    out
}

/// A tar archive (ustar) of a root filesystem holding only `program` at [`HOLDER_PATH`].
pub fn rootfs_tar(program: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    let name = HOLDER_PATH.trim_start_matches('/');
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
    fn elf_headers_describe_one_loadable_segment_entered_at_the_code() {
        let program = elf(EM_X86_64, &X86_64_CODE);
        assert_eq!(&program[..4], b"\x7fELF");
        assert_eq!(program.len(), 64 + 56 + X86_64_CODE.len());
        let u64_at = |at: usize| u64::from_le_bytes(program[at..at + 8].try_into().unwrap());
        assert_eq!(u64_at(24), BASE + 120, "entry");
        assert_eq!(u64_at(32), 64, "program headers follow the ELF header");
        assert_eq!(u64_at(64 + 32), program.len() as u64, "file size");
        assert_eq!(&program[120..], &X86_64_CODE);
    }

    #[test]
    fn x86_64_code_loops_back_to_its_start() {
        // jmp rel8 is relative to the end of the jmp: it must land on offset 0.
        let rel = X86_64_CODE[8] as i8 as i64;
        assert_eq!(X86_64_CODE.len() as i64 + rel, 0);
    }

    #[test]
    fn tar_holds_the_program_with_a_valid_checksum() {
        let program = b"abc";
        let tar = rootfs_tar(program);
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
