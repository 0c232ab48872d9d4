"""The one table of which role each RPC needs, for every service of the suite.

Every method of every gRPC service modelserve serves is listed here (a contract test walks
every service descriptor and fails on a method missing from the table); a method the table
does not know is refused, never let through. Health (grpc.health.v1) and reflection are never
authenticated (``PUBLIC_PREFIXES``).
"""

from __future__ import annotations

from dataclasses import dataclass

from modelserve.auth.identity import ADMIN, INFER, READ, SERVICE

PUBLIC_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


@dataclass(frozen=True)
class Rule:
    """``roles``: any of them admits the call (the first is named in a refusal);
    ``model_field``: the request field the infer role's model patterns apply to;
    ``audit``: an admin write, logged to ``modelserve.audit`` with its outcome."""

    roles: tuple[str, ...]
    model_field: str = ""
    audit: bool = False

    @property
    def role(self) -> str:
        return self.roles[0]


def _admin(*also: str) -> Rule:
    return Rule((ADMIN, *also), audit=True)


_V2 = "/inference.GRPCInferenceService/"
_REGISTRY = "/modelserve.v1.Registry/"
_COMPOSITES = "/modelserve.v1.CompositeRegistry/"
_EXPERIMENTS = "/modelserve.v1.Experiments/"
_CANARY = "/modelserve.v1.Canary/"
_ROUTER = "/modelserve.v1.RouterControl/"
_GATEWAY = "/modelserve.v1.GatewayControl/"
_WORKER = "/modelserve.v1.WorkerControl/"
_FEATURES = "/modelserve.v1.FeatureStore/"

# V2 metadata every inference client asks before it infers (tritonclient, perf_analyzer).
_V2_META = Rule((INFER, READ))

RPC_ROLES: dict[str, Rule] = {
    # V2 (gateway, router, worker): inference, metadata, repository.
    _V2 + "ServerLive": _V2_META,
    _V2 + "ServerReady": _V2_META,
    _V2 + "ServerMetadata": _V2_META,
    _V2 + "ModelReady": _V2_META,
    _V2 + "ModelMetadata": _V2_META,
    _V2 + "ModelConfig": _V2_META,
    _V2 + "ModelInfer": Rule((INFER,), model_field="model_name"),
    _V2 + "ModelStreamInfer": Rule((INFER,), model_field="model_name"),
    _V2 + "ModelStatistics": Rule((READ,)),
    _V2 + "RepositoryIndex": Rule((READ,)),
    _V2 + "RepositoryModelLoad": _admin(),
    _V2 + "RepositoryModelUnload": _admin(),
    # Registry: writes are admin; what services replicate is service.
    _REGISTRY + "PushVersion": _admin(),
    _REGISTRY + "ListModels": Rule((READ,)),
    _REGISTRY + "GetModel": Rule((READ,)),
    _REGISTRY + "GetVersion": Rule((READ,)),
    _REGISTRY + "SetLabel": _admin(),
    _REGISTRY + "DeleteLabel": _admin(),
    # Artifacts are the models themselves: services (workers) and operators (optimize, batch).
    _REGISTRY + "FetchArtifact": Rule((SERVICE, ADMIN)),
    _REGISTRY + "Watch": Rule((SERVICE,)),
    _REGISTRY + "SetPolicy": _admin(),
    _REGISTRY + "ClearPolicy": _admin(),
    _REGISTRY + "RollbackPolicy": _admin(),
    _REGISTRY + "ListPolicyHistory": Rule((READ,)),
    # The gateway relays RepositoryModelLoad/Unload (admin, checked there) with its own token.
    _REGISTRY + "SetModelLoaded": _admin(SERVICE),
    _COMPOSITES + "SetComposite": _admin(),
    _COMPOSITES + "GetComposite": Rule((READ,)),
    _COMPOSITES + "ListComposites": Rule((READ,)),
    _COMPOSITES + "DeleteComposite": _admin(),
    _COMPOSITES + "WatchComposites": Rule((SERVICE,)),
    _EXPERIMENTS + "StartExperiment": _admin(),
    _EXPERIMENTS + "StopExperiment": _admin(),
    _EXPERIMENTS + "GetExperiment": Rule((READ,)),
    _EXPERIMENTS + "ListExperiments": Rule((READ,)),
    # Outcomes come from the applications that infer (their infer key reports them).
    _EXPERIMENTS + "RecordOutcome": Rule((INFER,)),
    _EXPERIMENTS + "GetReport": Rule((READ,)),
    _CANARY + "StartCanary": _admin(),
    _CANARY + "GetCanary": Rule((READ,)),
    _CANARY + "AbortCanary": _admin(),
    # Business outcomes come from the applications that infer, as experiments' do.
    _CANARY + "RecordCanaryOutcome": Rule((INFER,)),
    # Router and worker control: statistics reads (the registry's canary and readiness
    # readers, the CLI's reports); disagreement samples carry model answers: admin.
    _ROUTER + "Resolve": Rule((READ,)),
    _ROUTER + "ListWorkers": Rule((READ,)),
    _ROUTER + "ShadowReport": Rule((READ,)),
    _ROUTER + "VersionStats": Rule((READ,)),
    _ROUTER + "ShadowDisagreements": Rule((ADMIN,)),
    _WORKER + "WatchStatus": Rule((SERVICE,)),
    # The gateway's stream lane; each message is then checked as the ModelInfer it carries.
    "/modelserve.v1.WorkerLane/Open": Rule((SERVICE,)),
    # The gateway's per-version rejections, read by the registry's canary controller.
    _GATEWAY + "VersionStats": Rule((READ,)),
    # Feature store: definitions and writes are admin; online values feed enrichment.
    _FEATURES + "ApplyFeatureView": _admin(),
    _FEATURES + "GetFeatureView": Rule((READ,)),
    _FEATURES + "ListFeatureViews": Rule((READ,)),
    _FEATURES + "WriteOnlineFeatures": _admin(),
    _FEATURES + "GetOnlineFeatures": Rule((SERVICE, ADMIN)),
    _FEATURES + "GetMaterializationState": Rule((READ,)),
    _FEATURES + "CommitMaterialization": _admin(),
    _FEATURES + "DeleteFeatureView": _admin(),
}


def rule_for(method: str) -> Rule | None:
    """The rule of ``method`` (``/package.Service/Method``); None: not in the table."""
    return RPC_ROLES.get(method)
