-- Argo CD health of a Kubeflow PyTorchJob (kubeflow.org/v1, training-operator v1), for which Argo CD ships no
-- check. Its conditions: Created, Running, Restarting, Succeeded, Suspended, Failed; it has no
-- status.observedGeneration. Base and table functions only: Argo CD runs argocd-cm scripts without Lua's string
-- and math libraries.
local hs = {status = "Progressing", message = "waiting for the training operator"}
if obj.status == nil then
  return hs
end

local holds = {}  -- the conditions that are True, by type
local latest = nil
for _, c in ipairs(obj.status.conditions or {}) do
  if c.status == "True" then
    holds[c.type] = c
    latest = c
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
if holds.Succeeded ~= nil then
  return {status = "Healthy", message = said(holds.Succeeded)}
end
if holds.Suspended ~= nil then
  return {status = "Suspended", message = said(holds.Suspended)}
end
if latest ~= nil then
  hs.message = said(latest)
end
return hs
