#!/usr/bin/env bash
# Plays the frontend and the user's wallet against a production-mode Protocol
# API that runs on `delibera devnet up` (see "Rehearse production locally" in
# the README). Run from the directory holding the devnet's env file.
set -euo pipefail
. "${ENV_FILE:-./devnet.env}"
API=${API:-http://127.0.0.1:3005}
RPC=$NEAR_RPC_URL
DELIBERA=${DELIBERA:-delibera}
field() { sed -E "s/.*\"$1\":\"([^\"]*)\".*/\1/"; }
json() { curl -sf -H 'content-type: application/json' "$@"; }
wallet() { $DELIBERA near call --rpc "$RPC" --signer "$DEVNET_USER_ACCOUNT_ID" --secret-key "$DEVNET_USER_PRIVATE_KEY" "$@"; }
wait_for() { until curl -s "$API/api/provision/status/$1" | grep -q "\"status\":\"$2\""; do sleep 1; done; }
say() { printf '$ %s\n' "$*"; }

say "wallet \$DEVNET_FACTORY_CONTRACT_ID create_coordinator '{\"prefix\":\"mydao\",\"min_workers\":1,\"max_workers\":5}'"
wallet "$DEVNET_FACTORY_CONTRACT_ID" create_coordinator '{"prefix":"mydao","min_workers":1,"max_workers":5}'
CONTRACT=mydao.$DEVNET_FACTORY_CONTRACT_ID

say "curl -X POST \$API/api/provision/coordinator …"
JOB=$(json -X POST "$API/api/provision/coordinator" \
  -d "{\"displayName\":\"My DAO Coordinator\",\"nearAccount\":\"$DEVNET_USER_ACCOUNT_ID\",\"minWorkers\":1,\"maxWorkers\":5,\"contractAddress\":\"$CONTRACT\"}" | field jobId)
wait_for "$JOB" awaiting_near_signature
STATUS=$(curl -s "$API/api/provision/status/$JOB")
say "curl \$API/api/provision/status/\$JOB"
echo "$STATUS"
COORD=$(echo "$STATUS" | field coordinatorDid)
COORD_URL=$(echo "$STATUS" | field phalaEndpoint)
CVM=$(echo "$STATUS" | field cvmId)

say "wallet --deposit 0.1N \$REGISTRY_CONTRACT_ID register_coordinator …"
wallet --deposit 100000000000000000000000 "$REGISTRY_CONTRACT_ID" register_coordinator \
  "{\"coordinator_did\":\"$COORD\",\"endpoint_url\":\"$COORD_URL\",\"cvm_id\":\"$CVM\",\"min_workers\":1,\"max_workers\":5}"

say "curl -X POST \$API/api/provision/coordinator-register …   # at once, without txHash, as the frontend does"
DONE=$(json -X POST "$API/api/provision/coordinator-register" -d "{\"jobId\":\"$JOB\",\"contractAddress\":\"$CONTRACT\"}")
echo "$DONE"

say "curl -X POST \$ensueClaimUrl -d '{\"verification_code\":…}'   # the owner claims the Ensue org"
json -X POST "$(echo "$DONE" | field ensueClaimUrl)" -d "{\"verification_code\":\"$(echo "$DONE" | field ensueVerificationCode)\"}"
echo

say "curl -X POST \$API/api/provision/worker …"
WJOB=$(json -X POST "$API/api/provision/worker" \
  -d "{\"coordinatorDid\":\"$COORD\",\"displayName\":\"Worker Alpha\",\"nearAccount\":\"$DEVNET_USER_ACCOUNT_ID\"}" | field jobId)
wait_for "$WJOB" awaiting_near_signature
WSTATUS=$(curl -s "$API/api/provision/status/$WJOB")
say "wallet --deposit 0.1N \$REGISTRY_CONTRACT_ID register_worker …"
TX=$(wallet --deposit 100000000000000000000000 "$REGISTRY_CONTRACT_ID" register_worker \
  "{\"coordinator_did\":\"$COORD\",\"worker_did\":\"$(echo "$WSTATUS" | field workerDid)\",\"endpoint_url\":\"$(echo "$WSTATUS" | field phalaEndpoint)\",\"cvm_id\":\"$(echo "$WSTATUS" | field cvmId)\"}" | field txHash)
echo "{\"txHash\":\"$TX\"}"
say "curl -X POST \$API/api/provision/register -d '{\"jobId\":…,\"txHash\":…}'"
json -X POST "$API/api/provision/register" -d "{\"jobId\":\"$WJOB\",\"txHash\":\"$TX\"}"
echo

say "curl \$API/api/agents/endpoints"
curl -s "$API/api/agents/endpoints"
echo

say "curl -X POST \$COORD_URL/api/coordinate …   # a round through the deployed agents"
# The coordinator answers once its worker is registered and polling.
until ROUND=$(json -X POST "$COORD_URL/api/coordinate" \
  -d '{"proposalId":"prop-42","title":"Fund the grants program","parameters":{"amount":5000}}') \
  && echo "$ROUND" | grep -q coordinating; do sleep 1; done
echo "$ROUND"
until curl -s "$COORD_URL/api/proposals/prop-42" | grep -q '"status":"completed"'; do sleep 1; done
say "curl \$COORD_URL/api/proposals/prop-42"
curl -s "$COORD_URL/api/proposals/prop-42"
echo
