-- Argo CD health of a RolloutPolicy (rollout-gates.dev/v1alpha1), for
-- resource.customizations.health.rollout-gates.dev_RolloutPolicy (argocd-cm.yaml).
-- Argo CD runs it with the live object as `obj` and reads the table it returns.
--
--   Promoted, status of the current generation   -> Healthy
--   RolledBack or Aborted (current generation)   -> Degraded
--   Paused (incl. awaiting promote NAME --confirm) -> Suspended
--   anything else: no status yet, a status that still describes an older spec
--   (observedGeneration < generation), or a rollout under way -> Progressing
--
-- A status is only a verdict on the spec it observed: right after a new spec (a new green
-- image) the status still tells the previous generation's story, often "Promoted".
-- Plain Lua 5.1 (Argo CD's gopher-lua); also runs on Lua 5.4.
local hs = {status = "Progressing", message = "Waiting for the controller to report"}
local st = obj.status
if st == nil or st.phase == nil or st.phase == "" then
  return hs
end
local generation = obj.metadata and obj.metadata.generation
local observed = st.observedGeneration or 0
if generation ~= nil and observed ~= generation then
  hs.message = string.format("Generation %d not observed yet (status is of generation %d)",
                             generation, observed)
  return hs
end
local function describe()
  local text = st.phase
  if st.steps ~= nil and st.steps > 0 then
    text = text .. string.format(", step %d/%d", (st.step or 0) + 1, st.steps)
  end
  if st.greenWeight ~= nil then
    text = text .. string.format(", green %d%%", st.greenWeight)
  end
  if st.reason ~= nil and st.reason ~= "" then
    text = text .. ": " .. st.reason
  end
  return text
end
if st.phase == "Promoted" then
  hs.status = "Healthy"
elseif st.phase == "RolledBack" or st.phase == "Aborted" then
  hs.status = "Degraded"
elseif st.phase == "Paused" then
  hs.status = "Suspended"
  if st.awaitingPromotion then
    hs.message = describe() .. " (awaiting `rollout promote " .. obj.metadata.name ..
                 " --confirm`)"
    return hs
  end
end
hs.message = describe()
return hs
