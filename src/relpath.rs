//! Relation file paths and fork numbers, shared by the wrappers and the SQL
//! functions.

use pgrx::pg_sys::{self, ForkNumber};
use tde_core::kdf::ForkKind;

pub fn fork_kind(forknum: ForkNumber::Type) -> ForkKind {
    match forknum {
        ForkNumber::MAIN_FORKNUM => ForkKind::Main,
        ForkNumber::FSM_FORKNUM => ForkKind::Fsm,
        ForkNumber::VISIBILITYMAP_FORKNUM => ForkKind::Vm,
        ForkNumber::INIT_FORKNUM => ForkKind::Init,
        other => pgrx::error!("tde: unknown fork number {other}"),
    }
}

pub fn fork_number(fork: ForkKind) -> ForkNumber::Type {
    match fork {
        ForkKind::Main => ForkNumber::MAIN_FORKNUM,
        ForkKind::Fsm => ForkNumber::FSM_FORKNUM,
        ForkKind::Vm => ForkNumber::VISIBILITYMAP_FORKNUM,
        ForkKind::Init => ForkNumber::INIT_FORKNUM,
    }
}

/// The path of a relation fork relative to the data directory
/// (`base/5/16384_fsm`, `base/5/t3_16390`).
pub fn fork_path(
    node: pg_sys::RelFileNode,
    backend: pg_sys::BackendId,
    fork: ForkNumber::Type,
) -> String {
    // SAFETY: GetRelationPath only formats its arguments into a palloc'd C
    // string, which is copied at once.
    unsafe {
        let p = pg_sys::GetRelationPath(node.dbNode, node.spcNode, node.relNode, backend, fork);
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}
