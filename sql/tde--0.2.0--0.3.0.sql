-- tde 0.2.0 -> 0.3.0: page format 2. tde_verify() also counts encrypted
-- pages per page format version and format 1 pages sharing a keystream.
-- Its result gained columns, which CREATE OR REPLACE cannot add, so it is
-- dropped and created again (nothing in the extension depends on it), under
-- a new C symbol: the old symbol keeps the 0.2.0 row shape for databases not
-- updated yet.
\echo Use "ALTER EXTENSION tde UPDATE TO '0.3.0'" to load this file. \quit

DROP FUNCTION "tde_verify"();
CREATE FUNCTION "tde_verify"() RETURNS TABLE (
	"files" bigint,
	"pages" bigint,
	"encrypted" bigint,
	"plaintext" bigint,
	"empty" bigint,
	"checksum_failures" bigint,
	"generations" TEXT,
	"wal_generations" TEXT,
	"formats" TEXT,
	"iv_collisions" bigint
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'tde_verify_v3_wrapper';
