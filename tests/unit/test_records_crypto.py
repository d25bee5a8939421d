"""Encryption at rest of record payloads (medledger.records.crypto): a
ciphertext opens only for its own patient, record and version, and only
with the data key its KEK wrapped for that patient."""

from __future__ import annotations

import os

import pytest

from medledger.records import crypto
from medledger.records.crypto import LocalKeyWrapper, Payload, SealError

PAYLOAD = Payload(os.urandom(32), b'{"resourceType":"Observation"}')


def test_payload_round_trips_under_its_own_binding() -> None:
    key = crypto.new_data_key()
    sealed = crypto.seal_payload(key, "patient-1", "rec-1", 2, PAYLOAD)
    assert PAYLOAD.canonical not in sealed and PAYLOAD.salt not in sealed
    assert crypto.open_payload(key, "patient-1", "rec-1", 2, sealed) == PAYLOAD


@pytest.mark.parametrize("patient, record, version", [("patient-2", "rec-1", 2), ("patient-1", "rec-2", 2), ("patient-1", "rec-1", 1)])
def test_a_ciphertext_moved_to_another_row_does_not_open(patient: str, record: str, version: int) -> None:
    key = crypto.new_data_key()
    sealed = crypto.seal_payload(key, "patient-1", "rec-1", 2, PAYLOAD)
    with pytest.raises(SealError):
        crypto.open_payload(key, patient, record, version, sealed)


def test_data_keys_are_wrapped_per_patient_and_per_kek() -> None:
    kek = LocalKeyWrapper(os.urandom(32))
    data_key = crypto.new_data_key()
    wrapped = kek.wrap(data_key, crypto.data_key_context("patient-1"))
    assert data_key not in wrapped
    assert kek.unwrap(wrapped, crypto.data_key_context("patient-1")) == data_key
    with pytest.raises(SealError):
        kek.unwrap(wrapped, crypto.data_key_context("patient-2"))
    other = LocalKeyWrapper(os.urandom(32))
    assert other.key_id != kek.key_id
    with pytest.raises(SealError):
        other.unwrap(wrapped, crypto.data_key_context("patient-1"))


def test_without_the_data_key_the_payload_is_gone() -> None:
    """Erasure destroys the wrapped key: a fresh key (all anyone could make) opens nothing."""
    sealed = crypto.seal_payload(crypto.new_data_key(), "patient-1", "rec-1", 1, PAYLOAD)
    with pytest.raises(SealError):
        crypto.open_payload(crypto.new_data_key(), "patient-1", "rec-1", 1, sealed)
