#!/bin/sh
# Registers the consent service with the identity service as a SERVICE identity, once,
# signing in as the bootstrap OPERATOR organization (keys from init-keys.sh). The consent
# container reads the id from $KEYS_DIR/consent/identity-id at start. Needs the identity
# service up (MEDLEDGER_IDENTITY_ADDRESS). Kubernetes: k8s/README.md does the same by hand.
set -eu
dir="${KEYS_DIR:-/keys}"
if [ -s "$dir/consent/identity-id" ]; then
  echo "consent is registered as $(cat "$dir/consent/identity-id")"
  exit 0
fi
id="$(medledger identity register --as-id "$(cat "$dir/operator/operator.id")" \
  --as-key "$dir/operator/operator.key" --kind SERVICE \
  --public-key-file "$dir/consent/identity.key.pub")"
printf '%s\n' "$id" > "$dir/consent/identity-id.tmp"
mv "$dir/consent/identity-id.tmp" "$dir/consent/identity-id"
echo "consent registered as $id"
