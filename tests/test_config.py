"""The config as the core's one source: values checked at composition, one model config, the
optimizer / task / strategy registries and their schemas."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import REPO, TINY, launch
from inprocess import make_config
from nanogpt.training import optim
from nanogpt.runtime import parallel
from nanogpt.checkpoint.single import check_shape
from nanogpt.training.optim import OPTIM_SCHEMAS, AdamWConfig, MuonConfig
from nanogpt.tasks import TASK_SCHEMAS
from nanogpt.config import ConfigError, ModelConfig
from nanogpt.gate import validate
from nanogpt.errors import UserError
from nanogpt.model import GPT, GPTConfig
from nanogpt.gate import problems
from nanogpt.training.schedule import Schedule
from nanogpt.tasks import TASKS

# ---- every value checked when the config is composed, before any work

BAD_VALUES = [
    (["optim.schedule=cosin"], "unknown optim.schedule='cosin': use cosine, linear, constant or wsd"),
    (["init_from=resum"], "unknown init_from='resum': use scratch, resume or pretrained"),
    (["task.on_nan=ignore"], "unknown task.on_nan='ignore': use stop or skip"),
    (["hardware.dtype=float8"], "unknown hardware.dtype='float8': use auto, float32, bfloat16, float16 or float64"),
    (["hardware.device=gpu"], "unknown hardware.device='gpu': use auto, cpu, cuda, cuda:N or mps"),
    (["hardware.backend=mpi"], "unknown hardware.backend='mpi': use auto, nccl or gloo"),
    (["hardware.strategy=zero"], "unknown hardware.strategy='zero': use ddp or fsdp"),
    (["hardware.activation_checkpointing=all"],
     "unknown hardware.activation_checkpointing='all': use none, block or selective"),
    (["hardware.fsdp_accumulation=lazy"], "unknown hardware.fsdp_accumulation='lazy': use unsharded or sharded"),
    (["hardware.strategy=fsdp", "hardware.dtype=float16"],
     "hardware.strategy=fsdp with hardware.dtype=float16 is not supported: float16 needs a GradScaler, "
     "which this project only runs with DDP. Use hardware.dtype=bfloat16 (A100, H100 and later) or "
     "float32, or hardware.strategy=ddp"),
    (["optim.lr=-0.1"], "optim.lr=-0.1 is out of range: it must be >= 0"),
    (["optim.beta1=1.0"], "optim.beta1=1.0 is out of range: it must be in [0, 1)"),
    (["optim.beta2=-0.5"], "optim.beta2=-0.5 is out of range: it must be in [0, 1)"),
    (["optim.weight_decay=-1"], "optim.weight_decay=-1.0 is out of range: it must be >= 0"),
    (["optim.eps=0"], "optim.eps=0.0 is out of range: it must be > 0"),
    (["optim.warmup_iters=-1"], "optim.warmup_iters=-1 is out of range: it must be >= 0"),
    (["task.eval_interval=0"], "task.eval_interval=0 is out of range: it must be >= 1"),
    (["task.log_interval=0"], "task.log_interval=0 is out of range: it must be >= 1"),
    (["task.eval_iters=0"], "task.eval_iters=0 is out of range: it must be >= 1"),
    (["task.max_iters=-5"], "task.max_iters=-5 is out of range: it must be >= 0"),
    (["task.temperature=-1"], "task.temperature=-1.0 is out of range: it must be >= 0"),
    (["hardware.micro_batch_size=0"], "hardware.micro_batch_size=0 is out of range: it must be >= 1"),
    (["hardware.micro_batch_size=-3"], "hardware.micro_batch_size=-3 is out of range: it must be >= 1"),
    (["hardware.eval_batch_size=0"], "hardware.eval_batch_size=0 is out of range: it must be >= 1"),
    (["hardware.num_threads=-1"], "hardware.num_threads=-1 is out of range: it must be >= 1"),
    (["seed=-1"], "seed=-1 is out of range: it must be >= 0"),
    (["model.n_head=3"], "invalid model config: n_embd (32) must be divisible by n_head (3)"),
    (["model.dropout=1.5"], "invalid model config: dropout must be in [0, 1), got 1.5"),
    (["task=eval", "task.eval_iters=0"], "task.eval_iters=0 is out of range: it must be >= 1"),
    (["task=eval", "task.splits=[test]"], "unknown task.splits='test': use train or val"),
    (["task=sample", "task.top_k=0"], "task.top_k=0 is out of range: it must be >= 1"),
    (["task=sample", "task.top_k=-2"], "task.top_k=-2 is out of range: it must be >= 1"),
    (["task=sample", "task.num_samples=0"], "task.num_samples=0 is out of range: it must be >= 1"),
    (["task=sample", "task.which=newest"], "unknown task.which='newest': use best or last"),
    (["task=bench", "task.iters=0"], "task.iters=0 is out of range: it must be >= 1"),
    (["optim.name=sgd"], "unknown optim='sgd': use adamw or muon"),
    (["task.name=bench"], "task.name='bench' does not match the task's keys: choose the task with task=bench"),
]


@pytest.mark.parametrize("overrides, message", BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_a_value_out_of_range_is_refused_at_composition(overrides, message):
    base = [] if overrides[0].startswith("task=") else TINY  # TINY sets training's task keys
    with pytest.raises(ConfigError) as e:
        make_config([*base, *overrides])
    assert str(e.value) == message


def test_the_shipped_configs_pass_their_own_checks():
    for overrides in ([], ["experiment=train_gpt2"], ["experiment=shakespeare_char"], ["task=eval"],
                      ["task=sample"], ["task=bench"], ["hardware=gpu_node"], ["hardware.device=cuda:3"]):
        make_config(overrides)  # raises if a default is out of its own range


def test_a_bad_value_on_the_command_line_exits_2_before_any_directory(tmp_path):
    proc = launch(["optim.schedule=cosin", "hardware=cpu"], cwd=tmp_path, check=False,
                  env={"HYDRA_FULL_ERROR": "0"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "error: unknown optim.schedule='cosin': use cosine, linear, constant or wsd"
    assert list(tmp_path.iterdir()) == []  # no run directory, no runs/


def float_fields() -> list[tuple[list[str], str]]:
    """(the overrides that choose a schema, key) for every float field of every schema."""
    import typing

    from nanogpt.gate import GROUPS

    chosen = [([], "model", ModelConfig), ([], "hardware", GROUPS["hardware"])]
    chosen += [([f"optim={name}"], "optim", schema) for name, schema in OPTIM_SCHEMAS.items()]
    chosen += [([f"task={name}"], "task", schema) for name, schema in TASK_SCHEMAS.items()]
    found = []
    for choice, group, schema in chosen:
        for name, hint in typing.get_type_hints(schema).items():
            if hint in (float, typing.Optional[float]):
                found.append((choice, f"{group}.{name}"))
    return found


FLOAT_FIELDS = float_fields()


@pytest.mark.parametrize("choice, key", FLOAT_FIELDS, ids=[" ".join([*c, k]) for c, k in FLOAT_FIELDS])
def test_a_non_finite_number_is_refused_at_composition_for_every_float_key(choice, key):
    """One rule for every float of the typed configs: nan and inf are refused by name before any
    work (before, optim.lr=nan crashed in torch, model.mlp_ratio=inf in round(), task.temperature=nan
    after training, and optim.weight_decay=nan trained into a NaN loss)."""
    from hydra import compose, initialize_config_dir

    assert len(FLOAT_FIELDS) > 20  # the schemas were found
    base = [] if choice and choice[0].startswith("task=") else TINY
    for value in ("nan", "inf", "-inf"):
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=[*base, *choice, f"{key}={value}"])
        with pytest.raises(ConfigError) as e:
            validate(cfg)
        assert str(e.value) == f"{key}={value} is not a finite number: use a finite value"


def test_a_seed_beyond_64_bits_is_refused():
    """torch seeds its generators with 64 bits (a rank is added to the seed): seed=2**64 crashed
    in torch.manual_seed with a traceback."""
    with pytest.raises(ConfigError) as e:
        make_config([*TINY, f"seed={2**64}"])
    assert str(e.value) == f"seed={2**64} is out of range: it must be <= {2**63 - 1}"
    assert make_config([*TINY, f"seed={2**63 - 1}"]).seed == 2**63 - 1


def test_num_threads_far_beyond_the_cores_is_refused():
    """hardware.num_threads=100000 exhausted the thread limit and died with SIGSEGV."""
    import os

    cores = os.cpu_count()
    with pytest.raises(ConfigError) as e:
        make_config([*TINY, "hardware.num_threads=100000"])
    assert str(e.value) == (f"hardware.num_threads=100000 is out of range: this machine has {cores} CPU "
                            f"core{'s' * (cores > 1)}; use at most {4 * cores} (4 per core), or leave it "
                            "unset (null) for one per core")
    assert make_config([*TINY, f"hardware.num_threads={4 * cores}"]).hardware.num_threads == 4 * cores


# ---- one model config

def test_the_model_group_is_the_models_config():
    """A field of GPTConfig is a model.* key, with no second declaration: the config builds the
    model's GPTConfig field for field."""
    assert issubclass(ModelConfig, GPTConfig)
    cfg = make_config([*TINY, "model.bias=false", "model.dropout=0.1", "model.vocab_size=50"])
    from nanogpt.config import model_args

    built = model_args(cfg.model, data_vocab=40)
    assert type(built) is GPTConfig
    assert dataclasses.asdict(built) == {f.name: getattr(cfg.model, f.name) for f in dataclasses.fields(GPTConfig)}


