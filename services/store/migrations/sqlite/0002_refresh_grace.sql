-- Refresh with a grace window (issue #9): a token presented again shortly
-- after its rotation gets the successor it was rotated to, so two tabs or a
-- retry after a timeout do not end the session. The successor is kept only
-- as its hash and sealed with a key derived from the spent token itself (the
-- store never sees that token), so the store alone cannot open it.
ALTER TABLE refresh_tokens ADD COLUMN next_hash BLOB;
ALTER TABLE refresh_tokens ADD COLUMN next_sealed BLOB;
