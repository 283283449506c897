#!/usr/bin/env bash
# Generic CI step: after the new image is applied to the idle slot, hand the release to the
# in-cluster controller and wait for its verdict.
#
#   deploy/gitops/ci-promote.sh POLICY [KUBECONFIG_CONTEXT]
#
# Runs `rollout promote --platform kubernetes --policy POLICY --wait --timeout 7200 --output
# json` (the PostSync Job's argv): applies the RolloutPolicy (creates it, or patches its spec;
# the same spec is a no-op), then follows its status until the controller settles it. Keeps
# the JSON report as rollout-report.json (attach it to the pipeline run) and turns the
# documented exit codes into the pipeline's outcome:
#   0 promoted              -> success
#   1 rolled back           -> fail the pipeline (traffic is back on the serving slot)
#   2 bad input             -> fail; the policy was refused, nothing was applied
#   3 paused / inconclusive -> fail and ask a human (rollout promote NAME --confirm,
#     / timed out              rollout resume NAME, rollout abort NAME); the rollout goes on
#                              in the cluster: re-running this step waits again
#   4 no data               -> fail; nothing could be judged (never a pass)
#   5 internal error        -> fail; the controller failed, traffic was returned to blue and
#                              read back (status.internalError; the controller's log has it)
#   other                   -> infrastructure error (API server, credentials): re-run
# ROLLOUT_TIMEOUT (seconds, default 7200) bounds the wait.
set -uo pipefail

policy=${1:?usage: ci-promote.sh POLICY [CONTEXT]}
context=${2:-}
report=${ROLLOUT_REPORT:-rollout-report.json}

args=(promote --platform kubernetes --policy "$policy" --wait
      --timeout "${ROLLOUT_TIMEOUT:-7200}" --output json)
[[ -n "$context" ]] && args+=(--context "$context")

rollout "${args[@]}" >"$report"
code=$?

summary=$(python3 -c 'import json,sys
try:
    r = json.load(open(sys.argv[1]))
except Exception:
    sys.exit(0)
s = r.get("status") if isinstance(r.get("status"), dict) else r
print(s.get("phase") or r.get("verdict") or "", "-",
      s.get("reason") or r.get("reason") or r.get("error") or "")
' "$report" 2>/dev/null)

case $code in
  0) echo "rollout: promoted ${summary}" ;;
  1) echo "::error::rollout: green rolled back ${summary}" ;;
  2) echo "::error::rollout: bad input, nothing applied ${summary}" ;;
  3) echo "::warning::rollout: paused, awaiting promotion or timed out; a human decides (rollout promote NAME --confirm | rollout resume NAME | rollout abort NAME) ${summary}" ;;
  4) echo "::error::rollout: no data to judge green ${summary}" ;;
  5) echo "::error::rollout: internal error, traffic returned to blue; see the controller's log ${summary}" ;;
  *) echo "::error::rollout: infrastructure error (exit $code); re-run to wait again ${summary}" ;;
esac
exit "$code"
