-- Token signing keys (issue #10), shared by every auth replica through the
-- database instead of a file on a shared volume. The private key is kept
-- only sealed (AES-256-GCM) with the operator's key-encryption key.
-- state: 'active' (signs new tokens; at most one), 'retiring' (no longer
-- signs, still verifies tokens it signed until they expired) or 'retired'.
CREATE TABLE signing_keys (
    kid            TEXT    PRIMARY KEY,
    public_key     BLOB    NOT NULL,
    private_sealed BLOB    NOT NULL,
    created_at     INTEGER NOT NULL,
    state          TEXT    NOT NULL CHECK (state IN ('active', 'retiring', 'retired')),
    retiring_at    INTEGER
) STRICT, WITHOUT ROWID;

-- Two replicas creating the first key, or two rotations at once: one wins.
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys (state)
    WHERE state = 'active';
