//! The postgres executable's imported-function slots.
//!
//! Debian builds PostgreSQL as a PIE with BIND_NOW: every libc function the
//! executable calls goes through its PLT stub and one `R_X86_64_JUMP_SLOT`
//! slot in `.got`, inside RELRO. Rebinding a slot reroutes exactly the
//! server's own calls to that function; libraries (including this one) keep
//! calling libc directly.

use std::collections::HashMap;
use std::ffi::CStr;

const R_X86_64_JUMP_SLOT: u32 = 7;
const DT_NULL: i64 = 0;
const DT_PLTRELSZ: i64 = 2;
const DT_STRTAB: i64 = 5;
const DT_SYMTAB: i64 = 6;
const DT_JMPREL: i64 = 23;

/// ELF64 dynamic section entry (`Elf64_Dyn`).
#[repr(C)]
struct Elf64Dyn {
    d_tag: i64,
    d_val: u64,
}

/// ELF64 relocation with addend (`Elf64_Rela`); only the layout matters.
#[repr(C)]
#[allow(dead_code)]
struct Elf64Rela {
    r_offset: u64,
    r_info: u64,
    r_addend: i64,
}

/// One import slot: the address of the word the PLT stub jumps through.
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    pub address: usize,
}

/// Every `R_X86_64_JUMP_SLOT` import of the main program, by symbol name.
pub fn import_slots() -> Result<HashMap<String, Slot>, String> {
    let program = super::relro::main_program()?;
    let dynamic = program
        .segment(libc::PT_DYNAMIC)
        .ok_or("the postgres executable has no dynamic section")?;
    let count = dynamic.len / std::mem::size_of::<Elf64Dyn>();
    let dynamic = dynamic.start as *const Elf64Dyn;
    // SAFETY: PT_DYNAMIC of the loaded main program: mapped and readable.
    let entries = unsafe { std::slice::from_raw_parts(dynamic, count) };
    let (mut jmprel, mut pltrelsz, mut symtab, mut strtab) = (0usize, 0usize, 0usize, 0usize);
    for d in entries {
        let value = d.d_val as usize;
        match d.d_tag {
            DT_NULL => break,
            DT_JMPREL => jmprel = value,
            DT_PLTRELSZ => pltrelsz = value,
            DT_SYMTAB => symtab = value,
            DT_STRTAB => strtab = value,
            _ => {}
        }
    }
    if jmprel == 0 || symtab == 0 || strtab == 0 {
        return Err("the postgres executable has no PLT relocations".into());
    }
    // glibc relocates these d_ptr entries to absolute addresses in place;
    // other loaders leave them relative to the load base.
    let absolute = |p: usize| {
        if p < program.base {
            p + program.base
        } else {
            p
        }
    };
    let (jmprel, symtab, strtab) = (absolute(jmprel), absolute(symtab), absolute(strtab));
    let relocs = pltrelsz / std::mem::size_of::<Elf64Rela>();
    let mut slots = HashMap::new();
    for i in 0..relocs {
        // SAFETY: index within DT_PLTRELSZ bytes of the mapped relocation
        // table; symbol and string tables are mapped (they are needed by the
        // dynamic loader for the same relocations).
        unsafe {
            let rela = &*(jmprel as *const Elf64Rela).add(i);
            if (rela.r_info & 0xffff_ffff) as u32 != R_X86_64_JUMP_SLOT {
                continue;
            }
            let sym = &*(symtab as *const libc::Elf64_Sym).add((rela.r_info >> 32) as usize);
            let name = CStr::from_ptr((strtab + sym.st_name as usize) as *const libc::c_char);
            let address = program.base + rela.r_offset as usize;
            slots.insert(name.to_string_lossy().into_owned(), Slot { address });
        }
    }
    Ok(slots)
}
