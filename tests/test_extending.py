"""A new guidance family with an option, declared in one module outside gradguide
(tests/plugins/toy_term.py), runs through training, a grid and the report with no edit of
gradguide (issue 20; docs/extending.md)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from tiny_runs import tiny_config

from gradguide import guidance
from gradguide.bench.estimate import estimate_config_seconds
from gradguide.bench.grid import expand_grid, parse_grid, run_key, setting_type
from gradguide.bench.runner import run_grid
from gradguide.cli import main as cli_main
from gradguide.config import flag_fields, from_dict
from gradguide.errors import GradguideError
from gradguide.methods import MethodOptions, get_method, unregister_method
from gradguide.methods.base import install_method_options
from gradguide.models import load_model
from gradguide.train import GuidanceConfig, OptimConfig, TrainConfig, train, validate

PLUGIN = "plugins.toy_term"


def _register():
    sys.modules.pop(PLUGIN, None)
    return importlib.import_module(PLUGIN)  # the module's last statement registers the family


@pytest.fixture
def pull():
    """The toy family registered for one test, removed afterwards (other tests never see it)."""
    module = _register()
    yield module
    guidance.unregister_guidance("pull")
    sys.modules.pop(PLUGIN, None)


def tiny(tmp_path: Path, **kw) -> TrainConfig:
    kw = {
        "method": "layernorm",
        "eval_limit": 8,
        "optim": OptimConfig(steps=6, batch_size=4, lr=5e-2),
        **kw,
    }
    return tiny_config(tmp_path, **kw)


def test_one_registration_reaches_every_registry_and_undoes_cleanly(tmp_path):
    plain = tiny(tmp_path, method="lora")
    key_before = run_key(plain)
    fields_before = [f.name for f in dataclasses.fields(GuidanceConfig)]
    plugin = _register()
    try:
        assert guidance.GUIDANCE["pull"] == ("pull",) and "pull" in guidance.LOSS_TERMS
        assert guidance.GUIDANCE_METHOD["pull"] == "layernorm"
        (field,) = [f for f in dataclasses.fields(GuidanceConfig) if f.name == "pull"]
        assert field.metadata["help"].startswith("Settings of the pull")
        assert setting_type("guidance.pull.weight") is float
        assert typing.get_type_hints(GuidanceConfig)["pull"].__name__ == "PullOptions"
        # a run that does not use the new family keeps its key; one that does hashes its option
        assert run_key(tiny(tmp_path, method="lora")) == key_before
        used = from_dict(TrainConfig, {"guidance": {"use": "pull", "pull": {"weight": "2"}}})
        assert used.guidance.pull.weight == 2.0
        heavier = plugin.PullOptions(weight=3.0)
        other = dataclasses.replace(used, guidance=dataclasses.replace(used.guidance, pull=heavier))
        assert run_key(used) != run_key(other)
        # the estimator reads the declared cost (1.1 a LoRA step)
        with_pull = estimate_config_seconds(used)
        assert with_pull > estimate_config_seconds(
            dataclasses.replace(used, guidance=GuidanceConfig())
        )
        bad = tiny(tmp_path, guidance=GuidanceConfig(use="pull"))
        bad.guidance.pull.weight = -1.0
        with pytest.raises(GradguideError) as e:
            validate(bad)
        assert e.value.field == "guidance.pull.weight"
        with pytest.raises(GradguideError, match="already registered"):
            guidance.register_guidance(plugin.PULL)
    finally:
        guidance.unregister_guidance("pull")
        sys.modules.pop(PLUGIN, None)
    assert "pull" not in guidance.GUIDANCE and "pull" not in guidance.LOSS_TERMS
    assert [f.name for f in dataclasses.fields(GuidanceConfig)] == fields_before
    with pytest.raises(GradguideError, match=r"guidance\.pull"):
        from_dict(TrainConfig, {"guidance": {"pull": {"weight": 2}}})


def test_the_new_term_trains_runs_in_a_grid_and_reaches_the_report(tmp_path, pull, capsys):
    start = {n: p.detach() for n, p in load_model("tiny-llama", seed=1).model.named_parameters()}

    def drift(run) -> float:
        trained = run.adapted.trainable
        return sum(float(((p.detach() - start[n]) ** 2).sum()) for n, p in trained.items())

    free = train(tiny(tmp_path / "free"), show_progress=False)
    cfg = tiny(tmp_path / "pull", guidance=GuidanceConfig(use="pull"))
    cfg.guidance.pull.weight = 100.0
    pulled = train(cfg, show_progress=False)
    rec = pulled.record
    assert rec["config"]["guidance"]["pull"] == {"weight": 100.0}
    curve = rec["curves"]["term_pull"]
    assert len(curve) == 6 and curve[0] == 0.0 and max(curve) > 0  # θ = θ₀ at the first step
    assert rec["guidance"]["term_summaries"]["pull"]["weight"] == 100.0
    # the pull holds the parameters near their start: far less drift than the same run without it
    assert 0 < drift(pulled) < 0.25 * drift(free)

    grid = {
        "name": "pull-grid",
        "models": ["tiny-llama"],
        "tasks": ["demo-sentiment"],
        "methods": ["layernorm", "pull"],
        "shots": [8],
        "seeds": [1],
        "base": {
            "eval_limit": 8,
            "optim": {"steps": 3, "batch_size": 4, "lr": 5e-2},
            "guidance": {"measure_alignment": False},
        },
        "sweep": [{"methods": ["pull"], "guidance.pull.weight": [0.5, 50.0]}],
    }
    spec = parse_grid(grid, source="pull.yaml")
    runs = expand_grid(spec)
    assert [(r.config.method, r.config.guidance.use) for r in runs] == [
        ("layernorm", ""),
        ("layernorm", "pull"),
        ("layernorm", "pull"),
    ]
    out = tmp_path / "bench"
    assert run_grid(spec, out, workers=0, show_progress=False).ok
    capsys.readouterr()
    assert cli_main(["report", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "pull" in md


def test_plugins_named_in_the_environment_register_in_a_fresh_process():
    # how grid workers (spawned processes) and the CLI see a family defined outside gradguide
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "GRADGUIDE_PLUGINS": PLUGIN}
    env["PYTHONPATH"] = os.pathsep.join([str(tests), env.get("PYTHONPATH", "")])
    code = "from gradguide.guidance import GUIDANCE; print('pull' in GUIDANCE)"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.stdout.strip() == "True", done.stderr
    env["GRADGUIDE_PLUGINS"] = "plugins.no_such_term"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "GRADGUIDE_PLUGINS" in done.stderr


METHOD_PLUGIN = "plugins.toy_method"


def test_a_method_with_options_registers_from_one_module_and_undoes_cleanly(tmp_path, capsys):
    lora = tiny(tmp_path, method="lora")
    key_before = run_key(lora)
    names_before = [f.name for f in dataclasses.fields(MethodOptions)]
    assert "toy_norm_scale" not in names_before
    sys.modules.pop(METHOD_PLUGIN, None)
    importlib.import_module(METHOD_PLUGIN)  # the module's last statement registers the method
    try:
        # the method's own options class became flat fields of MethodOptions, help included
        assert [f.name for f in dataclasses.fields(MethodOptions)] == [
            *names_before,
            "toy_norm_scale",
        ]
        assert typing.get_type_hints(MethodOptions)["toy_norm_scale"] is float
        assert setting_type("method_options.toy_norm_scale") is float
        assert MethodOptions(toy_norm_scale=2.0).toy_norm_scale == 2.0
        assert MethodOptions.from_dict({"toy_norm_scale": 3.0}).to_dict()["toy_norm_scale"] == 3.0
        assert lora.method_options.toy_norm_scale == 1.0  # options built before: the default
        flags = {f.key: f for f in flag_fields(TrainConfig)}
        assert flags["method_options.toy_norm_scale"].flag == "--toy-norm-scale"
        # it is scoped to its method: a LoRA run keeps its key, built before or after
        assert run_key(lora) == run_key(tiny(tmp_path, method="lora")) == key_before
        toy = tiny(tmp_path, method="toy-norm")
        scaled = from_dict(TrainConfig, {"method_options": {"toy_norm_scale": "2"}})
        assert scaled.method_options.toy_norm_scale == 2.0
        other = dataclasses.replace(toy, method_options=scaled.method_options)
        assert run_key(toy) != run_key(other)
        # --set reaches it; the run records it in config.json and record.json
        args = ["train", "--model", "tiny-llama", "--task", "demo-sentiment", "--shots", "8"]
        args += ["--method", "toy-norm", "--seed", "1", "--eval-limit", "4", "--steps", "2"]
        args += ["--set", "method_options.toy_norm_scale=0.5", "--out", str(tmp_path / "cli")]
        assert cli_main(args) == 0
        capsys.readouterr()
        (run_dir,) = (tmp_path / "cli").iterdir()
        config = json.loads((run_dir / "config.json").read_text())
        assert config["method"] == "toy-norm"
        assert config["method_options"]["toy_norm_scale"] == 0.5
        assert list(config["method_options"]) == [*names_before, "toy_norm_scale"]
        record = json.loads((run_dir / "record.json").read_text())
        assert record["config"]["method_options"]["toy_norm_scale"] == 0.5
        with pytest.raises(GradguideError, match="already declared"):
            install_method_options(ToyClash())
    finally:
        unregister_method("toy-norm")
        sys.modules.pop(METHOD_PLUGIN, None)
    assert [f.name for f in dataclasses.fields(MethodOptions)] == names_before
    with pytest.raises(TypeError):
        MethodOptions(toy_norm_scale=2.0)
    with pytest.raises(GradguideError, match="unknown method"):
        get_method("toy-norm")
    assert run_key(tiny(tmp_path, method="lora")) == key_before


@dataclasses.dataclass
class _ClashOptions:
    lora_r: int = 3


class ToyClash:
    name = "toy-clash"
    options = _ClashOptions
