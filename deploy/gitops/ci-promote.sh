#!/usr/bin/env bash
# Generic CI step: after the new image is applied to the idle slot, prove it and move traffic.
#
#   deploy/gitops/ci-promote.sh POLICY [KUBECONFIG_CONTEXT]
#
# Runs `rollout promote --platform kubernetes --output json`, keeps the JSON report as
# rollout-report.json (attach it to the pipeline run), and turns the documented exit codes into
# the pipeline's outcome:
#   0 promoted              -> success
#   1 rolled back           -> fail the pipeline (traffic is back on the serving slot)
#   2 bad input / locked    -> fail; nothing was changed (another controller may be acting)
#   3 paused / inconclusive -> fail and ask a human: `rollout resume` or `rollout abort`
#   4 no data               -> fail; nothing could be judged (never a pass)
#   5 internal error        -> fail; the controller crashed, traffic was returned to blue and
#                              read back (the log has the traceback; re-running resumes)
#   other                   -> infrastructure error (API server, crash): the status in the
#                              cluster says where it stopped; re-running this step resumes it
set -uo pipefail

policy=${1:?usage: ci-promote.sh POLICY [CONTEXT]}
context=${2:-}
report=${ROLLOUT_REPORT:-rollout-report.json}

args=(promote --platform kubernetes --policy "$policy" --output json)
[[ -n "$context" ]] && args+=(--context "$context")

rollout "${args[@]}" >"$report"
code=$?

summary=$(python3 -c 'import json,sys
try:
    r = json.load(open(sys.argv[1]))
except Exception:
    sys.exit(0)
print(r.get("phase") or r.get("verdict") or "", "-", r.get("reason") or r.get("error") or "")
' "$report" 2>/dev/null)

case $code in
  0) echo "rollout: promoted ${summary}" ;;
  1) echo "::error::rollout: green rolled back ${summary}" ;;
  2) echo "::error::rollout: bad input or locked, nothing changed ${summary}" ;;
  3) echo "::warning::rollout: paused, a human must decide (rollout resume | rollout abort) ${summary}" ;;
  4) echo "::error::rollout: no data to judge green ${summary}" ;;
  5) echo "::error::rollout: internal error, traffic returned to blue; see the log ${summary}" ;;
  *) echo "::error::rollout: infrastructure error (exit $code); re-run to resume ${summary}" ;;
esac
exit "$code"
