"""Model registry on the command line: promote by alias, list, show, and audit a store for PHI.

    python -m pipelines.registry promote --model NAME --version V --alias champion
    python -m pipelines.registry demote  --model NAME --alias champion
    python -m pipelines.registry list [--json]
    python -m pipelines.registry show --model NAME [--version V | --alias A] [--json]
    python -m pipelines.registry audit-phi --phi-file values.txt [--backend-store mlflow.db] [--artifacts mlruns]

Store: ``--tracking-uri`` (wins), else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///./mlflow.db``. Against a
server that does not answer, commands fail within seconds (a ``/health`` probe; MLflow's HTTP retries are
bounded here unless MLFLOW_HTTP_REQUEST_MAX_RETRIES / _TIMEOUT / _BACKOFF_FACTOR are set).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

#: Bounded MLflow HTTP behaviour for interactive commands (the environment wins when set).
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--tracking-uri", dest="tracking_uri_sub", default=None,
                        help="MLflow store: http://127.0.0.1:5000 or sqlite:///path/mlflow.db "
                        "(overrides $MLFLOW_TRACKING_URI)")
    parser = argparse.ArgumentParser(prog="python -m pipelines.registry", description=__doc__.split("\n")[0])
    parser.add_argument("--tracking-uri", default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    promote = sub.add_parser("promote", parents=[common], help="point an alias (e.g. champion) at a version")
    promote.add_argument("--model", required=True)
    promote.add_argument("--version", required=True)
    promote.add_argument("--alias", default="champion")
    demote = sub.add_parser("demote", parents=[common], help="remove an alias")
    demote.add_argument("--model", required=True)
    demote.add_argument("--alias", required=True)
    listing = sub.add_parser("list", parents=[common], help="registered models, versions and aliases")
    listing.add_argument("--json", action="store_true")
    show = sub.add_parser("show", parents=[common], help="one version: tags, metrics, lineage, source run")
    show.add_argument("--model", required=True)
    which = show.add_mutually_exclusive_group()
    which.add_argument("--version")
    which.add_argument("--alias")
    show.add_argument("--json", action="store_true")
    audit = sub.add_parser("audit-phi", help="search a backend store and artifact tree for PHI strings")
    audit.add_argument("--phi-file", required=True, type=Path, help="one PHI value per line")
    audit.add_argument("--backend-store", help="SQLite file or SQLAlchemy URL of the MLflow backend store")
    audit.add_argument("--artifacts", type=Path, help="artifact root folder")
    return parser


def _print_list(models: list[dict[str, Any]]) -> None:
    if not models:
        print("no registered models")
        return
    for model in models:
        aliases = ", ".join(f"@{a} -> v{v}" for a, v in sorted(model["aliases"].items())) or "no aliases"
        print(f"{model['name']}  ({len(model['versions'])} version(s); {aliases})")
        for v in model["versions"]:
            tags = " ".join(f"@{a}" for a in v["aliases"])
            line = f"  v{v['version']:<4} {v['kind'] or '?':<10} {v['status']:<6} {v['created']}"
            print(f"{line}  run {v['run_id'] or '-'}  {tags}".rstrip())


def _print_show(record: dict[str, Any]) -> None:
    aliases = " ".join(f"@{a}" for a in record["aliases"]) or "-"
    print(f"{record['name']} version {record['version']}  ({record['kind'] or 'unknown kind'}; aliases: {aliases})")
    print(f"  status: {record['status']}   created: {record['created']}")
    print(f"  source: {record['source']}")
    if record["description"]:
        print(f"  description: {record['description']}")
    run = record["run"]
    line = f"  source run: {run.get('run_id') or '-'}"
    if run.get("run_name"):
        line += f" ({run['run_name']}, {run['status']}, experiment {run['experiment_id']})"
    print(line)
    if run.get("git_commit"):
        print(f"  code: {run['git_commit']} (dirty: {run.get('git_dirty')})")
    sections = (("metrics", "metrics"), ("lineage (pretrained encoder)", "lineage"), ("data", "data"), ("tags", "tags"))
    for title, key in sections:
        items = record[key]
        if items:
            print(f"  {title}:")
            for k, v in items.items():
                print(f"    {k}: {v}")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (1 on a registry error, PHI found, or bad input)."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    uri = getattr(args, "tracking_uri_sub", None) or args.tracking_uri
    if uri:
        os.environ["MLFLOW_TRACKING_URI"] = uri
    for key, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)

    from mlflow.exceptions import MlflowException

    from mlvicx_monai.tracking import registry

    try:
        if args.command == "audit-phi":
            from mlvicx_monai.tracking.audit import audit_phi

            values = [line.strip() for line in args.phi_file.read_text(encoding="utf-8").splitlines() if line.strip()]
            hits = audit_phi(values, backend_store=args.backend_store, artifact_root=args.artifacts)
            for hit in hits:
                print(hit)
            print(f"{len(hits)} PHI hit(s) for {len(values)} value(s)")
            return 1 if hits else 0
        if args.command == "promote":
            mv = registry.set_alias(args.model, args.version, args.alias)
            print(f"{args.model}@{args.alias} -> version {mv.version} (run {mv.run_id})")
        elif args.command == "demote":
            registry.delete_alias(args.model, args.alias)
            print(f"removed {args.model}@{args.alias}")
        elif args.command == "list":
            models = registry.list_models()
            print(json.dumps(models, indent=1)) if args.json else _print_list(models)
        elif args.command == "show":
            record = registry.describe_version(args.model, version=args.version, alias=args.alias)
            print(json.dumps(record, indent=1)) if args.json else _print_show(record)
        return 0
    except (registry.RegistryError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except MlflowException as err:
        print(f"error: MLflow: {err.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
