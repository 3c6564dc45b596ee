-- tde 0.1.0 -> 0.2.0: online data-key rotation (tde_rotate_data_key,
-- tde_import_keyring, tde_drop_data_key); tde_status() also lists every data
-- key generation held, tde_verify() the generations of the WAL segments in
-- pg_wal. Both gained an output column, which CREATE OR REPLACE cannot add,
-- so they are dropped and created again (nothing in the extension depends on
-- them), under new C symbols: the old symbols keep the 0.1.0 row shapes for
-- databases not updated yet.
\echo Use "ALTER EXTENSION tde UPDATE TO '0.2.0'" to load this file. \quit

CREATE FUNCTION "tde_rotate_data_key"() RETURNS INT
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'tde_rotate_data_key_wrapper';

CREATE FUNCTION "tde_import_keyring"("path" TEXT) RETURNS TEXT
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'tde_import_keyring_wrapper';

CREATE FUNCTION "tde_drop_data_key"("generation" INT) RETURNS TEXT
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'tde_drop_data_key_wrapper';

DROP FUNCTION "tde_status"();
CREATE FUNCTION "tde_status"() RETURNS TABLE (
	"attach" TEXT,
	"server_version" TEXT,
	"principal_key_fingerprint" TEXT,
	"data_key_generation" INT,
	"data_key_generations" TEXT,
	"data_encryption" bool,
	"wal_encryption" bool,
	"wal_segment" TEXT,
	"wal_segment_salt" TEXT
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'tde_status_v2_wrapper';

DROP FUNCTION "tde_verify"();
CREATE FUNCTION "tde_verify"() RETURNS TABLE (
	"files" bigint,
	"pages" bigint,
	"encrypted" bigint,
	"plaintext" bigint,
	"empty" bigint,
	"checksum_failures" bigint,
	"generations" TEXT,
	"wal_generations" TEXT
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'tde_verify_v2_wrapper';
