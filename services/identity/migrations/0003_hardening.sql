-- Issue 9 (security hardening).

-- A membership granted on the member's signed acceptance keeps it (also in
-- the MembershipGranted event); all NULL when granted directly.
ALTER TABLE memberships ADD COLUMN acceptance_key_id text;
ALTER TABLE memberships ADD COLUMN accepted_at timestamptz;
ALTER TABLE memberships ADD COLUMN acceptance_nonce bytea;
ALTER TABLE memberships ADD COLUMN acceptance_signature bytea;

-- Revocation reasons are codes (RevocationReason names) now; free text given
-- before is dropped rather than shown as if it were a code.
UPDATE identities SET revocation_reason = ''
 WHERE revocation_reason NOT IN ('KEY_COMPROMISE', 'AFFILIATION_CHANGED', 'SUPERSEDED', 'CESSATION_OF_OPERATION',
                                 'PRIVILEGE_WITHDRAWN', 'REGISTRATION_ERROR', 'SUBJECT_REQUEST');
