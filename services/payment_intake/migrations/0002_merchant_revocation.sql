-- A revoked merchant stays in the registry (its payments reference it) but the webhook refuses it.
ALTER TABLE merchants ADD COLUMN revoked_at timestamptz;