def test_a_checkpoint_without_a_newer_field_reads_it_as_the_default():
    """model_args written before a model option existed: the option is its default (what the
    model computed then); checkpoints made with another value of it are refused by name."""
    old_args = dataclasses.asdict(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=10))
    del old_args["bias"]  # as if bias had been added after this checkpoint was written
    ckpt = {"model_args": {**old_args, "a_field_from_the_future": 1}}
    check_shape(ckpt, GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=10), "old.pt")
    with pytest.raises(UserError, match=r"another model shape \(bias: checkpoint True vs config False\)"):
        check_shape(ckpt, GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=10, bias=False), "old.pt")
    assert GPTConfig.from_dict(ckpt["model_args"]).bias is True


# ---- the group files say only what differs from the schema, or from the preset they extend

GROUP_DIRS = ("model", "data", "optim", "hardware", "task", "logger", "hydra/launcher")


def _load(path) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path)) or {}


def _inherited(group: str, defaults: list) -> dict:
    """What a group file starts from: its schema (/schema_*, a ConfigStore node at the root) or
    the presets of its group it extends, merged in order; `override /group: ...` entries choose
    other groups."""
    import hydra_plugins.nanogpt_slurm_launcher  # noqa: F401 (stores nanogpt_slurm)
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from nanogpt.gate import register_configs

    register_configs()
    merged = {}
    for entry in (d for d in defaults if isinstance(d, str) and d != "_self_"):
        path = entry[1:] if entry.startswith("/") else f"{group}/{entry}"
        if (REPO / "conf" / f"{path}.yaml").is_file():
            parent = _full_values(group, REPO / "conf" / f"{path}.yaml")
        else:
            parent = OmegaConf.to_container(ConfigStore.instance().load(f"{path}.yaml").node)
        merged = OmegaConf.to_container(OmegaConf.merge(merged, parent))
    return merged


