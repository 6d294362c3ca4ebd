"""The ``gradguide`` command: a thin layer over the library functions.

User mistakes (GradguideError) print one line and exit with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradguide.errors import GradguideError

if TYPE_CHECKING:
    from gradguide.config import FlagField

USER_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")


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


def _add_common_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by eval, train and compare: what to run on and where to write."""
    p.add_argument("--config", help="YAML file with the run's settings (flags override it)")
    p.add_argument("--model", help="registered model name, local model directory or hub id")
    p.add_argument("--task", help="task name (see `gradguide tasks`) or a JSONL/CSV/TSV file")
    p.add_argument("--data-dir", help="data root (else $GRADGUIDE_DATA, else ../shared/data)")
    p.add_argument("--cache-dir", help="model cache (else $GRADGUIDE_CACHE, ~/.cache/gradguide)")
    p.add_argument("--out", help="directory for run records (default runs/)")
    p.add_argument("--template", help="prompt template with {field} placeholders")
    p.add_argument("--label-words", help="verbalizer as label=word pairs, e.g. '0= bad,1= good'")
    p.add_argument("--text-fields", help="user file: comma-separated text fields (default text)")
    p.add_argument("--label-field", help="user file: label field (default label)")
    p.add_argument("--eval-file", help="user file: separate evaluation file")
    p.add_argument("--max-length", type=int, help="tokens per sequence (prompt cut from the start)")
    p.add_argument("--device", help="auto (CUDA when available; default), cpu, cuda or cuda:N")
    p.add_argument("--dtype", help="weight precision: fp32 (default) or bf16")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any setting, dotted"
    )


def _common_overrides(a: argparse.Namespace) -> dict[str, Any]:
    o: dict[str, Any] = {
        "model": a.model,
        "task": a.task,
        "data_dir": a.data_dir,
        "cache_dir": a.cache_dir,
        "out": a.out,
        "device": a.device,
        "dtype": a.dtype,
        "template": a.template,
        "scoring.max_length": a.max_length,
        "user_task.text_fields": a.text_fields,
        "user_task.label_field": a.label_field,
        "user_task.eval_file": a.eval_file,
    }
    if a.label_words:
        words = _pairs(a.label_words, "--label-words")
        user_file = bool(a.task) and a.task.endswith(USER_FILE_SUFFIXES)
        o["user_task.label_words" if user_file else "verbalizer"] = words
    return o


