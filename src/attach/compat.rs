//! The few server structures whose layout differs between the supported
//! PostgreSQL versions, behind one version-neutral type.

use pgrx::pg_sys::{self, ForkNumber, SMgrRelation};
use pgrx::PgRelation;

/// "Not a temporary relation" (`InvalidBackendId` in PostgreSQL 15,
/// `INVALID_PROC_NUMBER` from 17).
pub const NO_BACKEND: i32 = -1;

/// Where a relation's files live: tablespace, database, file number, and the
/// owning backend for temporary relations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StorageId {
    pub tablespace: u32,
    pub database: u32,
    pub relfilenode: u32,
    pub backend: i32,
}

impl StorageId {
    /// # Safety
    /// `reln` must be a live SMgrRelation.
    pub unsafe fn of_smgr(reln: SMgrRelation) -> StorageId {
        #[cfg(feature = "pg15")]
        {
            // SAFETY: per the contract.
            let r = unsafe { &(*reln).smgr_rnode };
            StorageId {
                tablespace: r.node.spcNode.into(),
                database: r.node.dbNode.into(),
                relfilenode: r.node.relNode.into(),
                backend: r.backend,
            }
        }
        #[cfg(any(feature = "pg17", feature = "pg18"))]
        {
            // SAFETY: per the contract.
            let r = unsafe { &(*reln).smgr_rlocator };
            StorageId {
                tablespace: r.locator.spcOid.into(),
                database: r.locator.dbOid.into(),
                relfilenode: r.locator.relNumber.into(),
                backend: r.backend,
            }
        }
    }

    pub fn of_relation(rel: &PgRelation) -> StorageId {
        #[cfg(feature = "pg15")]
        let n = rel.rd_node;
        #[cfg(feature = "pg15")]
        let (tablespace, database, relfilenode) = (n.spcNode, n.dbNode, n.relNode);
        #[cfg(any(feature = "pg17", feature = "pg18"))]
        let n = rel.rd_locator;
        #[cfg(any(feature = "pg17", feature = "pg18"))]
        let (tablespace, database, relfilenode) = (n.spcOid, n.dbOid, n.relNumber);
        StorageId {
            tablespace: tablespace.into(),
            database: database.into(),
            relfilenode: relfilenode.into(),
            backend: rel.rd_backend,
        }
    }

    pub fn is_temporary(&self) -> bool {
        self.backend != NO_BACKEND
    }

    /// The path of one fork relative to the data directory
    /// (`base/5/16384_fsm`, `base/5/t3_16390`). Allocates nothing in
    /// PostgreSQL's memory contexts: the write path calls it for every
    /// write, in processes whose contexts live as long as they do.
    pub fn fork_path(&self, fork: ForkNumber::Type) -> String {
        let (db, spc, rel) = (
            pg_sys::Oid::from(self.database),
            pg_sys::Oid::from(self.tablespace),
            self.relfilenode.into(),
        );
        // SAFETY: GetRelationPath only formats its arguments, into a
        // palloc'd C string (15, 17), copied at once and freed, or a
        // returned fixed-size buffer (18), copied at once.
        unsafe {
            #[cfg(any(feature = "pg15", feature = "pg17"))]
            {
                let p = pg_sys::GetRelationPath(db, spc, rel, self.backend, fork);
                let path = std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned();
                pg_sys::pfree(p.cast());
                path
            }
            #[cfg(feature = "pg18")]
            {
                let p = pg_sys::GetRelationPath(db, spc, rel, self.backend, fork);
                std::ffi::CStr::from_ptr(p.str_.as_ptr())
                    .to_string_lossy()
                    .into_owned()
            }
        }
    }

    /// `ReadBufferWithoutRelcache` for a block of this (permanent or
    /// unlogged, never temporary) relation.
    ///
    /// # Safety
    /// As `ReadBufferWithoutRelcache`: the caller pins and releases the
    /// buffer by PostgreSQL's rules.
    pub unsafe fn read_buffer(
        &self,
        fork: ForkNumber::Type,
        block: pg_sys::BlockNumber,
        permanent: bool,
    ) -> pg_sys::Buffer {
        #[cfg(feature = "pg15")]
        let id = pg_sys::RelFileNode {
            spcNode: self.tablespace.into(),
            dbNode: self.database.into(),
            relNode: self.relfilenode.into(),
        };
        #[cfg(any(feature = "pg17", feature = "pg18"))]
        let id = pg_sys::RelFileLocator {
            spcOid: self.tablespace.into(),
            dbOid: self.database.into(),
            relNumber: self.relfilenode.into(),
        };
        // SAFETY: per the contract.
        unsafe {
            pg_sys::ReadBufferWithoutRelcache(
                id,
                fork,
                block,
                pg_sys::ReadBufferMode::RBM_NORMAL,
                std::ptr::null_mut(),
                permanent,
            )
        }
    }
}
