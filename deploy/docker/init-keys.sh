#!/bin/sh
# Creates, once, the keys a compose stack needs. Each directory is its own named volume,
# mounted only where it is needed. Files that exist are left alone: a replaced key would
# orphan every checkpoint, token or ciphertext made with the old one. The volumes hold the
# only copies: back them up.
#
#   $KEYS_DIR/ledger/checkpoint.key      the ledger's checkpoint signer key; its verifier key
#                                        is printed below, publish it to auditors
#   $KEYS_DIR/identity/token.key         Ed25519 key the identity service signs tokens with
#   $KEYS_DIR/identity/data.key          the identity service's data key
#   $KEYS_DIR/operator/operator.key      the bootstrap OPERATOR organization's key, its .pub,
#   $KEYS_DIR/operator/operator.id       and its identity id (only the register step sees it)
#   $KEYS_DIR/identity/operator.key.pub  a copy of the .pub for the identity service
#   $KEYS_DIR/<svc>/events.key          identity's, consent's, records' and the access monitor's
#                                        event-signing keys (the monitor signs its AccessAlerts)
#   $KEYS_DIR/producers/event-producers.pub  their pinned verifier keys (every service reads it)
#   $KEYS_DIR/consent/identity.key       the consent service's own identity key (and .pub),
#                                        registered by register-services.sh
#   $KEYS_DIR/consent/data.key           the consent service's data key (seals break-glass
#                                        justifications and review notes)
#   $KEYS_DIR/records/identity.key       the records service's own identity key (and .pub),
#                                        registered by register-services.sh
#   $KEYS_DIR/records/kek.key            the key-encryption key wrapping every patient's
#                                        record data key (losing it loses every record)
#
# Kubernetes does not use this script: keys come from Secrets (k8s/README.md).
set -eu
dir="${KEYS_DIR:-/keys}"
origin="${MEDLEDGER_LEDGER_ORIGIN:-medledger.local/ledger}"
umask 077
mkdir -p "$dir/ledger" "$dir/identity" "$dir/operator" "$dir/consent" "$dir/records" "$dir/monitor" "$dir/producers"

# Each producing service's event-signing key (in its own volume) and the pinned
# public keys every service verifies events with (docs/architecture.md, Event signing).
# The same producers as `make up` (deploy/stack.sh) and k8s/README.md: the access monitor too.
for svc in identity consent records monitor; do
  if [ ! -f "$dir/$svc/events.key" ]; then
    medledger events keygen --service "$svc" --out "$dir/$svc/events.key" \
      --producers-file "$dir/producers/event-producers.pub"
  fi
done

if [ ! -f "$dir/ledger/checkpoint.key" ]; then
  echo "ledger checkpoint verifier key (publish it to auditors):"
  medledger ledger keygen --out "$dir/ledger/checkpoint.key" --name "$origin"
fi
# The identity side's keys, made by `medledger identity keygen`'s own code in one process.
python - "$dir" <<'PY'
import contextlib
import io
import sys
from pathlib import Path

from medledger.identity import cli, keyfiles
from medledger.identity.settings import bootstrap_identity_id

keys = Path(sys.argv[1])


def keygen(path: Path, data_key: bool = False) -> None:
    if not path.exists():
        with contextlib.redirect_stdout(io.StringIO()):
            cli.keygen(out=path, data_key=data_key)


keygen(keys / "identity" / "token.key")
keygen(keys / "identity" / "data.key", data_key=True)
keygen(keys / "operator" / "operator.key")
keygen(keys / "consent" / "identity.key")
keygen(keys / "consent" / "data.key", data_key=True)
keygen(keys / "records" / "identity.key")
keygen(keys / "records" / "kek.key", data_key=True)
operator_pub = keys / "operator" / "operator.key.pub"
copy = keys / "identity" / "operator.key.pub"
if not copy.exists():
    copy.write_bytes(operator_pub.read_bytes())
operator_id = keys / "operator" / "operator.id"
if not operator_id.exists():
    raw = keyfiles.parse_public_key(operator_pub.read_text(), str(operator_pub))
    operator_id.write_text(bootstrap_identity_id(raw) + "\n")
print(f"operator organization: {operator_id.read_text().strip()}")
PY