def _apply_set(o: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    for item in a.set:
        o.update(_pairs(item, "--set"))
    return o


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", nargs="?", help="a finished training run directory to re-evaluate")
    _add_common_args(p)
    p.add_argument("--split", help="split to evaluate (default: the task's evaluation split)")
    p.add_argument(
        "--limit", type=int, help="evaluate only the first N examples (MultiRC: questions)"
    )
    p.add_argument("--shots", type=int, help="number of in-context demonstrations (with --icl)")
    p.add_argument("--icl", action="store_true", help="prepend --shots demonstrations (default 4)")
    p.add_argument("--seed", type=int, help="seed of the demonstration sample")
    p.add_argument("--batch-size", type=int, help="instances per forward pass")
    p.add_argument("--length-normalize", action="store_true", default=None, help="mean log-prob")
    p.add_argument("--no-fast-path", action="store_true", help="single-token candidates, slow way")


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
    o = _common_overrides(a)
    o.update(
        {
            "split": a.split,
            "limit": a.limit,
            "shots": shots,
            "seed": a.seed,
            "scoring.batch_size": a.batch_size,
            "scoring.length_normalize": a.length_normalize,
            "scoring.fast_path": False if a.no_fast_path else None,
        }
    )
    return _apply_set(o, a)


#: argument groups of the training flags, by the settings they live under
FLAG_GROUPS = {"guidance": "gradient guidance (SGG)"}


def _train_flags() -> list[FlagField]:
    """The training settings declared with a flag (gradguide.config.option), in field order."""
    from gradguide.config import flag_fields
    from gradguide.train_config import TrainConfig

    return flag_fields(TrainConfig)


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    """The common flags, then one per training setting declared with a flag (its help too)."""
    from gradguide.guidance import GUIDANCE

    _add_common_args(p)
    groups: dict[str, Any] = {}
    for f in _train_flags():
        top = f.key.split(".")[0]
        if top in FLAG_GROUPS and top not in groups:
            groups[top] = p.add_argument_group(FLAG_GROUPS[top])
        target = groups.get(top, p)
        kwargs: dict[str, Any] = {"dest": _dest(f.flag), "help": f.help}
        if f.key == "guidance.use":  # the names registered when the parser is built
            kwargs["help"] = f.help.replace("{guidance}", ", ".join(GUIDANCE))
        if f.type is bool:
            kwargs.update(action="store_true", default=None)  # absent: the config's value
        elif f.type in (int, float):
            kwargs["type"] = f.type
        target.add_argument(f.flag, **kwargs)


def _train_overrides(a: argparse.Namespace) -> dict[str, Any]:
    o = _common_overrides(a)
    o.update({f.key: getattr(a, _dest(f.flag)) for f in _train_flags()})
    return o


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [list(map(str, header))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _metric_rows(metrics: dict[str, float]) -> str:
    return _table([[k, f"{v:.4f}"] for k, v in metrics.items()], ["metric", "value"])


def cmd_eval(a: argparse.Namespace) -> int:
    if a.run:
        return _eval_run(a)
    from gradguide.config import EvalConfig, load_config
    from gradguide.evaluate import evaluate

    config = load_config(EvalConfig, a.config, _eval_overrides(a))
    result = evaluate(config)
    r = result.record
    demos = len(r["data"]["demonstration_ids"])
    detail = f", {demos} demonstrations, seed {config.seed}" if demos else ""
    print(
        f"\n{r['model']['name']} on {r['task']['name']} ({r['data']['eval_split']}, "
        f"n={r['data']['eval_size']}, {r['method']}{detail})"
    )
    print(_metric_rows(result.metrics))
    print(
        f"throughput: {r['scoring']['examples_per_s']:.1f} examples/s "
        f"(fast path: {r['scoring']['fast_path']})"
    )
    print(f"run record: {result.run_dir}/record.json")
    return 0


def _eval_run(a: argparse.Namespace) -> int:
    from gradguide.trained import reevaluate

    metrics = reevaluate(Path(a.run), device=a.device)  # None: the run's own device
    recorded = json.loads((Path(a.run) / "record.json").read_text())["metrics"]
    print(_metric_rows(metrics))
    same = all(abs(metrics[k] - recorded[k]) < 1e-9 for k in metrics)
    print("matches the run record" if same else f"differs from the run record: {recorded}")
    return 0


#: optim flags SetFit's pair phase does not read, and the setting it reads instead
SETFIT_OWN = {
    "epochs": "method_options.setfit_epochs",
    "batch_size": "method_options.setfit_batch_size",
    "weight_decay": "method_options.setfit_weight_decay",
}


def _refuse_pair_flags(a: argparse.Namespace) -> None:
    """``train --method setfit --epochs N`` would change nothing: say which setting does."""
    if a.method != "setfit":
        return
    for name, own in SETFIT_OWN.items():
        if getattr(a, name) is not None:
            flag = "--" + name.replace("_", "-")
            raise GradguideError(
                f"setfit trains its body on pairs with settings of its own: use --set {own}=…",
                field=flag,
            )


def cmd_train(a: argparse.Namespace) -> int:
    from gradguide.config import load_config
    from gradguide.distributed import finish as finish_distributed
    from gradguide.health import GradientWarning, warning_text
    from gradguide.train import train
    from gradguide.train_config import TrainConfig
    from gradguide.trained import load_run_config

    with warnings.catch_warnings():  # printed below as one line
        warnings.simplefilter("ignore", GradientWarning)
        if a.resume:
            config = load_run_config(Path(a.resume))
            result = train(config, resume=Path(a.resume))
        else:
            o = _train_overrides(a)
            o["method"] = a.method
            _refuse_pair_flags(a)
            config = load_config(TrainConfig, a.config, _apply_set(o, a))
            result = train(config)
    finish_distributed()
    if not result.is_main:
        return 0
    r = result.record
    print(
        f"\n{config.method} on {r['task']['name']}: {config.shots} shots, seed {config.seed}, "
        f"{r['trainable_parameters']:,} trained parameters, {r['steps']} steps "
        f"({len(r['skipped_steps'])} skipped), {r['timings']['total_s']:.0f} s"
    )
    print(_metric_rows(result.metrics))
    print(f"run record: {result.run_dir}/record.json")
    check = r.get("gradient_check")
    if check and check["failed"]:
        print(f"gradguide: warning: {warning_text(check)}", file=sys.stderr)
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    from gradguide.bench.compare import compare
    from gradguide.config import load_config
    from gradguide.train_config import TrainConfig

    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    if not seeds or not methods:
        raise GradguideError("need at least one method and one seed", field="--methods/--seeds")
    config = load_config(TrainConfig, a.config, _apply_set(_train_overrides(a), a))

    def on_run(method: str, seed: int, r: Any) -> None:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in r.metrics.items())
        print(f"  {method:<10} seed {seed}: {shown} ({r.record['timings']['total_s']:.0f} s)")

    summaries = compare(config, methods, seeds, on_run=on_run)
    names = list(summaries[0].metrics)
    rows = [
        [
            s.method,
            *(str(s.metrics[n]) for n in names),
            f"{s.trainable_parameters:,}",
            str(s.wall_s),
        ]
        for s in summaries
    ]
    print(
        f"\n{config.model} on {config.task}, {config.shots} shots, seeds {seeds} "
        "(mean ± 95% interval over seeds)"
    )
    print(_table(rows, ["method", *names, "trained params", "wall s per run"]))
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    from gradguide.predict import predict

    rows = predict(Path(a.run), Path(a.input), device=a.device)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if a.output:
        from gradguide.atomic import write_text_atomic

        out = Path(a.output)
        if out.exists() and not a.overwrite:
            raise GradguideError("output file exists; pass --overwrite to replace it", file=out)
        write_text_atomic(out, text)
        print(f"{len(rows)} predictions written to {out}")
    else:
        sys.stdout.write(text)
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
        splits = f"{t.train_split}->{t.eval_split}"
        data = "yes" if present else "no"
        rows.append([t.name, t.suite, splits, ",".join(t.metrics), data, t.description])
    print(f"data root: {root if root else 'not found (pass --data-dir or set GRADGUIDE_DATA)'}")
    print(_table(rows, ["task", "suite", "splits", "metrics", "data", "description"]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="gradguide", description="Few-shot adaptation of language models."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("eval", help="evaluate zero-shot, with demonstrations, or a trained run")
    _add_eval_args(p)
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("train", help="train one method on a k-shot sample and evaluate it")
    _add_train_args(p)
    p.add_argument("--method", help="what is trained (see gradguide.methods; default lora)")
    p.add_argument("--resume", help="continue a killed run from its last checkpoint")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("compare", help="several methods on the same k-shot samples and seeds")
    _add_train_args(p)
    p.add_argument("--methods", required=True, help="comma-separated, e.g. zero-shot,icl,lora")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3)")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("predict", help="label new examples with a trained run")
    p.add_argument("run", help="a finished training run directory")
    p.add_argument("--input", required=True, help="JSONL/CSV/TSV with the template's fields")
    p.add_argument("--output", help="write JSONL here instead of standard output")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the run's own setting)")
    p.set_defaults(func=cmd_predict)
    from gradguide.bench.cli import add_bench_parser, add_results_parser, add_tune_parser
    from gradguide.report.cli import add_report_parser

    add_bench_parser(sub)
    add_report_parser(sub)
    add_results_parser(sub)
    add_tune_parser(sub)
    p = sub.add_parser("models", help="list the models gradguide knows and whether they load")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("tasks", help="list the tasks and whether their data is found")
    p.add_argument("--data-dir")
    p.set_defaults(func=cmd_tasks)
    return parser


#: disk full, quota, read-only file system, permission: reported in one line, exit 2
STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


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
    except OSError as e:
        if e.errno not in STORAGE_ERRORS:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(
            f"gradguide: error: {where}cannot write: {e.strerror}; files written atomically "
            "before this point (records, checkpoints, databases) are intact",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
