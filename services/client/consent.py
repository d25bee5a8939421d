"""Consents as a patient's app or a hospital system handles them: the patient
(or a legal representative) signs terms with their own key, on their own
device, and submits them; the grantee asks whether access is allowed.

Terms are signed exactly as the consent service verifies them
(``medledger.consent.signing``: ``"medledger.v1.ConsentTerms\\n"`` followed by
the terms' deterministic protobuf encoding), so a consent can be checked by
anyone holding the signer's public key.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime, timedelta, timezone
from typing import Iterable, cast

from medledger.client.session import Session
from medledger.consent.domain import timestamp
from medledger.consent.signing import canonical_terms, signing_message
from medledger.v1 import consent_pb2, consent_pb2_grpc

AUDIENCE = ("consent",)
DEFAULT_VALIDITY = timedelta(days=365)


class Purpose(enum.IntEnum):
    """Purposes of use (HL7 v3 PurposeOfUse), as consent.proto numbers them."""

    TREATMENT = consent_pb2.PURPOSE_TREATMENT
    PAYMENT = consent_pb2.PURPOSE_PAYMENT
    OPERATIONS = consent_pb2.PURPOSE_OPERATIONS
    RESEARCH = consent_pb2.PURPOSE_RESEARCH
    EMERGENCY = consent_pb2.PURPOSE_EMERGENCY


def wire_purpose(purpose: int) -> consent_pb2.Purpose.ValueType:
    """A purpose (or its number) as consent.proto's fields take it."""
    return cast("consent_pb2.Purpose.ValueType", int(purpose))


class ConsentClient:
    """The consent service, as the session's identity."""

    def __init__(self, session: Session, stub: consent_pb2_grpc.ConsentServiceStub) -> None:
        self._session = session
        self._stub = stub

    def terms(
        self,
        grantee_id: str,
        purposes: Iterable[Purpose] = (Purpose.TREATMENT,),
        *,
        patient_id: str | None = None,
        categories: Iterable[str] = (),
        record_ids: Iterable[str] = (),
        valid_from: datetime | None = None,
        valid_until: datetime | None = None,
        consent_id: str | None = None,
    ) -> consent_pb2.ConsentTerms:
        """Terms signed by this session's identity: for its own records unless
        patient_id names a patient it represents. No categories and no record
        ids means every record; the window defaults to a year from now."""
        now = datetime.now(timezone.utc)
        start = valid_from or now
        scope = consent_pb2.ConsentScope(categories=list(categories), record_ids=list(record_ids))
        scope.all_records = not (scope.categories or scope.record_ids)
        return consent_pb2.ConsentTerms(
            consent_id=consent_id or str(uuid.uuid4()),
            patient_id=patient_id or self._session.identity_id,
            grantee_id=grantee_id,
            purposes=[wire_purpose(p) for p in purposes],
            scope=scope,
            valid_from=timestamp(start),
            valid_until=timestamp(valid_until or start + DEFAULT_VALIDITY),
            signer_id=self._session.identity_id,
            signer_key_id=self._session.key_id,
            signed_at=timestamp(now),
        )

    def sign(self, terms: consent_pb2.ConsentTerms) -> consent_pb2.GrantConsentRequest:
        """The signed grant, ready to submit (by anyone: the signature is the authority)."""
        encoded = canonical_terms(terms)
        return consent_pb2.GrantConsentRequest(terms=encoded, signature=self._session.sign(signing_message(encoded)))

    def grant(self, terms: consent_pb2.ConsentTerms) -> consent_pb2.Consent:
        """Sign terms (from ``terms``) with this identity's key and submit them;
        the consent as recorded (ACTIVE, or PENDING before valid_from)."""
        return self.submit(self.sign(terms))

    def submit(self, grant: consent_pb2.GrantConsentRequest) -> consent_pb2.Consent:
        """Submit a signed grant."""
        return self._session.call("consent GrantConsent", AUDIENCE, self._stub.GrantConsent, grant)

    def revoke(self, consent_id: str) -> consent_pb2.Consent:
        """Revoke a consent; once this returns no replica allows access under it."""
        request = consent_pb2.RevokeConsentRequest(consent_id=consent_id)
        return self._session.call("consent RevokeConsent", AUDIENCE, self._stub.RevokeConsent, request)

    def get(self, consent_id: str) -> consent_pb2.Consent:
        request = consent_pb2.GetConsentRequest(consent_id=consent_id)
        return self._session.call("consent GetConsent", AUDIENCE, self._stub.GetConsent, request)

    def list(self, patient_id: str | None = None) -> consent_pb2.ListConsentsResponse:
        """A patient's consents and break-glass accesses (the patient's own by default)."""
        request = consent_pb2.ListConsentsRequest(patient_id=patient_id or self._session.identity_id)
        return self._session.call("consent ListConsents", AUDIENCE, self._stub.ListConsents, request)

    def who_can_access(self, patient_id: str | None = None) -> consent_pb2.WhoCanAccessResponse:
        request = consent_pb2.WhoCanAccessRequest(patient_id=patient_id or self._session.identity_id)
        return self._session.call("consent WhoCanAccess", AUDIENCE, self._stub.WhoCanAccess, request)

    def check_access(
        self, patient_id: str, purpose: Purpose, *, category: str = "", record_id: str = ""
    ) -> consent_pb2.AccessDecision:
        """ALLOW or DENY for this session's identity; the decision is on the ledger."""
        request = consent_pb2.CheckAccessRequest(
            patient_id=patient_id, purpose=wire_purpose(purpose), category=category, record_id=record_id
        )
        return self._session.call("consent CheckAccess", AUDIENCE, self._stub.CheckAccess, request)
