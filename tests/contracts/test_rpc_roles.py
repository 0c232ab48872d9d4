"""The RPC role table covers every method of every gRPC service modelserve defines: a new RPC
that nobody gave a role fails here (and is refused at run time), never served open."""

from __future__ import annotations

import importlib
import pkgutil

from google.protobuf.descriptor import ServiceDescriptor

import modelserve.proto
from modelserve.auth.identity import ROLES
from modelserve.auth.roles import PUBLIC_PREFIXES, RPC_ROLES


def _services() -> list[ServiceDescriptor]:
    found = []
    for info in pkgutil.walk_packages(modelserve.proto.__path__, "modelserve.proto."):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(info.name)
        found += list(module.DESCRIPTOR.services_by_name.values())
    return found


def _methods() -> set[str]:
    return {f"/{s.full_name}/{m.name}" for s in _services() for m in s.methods}


def test_every_method_of_every_service_has_a_role() -> None:
    services = {s.full_name for s in _services()}
    assert {"inference.GRPCInferenceService", "modelserve.v1.Registry"} <= services
    missing = sorted(_methods() - RPC_ROLES.keys())
    assert not missing, f"RPCs without a role in modelserve/auth/roles.py: {missing}"


def test_the_table_names_no_method_that_does_not_exist() -> None:
    stale = sorted(RPC_ROLES.keys() - _methods())
    assert not stale, f"roles for RPCs that no service defines: {stale}"


def test_every_rule_names_known_roles_and_admin_rpcs_are_audited() -> None:
    for method, rule in RPC_ROLES.items():
        assert rule.roles and all(r in ROLES for r in rule.roles), method
        assert not method.startswith(PUBLIC_PREFIXES), method
        if rule.role == "admin" and "Shadow" not in method:
            assert rule.audit, f"{method}: admin writes are audited"


def test_writes_are_admin_and_replication_is_service() -> None:
    for verb in ("Push", "Set", "Delete", "Start", "Stop", "Abort", "Apply", "Commit", "Write"):
        for method, rule in RPC_ROLES.items():
            name = method.rsplit("/", 1)[1]
            if name.startswith(verb) and name != "SetModelLoaded":
                assert rule.roles == ("admin",), method
    assert RPC_ROLES["/modelserve.v1.Registry/Watch"].roles == ("service",)
    assert RPC_ROLES["/inference.GRPCInferenceService/ModelInfer"].model_field == "model_name"
