//! Fork numbers, shared by the wrappers and the SQL functions.

use pgrx::pg_sys::ForkNumber;
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
