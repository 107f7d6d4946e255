#!/usr/bin/env python3
"""check_k8s - a schema check of deploy/k8s/*.yaml that can fail (no cluster needed).

Every document: apiVersion, kind, metadata.name, metadata.namespace (but Namespace).
Deployment/StatefulSet: selector matches the pod labels; every container has an image with
a pinned tag (not :latest, not untagged), cpu+memory requests and limits, a readiness
probe whose named port exists, allowPrivilegeEscalation false, readOnlyRootFilesystem,
capabilities dropping ALL; the pod runs as non-root with RuntimeDefault seccomp; every
volume's Secret/ConfigMap/PVC is defined in the set; a StatefulSet's serviceName is a
Service of the set; roles encoder/mmdit/vae request nvidia.com/gpu (requests == limits).
Service: its selector matches some workload's pod labels; targetPorts exist there.
A ConfigMap holds the cluster file, Secrets hold the CurveZMQ keys and the HTTP token.
`--self-test` runs the check on broken copies and fails unless each is caught.
Exit 0 pass, 1 fail, 77 skip (no PyYAML)."""
import copy
import glob
import os
import sys

try:
    import yaml
except ImportError:
    print("check_k8s: python3 has no yaml module (apt-get install python3-yaml); skipping")
    sys.exit(77)

WORKLOADS = ("Deployment", "StatefulSet")
GPU_ROLES = ("encoder", "mmdit", "vae")


def check(docs):
    errs = []
    byname = {}
    for d in docs:
        if not isinstance(d, dict):
            errs.append("a document is not a mapping")
            continue
        kind, name = d.get("kind"), (d.get("metadata") or {}).get("name")
        where = f"{kind or '?'}/{name or '?'}"
        for key in ("apiVersion", "kind"):
            if not d.get(key):
                errs.append(f"{where}: no {key}")
        if not name:
            errs.append(f"{where}: no metadata.name")
        if kind != "Namespace" and not (d.get("metadata") or {}).get("namespace"):
            errs.append(f"{where}: no metadata.namespace")
        byname[(kind, name)] = d
    workloads = [d for d in docs if isinstance(d, dict) and d.get("kind") in WORKLOADS]
    pods = {}
    for w in workloads:
        where = f"{w['kind']}/{w['metadata'].get('name')}"
        spec = w.get("spec") or {}
        tmpl = spec.get("template") or {}
        labels = (tmpl.get("metadata") or {}).get("labels") or {}
        sel = (spec.get("selector") or {}).get("matchLabels") or {}
        if not sel or any(labels.get(k) != v for k, v in sel.items()):
            errs.append(f"{where}: selector {sel} does not match pod labels {labels}")
        pspec = tmpl.get("spec") or {}
        pods[where] = (labels, pspec)
        psc = pspec.get("securityContext") or {}
        if psc.get("runAsNonRoot") is not True:
            errs.append(f"{where}: pod securityContext.runAsNonRoot is not true")
        if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            errs.append(f"{where}: pod seccompProfile is not RuntimeDefault")
        if w["kind"] == "StatefulSet":
            svc = spec.get("serviceName")
            if ("Service", svc) not in byname:
                errs.append(f"{where}: serviceName '{svc}' is not a Service of the set")
        for v in pspec.get("volumes") or []:
            for src, kind, key in (("secret", "Secret", "secretName"),
                                   ("configMap", "ConfigMap", "name"),
                                   ("persistentVolumeClaim", "PersistentVolumeClaim",
                                    "claimName")):
                if src in v and (kind, v[src].get(key)) not in byname:
                    errs.append(f"{where}: volume '{v.get('name')}' names {kind} "
                                f"'{v[src].get(key)}', not in the set")
        containers = pspec.get("containers") or []
        if not containers:
            errs.append(f"{where}: no containers")
        role = labels.get("sd3d/role")
        for c in containers:
            cw = f"{where} container '{c.get('name')}'"
            image = c.get("image") or ""
            tag = image.rsplit("/", 1)[-1]
            if not image:
                errs.append(f"{cw}: no image")
            elif ":" not in tag or tag.endswith(":latest"):
                errs.append(f"{cw}: image '{image}' is not pinned to a version")
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in (res.get(part) or {}):
                        errs.append(f"{cw}: no resources.{part}.{r}")
            if role in GPU_ROLES:
                req = (res.get("requests") or {}).get("nvidia.com/gpu")
                lim = (res.get("limits") or {}).get("nvidia.com/gpu")
                if not lim or req != lim:
                    errs.append(f"{cw}: role {role} needs nvidia.com/gpu (requests == limits)")
            ports = {p.get("name") for p in c.get("ports") or []} | \
                    {p.get("containerPort") for p in c.get("ports") or []}
            probe = c.get("readinessProbe")
            if not probe:
                errs.append(f"{cw}: no readinessProbe")
            else:
                p = (probe.get("httpGet") or probe.get("tcpSocket") or {}).get("port")
                if p not in ports:
                    errs.append(f"{cw}: readinessProbe port '{p}' is not a container port")
            sc = c.get("securityContext") or {}
            if sc.get("allowPrivilegeEscalation") is not False:
                errs.append(f"{cw}: allowPrivilegeEscalation is not false")
            if sc.get("readOnlyRootFilesystem") is not True:
                errs.append(f"{cw}: readOnlyRootFilesystem is not true")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                errs.append(f"{cw}: capabilities do not drop ALL")
    for d in docs:
        if not isinstance(d, dict) or d.get("kind") != "Service":
            continue
        where = f"Service/{d['metadata'].get('name')}"
        sel = (d.get("spec") or {}).get("selector") or {}
        match = [(w, ps) for w, (lab, ps) in pods.items()
                 if sel and all(lab.get(k) == v for k, v in sel.items())]
        if not match:
            errs.append(f"{where}: selector {sel} matches no workload")
            continue
        cports = set()
        for _, ps in match:
            for c in ps.get("containers") or []:
                for p in c.get("ports") or []:
                    cports |= {p.get("name"), p.get("containerPort")}
        for p in (d.get("spec") or {}).get("ports") or []:
            if p.get("targetPort", p.get("port")) not in cports:
                errs.append(f"{where}: targetPort {p.get('targetPort')} is not a container port")
    kinds = {k for k, _ in byname}
    for want in ("ConfigMap", "Secret", "Service", "Deployment", "StatefulSet"):
        if want not in kinds:
            errs.append(f"the set has no {want}")
    cms = [d for d in docs if isinstance(d, dict) and d.get("kind") == "ConfigMap"]
    if not any(k.endswith(".cluster") for cm in cms for k in (cm.get("data") or {})):
        errs.append("no ConfigMap holds a cluster file (*.cluster)")
    keys = set()
    for d in docs:
        if isinstance(d, dict) and d.get("kind") == "Secret":
            keys |= set((d.get("stringData") or {})) | set((d.get("data") or {}))
    for want in ("allow", "server.pub", "node.key", "token"):
        if want not in keys:
            errs.append(f"no Secret holds '{want}'")
    return errs