def _defaults(group: str, own: dict) -> list:
    # a file with no defaults list starts from its group's schema (conf/logger/*: so they compose as a list)
    return own.get("defaults", [f"/schema_{group}"])


def _repeats(group: str, own: dict) -> list[str]:
    inherited = _inherited(group, _defaults(group, own))
    return [k for k, v in own.items() if k != "defaults" and k in inherited and inherited[k] == v]


def _full_values(group: str, path) -> dict:
    from omegaconf import OmegaConf

    own = _load(path)
    merged = OmegaConf.merge(_inherited(group, _defaults(group, own)),
                             {k: v for k, v in own.items() if k != "defaults"})
    return OmegaConf.to_container(merged)


def _composed(group: str, option: str) -> dict:
    """The group's node as Hydra composes the option (a model and data with no recipe, which
    would set optim and task keys)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from nanogpt.gate import register_resolvers

    register_resolvers()
    base = ["data=shakespeare_char"] + ([] if group == "model" else ["model=baby"])
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*base, f"{group}={option}"], return_hydra_config=True)
    return OmegaConf.to_container(OmegaConf.select(cfg, group.replace("/", ".")))


def test_group_files_say_only_what_differs_from_the_schema_or_the_preset_they_extend():
    """No group file repeats its schema's default, or the value of a preset it extends, verbatim
    (optim/muon.yaml once restated all 18 of MuonConfig's defaults, the GPT-2 sizes were written
    in three places). The values read here are checked to be what Hydra composes for each option,
    and a file that repeated a default is shown to be caught, so the test cannot pass vacuously."""
    checked = 0
    for group in GROUP_DIRS:
        files = sorted((REPO / "conf" / group).rglob("*.yaml"))
        assert files, group
        for path in files:
            own = _load(path)
            repeats = _repeats(group, own)
            assert repeats == [], f"{path.relative_to(REPO)} repeats what it extends: {repeats}"
            option = str(path.relative_to(REPO / "conf" / group).with_suffix(""))
            assert _composed(group, option) == _full_values(group, path), path
            checked += len(own) - ("defaults" in own)
    assert checked >= 40
    assert _repeats("model", {"defaults": ["gpt2_124m"], "n_layer": 12, "n_head": 16, "pad_vocab": True}) == \
        ["n_layer", "pad_vocab"]
    assert _repeats("optim", {"defaults": ["/schema_optim_muon"], "lr": 0.02, "beta1": 0.9}) == ["lr"]


def test_the_gpt2_presets_have_the_shapes_of_openais_weights():
    """The GPT-2 sizes are written once in conf/ (model/gpt2_*.yaml; pretrained/* extend them); the
    loader's table for weights without a config.json (nanogpt.hf.weights.GPT2_SIZES) agrees."""
    from nanogpt.hf.weights import GPT2_SIZES

    for preset, scratch in (("gpt2", "gpt2_124m"), ("gpt2_medium", "gpt2_350m"), ("gpt2_large", "gpt2_774m"),
                            ("gpt2_xl", "gpt2_1558m")):
        shape = GPT2_SIZES[preset.replace("_", "-")]
        for option in (f"pretrained/{preset}", scratch):
            model = _composed("model", option)
            assert (model["n_layer"], model["n_head"], model["n_embd"], model["block_size"]) == \
                (shape.n_layer, shape.n_head, shape.n_embd, 1024), option
        assert (model["pad_vocab"], _composed("model", f"pretrained/{preset}")["vocab_size"]) == (True, 50257)


# ---- registries

def test_every_registry_entry_has_a_schema_and_a_yaml():
    assert set(optim.OPTIMIZERS) == set(OPTIM_SCHEMAS) == {p.stem for p in (REPO / "conf" / "optim").glob("*.yaml")}
    assert set(TASKS) == set(TASK_SCHEMAS) == {p.stem for p in (REPO / "conf" / "task").glob("*.yaml")}
    for name in TASKS:
        assert make_config([f"task={name}"]).task.name == name
    assert set(parallel.STRATEGIES) == {"ddp", "fsdp"}


def test_param_groups_keep_their_own_lr_multiplier_through_the_schedule_and_a_resume():
    """An optimizer whose groups need different rates (Muon beside AdamW) gives each an lr_scale;
    the schedule scales every group, and a resumed optimizer keeps the scales."""
    def two_rates(model, ocfg, device_type):
        groups = optim.decay_groups(model, ocfg.weight_decay)
        groups[1]["lr_scale"] = 0.25
        return torch.optim.AdamW(groups, lr=ocfg.lr)

    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=10))
    ocfg = AdamWConfig(lr=1e-2, warmup_iters=2, schedule="cosine")
    schedule = Schedule(ocfg, max_iters=10)
    opt = two_rates(model, ocfg, "cpu")
    resumed = two_rates(model, ocfg, "cpu")
    resumed.load_state_dict(opt.state_dict())
    for o in (opt, resumed):
        for it in (0, 5, 10):
            optim.set_lr(o, schedule(it))
            assert o.param_groups[0]["lr"] == schedule(it)
            assert o.param_groups[1]["lr"] == schedule(it) * 0.25
    assert schedule(0) < ocfg.lr and schedule(10) == pytest.approx(ocfg.lr / 10)


def test_optimizer_keys_are_checked_against_the_chosen_optimizers_schema():
    conf = REPO / "conf"
    assert problems(["optim.beta1=0.8", "optim.weight_decay=0"], conf) == []
    (err,) = problems(["optim.beta3=0.8"], conf)
    assert "unknown config key 'optim.beta3'. Did you mean 'optim.beta2'?" in err and "weight_decay" in err
    # a task's keys are those of the task chosen, not of any task
    assert problems(["task=sample", "task.top_k=5"], conf) == []
    (err,) = problems(["task=sample", "task.max_iters=5"], conf)
    assert "unknown config key 'task.max_iters'" in err
    # with an experiment (which may choose another option) any option's keys pass here
    assert problems(["experiment=eval_gpt2", "task.max_iters=5"], conf) == []
    # the optimizer a model preset chooses: the default model (modern_baby) trains with Muon, GPT-2's
    # baby with AdamW, and optim= on the command line wins over both
    assert problems(["optim.ns_dtype=float32"], conf) == []
    (err,) = problems(["model=baby", "optim.ns_dtype=float32"], conf)
    assert "unknown config key 'optim.ns_dtype'" in err and "beta2" in err
    assert problems(["model=baby", "optim=muon", "optim.ns_dtype=float32"], conf) == []
    assert problems(["optim=adamw", "optim.ns_dtype=float32"], conf) != []


def test_optimizer_keys_follow_the_optimizer_the_command_composes_to():
    """The optimizer whose keys a command may set is the one Hydra composes it to: a model preset
    that inherits its optimizer from another (modern_baby from modern_124m), a +variant, each
    point of a sweep over presets (before, YAML files were read: +variant=modern's Muon keys were
    refused on model=baby, and a sweep's list was taken for one preset's name)."""
    conf = REPO / "conf"
    assert problems(["model=baby", "+variant=modern", "optim.ns_dtype=float32"], conf) == []
    (err,) = problems(["+variant=gpt2", "optim.ns_dtype=float32"], conf)
    assert err.startswith("unknown config key 'optim.ns_dtype'. Valid keys of optim: name, lr")
    assert problems(["model=modern_124m", "optim.ns_dtype=float32"], conf) == []
    assert problems(["-m", "model=modern_124m,modern_baby", "optim.ns_dtype=float32"], conf) == []
    (err,) = problems(["-m", "model=baby,modern_baby", "optim.ns_dtype=float32"], conf)  # not baby's
    assert "unknown config key 'optim.ns_dtype'" in err and "beta2" in err
    assert problems(["-m", "model=baby,modern_baby", "optim.beta2=0.9"], conf) == []  # both have it


def test_validate_returns_plain_dataclasses():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = validate(compose("config", overrides=["task=sample"]))
        gpt2 = validate(compose("config", overrides=["model=baby"]))
    # the default model (modern_baby) chooses Muon; GPT-2's baby keeps AdamW
    assert type(cfg.optim) is MuonConfig and cfg.task.name == "sample"
    assert type(gpt2.optim) is AdamWConfig and type(gpt2.model) is ModelConfig
