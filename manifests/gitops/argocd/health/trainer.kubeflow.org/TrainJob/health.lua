-- Argo CD health of a Kubeflow Trainer v2 TrainJob (trainer.kubeflow.org/v1alpha1), for which Argo CD ships no
-- check. Its conditions: Suspended, Complete, Failed (none says running: jobsStatus counts its active Jobs); it
-- has no status.observedGeneration. Base and table functions only: Argo CD runs argocd-cm scripts without Lua's
-- string and math libraries.
local hs = {status = "Progressing", message = "waiting for the Trainer controller"}
if obj.status == nil then
  return hs
end

local holds = {}  -- the conditions that are True, by type
for _, c in ipairs(obj.status.conditions or {}) do
  if c.status == "True" then
    holds[c.type] = c
  end
end

local function said(c)
  if c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return c.reason or c.type
end

-- Failed first: it is terminal, whatever else the list holds.
if holds.Failed ~= nil then
  return {status = "Degraded", message = said(holds.Failed)}
end
if holds.Complete ~= nil then
  return {status = "Healthy", message = said(holds.Complete)}
end
if holds.Suspended ~= nil then
  return {status = "Suspended", message = said(holds.Suspended)}
end
local active = 0
for _, j in ipairs(obj.status.jobsStatus or {}) do
  active = active + (j.active or 0)
end
if active > 0 then
  hs.message = "running: " .. tostring(active) .. " active Jobs"
end
return hs