def load(paths):
    docs = []
    for p in paths:
        with open(p) as f:
            docs += [d for d in yaml.safe_load_all(f) if d is not None]
    return docs


def self_test(docs):
    """Each mutation must be caught."""
    def first(kind, name=None):
        return next(d for d in docs if d.get("kind") == kind and
                    (name is None or d["metadata"]["name"] == name))
    cases = []

    def case(label, fn):
        d = copy.deepcopy(docs)
        fn(d)
        cases.append((label, d))

    def ctr(d, kind="StatefulSet", role=None):
        for w in d:
            if w.get("kind") == kind:
                labels = w["spec"]["template"]["metadata"]["labels"]
                if role is None or labels.get("sd3d/role") == role:
                    return w["spec"]["template"]["spec"]["containers"][0]
    case("image :latest", lambda d: ctr(d).update(image="sd3d:latest"))
    case("no resources", lambda d: ctr(d, "Deployment").pop("resources"))
    case("no gpu on mmdit", lambda d: ctr(d, role="mmdit")["resources"]["limits"]
         .pop("nvidia.com/gpu"))
    case("no readiness", lambda d: ctr(d).pop("readinessProbe"))
    case("no metadata.name", lambda d: d[0]["metadata"].pop("name"))
    case("selector mismatch", lambda d: [w for w in d if w.get("kind") == "Deployment"][0]
         ["spec"]["selector"]["matchLabels"].update({"x": "y"}))
    case("missing secret", lambda d: d.remove(next(x for x in d if x.get("kind") == "Secret")))
    case("privilege escalation", lambda d: ctr(d)["securityContext"]
         .update(allowPrivilegeEscalation=True))
    bad = 0
    for label, d in cases:
        if not check(d):
            print(f"check_k8s: self-test: '{label}' was not caught")
            bad += 1
    return bad


def main():
    src = os.environ.get("SD3_SOURCE_DIR") or os.path.join(os.path.dirname(__file__), "..", "..")
    paths = sorted(glob.glob(os.path.join(src, "deploy", "k8s", "*.yaml")))
    if not paths:
        print("check_k8s: no deploy/k8s/*.yaml")
        return 1
    docs = load(paths)
    if self_test(docs):
        return 1
    errs = check(docs)
    for e in errs:
        print(f"check_k8s: FAIL: {e}")
    if not errs:
        kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
        print(f"check_k8s: ok: {len(docs)} objects in {len(paths)} files: {', '.join(kinds)}")
    return 1 if errs else 0


if __name__ == "__main__":
    sys.exit(main())
