//! The main program's read-only-after-relocation segment, and the narrowly
//! scoped write access needed to patch a few words in it.

pub struct Region {
    pub start: usize,
    pub len: usize,
}

/// A loaded segment of the main program: type, address, size in memory.
pub struct Segment {
    pub kind: u32,
    pub start: usize,
    pub len: usize,
}

/// The main program's load base and segments, as the dynamic loader
/// reports them.
pub struct MainProgram {
    pub base: usize,
    pub segments: Vec<Segment>,
}

unsafe extern "C" fn first_object(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut libc::c_void,
) -> std::ffi::c_int {
    // SAFETY: the loader passes a valid dl_phdr_info for the duration of the
    // callback; `data` is the `Option<MainProgram>` passed by main_program.
    unsafe {
        let info = &*info;
        let phdrs = std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize);
        let base = info.dlpi_addr as usize;
        *(data as *mut Option<MainProgram>) = Some(MainProgram {
            base,
            segments: phdrs
                .iter()
                .map(|ph| Segment {
                    kind: ph.p_type,
                    start: base + ph.p_vaddr as usize,
                    len: ph.p_memsz as usize,
                })
                .collect(),
        });
    }
    // The first object reported is the main program; stop there.
    1
}

pub fn main_program() -> Result<MainProgram, String> {
    let mut found: Option<MainProgram> = None;
    // SAFETY: the callback only writes through `data`, which points at `found`
    // for the whole call.
    unsafe {
        libc::dl_iterate_phdr(
            Some(first_object),
            (&mut found as *mut Option<MainProgram>).cast(),
        );
    }
    found.ok_or_else(|| "the dynamic loader reports no main program".to_string())
}

impl MainProgram {
    pub fn segment(&self, kind: u32) -> Option<&Segment> {
        self.segments.iter().find(|s| s.kind == kind)
    }
}

pub fn main_program_relro() -> Result<Region, String> {
    let program = main_program()?;
    let relro = program
        .segment(libc::PT_GNU_RELRO)
        .ok_or("the postgres executable has no PT_GNU_RELRO segment")?;
    Ok(Region {
        start: relro.start,
        len: relro.len,
    })
}

/// The region as aligned machine words.
///
/// # Safety
/// `region` must describe mapped, readable memory that stays mapped.
pub unsafe fn words(region: &Region) -> &'static [usize] {
    let align = std::mem::align_of::<usize>();
    let start = (region.start + align - 1) & !(align - 1);
    let end = region.start + region.len;
    let count = end.saturating_sub(start) / std::mem::size_of::<usize>();
    // SAFETY: per the caller's contract the range is mapped and readable.
    unsafe { std::slice::from_raw_parts(start as *const usize, count) }
}

/// Stores `(word index, value)` pairs into the region (see [`patch_word`]).
///
/// # Safety
/// The indexes must lie inside `words(region)`; see [`patch_word`].
pub unsafe fn store_words(region: &Region, slots: &[(usize, usize)]) -> Result<(), String> {
    // SAFETY: per the caller's contract.
    let base = unsafe { words(region) }.as_ptr() as usize;
    for &(index, value) in slots {
        // SAFETY: per the caller's contract, the word lies in the region.
        unsafe { patch_word(base + index * std::mem::size_of::<usize>(), value)? };
    }
    Ok(())
}

/// Stores `value` at `addr` and verifies the store. A word in the main
/// program's read-only relocated data has its page made writable only for
/// the duration. Any other word is a lazily bound GOT slot of an executable
/// linked without `-z now` (`.got.plt` lies after RELRO and stays writable,
/// because the dynamic loader itself writes it on first calls): it is
/// stored as is, and its page's protection is left alone.
///
/// # Safety
/// `addr` must be an aligned word of a mapped RELRO page or of the main
/// program's writable GOT, no other thread may run, and `value` must be
/// valid for whatever reads that word.
pub unsafe fn patch_word(addr: usize, value: usize) -> Result<(), String> {
    let in_relro = main_program_relro().is_ok_and(|r| addr >= r.start && addr < r.start + r.len);
    if !in_relro {
        // SAFETY: per the contract, a writable, aligned word.
        unsafe { std::ptr::write_volatile(addr as *mut usize, value) };
        // SAFETY: as above.
        if unsafe { std::ptr::read_volatile(addr as *const usize) } != value {
            return Err("a patched slot did not keep its new value".into());
        }
        return Ok(());
    }
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let page_start = addr & !(page - 1);
    // SAFETY: page_start is the mapped page holding addr.
    let rc = unsafe {
        libc::mprotect(
            page_start as *mut libc::c_void,
            page,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    };
    if rc != 0 {
        return Err(format!(
            "mprotect(PROT_WRITE) failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: addr is an aligned word inside the now writable page.
    unsafe { std::ptr::write_volatile(addr as *mut usize, value) };
    // SAFETY: as above, restoring read-only protection.
    let rc = unsafe { libc::mprotect(page_start as *mut libc::c_void, page, libc::PROT_READ) };
    if rc != 0 {
        return Err(format!(
            "mprotect(PROT_READ) failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the page is readable again.
    if unsafe { std::ptr::read_volatile(addr as *const usize) } != value {
        return Err("a patched slot did not keep its new value".into());
    }
    Ok(())
}
