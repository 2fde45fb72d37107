#!/usr/bin/env bash
# Captures real answers of the gateway simulator as seeds of the gateway_response target:
# fuzz/corpus/gateway_response/sim-*.http, each "STATUS intent|refund", the headers, an empty
# line, the body (the format of fuzz/src/gateway.rs). Run from the repository root after
# `cargo build -p booking-sim --bins`.
set -euo pipefail
cd "$(dirname "$0")/.."
out=fuzz/corpus/gateway_response
key=sk_test_seed
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
target/debug/booking-sim psp --listen "127.0.0.1:$port" --api-key "$key" >/dev/null 2>&1 &
sim=$!
trap 'kill $sim' EXIT
base="http://127.0.0.1:$port"
until curl -s "$base/_sim/ledger" >/dev/null; do sleep 0.1; done
tmp=$(mktemp -d)

# save NAME EXPECT CURL-ARGS...: one call, written as a seed.
save() {
  local name=$1 expect=$2
  shift 2
  curl -s -D "$tmp/h" -o "$tmp/b" "$@"
  {
    printf '%s %s\n' "$(head -1 "$tmp/h" | awk '{print $2}')" "$expect"
    tail -n +2 "$tmp/h" | tr -d '\r' | grep -v '^$' | grep -iv '^date:' || true
    printf '\n'
    cat "$tmp/b"
  } >"$out/sim-$name.http"
}
auth=(-H "Authorization: Bearer $key")
pi() { curl -s "${auth[@]}" "$@" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'; }

save create-succeeded intent "${auth[@]}" -H 'Idempotency-Key: k1' "$base/v1/payment_intents" \
  -d amount=1250 -d currency=eur -d payment_method=pm_card_visa -d confirm=true \
  -d 'metadata[order_id]=ord-1' -d 'metadata[attempt]=1'
save create-replayed intent "${auth[@]}" -H 'Idempotency-Key: k1' "$base/v1/payment_intents" \
  -d amount=1250 -d currency=eur -d payment_method=pm_card_visa -d confirm=true \
  -d 'metadata[order_id]=ord-1' -d 'metadata[attempt]=1'
save idempotency-error intent "${auth[@]}" -H 'Idempotency-Key: k1' "$base/v1/payment_intents" \
  -d amount=999 -d currency=eur -d payment_method=pm_card_visa -d confirm=true
save declined-generic intent "${auth[@]}" -H 'Idempotency-Key: k2' "$base/v1/payment_intents" \
  -d amount=1250 -d currency=eur -d payment_method=pm_card_chargeDeclined -d confirm=true
save declined-insufficient-funds intent "${auth[@]}" -H 'Idempotency-Key: k3' \
  "$base/v1/payment_intents" -d amount=1250 -d currency=eur \
  -d payment_method=pm_card_chargeDeclinedInsufficientFunds -d confirm=true
save create-requires-confirmation intent "${auth[@]}" -H 'Idempotency-Key: k4' \
  "$base/v1/payment_intents" -d amount=500 -d currency=usd -d payment_method=pm_card_visa
id=$(pi -H 'Idempotency-Key: k5' "$base/v1/payment_intents" -d amount=500 -d currency=usd \
  -d payment_method=pm_card_visa)
save confirm-succeeded intent "${auth[@]}" -X POST "$base/v1/payment_intents/$id/confirm"
save confirm-unexpected-state intent "${auth[@]}" -X POST "$base/v1/payment_intents/$id/confirm"
save get-succeeded intent "${auth[@]}" "$base/v1/payment_intents/$id"
save get-not-found intent "${auth[@]}" "$base/v1/payment_intents/pi_doesnotexist"
id2=$(pi -H 'Idempotency-Key: k6' "$base/v1/payment_intents" -d amount=700 -d currency=usd \
  -d payment_method=pm_card_visa)
save cancel-canceled intent "${auth[@]}" -X POST "$base/v1/payment_intents/$id2/cancel"
save cancel-unexpected-state intent "${auth[@]}" -X POST "$base/v1/payment_intents/$id/cancel"
save missing-parameter intent "${auth[@]}" -H 'Idempotency-Key: k7' "$base/v1/payment_intents" \
  -d currency=eur
save wrong-api-key intent -H 'Authorization: Bearer sk_test_wrong' "$base/v1/payment_intents/$id"
save no-api-key intent "$base/v1/payment_intents/$id"
save refund-succeeded refund "${auth[@]}" -H 'Idempotency-Key: r1' "$base/v1/refunds" \
  -d payment_intent="$id" -d amount=200
save refund-replayed refund "${auth[@]}" -H 'Idempotency-Key: r1' "$base/v1/refunds" \
  -d payment_intent="$id" -d amount=200
save refund-too-much refund "${auth[@]}" -H 'Idempotency-Key: r2' "$base/v1/refunds" \
  -d payment_intent="$id" -d amount=100000
curl -s "$base/_sim/faults" -H 'content-type: application/json' \
  -d '{"next":["rate_limited"],"retry_after_secs":3}' >/dev/null
save throttled intent "${auth[@]}" -H 'Idempotency-Key: k8' "$base/v1/payment_intents" \
  -d amount=100 -d currency=eur -d payment_method=pm_card_visa -d confirm=true
curl -s "$base/_sim/faults" -H 'content-type: application/json' \
  -d '{"next":["error_500_before"]}' >/dev/null
save server-error intent "${auth[@]}" -H 'Idempotency-Key: k9' "$base/v1/payment_intents" \
  -d amount=100 -d currency=eur -d payment_method=pm_card_visa -d confirm=true
curl -s "$base/_sim/faults" -H 'content-type: application/json' \
  -d '{"latency_ms":1500}' >/dev/null
curl -s "${auth[@]}" -H 'Idempotency-Key: k10' "$base/v1/payment_intents" -d amount=100 \
  -d currency=eur -d payment_method=pm_card_visa -d confirm=true >/dev/null &
sleep 0.5
save key-in-use intent "${auth[@]}" -H 'Idempotency-Key: k10' "$base/v1/payment_intents" \
  -d amount=100 -d currency=eur -d payment_method=pm_card_visa -d confirm=true
wait %2 2>/dev/null || true
rm -rf "$tmp"
ls "$out" | grep -c '^sim-'
