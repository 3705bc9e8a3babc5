-- Argo CD health of a Gradatim TrainingPipeline (gradatim.io/v1alpha1), from its phase, which the operator
-- aggregates from its stages, and the stage summaries in its status. Its status is kstatus-compliant
-- (observedGeneration; Ready, Reconciling and Stalled conditions); the phase tells Suspended apart, which kstatus
-- cannot. Base and table functions only: Argo CD runs argocd-cm scripts without Lua's string and math libraries.
local hs = {status = "Progressing", message = "waiting for the operator to write a status"}
local status = obj.status
if status == nil then
  return hs
end
local generation = obj.metadata.generation
if status.observedGeneration ~= nil and generation ~= nil and status.observedGeneration ~= generation then
  hs.message = "waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
if status.phase == nil then
  return hs
end

-- Pipeline and stage phases. Blocked (kstatus: Stalled) is a stage stuck on a failed upstream, a missing or cyclic
-- dependency, pods the cluster refuses or storage down past the operator's patience: it waits for someone to act,
-- hence Degraded.
local health = {
  Succeeded = "Healthy", Cached = "Healthy",
  Pending = "Progressing", Running = "Progressing", Retrying = "Progressing",
  Suspended = "Suspended",
  Failed = "Degraded", Invalid = "Degraded", Blocked = "Degraded",
}

-- Why: the Stalled or Reconciling message while one is True, else Ready's (which every phase writes). A failed or
-- blocked pipeline's message names each such stage and its reason.
local why = ""
for _, c in ipairs(status.conditions or {}) do
  if (c.type == "Stalled" or c.type == "Reconciling") and c.status == "True" and c.message ~= nil and c.message ~= "" then
    why = c.message
    break
  end
  if c.type == "Ready" and c.message ~= nil then
    why = c.message
  end
end

hs.status = health[status.phase]
if hs.status == nil then
  return {status = "Unknown", message = "phase " .. status.phase .. " is new to this health check; update it"}
end
hs.message = status.phase
if why ~= "" then
  hs.message = status.phase .. ": " .. why
end

-- The phase puts running stages before blocked ones, so a pipeline with one branch running and another stuck is
-- Running; that stuck branch needs someone all the same, so the pipeline is Degraded and says which stage.
if hs.status ~= "Degraded" then
  for _, s in ipairs(status.stages or {}) do
    if s.phase ~= nil and health[s.phase] == "Degraded" then
      hs.status = "Degraded"
      hs.message = hs.message .. "; stage " .. s.name .. " is " .. s.phase
      if s.message ~= nil and s.message ~= "" then
        hs.message = hs.message .. ": " .. s.message
      end
    end
  end
end
return hs
