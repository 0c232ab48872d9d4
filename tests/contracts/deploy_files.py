"""Readers for the deployment files (Dockerfile, .dockerignore, docker-compose.yml) that the
contract tests check statically: no Docker engine is needed to run them."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"


# --- Dockerfile ------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, USER, ...
    args: str
    line: int


@dataclass
class Stage:
    base: str  # the image or stage named by FROM
    name: str  # the AS name, or the stage's index as text
    instructions: list[Instruction] = field(default_factory=list)

    def of(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def logical_lines(text: str) -> list[tuple[int, str]]:
    """Join backslash continuations and drop comments, as Docker's parser does."""
    out: list[tuple[int, str]] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue  # comments (parser directives too) and blank lines, even mid-continuation
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        out.append((start, " ".join(part for part in buf if part)))
        buf = []
    if buf:
        out.append((start, " ".join(buf)))
    return out


def parse_dockerfile(text: str) -> list[Stage]:
    stages: list[Stage] = []
    for line, content in logical_lines(text):
        keyword, _, args = content.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else str(len(stages))
            stages.append(Stage(base=words[0], name=name))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, args, line))
        # instructions before the first FROM (ARG) configure FROM lines only
    return stages


def load_stages() -> dict[str, Stage]:
    return {s.name: s for s in parse_dockerfile(DOCKERFILE.read_text())}


def chain(stages: dict[str, Stage], target: str) -> list[Stage]:
    """The stage and the stages it is built FROM, root first."""
    out: list[Stage] = []
    name: str | None = target
    while name is not None:
        stage = stages[name]
        out.insert(0, stage)
        name = stage.base if stage.base in stages else None
    return out


def effective(stages: dict[str, Stage], target: str, keyword: str) -> Instruction | None:
    """The instruction of ``keyword`` in force in the image of ``target`` (the last one wins)."""
    found: Instruction | None = None
    for stage in chain(stages, target):
        for instruction in stage.of(keyword):
            found = instruction
    return found


def copy_from(instruction: Instruction) -> str | None:
    match = re.search(r"--from=(\S+)", instruction.args)
    return match.group(1) if match else None


def provenance(stages: dict[str, Stage], target: str) -> list[Stage]:
    """Every stage whose work ends up in ``target``: its chain and what it COPY --from's."""
    seen: dict[str, Stage] = {}
    todo = [target]
    while todo:
        for stage in chain(stages, todo.pop()):
            if stage.name in seen:
                continue
            seen[stage.name] = stage
            todo += [s for i in stage.of("COPY") if (s := copy_from(i)) and s in stages]
    return list(seen.values())


def exec_form(instruction: Instruction) -> list[str]:
    """The JSON (exec) form of ENTRYPOINT/CMD; a shell form string raises ValueError."""
    value = json.loads(instruction.args)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"not an exec-form list: {instruction.args}")
    return value


def context_copies(stages: dict[str, Stage]) -> list[str]:
    """Sources that COPY/ADD take from the build context (not from another stage)."""
    sources: list[str] = []
    for stage in stages.values():
        for instruction in [*stage.of("COPY"), *stage.of("ADD")]:
            if copy_from(instruction):
                continue
            words = [w for w in shlex.split(instruction.args) if not w.startswith("--")]
            sources += words[:-1]
    return sources


# --- .dockerignore -----------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, pattern) per line, in order; the last matching rule decides."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line[1:].strip() if negated else line
        pattern = pattern.strip("/") or "."
        rules.append((negated, _pattern_regex(pattern)))
    return rules


def ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether the build context leaves ``path`` out (a rule matching a parent folder counts)."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for negated, regex in rules:
        if any(regex.match(p) for p in prefixes):
            result = not negated
    return result


# --- docker-compose.yml ------------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = [item.partition("=") for item in env]
        return {k: v for k, _, v in pairs}
    return {str(k): _text(v) for k, v in env.items()}


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def _port_numbers(spec: str) -> set[int]:
    spec = spec.split("/")[0]
    low, _, high = spec.partition("-")
    return set(range(int(low), int(high or low) + 1))


def published_ports(service: dict[str, Any]) -> set[int]:
    """Container ports that `ports` publishes on the host (short or long syntax)."""
    out: set[int] = set()
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            out |= _port_numbers(str(entry["target"]))
        else:
            out |= _port_numbers(str(entry).split("/")[0].rsplit(":", 1)[-1])
    return out


def container_ports(service: dict[str, Any]) -> set[int]:
    """Every container port the service declares: `expose` and `ports` together."""
    exposed: set[int] = set()
    for entry in service.get("expose") or []:
        exposed |= _port_numbers(str(entry))
    return exposed | published_ports(service)


def volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source (a named volume or a host path)."""
    out: dict[str, str] = {}
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            out[str(entry["target"])] = str(entry.get("source", ""))
        else:
            source, _, rest = str(entry).partition(":")
            out[rest.split(":")[0]] = source
    return out


def seconds(duration: Any) -> float:
    """A compose duration ("45s", "1m30s", "1500ms") in seconds."""
    text = str(duration)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a compose duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)
