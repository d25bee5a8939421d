#!/bin/sh
# Registers the consent and records services with the identity service as SERVICE
# identities, once each, signing in as the bootstrap OPERATOR organization (keys from
# init-keys.sh). Each container reads its id from $KEYS_DIR/<svc>/identity-id at start.
# Needs the identity service up (MEDLEDGER_IDENTITY_ADDRESS). Kubernetes: k8s/README.md
# does the same by hand.
set -eu
dir="${KEYS_DIR:-/keys}"
for svc in consent records; do
  if [ -s "$dir/$svc/identity-id" ]; then
    echo "$svc is registered as $(cat "$dir/$svc/identity-id")"
    continue
  fi
  id="$(medledger identity register --as-id "$(cat "$dir/operator/operator.id")" \
    --as-key "$dir/operator/operator.key" --kind SERVICE \
    --public-key-file "$dir/$svc/identity.key.pub")"
  printf '%s\n' "$id" > "$dir/$svc/identity-id.tmp"
  mv "$dir/$svc/identity-id.tmp" "$dir/$svc/identity-id"
  echo "$svc registered as $id"
done
