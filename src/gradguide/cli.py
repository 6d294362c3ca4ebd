"""The ``gradguide`` command: a thin layer over the library functions.

User mistakes (GradguideError) print one line and exit with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from gradguide.errors import GradguideError


def _pairs(text: str, flag: str) -> dict[str, str]:
    """Parse ``a=x,b=y`` into a mapping (label words, generic overrides)."""
    out = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in item:
            raise GradguideError(
                f"expected key=value pairs separated by commas, got {item!r}", field=flag
            )
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with the run's settings (flags override it)")
    p.add_argument("--model", help="registered model name, local model directory or hub id")
    p.add_argument("--task", help="task name (see `gradguide tasks`) or a JSONL/CSV/TSV file")
    p.add_argument("--split", help="split to evaluate (default: the task's evaluation split)")
    p.add_argument(
        "--limit", type=int, help="evaluate only the first N examples (MultiRC: questions)"
    )
    p.add_argument("--shots", type=int, help="number of in-context demonstrations (with --icl)")
    p.add_argument("--icl", action="store_true", help="prepend --shots demonstrations (default 4)")
    p.add_argument("--seed", type=int, help="seed of the demonstration sample")
    p.add_argument("--data-dir", help="data root (else $GRADGUIDE_DATA, else ../shared/data)")
    p.add_argument(
        "--cache-dir", help="model cache (else $GRADGUIDE_CACHE, else ~/.cache/gradguide)"
    )
    p.add_argument("--out", help="directory for run records (default runs/)")
    p.add_argument("--template", help="prompt template with {field} placeholders")
    p.add_argument("--label-words", help="verbalizer as label=word pairs, e.g. '0= bad,1= good'")
    p.add_argument("--text-fields", help="user file: comma-separated text fields (default text)")
    p.add_argument("--label-field", help="user file: label field (default label)")
    p.add_argument("--eval-file", help="user file: separate evaluation file")
    p.add_argument("--batch-size", type=int, help="instances per forward pass")
    p.add_argument(
        "--max-length", type=int, help="token budget per sequence (prompt cut from the start)"
    )
    p.add_argument(
        "--length-normalize", action="store_true", default=None, help="mean token log-prob"
    )
    p.add_argument(
        "--no-fast-path", action="store_true", help="score single-token candidates the slow way"
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any setting, dotted"
    )


def _eval_overrides(a: argparse.Namespace) -> dict[str, Any]:
    shots = a.shots
    if a.icl and not shots:
        shots = 4
    if shots and not a.icl:
        raise GradguideError(
            "eval trains nothing: add --icl to use the --shots examples as demonstrations "
            "(training on them is `gradguide train`)",
            field="--shots",
        )
    label_words = _pairs(a.label_words, "--label-words") if a.label_words else None
    o: dict[str, Any] = {
        "model": a.model,
        "task": a.task,
        "split": a.split,
        "limit": a.limit,
        "shots": shots,
        "seed": a.seed,
        "data_dir": a.data_dir,
        "cache_dir": a.cache_dir,
        "out": a.out,
        "template": a.template,
        "scoring.batch_size": a.batch_size,
        "scoring.max_length": a.max_length,
        "scoring.length_normalize": a.length_normalize,
        "scoring.fast_path": False if a.no_fast_path else None,
        "user_task.text_fields": a.text_fields,
        "user_task.label_field": a.label_field,
        "user_task.eval_file": a.eval_file,
    }
    if label_words:
        key = (
            "user_task.label_words"
            if a.task and a.task.endswith((".jsonl", ".json", ".csv", ".tsv"))
            else "verbalizer"
        )
        o[key] = label_words
    for item in a.set:
        o.update(_pairs(item, "--set"))
    return o


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [list(map(str, header))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cmd_eval(a: argparse.Namespace) -> int:
    from gradguide.config import EvalConfig, load_config
    from gradguide.evaluate import evaluate

    config = load_config(EvalConfig, a.config, _eval_overrides(a))
    result = evaluate(config)
    r = result.record
    rows = [[k, f"{v:.4f}"] for k, v in result.metrics.items()]
    print(
        f"\n{r['model']['name']} on {r['task']['name']} ({r['data']['eval_split']}, "
        f"n={r['data']['eval_size']}, {r['method']}"
        + (
            f", {len(r['data']['demonstration_ids'])} demonstrations, seed {config.seed}"
            if config.shots
            else ""
        )
        + ")"
    )
    print(_table(rows, ["metric", "value"]))
    print(
        f"throughput: {r['scoring']['examples_per_s']:.1f} examples/s "
        f"(fast path: {r['scoring']['fast_path']})"
    )
    print(f"run record: {result.run_dir}/record.json")
    return 0


def cmd_models(a: argparse.Namespace) -> int:
    from gradguide.models import list_models

    rows = [
        [m.name, m.kind, "yes" if m.available else "no", m.where, m.description]
        for m in list_models()
    ]
    print(_table(rows, ["name", "kind", "available", "where", "description"]))
    return 0


def cmd_tasks(a: argparse.Namespace) -> int:
    from gradguide.tasks import list_tasks, resolve_data_root

    root = resolve_data_root(a.data_dir)
    rows = []
    for t in list_tasks():
        files = t.files(root)
        present = all(p.exists() for p in files.values()) if files else False
        rows.append(
            [
                t.name,
                t.suite,
                f"{t.train_split}->{t.eval_split}",
                ",".join(t.metrics),
                "yes" if present else "no",
                t.description,
            ]
        )
    print(f"data root: {root if root else 'not found (pass --data-dir or set GRADGUIDE_DATA)'}")
    print(_table(rows, ["task", "suite", "splits", "metrics", "data", "description"]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="gradguide", description=__doc__.splitlines()[0] if __doc__ else None
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("eval", help="evaluate a model zero-shot or with in-context demonstrations")
    _add_eval_args(p)
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser(
        "models", help="list the models gradguide knows and whether they are installed"
    )
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("tasks", help="list the tasks and whether their data is found")
    p.add_argument("--data-dir")
    p.set_defaults(func=cmd_tasks)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run a subcommand; user errors exit 2 with one line on stderr."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except GradguideError as e:
        print(f"gradguide: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gradguide: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
