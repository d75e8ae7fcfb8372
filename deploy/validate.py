"""Offline checks of Tailor's deployment files; run through deploy/validate.

Exits non-zero, naming the file, object and field, on the first kind of problem found in
each file; prints one line per object checked.
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jsonschema
import kubernetes_validate
import yaml
from check_jsonschema import builtin_schemas  # noqa: F401  (locates the vendored schemas)

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.33.0"
errors = []


def fail(where, message):
    errors.append(f"{where}: {message}")
    print(f"FAIL {where}: {message}")


# ---------------------------------------------------------------- compose

INTERPOLATION = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value, env, where):
    """Compose's variable interpolation, as `docker compose config` does it."""
    if isinstance(value, dict):
        return {k: interpolate(v, env, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def one(m):
        if m.group(0) == "$$":
            return "$"
        name = m.group("name") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        have = env.get(name)
        if op in (":-", "-"):
            return have if (have if op == ":-" else have is not None) else arg
        if op in (":?", "?"):
            if not have and (op == ":?" or have is None):
                fail(where, f"requires variable {name}: {arg}")
                return ""
            return have
        if op in (":+", "+"):
            return arg if have else ""
        return have or ""

    return INTERPOLATION.sub(one, value)


def compose_schema():
    path = pathlib.Path(builtin_schemas.__file__).parent / "vendor" / "compose-spec.json"
    return json.loads(path.read_text())


def check_compose(path):
    before = len(errors)
    raw = yaml.safe_load(path.read_text())  # resolves anchors and `<<` merge keys
    # The variables a user sets in deploy/.env; the rest keep their defaults.
    env = {"TAILOR_JWT_SECRET": "x" * 64}
    doc = interpolate(raw, env, path.name)
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    problems = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
    for e in problems:
        fail(f"{path.name} {'.'.join(map(str, e.path))}", e.message)
    services = doc.get("services", {})
    volumes = set((doc.get("volumes") or {}).keys())
    for name, service in services.items():
        where = f"{path.name} services.{name}"
        for dep in service.get("depends_on", {}) or {}:
            if dep not in services:
                fail(where, f"depends_on names no service `{dep}`")
            cond = service["depends_on"][dep].get("condition") if isinstance(service["depends_on"], dict) else None
            if cond == "service_healthy" and "healthcheck" not in services.get(dep, {}):
                fail(where, f"waits for `{dep}` to be healthy, which has no healthcheck")
            if cond == "service_completed_successfully" and services.get(dep, {}).get("restart", "no") != "no":
                fail(where, f"waits for one-shot `{dep}` to complete, but it restarts")
        for mount in service.get("volumes", []) or []:
            source = mount.split(":")[0] if isinstance(mount, str) else mount.get("source")
            if source and not source.startswith((".", "/")) and source not in volumes:
                fail(where, f"volume `{source}` is not declared under volumes")
        one_shot = service.get("restart") == "no"
        if not one_shot and "healthcheck" not in service:
            fail(where, "a long-running service without a healthcheck")
    if len(errors) == before:
        print(f"ok   {path.relative_to(ROOT)}: {len(services)} services against the Compose specification")


# ---------------------------------------------------------------- kubernetes

def render(kustomization_dir):
    kubectl = shutil.which("kubectl")
    if kubectl:
        out = subprocess.run([kubectl, "kustomize", str(kustomization_dir)], capture_output=True, text=True)
        if out.returncode != 0:
            fail(str(kustomization_dir.relative_to(ROOT)), f"kustomize: {out.stderr.strip()}")
            return []
        return [d for d in yaml.safe_load_all(out.stdout) if d]
    # Without kustomize: the base's files as they are (an overlay needs kustomize).
    k = yaml.safe_load((kustomization_dir / "kustomization.yaml").read_text())
    if "resources" not in k or any(not (kustomization_dir / r).is_file() for r in k["resources"]):
        print(f"skip {kustomization_dir.relative_to(ROOT)}: rendering it needs kubectl (kustomize)")
        return None
    docs = []
    for r in k["resources"]:
        docs += [d for d in yaml.safe_load_all((kustomization_dir / r).read_text()) if d]
    return docs


def keda_validator():
    schema = json.loads((DEPLOY / "schemas" / "keda.json").read_text())
    return schema


def check_objects(label, docs):
    before = len(errors)
    keda = keda_validator()
    names = {}
    for doc in docs:
        kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
        where = f"{label} {kind}/{name}"
        names.setdefault(kind, set()).add(name)
        if doc.get("apiVersion", "").startswith("keda.sh/"):
            schema = {"$ref": f"#/$defs/{kind}", "$defs": keda["$defs"]}
            v = jsonschema.Draft202012Validator(schema)
            for e in v.iter_errors(doc):
                fail(f"{where} {'.'.join(map(str, e.path))}", e.message)
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.utils.ValidationError as e:
            fail(f"{where} {'.'.join(map(str, e.path))}", e.message)
        except kubernetes_validate.utils.SchemaNotFoundError as e:
            fail(where, f"no Kubernetes {K8S_VERSION} schema: {e}")
    # References between the objects.
    for doc in docs:
        kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
        where = f"{label} {kind}/{name}"
        spec = doc.get("spec", {})
        if kind == "ScaledObject" and spec["scaleTargetRef"]["name"] not in names.get("Deployment", set()):
            fail(where, f"scales `{spec['scaleTargetRef']['name']}`, which is no Deployment here")
        if kind == "ScaledObject":
            for t in spec["triggers"]:
                auth = t.get("authenticationRef", {}).get("name")
                if auth and auth not in names.get("TriggerAuthentication", set()):
                    fail(where, f"trigger authentication `{auth}` is not defined")
        if kind == "Ingress":
            for rule in spec.get("rules", []):
                for p in rule["http"]["paths"]:
                    svc = p["backend"]["service"]["name"]
                    if svc not in names.get("Service", set()):
                        fail(where, f"routes {p['path']} to `{svc}`, which is no Service here")
        if kind in ("Deployment", "Job"):
            pod = spec["template"]["spec"]
            for c in pod.get("containers", []) + pod.get("initContainers", []):
                for src in c.get("envFrom", []):
                    ref = src.get("configMapRef", {}).get("name")
                    if ref and ref not in names.get("ConfigMap", set()):
                        fail(where, f"container {c['name']} reads ConfigMap `{ref}`, which is not defined")
            if kind == "Deployment":
                labels = spec["template"]["metadata"].get("labels", {})
                for k, v in spec["selector"]["matchLabels"].items():
                    if labels.get(k) != v:
                        fail(where, f"selector {k}={v} does not match the pod template's labels")
                for c in pod["containers"]:
                    for probe in ("livenessProbe", "readinessProbe"):
                        if probe not in c:
                            fail(where, f"container {c['name']} has no {probe}")
                    if "requests" not in c.get("resources", {}):
                        fail(where, f"container {c['name']} has no resource requests")
    if len(errors) == before:
        print(f"ok   {label}: {len(docs)} objects against the Kubernetes {K8S_VERSION} API schemas (strict)")


def check_kubernetes():
    for d in sorted((DEPLOY / "k8s").rglob("kustomization.yaml")):
        docs = render(d.parent)
        if docs:
            check_objects(str(d.parent.relative_to(ROOT)), docs)
    # Files outside the kustomizations (examples) are objects too.
    for f in sorted((DEPLOY / "k8s").rglob("*.example.yaml")):
        check_objects(str(f.relative_to(ROOT)), [d for d in yaml.safe_load_all(f.read_text()) if d])


# ---------------------------------------------------------------- grafana

def check_dashboards():
    exported = set(re.findall(r'"(tailor_[a-z_]+)"', (ROOT / "services/core/src/metrics.rs").read_text()))
    for f in sorted((DEPLOY / "grafana").glob("*.json")):
        before = len(errors)
        dash = json.loads(f.read_text())
        panels = dash.get("panels", [])
        if not panels:
            fail(f.name, "no panels")
        for p in panels:
            for t in p.get("targets", []):
                for metric in re.findall(r"\b(tailor_[a-z_]+)", t.get("expr", "")):
                    base = re.sub(r"_(bucket|count|sum)$", "", metric)
                    if metric not in exported and base not in exported:
                        fail(f"{f.name} panel `{p.get('title')}`", f"queries `{metric}`, which Tailor does not export")
        if len(errors) == before:
            print(f"ok   {f.relative_to(ROOT)}: {len(panels)} panels, every query names an exported metric")


def main():
    check_compose(DEPLOY / "compose.yaml")
    check_kubernetes()
    check_dashboards()
    if errors:
        print(f"deploy/validate: {len(errors)} problem(s)")
        sys.exit(1)
    print("deploy/validate: every deployment file is valid")


if __name__ == "__main__":
    main()
