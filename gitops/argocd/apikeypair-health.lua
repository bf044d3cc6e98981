-- Argo CD health check for keypairs.dev/ApiKeyPair.
--
-- The operator folds everything a user needs to know into the Ready condition, whose
-- reasons form a closed vocabulary (src/conditions.rs). This script only sorts those
-- reasons into Argo CD's health states; it never looks at provider-specific fields, so
-- it stays correct for every provider. Written for Lua 5.1 (Argo CD runs gopher-lua).

local hs = {}

-- Ready=False reasons that the operator resolves on its own (or that wait for an input
-- the operator asked for and keeps waiting on), so a sync must not be reported as failed.
-- Every other Ready=False reason needs a human or an outside change: Degraded.
local progressing_reasons = {
  Progressing = true,
  AwaitingVerificationCode = true,
  VerificationCodeMissing = true,
  RemoteKeyMissing = true,
  SecretLost = true,
}

local waiting = "Waiting for the operator"

local function ready_condition(status)
  if type(status.conditions) ~= "table" then
    return nil
  end
  for _, condition in ipairs(status.conditions) do
    if condition.type == "Ready" then
      return condition
    end
  end
  return nil
end

-- A status written for an older generation describes a spec that no longer exists; its
-- verdict (good or bad) must not be shown for the new spec until the operator has caught up.
local function stale(generation, observed)
  return type(generation) == "number" and type(observed) == "number" and observed < generation
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = waiting
  return hs
end

local ready = ready_condition(obj.status)
if ready == nil then
  hs.status = "Progressing"
  hs.message = waiting
  return hs
end

-- Both the status-wide and the condition's own observedGeneration are checked: a
-- condition copied from an older status must not pass for a current one.
if stale(generation, obj.status.observedGeneration) or stale(generation, ready.observedGeneration) then
  hs.status = "Progressing"
  hs.message = waiting .. " to observe the latest spec"
  return hs
end

local message = ready.message
if message == nil or message == "" then
  message = ready.reason or ""
end

if ready.status == "True" then
  -- Ready=True means the key pair in the Secret is usable, whatever the reason adds
  -- (Disabled on purpose, or ReplacementPending while the old key still serves).
  hs.status = "Healthy"
  hs.message = message
  return hs
end

if ready.status == "False" and not progressing_reasons[ready.reason] then
  hs.status = "Degraded"
  hs.message = message
  return hs
end

-- Ready=False with a self-healing reason, Ready=Unknown, or a status value this script
-- does not know: the operator is still working on it.
hs.status = "Progressing"
if message == "" then
  message = waiting
end
hs.message = message
return hs
